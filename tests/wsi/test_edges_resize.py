"""Tile edges and resizing: area averaging checked against OpenCV and brute-force integration; the edge
policy (drop / pad), its padding, its record in the store; tiling parity with TRIDENT on a real slide.

PIL's ``BOX`` filter, used before, is *not* area averaging at non-integer ratios: it gives every input pixel
whose centre lies in an output pixel's footprint the same weight, so at 257 -> 256 most output pixels are a
single input pixel. Measured against OpenCV ``INTER_AREA`` on the golden tiles at 257 -> 256: 130 grey levels
off on noise and 148 on the structured tile, against 1 (rounding) at the integer ratio 448 -> 224; on CMU-1's
tissue tiles up to 127 (6 on average). :func:`test_area_resize_matches_opencv` asserts the golden part.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_grid import mask_of

from slidescope.errors import InvalidParameterError
from slidescope.features.store import SlideStore, open_store
from slidescope.wsi import detect_tissue, make_tile_grid, open_slide
from slidescope.wsi._resize import area_weights, block_mean, resize_tile
from slidescope.wsi._stream import iter_tiles, read_tile

GOLDEN = Path(__file__).parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
from make_area_resize import structured  # noqa: E402 - integer-exact inputs, rebuilt rather than stored


def golden_cases():
    data = np.load(GOLDEN / "area_resize.npz")
    for n, m in data["pairs"]:
        for kind in ("structured", "noise_rows", "noise_cols"):
            tile = structured(int(n)) if kind == "structured" else data[f"in_{kind}_{n}_{m}"]
            yield f"{kind}_{n}_{m}", tile, data[f"out_{kind}_{n}_{m}"]


def test_area_resize_matches_opencv() -> None:
    """Ours vs OpenCV INTER_AREA (tests/golden/make_area_resize.py): at most 1 grey level (rounding) on
    every golden tile; PIL BOX on the same tiles is far off at non-integer ratios."""
    box_error = {}
    for name, tile, expected in golden_cases():
        ours = resize_tile(tile, expected.shape[1], expected.shape[0])
        assert ours.shape == expected.shape and ours.dtype == np.uint8
        diff = np.abs(ours.astype(int) - expected.astype(int))
        assert diff.max() <= 1, f"{name}: {diff.max()} grey levels from OpenCV INTER_AREA"
        assert diff.mean() < 0.05, name  # ties in the rounding only
        if name == "structured_448_224":  # the integer ratio: PIL reduce, the same block mean exactly
            assert diff.max() == 0
        box = Image.fromarray(tile).resize((expected.shape[1], expected.shape[0]), Image.Resampling.BOX)
        box_error[name] = int(np.abs(np.asarray(box).astype(int) - expected.astype(int)).max())
    assert box_error["structured_448_224"] <= 1  # an integer ratio: BOX is a block mean too
    for name in ("noise_rows_257_256", "noise_cols_513_256", "structured_257_256", "structured_483_224"):
        assert box_error[name] >= 20, (name, box_error[name])  # what the old resize did


def exact_area_mean(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Brute force, float64: each output pixel's footprint intersected with every input pixel in 2-D."""
    h, w = img.shape
    sy, sx = h / out_h, w / out_w
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            y0, y1, x0, x1 = i * sy, (i + 1) * sy, j * sx, (j + 1) * sx
            total = 0.0
            for r in range(h):
                for c in range(w):
                    area = max(0.0, min(y1, r + 1) - max(y0, r)) * max(0.0, min(x1, c + 1) - max(x0, c))
                    total += area * img[r, c]
            out[i, j] = total / (sy * sx)
    return out


@pytest.mark.parametrize(
    ("shape", "out"), [((7, 11), (3, 4)), ((9, 5), (4, 5)), ((8, 8), (4, 4)), ((13, 6), (5, 2))]
)
def test_area_resize_is_exact_area_integration(shape, out) -> None:
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    exact = exact_area_mean(img.astype(np.float64), *out)
    ours = resize_tile(img, out[1], out[0])
    assert ours.shape == out
    assert np.abs(ours - exact).max() <= 0.5 + 1e-4  # the nearest integer to the exact mean
    w = area_weights(shape[0], out[0])
    assert np.allclose(w.sum(axis=1), 1.0) and np.allclose(w.sum(axis=0), out[0] / shape[0])


