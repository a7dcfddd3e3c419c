"""The ViT-family zoo (``_zoo_vit``; issue 13): tiny same-architecture models loaded through the real path
(``create_encoder(name, weights=<file>)``), checked against the reference implementations.

- transformers-published encoders (Phikon, Hibou-B/L, Midnight-12k): a tiny ``ViTModel`` /
  ``Dinov2WithRegistersModel`` / ``Dinov2Model`` built by transformers itself is saved with
  ``save_pretrained`` (the published files' layout), loaded into our timm build, and must give the reference's
  own output (CLS of ``last_hidden_state``, ``pooler_output``, CLS ++ mean of patches) on the same input;
  Midnight's tiny config has a 4x4 position grid, so the load-time resampling is checked against transformers'
  interpolation at every forward pass.
- OpenMidnight (DINOv2 ``torch.hub`` layout): our conversion equals timm's own DINOv2 checkpoint filter.
- GenBio-PathFM (our own module): a tiny model's weights and output recorded from the reference module
  (tests/golden/make_genbio_pathfm.py) are reproduced through ``create_encoder``.
- timm-published encoders (Kaiko, Lunit, GPFM): a tiny timm model saved and reloaded gives the same output.
- full size (meta device): parameter counts against LazySlide's model registry (rendeirolab/lazyslide-models @
  0127beb, ``param_size``), an outside count of the published models.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from slidescope.features.encoders import WeightsError, _registry, create_encoder
from slidescope.features.encoders._zoo_vit import ZOO_VIT
from slidescope.features.encoders.hf_vit import ConvertedTimmEncoder, transformers_to_timm

CONFIGS = {c.name: (c, ref) for c, ref in ZOO_VIT}
TILES = torch.randint(0, 255, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def _tiny(name: str, monkeypatch: pytest.MonkeyPatch, **kwargs: object):
    config, ref = CONFIGS[name]
    width = 2 * TINY["embed_dim"] if config.pooling == "cls+mean" else TINY["embed_dim"]
    tiny = replace(config, name=f"tiny-{name}", kwargs={**config.kwargs, **TINY, **kwargs}, embed_dim=width)
    builder = ref.load()
    monkeypatch.setitem(_registry._REGISTRY, tiny.name, (tiny, builder))
    monkeypatch.setattr(_registry, "_ensure_loaded", lambda: None)
    return tiny, builder


def _embed(encoder: torch.nn.Module, tiles: torch.Tensor = TILES) -> torch.Tensor:
    with torch.no_grad():
        return encoder(tiles)


def test_zoo_names_builders_and_sources() -> None:
    assert len(CONFIGS) == len(ZOO_VIT) >= 12
    for config, ref in ZOO_VIT:
        assert config.license_url and config.hub_id and config.weights_file and not config.weight_free
        assert config.pooling in ("cls", "cls+mean")
        json.dumps(config.to_dict())  # provenance is JSON-ready even with classes in kwargs
        assert config.layout_source, f"{config.name}: say where its layout was checked"
        assert config.layout_source.startswith(("TRIDENT a91fa84", "derived:")), config.name
        assert ref.path.endswith(
            ("timm_models:build_preset", "hf_vit:build_converted", "genbio:build_genbio_pathfm")
        )


# ------------------------------------------------------------- transformers-published: reference outputs


def _save_reference(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)  # type: ignore[operator]
    return folder / "model.safetensors"


def _from_published(name: str, reference: torch.nn.Module, tmp_path: Path, monkeypatch, **tiny_kwargs):
    config, _ = _tiny(name, monkeypatch, **tiny_kwargs)
    path = _save_reference(reference.eval(), tmp_path / "hf")
    encoder = create_encoder(config.name, weights=path, device="cpu")
    assert isinstance(encoder, ConvertedTimmEncoder)
    x = encoder.preprocess(TILES)
    with torch.no_grad():
        ours = encoder.embed(x)
        ref = reference(pixel_values=x)
    assert torch.equal(_embed(encoder), ours)
    return config, ours, ref


def test_phikon_equals_transformers_vitmodel_cls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    reference = ViTModel(cfg, add_pooling_layer=False)  # TRIDENT's Phikon build
    assert cfg.layer_norm_eps == 1e-12 and cfg.patch_size == 16 and cfg.image_size == 224
    _, ours, ref = _from_published("phikon", reference, tmp_path, monkeypatch)
    torch.testing.assert_close(ours, ref.last_hidden_state[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["hibou-b", "hibou-l"])
def test_hibou_equals_transformers_dinov2_with_registers(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=224,
        patch_size=14,
        num_register_tokens=4,
        use_swiglu_ffn=True,
        layerscale_value=0.5,
    )
    reference = Dinov2WithRegistersModel(cfg)
    # SwiGLU hidden (int(128 * 2 / 3) + 7) // 8 * 8 = 88, packed [gate, value] = 176 = 5.5 * 32
    _, ours, ref = _from_published(name, reference, tmp_path, monkeypatch, mlp_ratio=5.5)
    torch.testing.assert_close(ours, ref.pooler_output, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, ref.last_hidden_state[:, 0], rtol=1e-5, atol=1e-5)


def test_midnight_equals_transformers_dinov2_cls_mean_with_resampled_positions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    # a 56 px grid (4x4 positions) run at 224 (16x16): transformers interpolates at every call, we once
    cfg = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
        use_swiglu_ffn=True,
        layerscale_value=0.5,
    )
    reference = Dinov2Model(cfg)
    config, ours, ref = _from_published("midnight-12k", reference, tmp_path, monkeypatch, mlp_ratio=5.5)
    hidden = ref.last_hidden_state
    expected = torch.cat([hidden[:, 0], hidden[:, 1:].mean(1)], dim=-1)
    assert ours.shape == (2, config.embed_dim) == (2, 64)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_unknown_transformers_key_is_refused() -> None:
    state = {
        "embeddings.cls_token": torch.zeros(1, 1, 4),
        "encoder.layer.0.attention.weird.weight": torch.zeros(4),
    }
    with pytest.raises(WeightsError, match="weird.*published file"):
        transformers_to_timm(state)


# --------------------------------------------------------------------------- DINOv2 hub (OpenMidnight)


def test_openmidnight_hub_conversion_equals_timms_dinov2_filter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, builder = _tiny("openmidnight", monkeypatch)
    torch.manual_seed(0)
    encoder = builder(config).eval()
    d, depth = TINY["embed_dim"], TINY["depth"]
    # the DINOv2 hub layout (tests/golden/trident_layouts.json "openmidnight"), tiny, 224 px positions
    hub = {
        "cls_token": torch.randn(1, 1, d),
        "mask_token": torch.randn(1, d),
        "register_tokens": torch.randn(1, 4, d),
        "pos_embed": torch.randn(1, 1 + 16 * 16, d),
        "patch_embed.proj.weight": torch.randn(d, 3, 14, 14),
        "patch_embed.proj.bias": torch.randn(d),
        "norm.weight": torch.randn(d),
        "norm.bias": torch.randn(d),
    }
    own = encoder.model.state_dict()
    for i in range(depth):
        for key, value in own.items():
            if key.startswith(f"blocks.{i}."):
                hub[key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")] = torch.randn(
                    value.shape
                )
    ours = encoder.convert_state_dict(dict(hub))
    theirs = timm.models.vision_transformer.checkpoint_filter_fn(dict(hub), encoder.model)
    assert sorted(ours) == sorted(theirs) == sorted(own)
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)
    path = tmp_path / "teacher_checkpoint_load.pt"
    torch.save(hub, path)
    loaded = create_encoder(config.name, weights=path, device="cpu")
    reference = builder(config).eval()
    reference.model.load_state_dict(theirs)
    torch.testing.assert_close(_embed(loaded), _embed(reference), rtol=0, atol=0)


# ---------------------------------------------------------------------- GenBio-PathFM: reference forward


def test_genbio_pathfm_reproduces_the_reference_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/golden/genbio_pathfm.npz: TRIDENT's (upstream) GenBio-PathFM module, tiny, run outside slidescope."""
    import numpy as np

    golden = np.load(Path(__file__).parents[1] / "golden" / "genbio_pathfm.npz")
    assert "TRIDENT@" in str(golden["provenance"])
    width, depth, heads = (int(v) for v in golden["tiny"])
    config, _ = _tiny("genbio-pathfm", monkeypatch, embed_dim=width, depth=depth, num_heads=heads)
    config = replace(config, embed_dim=3 * width)
    monkeypatch.setitem(_registry._REGISTRY, config.name, (config, _registry._REGISTRY[config.name][1]))
    dtypes = {str(k): str(d) for k, d in zip(golden["keys"], golden["dtypes"])}
    state = {k: torch.from_numpy(golden[f"sd/{k}"]).to(getattr(torch, dtypes[k])) for k in dtypes}
    assert state["rope_embed.periods"].dtype == torch.bfloat16
    path = tmp_path / "model.pth"
    torch.save(state, path)
    encoder = create_encoder(config.name, weights=path, device="cpu")
    with torch.no_grad():
        ours = encoder.embed(torch.from_numpy(golden["x"]))
    assert ours.shape == golden["out"].shape == (2, 3 * width)
    torch.testing.assert_close(ours, torch.from_numpy(golden["out"]), rtol=1e-5, atol=1e-5)
    assert _embed(encoder).shape == (2, 3 * width)  # the uint8 tile path (resize to 224, 14 x 14 patches)


