"""Prov-GigaPath's slide encoder against its publisher's code (tests/golden/make_gigapath_slide.py).

The golden file holds the keys and shapes of the full-size LongNetViT that TRIDENT builds with Prov-GigaPath's
``create_model``, the LongNet arguments it was built with, and the layer outputs of TRIDENT's forward for a tiny
model of the same architecture (3 layers, 48-d, 6 heads: head groups padded for ratios 4 and 16) with seeded
weights, on 2500 tiles with the published segment lengths and on 700 tiles with short segment lengths (several
segments in every branch). The reference ran on the CPU with one piece replaced: flash-attn's kernel, by exact
softmax attention returning flash-attn's log-sum-exp (the script's ``exact_attention``); the segmenting,
dilation, padding, branch merging, positions and pooling are the reference's. Here the same weights, written
as a ``slide_encoder.pth`` like the published one (``{"model": state_dict}`` with a ``pos_embed`` table), go
through ``create_slide_encoder(weights=...)``; the outputs must match to 1e-5 (2.4e-7 seen) (float32 here; float64 attention
in the reference run).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from slidescope.errors import InvalidParameterError
from slidescope.features.slide_encoders._gigapath import GigaPathSlideEncoder, build
from slidescope.features.slide_encoders import (
    SlideEncoderConfig,
    create_slide_encoder,
    get_slide_encoder_config,
    list_slide_encoders,
)

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "gigapath_slide.json").read_text())
TINY = GOLDEN["tiny"]
ATOL = 1e-5


def fill(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """The golden script's fill(): a normal draw seeded by crc32(key), scaled by 1/sqrt(fan-in), LayerNorm
    gains 1 + 0.1 x the draw."""
    out = {}
    for key, shape in shapes.items():
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        scale = 1.0 / np.sqrt(shape[-1]) if len(shape) >= 2 else 0.1
        centre = 1.0 if len(shape) == 1 and key.endswith(".weight") else 0.0  # LayerNorm gains near 1
        out[key] = torch.from_numpy((centre + rng.standard_normal(tuple(shape)) * scale).astype(np.float32))
    return out


def inputs(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The golden script's inputs(): distinct cells of a 120 x 90 grid of 512 px, random order and offsets."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(120 * 90, size=n, replace=False)
    grid = np.stack([cells % 120, cells // 120], 1)
    coords = grid * 512 + rng.integers(0, 512, size=(n, 2))
    return rng.standard_normal((n, dim)).astype(np.float32), coords.astype(np.int64)


def tiny_config(
    segments: list[int], layer: int, ratios: tuple[int, ...] = (1, 2, 4, 8, 16)
) -> SlideEncoderConfig:
    c = TINY["config"]
    full = get_slide_encoder_config("gigapath-slide")
    return SlideEncoderConfig(
        name="gigapath-tiny",
        family="gigapath",
        embed_dim=c["embed_dim"],
        patch_dim=c["in_chans"],
        needs_coords=True,
        weights_file=full.weights_file,
        kwargs=(
            ("dim", c["embed_dim"]),
            ("depth", c["depth"]),
            ("heads", c["heads"]),
            ("ffn", c["ffn"]),
            ("segment_length", tuple(segments)),
            ("dilated_ratio", ratios),
            ("layer", layer),
        ),
    )


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Build the tiny model from ``slide_encoder.pth`` through the registry's real loading path."""
    from slidescope.features.slide_encoders import _registry

    list_slide_encoders()  # built-ins registered first
    state = fill(TINY["shapes"])
    state["pos_embed"] = torch.zeros(1, 5, TINY["config"]["embed_dim"])  # the reference's buffer, if saved
    torch.save({"model": state, "epoch": 1}, tmp_path / "slide_encoder.pth")

    def make(cfg: SlideEncoderConfig):
        monkeypatch.setitem(_registry._REGISTRY, cfg.name, (cfg, build))
        return create_slide_encoder(cfg.name, weights=tmp_path)

    return make