def test_enlarging_stays_bilinear() -> None:
    tile = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(tile).resize((224, 224), Image.Resampling.BILINEAR))
    assert np.array_equal(resize_tile(tile, 224), expected)
    assert resize_tile(tile, 200) is tile


# -- the edge policy ----------------------------------------------------------------------------------------


def test_pad_adds_the_edge_strips(pyramid) -> None:
    slide = open_slide(pyramid(1000, 700, mpp=0.5, levels=2))
    tissue = mask_of(slide)
    drop = make_tile_grid(slide, tile_size=224, mpp=0.5, mask=tissue, min_tissue=0)
    pad = make_tile_grid(slide, tile_size=224, mpp=0.5, mask=tissue, min_tissue=0, edge="pad")
    assert sorted(set(drop.coords[:, 0])) == [0, 224, 448, 672] and sorted(set(drop.coords[:, 1])) == [
        0,
        224,
        448,
    ]
    assert sorted(set(pad.coords[:, 0])) == [0, 224, 448, 672, 896] and sorted(set(pad.coords[:, 1])) == [
        0,
        224,
        448,
        672,
    ]
    assert len(pad) == 5 * 4 and pad.edge == "pad" and drop.edge == "drop"
    assert not drop.pad_fraction.any() and drop.pad_fraction.shape == (len(drop),)
    inside_w = np.minimum(1000 - pad.coords[:, 0], 224)
    inside_h = np.minimum(700 - pad.coords[:, 1], 224)
    np.testing.assert_allclose(pad.pad_fraction, 1 - inside_w * inside_h / 224**2, atol=1e-6)
    # the tissue fraction is over the whole tile: a slide full of tissue gives 1 - pad_fraction
    np.testing.assert_allclose(pad.tissue_fraction, 1 - pad.pad_fraction, atol=0.02)
    # drop's tiles are pad's inner tiles, with the same tissue fractions
    inner = pad.pad_fraction == 0
    assert np.array_equal(pad.coords[inner], drop.coords)
    assert np.array_equal(pad.tissue_fraction[inner], drop.tissue_fraction)
    # min_tissue applies to the whole tile: the corner tile (104 x 28 of 224 x 224 inside) is dropped at 0.25
    kept = make_tile_grid(slide, tile_size=224, mpp=0.5, mask=tissue, min_tissue=0.25, edge="pad")
    assert [896, 672] not in kept.coords.tolist() and [896, 0] in kept.coords.tolist()
    assert kept.to_dict()["edge"] == "pad" and "edge" not in drop.to_dict()
    with pytest.raises(InvalidParameterError, match="edge must be one of"):
        make_tile_grid(slide, tile_size=224, mpp=0.5, mask=tissue, edge="wrap")


def test_pad_reads_white_outside_the_slide(pyramid) -> None:
    slide = open_slide(pyramid(1000, 700, mpp=0.25, levels=3))
    grid = make_tile_grid(slide, tile_size=224, mpp=0.5, mask=mask_of(slide), min_tissue=0, edge="pad")
    assert grid.extent == (448, 448) and grid.level == 1
    corner = int(np.flatnonzero((grid.coords[:, 0] == 896) & (grid.coords[:, 1] == 448))[0])
    tile = read_tile(slide, grid, corner)
    # inside: 104 x 252 level-0 px = 52 x 126 tile px; the rest white
    assert (tile[:, 53:] == 255).all() and (tile[127:] == 255).all()
    assert (tile[:125, :51] != 255).any(axis=-1).mean() > 0.9
    tiles = dict(iter_tiles(slide, grid))
    assert np.array_equal(tiles[corner], tile)
    assert all(np.array_equal(tiles[i], t) for i, t in iter_tiles(slide, grid, direct=False))


def test_slide_smaller_than_a_tile(pyramid) -> None:
    slide = open_slide(pyramid(300, 200, mpp=0.5, levels=1))
    with pytest.raises(InvalidParameterError, match="edge='pad'"):
        make_tile_grid(slide, tile_size=512, mpp=0.5, mask=mask_of(slide), min_tissue=0)
    grid = make_tile_grid(slide, tile_size=512, mpp=0.5, mask=mask_of(slide), min_tissue=0, edge="pad")
    assert grid.coords.tolist() == [[0, 0]]
    assert grid.pad_fraction[0] == pytest.approx(1 - 300 * 200 / 512**2)