# -------------------------------------------------------------------------- timm-published: round trip


TIMM_NAMES = [c.name for c, ref in ZOO_VIT if ref.path.endswith("build_preset")]


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_timm_published_round_trip(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, builder = _tiny(name, monkeypatch)
    torch.manual_seed(0)
    source = builder(config).eval()
    expected = _embed(source)
    assert expected.shape == (2, config.embed_dim) and torch.isfinite(expected).all()
    state = {k: v.contiguous() for k, v in source.checkpoint_module().state_dict().items()}
    folder = tmp_path / "snapshot"
    folder.mkdir()
    published = folder / config.weights_file
    if published.suffix == ".safetensors":
        save_file(state, str(published))
    else:
        torch.save({"state_dict": state}, published)  # GPFM.pth may wrap its state dict (TRIDENT unwraps it)
    loaded = create_encoder(config.name, weights=folder, device="cpu")
    assert loaded.weights_digest.startswith("sha256:")
    assert torch.equal(_embed(loaded), expected)
    # the CLS token after the final norm, which is timm's pooled output with num_classes=0
    x = loaded.preprocess(TILES)
    with torch.no_grad():
        assert torch.equal(loaded.embed(x), loaded.model.forward_features(x)[:, 0])
        torch.testing.assert_close(loaded.embed(x), loaded.model(x))


def test_kaiko_vitl14_keeps_the_518_grid_and_runs_at_224() -> None:
    config, ref = CONFIGS["kaiko-vitl14"]
    with torch.device("meta"):
        encoder = ref.load()(config)
        tokens = encoder.tokens(torch.empty(1, 3, 224, 224))
    assert tuple(encoder.model.pos_embed.shape) == (1, 37 * 37, 1024)  # no class position (registers model)
    assert tokens.shape == (1, 1 + 4 + 16 * 16, 1024)


# ------------------------------------------ full size: the published layout of the derived configs converts


def _transformers_full(name: str) -> torch.nn.Module:
    """transformers' own model for the configuration each derived layout_source names (built on meta)."""
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        ViTConfig,
        ViTModel,
    )

    if name == "phikon":
        return ViTModel(ViTConfig(), add_pooling_layer=False)  # ViT-B/16 224, the google/vit-base layout
    if name == "midnight-12k":  # facebook/dinov2-giant: 1536 wide, 40 layers, SwiGLU, 518 px positions
        cfg = Dinov2Config(
            hidden_size=1536,
            num_hidden_layers=40,
            num_attention_heads=24,
            image_size=518,
            use_swiglu_ffn=True,
        )
        return Dinov2Model(cfg)
    width, layers, heads = {"hibou-b": (768, 12, 12), "hibou-l": (1024, 24, 16)}[name]
    cfg = Dinov2WithRegistersConfig(
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=224,
        patch_size=14,
        num_register_tokens=4,
        use_swiglu_ffn=True,
    )
    return Dinov2WithRegistersModel(cfg)