def test_golden_provenance() -> None:
    prov = GOLDEN["provenance"]
    assert prov["prov-gigapath"]["commit"] == "09d8e876afb98a1dda01cc531b1087c58fffc9f7"
    assert prov["TRIDENT"]["commit"] == "a91fa8490e0210ebbbe58452c3babe009e0ab7ca"


def test_full_size_layout_and_arguments_are_the_publishers() -> None:
    ref = GOLDEN["full"]
    model = create_slide_encoder("gigapath-slide", pretrained=False)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == ref["shapes"]
    cfg = get_slide_encoder_config("gigapath-slide")
    assert cfg.n_params == ref["n_params"] == sum(p.numel() for p in model.parameters())
    o = cfg.options
    assert (
        list(o["segment_length"]) == ref["segment_length"]
        and list(o["dilated_ratio"]) == ref["dilated_ratio"]
    )
    assert (o["heads"], o["ffn"], o["grid"]) == (ref["heads"], ref["ffn"], ref["slide_ngrids_default"])
    assert isinstance(model, GigaPathSlideEncoder)
    layer: Any = model.encoder.layers[0]
    assert layer.self_attn_layer_norm.eps == ref["layernorm_eps"] and model.norm.eps == ref["norm_eps"]
    assert ref["subln"] and layer.self_attn.inner_attn_ln is not None
    assert (cfg.patch_encoders, cfg.patch_dim, cfg.geometry()) == (("gigapath",), 1536, "256 px at 0.5 µm/px")


@pytest.mark.parametrize("case", sorted(TINY["cases"]))
@pytest.mark.parametrize("layer", [1, 2, 3])
def test_outputs_equal_the_references(case: str, layer: int, tiny) -> None:
    spec = TINY["cases"][case]
    feats, coords = inputs(spec["n_tiles"], TINY["config"]["in_chans"], spec["seed"])
    assert float(feats.astype(np.float64).sum()) == pytest.approx(spec["features_sum"], rel=1e-12)
    assert int(coords.sum()) == spec["coords_sum"]
    model = tiny(tiny_config(spec["segment_length"], layer))
    z = model.embed(feats, coords, TINY["patch_size_level0"])
    ref = torch.tensor(spec["layers"][layer])
    torch.testing.assert_close(z, ref, rtol=0, atol=ATOL)
    other = torch.tensor(spec["layers"][layer - 1])
    assert (z - other).abs().max() > 100 * ATOL  # the layers differ well above the tolerance


@pytest.mark.parametrize(
    ("case", "segments", "ratios"),
    [
        ("published_segments", None, (1, 2, 4, 8, 8)),  # a wrong dilation
        ("short_segments", [64, 100, 256, 304, 1024], (1, 2, 4, 8, 16)),  # a segment of another length
        ("short_segments", None, (1, 2, 4, 16, 8)),  # ratios swapped
    ],
)
def test_a_deliberate_break_fails(
    case: str, segments: list[int] | None, ratios: tuple[int, ...], tiny
) -> None:
    spec = TINY["cases"][case]
    feats, coords = inputs(spec["n_tiles"], TINY["config"]["in_chans"], spec["seed"])
    model = tiny(tiny_config(segments or spec["segment_length"], 3, ratios))
    z = model.embed(feats, coords, TINY["patch_size_level0"])
    assert (z - torch.tensor(spec["layers"][3])).abs().max() > 10 * ATOL


def test_tile_order_counts_and_the_grid_is_refused_beyond_its_side(tiny) -> None:
    spec = TINY["cases"]["short_segments"]
    feats, coords = inputs(spec["n_tiles"], TINY["config"]["in_chans"], spec["seed"])
    model = tiny(tiny_config(spec["segment_length"], 3))
    perm = np.random.default_rng(0).permutation(len(feats))
    shuffled = model.embed(feats[perm], coords[perm], 512)
    assert (shuffled - torch.tensor(spec["layers"][3])).abs().max() > 10 * ATOL  # segments follow the order
    for bad in ([1000 * 512, 0], [0, 1000 * 512 + 3], [-1, 0]):
        c = coords.copy()
        c[5] = bad
        with pytest.raises(InvalidParameterError, match="1000 x 1000 grid"):
            model.embed(feats, c, 512)