def test_store_records_pad_fraction(pyramid, tmp_path) -> None:
    slide = open_slide(pyramid(1000, 700, mpp=0.5, levels=1))
    where = tmp_path / "s.zarr"
    attrs = {"fingerprint": "f", "reader": "test", "mpp": [0.5, 0.5]}

    def store_of(grid, **pad):
        return SlideStore.create_or_open(
            where, slide_attrs=attrs, tiling=grid.to_dict(), coords=grid.coords,
            tissue_fraction=grid.tissue_fraction, **pad,
        )  # fmt: skip

    grids = {
        edge: make_tile_grid(slide, tile_size=224, mpp=0.5, mask=mask_of(slide), min_tissue=0, edge=edge)
        for edge in ("drop", "pad")
    }
    stores = {edge: store_of(grid, pad_fraction=grid.pad_fraction) for edge, grid in grids.items()}
    assert stores["drop"].tiling_key != stores["pad"].tiling_key  # a drop tiling is never reused for pad
    assert len(stores["pad"].tilings()) == 2
    np.testing.assert_array_equal(stores["pad"].pad_fraction, grids["pad"].pad_fraction)
    assert stores["pad"].pad_fraction.any() and stores["pad"].attrs["tiling"]["edge"] == "pad"
    assert not stores["drop"].pad_fraction.any()
    # a tiling written before the edge policy has no pad_fraction array: it is reused as it is, reads as zeros
    old = where / "tilings" / stores["drop"].tiling_key
    shutil.rmtree(old / "pad_fraction")
    created = json.loads((old / "zarr.json").read_text())["attributes"]["created"]
    again = store_of(grids["drop"])
    assert again.tiling_key == stores["drop"].tiling_key and not (old / "pad_fraction").exists()
    assert json.loads((old / "zarr.json").read_text())["attributes"]["created"] == created  # not rebuilt
    assert not again.pad_fraction.any() and again.pad_fraction.shape == (len(grids["drop"]),)
    reopened = open_store(where, tiling=stores["drop"].tiling_key)  # validated on open, array absent
    assert reopened.pad_fraction.tolist() == [0.0] * len(grids["drop"])


# -- parity with TRIDENT on a real slide ---------------------------------------------------------------------