@pytest.mark.parametrize("name", ["phikon", "hibou-b", "hibou-l", "midnight-12k"])
def test_full_size_transformers_layout_converts_to_ours(name: str) -> None:
    from transformers.core_model_loading import revert_weight_conversion  # what save_pretrained writes

    config, ref = CONFIGS[name]
    with torch.device("meta"):
        reference = _transformers_full(name)
        published = revert_weight_conversion(reference, reference.state_dict())
        encoder = ref.load()(config)
        converted = encoder.convert_state_dict(published)
    assert "encoder.layer.0.attention.attention.query.weight" in published  # the published (4.x) names
    own = {k: list(v.shape) for k, v in encoder.checkpoint_module().state_dict().items()}
    assert {k: list(v.shape) for k, v in converted.items()} == own


# ------------------------------------------------------------------- full size: outside parameter counts

#: LazySlide's registry (``param_size``), rendeirolab/lazyslide-models @ 0127beb, src/lazyslide_models/vision
LAZYSLIDE_PARAMS = {
    "hibou-b": (85.7e6, 0.001),
    "hibou-l": (303.7e6, 0.001),
    "phikon": (85.8e6, 0.001),
    "gpfm": (303e6, 0.002),
    "midnight-12k": (1.14e9, 0.005),
    "openmidnight": (1.1e9, 0.05),
    "lunit-dino-vits16": (21.1e6, 0.03),
    "genbio-pathfm": (1.1e9, 0.05),  # LazySlide's count differs from timm's by the 0.6M pos/head terms
}


@pytest.mark.parametrize("name", sorted(LAZYSLIDE_PARAMS))
def test_full_size_parameter_count_matches_lazyslide(name: str) -> None:
    config, ref = CONFIGS[name]
    with torch.device("meta"):
        encoder = ref.load()(config)
    n = sum(p.numel() for p in encoder.checkpoint_module().parameters())
    published, rel = LAZYSLIDE_PARAMS[name]
    assert n == pytest.approx(published, rel=rel)
