"""timm encoder presets: full-size published layouts (meta device), tiny round-trips, pooling, errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from slidescope.errors import InvalidParameterError
from slidescope.features.encoders import WeightsError, _registry, create_encoder, list_encoders
from slidescope.features.encoders import timm_models as tm

LAYOUTS = Path(__file__).parent / "layouts"
PRESET_NAMES = [c.name for c in tm.PRESETS]
TILES = torch.randint(0, 255, (2, 256, 256, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _timm_family_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # the registry holds the timm presets only (the other families test themselves), so a half-written
    # sibling never hides a timm failure.
    monkeypatch.setattr(_registry, "_REGISTRY", {c.name: (c, tm.build_preset) for c in tm.PRESETS})
    monkeypatch.setattr(_registry, "_ensure_loaded", lambda: None)


def _register_tiny(monkeypatch: pytest.MonkeyPatch, preset: str, *, as_name: str | None = None):
    config, builder = tm.tiny_config(preset)
    if as_name is not None:
        config = replace(config, name=as_name)
    monkeypatch.setitem(_registry._REGISTRY, config.name, (config, builder))
    torch.manual_seed(0)
    return config, builder(config).eval()


def _embed(encoder: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return encoder(TILES)


# ---------------------------------------------------------------------------------- full size, meta


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_full_size_layout_matches_published(name: str) -> None:
    layout = json.loads((LAYOUTS / f"{name}.json").read_text())
    config, builder = _registry._REGISTRY[name]
    with torch.device("meta"):
        encoder = builder(config)
    module = encoder.checkpoint_module()
    state = module.state_dict()
    shapes = {k: list(v.shape) for k, v in state.items()}
    assert layout["source"]
    assert len(state) == layout["n_tensors"]
    missing = sorted(set(layout["shapes"]) - set(shapes))
    extra = sorted(set(shapes) - set(layout["shapes"]))
    assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
    wrong = {k: (shapes[k], s) for k, s in layout["shapes"].items() if shapes[k] != s}
    assert not wrong
    n_params = sum(p.numel() for p in module.parameters())
    assert n_params == layout["n_params"]
    if layout["published_params"] is not None:
        assert n_params == pytest.approx(layout["published_params"], rel=layout["published_params_rel_tol"])
    assert layout["kwargs"] == json.loads(json.dumps(config.to_dict()["kwargs"]))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_full_size_embed_dim_and_tokens(name: str) -> None:
    config, builder = _registry._REGISTRY[name]
    with torch.device("meta"):
        encoder = builder(config)
        model = encoder.model
        if config.architecture == "timm:resnet50":
            assert model.feature_info.channels()[-1] == config.embed_dim
            return
        tokens = encoder.tokens(torch.empty(1, 3, config.input_size, config.input_size))
    patch = model.patch_embed.patch_size[0]
    assert tokens.shape == (
        1,
        1 + config.num_register_tokens + (config.input_size // patch) ** 2,
        model.embed_dim,
    )
    width = 2 * model.embed_dim if config.pooling == "cls+mean" else model.embed_dim
    assert config.embed_dim == width


def test_resnet50_trunc_keeps_published_prefix() -> None:
    """The published timm/resnet50.tv_in1k file is the full timm resnet50: layer4 and fc are dropped, only."""
    config, builder = _registry._REGISTRY["resnet50-trunc"]
    with torch.device("meta"):
        published = timm.create_model("resnet50", pretrained=False).state_dict()
        encoder = builder(config)
    converted = encoder.convert_state_dict(published)
    own = encoder.checkpoint_module().state_dict()
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k].shape for k in own)
    dropped = sorted({k.split(".")[0] for k in set(published) - set(converted)})
    assert dropped == ["fc", "layer4"]
    layout = json.loads((LAYOUTS / "resnet50-trunc.json").read_text())
    assert sorted(layout["published_dropped_prefixes"]) == ["fc.", "layer4."]
    assert {k.split(".")[0] for k in own} == {"conv1", "bn1", "layer1", "layer2", "layer3"}


# ---------------------------------------------------------------------- tiny variants, real loading


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_tiny_safetensors_round_trip(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, source = _register_tiny(monkeypatch, name)
    expected = _embed(source)
    assert expected.shape == (2, config.embed_dim) and expected.dtype == torch.float32
    assert torch.isfinite(expected).all()
    state = {k: v.contiguous() for k, v in source.checkpoint_module().state_dict().items()}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    loaded = create_encoder(config.name, weights=path, device="cpu")
    assert loaded.weights_digest.startswith("sha256:")
    assert torch.equal(_embed(loaded), expected)
    # a folder holding the published file name works too
    folder = tmp_path / "snapshot"
    folder.mkdir()
    published = folder / config.weights_file
    if published.suffix == ".safetensors":
        save_file(state, str(published))
    else:
        torch.save(state, published)
    assert torch.equal(_embed(create_encoder(config.name, weights=folder, device="cpu")), expected)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_tiny_bin_round_trip_weights_only(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, source = _register_tiny(monkeypatch, name)
    path = tmp_path / "pytorch_model.bin"
    torch.save(source.checkpoint_module().state_dict(), path)
    loaded = create_encoder(config.name, weights=path, device="cpu")
    assert torch.equal(_embed(loaded), _embed(source))


def test_resnet50_trunc_loads_full_published_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file shaped like the published one (layer4 + fc; no num_batches_tracked, like old torchvision)."""
    config, source = _register_tiny(monkeypatch, "resnet50-trunc")
    state = {
        k: v
        for k, v in source.checkpoint_module().state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    state["layer4.0.conv1.weight"] = torch.randn(512, 1024, 1, 1)
    state["fc.weight"] = torch.randn(1000, 2048)
    state["fc.bias"] = torch.randn(1000)
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    loaded = create_encoder(config.name, weights=path, device="cpu")
    assert torch.equal(_embed(loaded), _embed(source))


# ------------------------------------------------------------------------------------------ pooling


def test_cls_mean_pooling_skips_registers() -> None:
    config, builder = tm.tiny_config("virchow2")
    torch.manual_seed(0)
    encoder = builder(config).eval()
    x = encoder.preprocess(TILES)
    with torch.no_grad():
        tokens = encoder.model.forward_features(x)
        out = encoder.model(x)  # global_pool="": the published usage, TRIDENT's Virchow2 forward
        got = encoder.embed(x)
    assert tokens.shape[1] == 1 + 4 + (224 // 14) ** 2
    manual = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)
    assert torch.equal(got, manual)
    assert torch.equal(got, torch.cat([out[:, 0], out[:, 5:].mean(1)], dim=-1))
    # registers really are skipped: the result differs from averaging them in
    assert not torch.allclose(got[:, 32:], tokens[:, 1:].mean(1))


def test_cls_mean_pooling_virchow_v1_uses_all_patch_tokens() -> None:
    config, builder = tm.tiny_config("virchow")
    encoder = builder(config).eval()
    x = encoder.preprocess(TILES)
    with torch.no_grad():
        out = encoder.model(x)
        got = encoder.embed(x)
    assert torch.equal(got, torch.cat([out[:, 0], out[:, 1:].mean(1)], dim=-1))


@pytest.mark.parametrize("name", [c.name for c in tm.PRESETS if c.pooling == "cls"])
def test_cls_pooling_is_the_final_norm_class_token(name: str) -> None:
    config, builder = tm.tiny_config(name)
    encoder = builder(config).eval()
    x = encoder.preprocess(TILES)
    with torch.no_grad():
        got = encoder.embed(x)
        assert torch.equal(got, encoder.model.forward_features(x)[:, 0])
        assert torch.allclose(got, encoder.model(x))  # timm's own token pooling with num_classes=0


def test_register_count_mismatch_is_refused() -> None:
    config, builder = tm.tiny_config("virchow2")
    with pytest.raises(InvalidParameterError, match="register tokens"):
        builder(replace(config, num_register_tokens=0))


def test_gigapath_preprocess_resizes_256_then_crops_224() -> None:
    config, builder = tm.tiny_config("gigapath")
    encoder = builder(config)
    assert (config.tile_size, config.resize_size, config.input_size, config.interpolation) == (
        256,
        256,
        224,
        "bicubic",
    )
    x = encoder.preprocess(TILES)
    assert x.shape == (2, 3, 224, 224)
    centre = TILES[:, 16:240, 16:240].permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(x * encoder._std + encoder._mean, centre, atol=1e-5)


# ------------------------------------------------------------------------------------------- errors


def test_wrong_shape_raises_weights_error_naming_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, source = _register_tiny(monkeypatch, "uni2-h")
    state = dict(source.checkpoint_module().state_dict())
    state["reg_token"] = torch.zeros(1, 4, 32)  # 4 registers instead of 8
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"tiny-uni2-h.*reg_token"):
        create_encoder(config.name, weights=path, device="cpu")


