"""The non-timm encoder families: CONCH v1.5, Phikon-v2 (transformers DINOv2), PLIP (transformers CLIP),
QuiltNet (open_clip CLIP).

Full-size models are only built on the meta device, against the published checkpoint layouts recorded in
``layouts/<name>.json``; everything that runs real numbers uses tiny variants of the same classes, loaded
through the real ``create_encoder(..., weights=...)`` path.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from slidescope.features.encoders import (
    WeightsError,
    create_encoder,
    get_encoder_config,
    list_encoders,
)
from slidescope.features.encoders import _registry
from slidescope.features.encoders._weights import load_into
from slidescope.features.encoders.clip import (
    CLIP_MEAN,
    CLIP_STD,
    split_hf_clip_state_dict,
    split_open_clip_state_dict,
)
from slidescope.features.encoders.phikon import _LEGACY_TO_CURRENT

LAYOUTS = Path(__file__).parent / "layouts"
PRESETS = ["conch-v1.5", "phikon-v2", "plip", "quiltnet"]
DTYPES = {"int64": torch.int64}

# Tiny kwargs per preset: same builder and classes as the real preset, toy width/depth.
TINY = {
    "conch-v1.5": dict(
        kwargs={
            "img_size": 32,
            "patch_size": 16,
            "embed_dim": 64,
            "depth": 2,
            "num_heads": 4,
            "mlp_ratio": 2.0,
            "qkv_bias": True,
            "init_values": 0.5,
            "pooler_dim": 32,
            "pooler_heads": 4,
            "pooler_queries": 1,
        },
        # resize 72 -> crop 64: exercises the crop and the positional-grid interpolation (2x2 -> 4x4)
        embed_dim=32,
        input_size=64,
        resize_size=72,
    ),
    "phikon-v2": dict(
        kwargs={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "mlp_ratio": 2,
            "patch_size": 16,
            "image_size": 32,
            "layerscale_value": 0.5,
        },
        embed_dim=32,
        input_size=32,
        resize_size=32,
    ),
    "plip": dict(
        kwargs={
            "hidden_size": 32,
            "intermediate_size": 64,
            "projection_dim": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 16,
            "hidden_act": "quick_gelu",
        },
        embed_dim=16,
        input_size=32,
        resize_size=32,
    ),
    "quiltnet": dict(
        kwargs={
            "embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 16},
            "quick_gelu": False,
        },
        embed_dim=16,
        input_size=32,
        resize_size=32,
    ),
}


def _builder(name: str):
    return _registry._entry(name)[1]


def _tiny_config(name: str, *, as_name: str | None = None):
    return replace(get_encoder_config(name), name=as_name or f"test-tiny-{name}", **TINY[name])


@pytest.fixture
def tiny(monkeypatch, request):
    """Register the tiny variant of preset ``request.param`` under a test-only name; yields its name."""
    name = request.param
    config = _tiny_config(name)
    monkeypatch.setitem(_registry._REGISTRY, config.name, (config, _builder(name)))
    return name, config.name


def _published(preset: str, encoder) -> dict[str, torch.Tensor]:
    """What the hub file of ``preset`` holds for this (tiny) encoder: its keys in the published naming,
    plus the parts the encoder does not keep (text towers, legacy buffers)."""
    state = {k: v.detach().clone().contiguous() for k, v in encoder.checkpoint_module().state_dict().items()}
    if preset == "phikon-v2":  # transformers-4.x names, as saved on the hub
        out = {}
        for key, value in state.items():
            for old, new in _LEGACY_TO_CURRENT:
                key = key.replace(new, old)
            out[key] = value
        return out
    g = torch.Generator().manual_seed(1)
    if preset == "plip":  # full CLIPModel file
        n_pos = state["vision_model.embeddings.position_embedding.weight"].shape[0]
        state.update(
            {
                "vision_model.embeddings.position_ids": torch.arange(n_pos).unsqueeze(0),
                "text_model.embeddings.position_ids": torch.arange(77).unsqueeze(0),
                "text_model.embeddings.token_embedding.weight": torch.randn(100, 8, generator=g),
                "text_model.final_layer_norm.weight": torch.ones(8),
                "text_projection.weight": torch.randn(16, 8, generator=g),
                "logit_scale": torch.tensor(2.6592),
            }
        )
    if preset == "quiltnet":  # full open_clip CLIP file
        state.update(
            {
                "token_embedding.weight": torch.randn(100, 8, generator=g),
                "positional_embedding": torch.randn(77, 8, generator=g),
                "ln_final.weight": torch.ones(8),
                "text_projection": torch.randn(8, 16, generator=g),
                "logit_scale": torch.tensor(2.6592),
            }
        )
    return state


def _tiles(n: int = 2, size: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 255, (n, size, size, 3), dtype=torch.uint8, generator=g)


# --- the presets and their published layouts ------------------------------------------------------------


def test_presets_are_registered():
    assert set(PRESETS) <= set(list_encoders())


@pytest.mark.parametrize(
    (
        "name",
        "embed_dim",
        "input_size",
        "resize_size",
        "tile_size",
        "interpolation",
        "mean",
        "precision",
        "gated",
    ),
    [
        ("conch-v1.5", 768, 448, 448, 512, "bilinear", (0.485, 0.456, 0.406), "fp16", True),
        ("phikon-v2", 1024, 224, 224, 224, "bilinear", (0.485, 0.456, 0.406), "fp32", False),
        ("plip", 512, 224, 224, 224, "bicubic", CLIP_MEAN, "fp32", False),
        ("quiltnet", 512, 224, 224, 224, "bicubic", CLIP_MEAN, "fp32", False),
    ],
)
def test_preset_preprocessing_contract(
    name, embed_dim, input_size, resize_size, tile_size, interpolation, mean, precision, gated
):
    c = get_encoder_config(name)
    assert (c.embed_dim, c.input_size, c.resize_size, c.tile_size, c.mpp) == (
        embed_dim,
        input_size,
        resize_size,
        tile_size,
        0.5,
    )
    assert (c.interpolation, c.mean, c.precision, c.gated) == (interpolation, mean, precision, gated)
    if mean == CLIP_MEAN:
        assert c.std == CLIP_STD
    assert c.hub_id and c.weights_file and c.license_url and c.license != "unknown"
    assert "mpp" in c.description or "µm/px" in c.description


@pytest.mark.parametrize("name", PRESETS)
def test_full_size_architecture_matches_published_layout(name):
    layout = json.loads((LAYOUTS / f"{name}.json").read_text())
    shapes = layout["shapes"]
    assert layout["source"] and len(shapes) == layout["n_tensors"]
    assert sum(torch.Size(s).numel() for s in shapes.values()) == layout["n_params"]
    if layout["published_params"]:
        tol = layout["published_params_rel_tol"]
        assert layout["n_params"] == pytest.approx(layout["published_params"], rel=tol)
    config = get_encoder_config(name)
    with torch.device("meta"):
        encoder = _builder(name)(config)
        published = {
            k: torch.empty(s, dtype=DTYPES.get(layout.get("dtypes", {}).get(k), torch.float32))
            for k, s in shapes.items()
        }
        converted = encoder.convert_state_dict(published)
        own = {k: tuple(v.shape) for k, v in encoder.checkpoint_module().state_dict().items()}
        assert {k: tuple(v.shape) for k, v in converted.items()} == own
        load_into(encoder.checkpoint_module(), converted, name=name, strict=True)  # the real loading step
        out = encoder.embed(torch.empty(2, 3, config.input_size, config.input_size))
    assert tuple(out.shape) == (2, config.embed_dim)


def test_conch_pos_embed_is_interpolated_from_the_224_grid():
    config = get_encoder_config("conch-v1.5")
    with torch.device("meta"):
        encoder = _builder("conch-v1.5")(config)
        tokens = encoder.tokens(torch.empty(1, 3, 448, 448))
    assert tuple(encoder.trunk.pos_embed.shape) == (1, 197, 1024)
    assert tuple(tokens.shape) == (1, 1 + 28 * 28, 1024)


def test_clip_split_helpers_separate_image_and_text_parts():
    plip = json.loads((LAYOUTS / "plip.json").read_text())["shapes"]
    image, text = split_hf_clip_state_dict({k: torch.empty(s, device="meta") for k, s in plip.items()})
    assert all(k.startswith(("vision_model.", "visual_projection.")) for k in image)
    assert {"text_projection.weight", "logit_scale"} <= set(text)
    assert all(k.startswith("text_model.") or k in ("text_projection.weight", "logit_scale") for k in text)
    assert not any(k.endswith("position_ids") for k in (*image, *text))
    assert len(image) + len(text) == len(plip) - 2

    quilt = json.loads((LAYOUTS / "quiltnet.json").read_text())["shapes"]
    image, text = split_open_clip_state_dict({k: torch.empty(s, device="meta") for k, s in quilt.items()})
    assert all(k.startswith("visual.") for k in image) and "visual.proj" in image
    assert {"token_embedding.weight", "text_projection", "logit_scale"} <= set(text)
    assert len(image) + len(text) == len(quilt)


# --- tiny variants through the real loading path ---------------------------------------------------------


@pytest.mark.parametrize("tiny", PRESETS, indirect=True)
def test_tiny_forward_contract(tiny):
    _, tiny_name = tiny
    torch.manual_seed(0)
    encoder = create_encoder(tiny_name, pretrained=False, device="cpu")
    with torch.no_grad():
        out = encoder(_tiles())
    assert out.shape == (2, encoder.config.embed_dim)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])  # different tiles, different embeddings


@pytest.mark.parametrize("tiny", PRESETS, indirect=True)
def test_tiny_round_trip_through_published_files(tiny, tmp_path):
    preset, tiny_name = tiny
    torch.manual_seed(0)
    reference = create_encoder(tiny_name, pretrained=False, device="cpu")
    published = _published(preset, reference)
    tiles = _tiles()
    with torch.no_grad():
        expected = reference(tiles)

    save_file(published, str(tmp_path / "w.safetensors"))
    torch.save(published, tmp_path / "w.bin")  # a plain state_dict pickle: loads with weights_only=True
    for path in (tmp_path / "w.safetensors", tmp_path / "w.bin"):
        torch.manual_seed(123)  # a different random init, overwritten by the file
        loaded = create_encoder(tiny_name, weights=path, device="cpu")
        with torch.no_grad():
            assert torch.equal(loaded(tiles), expected), path.name
        assert loaded.weights_digest.startswith("sha256:")


def test_phikon_loads_a_local_hf_folder(monkeypatch, tmp_path):
    config = _tiny_config("phikon-v2")
    monkeypatch.setitem(_registry._REGISTRY, config.name, (config, _builder("phikon-v2")))
    torch.manual_seed(0)
    reference = create_encoder(config.name, pretrained=False, device="cpu")
    folder = tmp_path / "phikon-v2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["Dinov2Model"], **config.kwargs}))
    save_file(_published("phikon-v2", reference), str(folder / "model.safetensors"))
    loaded = create_encoder(config.name, weights=folder, device="cpu")
    with torch.no_grad():
        assert torch.equal(loaded(_tiles()), reference(_tiles()))


def test_conch_pooler_matches_reference_attention():
    """AttentionalPooler == the published CONCH einsum formulation (scale, max-subtracted softmax)."""
    config = _tiny_config("conch-v1.5")
    torch.manual_seed(0)
    pool = _builder("conch-v1.5")(config).attn_pool_contrast.eval()
    x = torch.randn(3, 17, 64)
    with torch.no_grad():
        q = pool.ln_q(pool.query).expand(3, -1, -1)
        k, v = pool.to_kv(pool.ln_k(x)).chunk(2, dim=-1)
        q = pool.to_q(q)
        h = pool.heads

        def split(t):
            return t.reshape(t.shape[0], t.shape[1], h, -1).permute(0, 2, 1, 3)

        q, k, v = split(q), split(k), split(v)
        sim = torch.einsum("bhid,bhjd->bhij", q * q.shape[-1] ** -0.5, k)
        attn = (sim - sim.amax(dim=-1, keepdim=True)).softmax(dim=-1)
        ref = pool.to_out(torch.einsum("bhij,bhjd->bhid", attn, v).permute(0, 2, 1, 3).reshape(3, 1, -1))
        torch.testing.assert_close(pool(x), ref)


# --- wrong or missing weights ------------------------------------------------------------------------------


@pytest.mark.parametrize("tiny", PRESETS, indirect=True)
def test_shape_mismatch_is_a_weights_error_naming_the_model(tiny, tmp_path):
    preset, tiny_name = tiny
    torch.manual_seed(0)
    published = _published(preset, create_encoder(tiny_name, pretrained=False, device="cpu"))
    key = next(k for k, v in published.items() if v.ndim == 2 and v.is_floating_point())
    published[key] = torch.zeros(published[key].shape[0] + 1, published[key].shape[1])
    save_file(published, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match="shape mismatch") as err:
        create_encoder(tiny_name, weights=tmp_path / "bad.safetensors", device="cpu")
    assert tiny_name in str(err.value) and key in str(err.value)


@pytest.mark.parametrize(
    ("preset", "other"),
    [("conch-v1.5", "phikon-v2"), ("phikon-v2", "plip"), ("plip", "quiltnet"), ("quiltnet", "conch-v1.5")],
)
def test_another_models_file_is_refused(preset, other, monkeypatch, tmp_path):
    for name in (preset, other):
        config = _tiny_config(name)
        monkeypatch.setitem(_registry._REGISTRY, config.name, (config, _builder(name)))
    torch.manual_seed(0)
    foreign = _published(other, create_encoder(f"test-tiny-{other}", pretrained=False, device="cpu"))
    save_file(foreign, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="do not fit") as err:
        create_encoder(f"test-tiny-{preset}", weights=tmp_path / "other.safetensors", device="cpu")
    assert f"test-tiny-{preset}" in str(err.value)


@pytest.mark.parametrize("name", PRESETS)
def test_offline_hub_is_a_weights_error_with_licence_and_weights_flag(name, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("offline: the hub is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    # the real preset config (name, hub id, licence) with tiny sizes, so no full-size model is built
    config = _tiny_config(name, as_name=name)
    monkeypatch.setitem(_registry._REGISTRY, name, (config, _builder(name)))
    with pytest.raises(WeightsError) as err:
        create_encoder(name, device="cpu")
    message = str(err.value)
    assert repr(name) in message and config.hub_id in message
    assert config.license in message and config.license_url in message
    assert "--weights PATH" in message
    if config.gated:
        assert "accept the terms" in message


@pytest.mark.parametrize("name", PRESETS)
def test_missing_local_weights_file_names_model_and_licence(name, monkeypatch, tmp_path):
    config = _tiny_config(name, as_name=name)
    monkeypatch.setitem(_registry._REGISTRY, name, (config, _builder(name)))
    with pytest.raises(WeightsError) as err:
        create_encoder(name, weights=tmp_path / "nope.bin", device="cpu")
    message = str(err.value)
    assert repr(name) in message and config.license_url in message and "--weights PATH" in message