def trident_grid(width: int, height: int, patch_size: int, dst_mpp: float, src_mpp: float) -> np.ndarray:
    """TRIDENT's tile positions, re-derived here (mahmoodlab/TRIDENT@a91fa8490e0210ebbbe58452c3babe009e0ab7ca,
    ``trident/wsi_objects/WSIPatcher.py``: ``__init__``, ``_compute_cols_rows``, ``_colrow_to_xy``), overlap 0:
    ``patch_size_src = round(patch_size * dst_mpp / src_mpp)`` level-0 px; columns ``col = 0, 1, ...`` while
    ``col * patch_size_src < width`` (every start inside the slide, tiles crossing the edge included), rows
    likewise; ``(x, y) = (col, row) * patch_size_src``, row-major. Its tissue filter (polygon overlap >=
    threshold * tile area) is not reproduced: with ``min_tissue=0`` both keep every position."""
    size = round(patch_size * dst_mpp / src_mpp)
    cols = -(-width // size)
    rows = -(-height // size)
    return np.array([(c * size, r * size) for r in range(rows) for c in range(cols)], np.int64).reshape(-1, 2)


@pytest.mark.parametrize(("tile_size", "mpp"), [(224, 0.5), (256, 1.0), (224, 0.75)])
def test_tiling_parity_with_trident(cmu_small, tile_size, mpp) -> None:
    slide = open_slide(cmu_small)
    w0, h0 = slide.dimensions
    mask = detect_tissue(slide)
    reference = trident_grid(w0, h0, tile_size, mpp, slide.mpp[0])
    size = round(tile_size * mpp / slide.mpp[0])
    pad = make_tile_grid(slide, tile_size=tile_size, mpp=mpp, mask=mask, min_tissue=0, edge="pad")
    drop = make_tile_grid(slide, tile_size=tile_size, mpp=mpp, mask=mask, min_tissue=0)
    assert pad.extent == drop.extent == (size, size)
    assert np.array_equal(pad.coords, reference)  # same positions, same order
    inside = (reference[:, 0] + size <= w0) & (reference[:, 1] + size <= h0)
    assert np.array_equal(drop.coords, reference[inside])
    assert not inside.all()  # this slide has edge strips: the comparison is not vacuous


def lost_tissue(mask, grid) -> float:
    """Fraction of the tissue-mask pixels whose footprint on the slide meets no kept tile."""
    m = mask.mask
    dx, dy = mask.downsample
    covered = np.zeros(m.shape, bool)
    ex, ey = grid.extent
    for x, y in grid.coords:  # mask pixel j spans [j * dx, (j + 1) * dx): it meets [x, x + ex) when ...
        c0, c1 = int(np.floor(x / dx)), int(np.ceil((x + ex) / dx))
        r0, r1 = int(np.floor(y / dy)), int(np.ceil((y + ey) / dy))
        covered[max(r0, 0) : r1, max(c0, 0) : c1] = True
    return float((m & ~covered).sum() / m.sum())


@pytest.mark.parametrize("slide_name", ["cmu_small", "ome_detail"])
def test_pad_loses_no_tissue_at_the_edges(slide_name, request) -> None:
    """ "Tissue lost": mask pixels (at the mask's resolution) whose footprint meets no kept tile. With
    ``min_tissue`` small enough to keep every tile holding one tissue pixel (1e-6), pad loses none; drop loses
    the tissue of the edge strips."""
    slide = open_slide(request.getfixturevalue(slide_name))
    mask = detect_tissue(slide)
    pad = make_tile_grid(slide, tile_size=224, mpp=0.5, mask=mask, min_tissue=1e-6, edge="pad")
    drop = make_tile_grid(slide, tile_size=224, mpp=0.5, mask=mask, min_tissue=1e-6)
    assert lost_tissue(mask, pad) == 0.0
    assert lost_tissue(mask, drop) > 0.01


@pytest.mark.parametrize("channels", [0, 3, 4])
@pytest.mark.parametrize(("kx", "ky"), [(2, 2), (3, 3), (4, 4), (2, 4), (3, 2)])
def test_block_mean_is_the_rounded_block_mean(kx, ky, channels) -> None:
    """block_mean against integer arithmetic, (sum + n // 2) // n per block, and Pillow's reduce (RGBX: the
    padding byte dropped). 2 x 2 goes through OpenCV: exactly both. Other factors are Pillow's, which differs
    from the exact rounding by at most 1 grey level (its fixed-point division)."""
    rng = np.random.default_rng(kx * 10 + ky + channels)
    for trial in range(12):
        h, w = ky * int(rng.integers(1, 70)), kx * int(rng.integers(1, 70))
        shape = (h, w) if channels == 0 else (h, w, channels)
        tile = rng.integers(0, 256, shape, dtype=np.uint8)
        if trial % 2:  # few levels: many blocks whose sum is a tie
            tile = (tile // 64 * 64).astype(np.uint8)
        if channels == 4:
            tile[..., 3] = 255
        rgb = tile[..., :3] if channels == 4 else tile
        blocks = rgb.reshape(h // ky, ky, w // kx, kx, *rgb.shape[2:]).astype(np.int64).sum(axis=(1, 3))
        exact = (blocks + kx * ky // 2) // (kx * ky)
        pillow = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).reduce((kx, ky)))
        got = block_mean(tile, kx, ky, rgbx=channels == 4)
        assert got.dtype == np.uint8 and got.shape == exact.shape and got.flags.c_contiguous
        assert np.array_equal(got, pillow)
        if (kx, ky) == (2, 2):
            assert np.array_equal(got, exact)
        else:
            assert np.abs(got.astype(int) - exact).max() <= 1


@pytest.mark.parametrize(
    ("shape", "out"), [((443, 901, 3), (224, 455)), ((700, 313), (331, 150)), ((1000, 1000, 4), (256, 256))]
)
def test_area_resize_large_non_square(shape, out) -> None:
    """The banded products (split into small ones, spread over interleaved channels) against the dense
    float64 products of the area weights: the nearest integer to the exact mean, on tiles large enough for
    every split, non-square, grey and 4 channels."""
    rng = np.random.default_rng(len(shape) + shape[0])
    tile = rng.integers(0, 256, shape, dtype=np.uint8)
    wy, wx = area_weights(shape[0], out[0]), area_weights(shape[1], out[1])
    rows = np.tensordot(wy, tile.astype(np.float64), axes=(1, 0))  # (out h, w, ...)
    exact = np.moveaxis(np.tensordot(wx, rows, axes=(1, 1)), 0, 1)  # (out h, out w, ...)
    ours = resize_tile(tile, out[1], out[0])
    assert ours.shape == exact.shape and ours.dtype == np.uint8
    assert np.abs(ours - exact).max() <= 0.5 + 1e-3