def test_another_models_file_raises_weights_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = _register_tiny(monkeypatch, "uni")
    _, other = _register_tiny(monkeypatch, "virchow2")
    path = tmp_path / "model.safetensors"
    save_file(other.checkpoint_module().state_dict(), str(path))
    with pytest.raises(WeightsError, match="'tiny-uni'"):
        create_encoder(config.name, weights=path, device="cpu")


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_offline_raises_weights_error_with_licence_and_weights_hint(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def offline(*args: object, **kwargs: object) -> str:
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    config, _ = _register_tiny(monkeypatch, name, as_name=name)  # the real name and terms, a tiny body
    with pytest.raises(WeightsError) as info:
        create_encoder(name, device="cpu")
    message = str(info.value)
    assert repr(name) in message and config.license_url in message and "--weights PATH" in message


# -------------------------------------------------------------------------------------- timm:<name>


def test_timm_entry_reads_pretrained_cfg_without_download() -> None:
    config, _ = tm.timm_entry("resnet50.a1_in1k")
    cfg = timm.models.get_pretrained_cfg("resnet50.a1_in1k").to_dict()
    assert config.name == "timm:resnet50.a1_in1k"
    assert config.embed_dim == 2048 and config.pooling == "pooler"
    assert config.hub_id == cfg["hf_hub_id"] == "timm/resnet50.a1_in1k"
    assert config.mean == tuple(cfg["mean"]) and config.std == tuple(cfg["std"])
    assert config.input_size == cfg["input_size"][-1] and config.interpolation == cfg["interpolation"]
    assert config.resize_size == int(cfg["input_size"][-1] / cfg["crop_pct"])


def test_timm_name_round_trip_drops_classifier(tmp_path: Path) -> None:
    name = "timm:test_vit.r160_in1k"
    config = _registry.get_encoder_config(name)
    assert (config.embed_dim, config.input_size, config.hub_id) == (64, 160, "timm/test_vit.r160_in1k")
    torch.manual_seed(0)
    published = timm.create_model("test_vit.r160_in1k", pretrained=False)  # as on the hub: with its head
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in published.state_dict().items()}, str(path))
    encoder = create_encoder(name, weights=path, device="cpu")
    embedding = _embed(encoder)
    assert embedding.shape == (2, 64) and torch.isfinite(embedding).all()
    with torch.no_grad():
        expected = published.forward_head(
            published.forward_features(encoder.preprocess(TILES)), pre_logits=True
        )
    assert torch.allclose(embedding, expected, atol=1e-6)


def test_unknown_timm_name_is_refused() -> None:
    with pytest.raises(InvalidParameterError, match="timm.list_models"):
        _registry.get_encoder_config("timm:not_a_model_xyz")


# -------------------------------------------------------------------------------- registry contract


def _timm_registered() -> list[object]:
    try:
        names = list_encoders(weight_free=False)
    except ImportError as err:  # a sibling family module is missing: fail this one test, not the file
        return [pytest.param(f"<registry import failed: {err}>", id="registry-import")]
    timm_builders = {id(tm.TimmEncoder), id(tm.build_preset)}

    def builder(name: str) -> object:  # the built-ins' lazy builders are loaded (a plugin's is a function)
        b = _registry._REGISTRY[name][1]
        b = b.ref.load() if isinstance(b, _registry.LazyBuilder) else b
        return getattr(b, "func", b)

    # the ViT zoo's timm presets (issue 13) have their contract and layouts checked in test_zoo_vit.py and
    # test_layouts_trident.py (TRIDENT golden), not in tests/features/layouts/
    from slidescope.features.encoders._zoo_vit import ZOO_VIT

    zoo = {c.name for c, _ in ZOO_VIT}
    return [n for n in names if id(builder(n)) in timm_builders and n not in zoo]


@pytest.mark.parametrize("name", _timm_registered())
def test_registry_contract(name: str) -> None:
    assert name in _registry._REGISTRY, name
    config, _ = _registry._REGISTRY[name]
    assert config.name == name and config.architecture.startswith("timm:")
    assert config.embed_dim > 0 and config.input_size > 0
    assert config.resize_size is None or config.resize_size >= config.input_size
    assert len(config.mean) == 3 and len(config.std) == 3 and all(s > 0 for s in config.std)
    assert config.tile_size > 0 and config.mpp > 0
    assert config.license and config.license != "unknown" and config.license_url
    assert config.hub_id and config.weights_file and not config.weight_free
    assert config.pooling in ("cls", "cls+mean", "mean")
    json.dumps(config.to_dict())  # provenance is JSON-ready even with classes in kwargs
    assert (LAYOUTS / f"{name}.json").is_file()
