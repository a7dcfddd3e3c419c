"""Tile reading: the direct TIFF path, the block path and a plain read_region agree; the torch
dataset streams every tile exactly once with several workers."""

from __future__ import annotations

import numpy as np
import pytest
from test_grid import mask_of

from slidescope.wsi import TileDataset, iter_tiles, make_tile_grid, open_slide
from slidescope.wsi._stream import _resize, read_tile


def reference_tiles(slide, grid) -> dict[int, np.ndarray]:
    """The obvious implementation: one read_region per tile, then the same resize."""
    out = {}
    for i, (x, y) in enumerate(grid.coords):
        region = slide.read_region((int(x), int(y)), grid.level, grid.read_size)
        out[i] = _resize(region, grid.tile_size)
    return out


def assert_same(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for i in a:
        assert a[i].shape == b[i].shape
        assert np.array_equal(a[i], b[i]), f"tile {i} differs"


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_native_grid_on_real_svs(cmu_small, backend) -> None:
    slide = open_slide(cmu_small, backend=backend)
    grid = make_tile_grid(slide, tile_size=224, mpp=0.499, mask=mask_of(slide), min_tissue=0)
    assert slide.tile_source() is not None and slide.tile_source().has_level(0)
    direct = dict(iter_tiles(slide, grid))
    assert len(direct) == len(grid) == (2220 // 224) * (2967 // 224)
    assert_same(direct, dict(iter_tiles(slide, grid, direct=False)))
    assert_same(direct, reference_tiles(slide, grid))
    assert all(t.shape == (224, 224, 3) and t.dtype == np.uint8 for t in direct.values())


@pytest.mark.parametrize(("target", "tile_size"), [(0.5, 256), (0.4, 224), (1.3, 200), (0.25, 256)])
def test_resampled_grids_agree(pyramid, target, tile_size) -> None:
    slide = open_slide(pyramid(3000, 2000, mpp=0.25, levels=3))
    grid = make_tile_grid(slide, tile_size=tile_size, mpp=target, mask=mask_of(slide), min_tissue=0)
    direct = dict(iter_tiles(slide, grid))
    assert_same(direct, dict(iter_tiles(slide, grid, direct=False, block_size=700)))
    assert_same(direct, reference_tiles(slide, grid))
    last = len(grid) - 1
    assert np.array_equal(read_tile(slide, grid, last), direct[last])
    with pytest.raises(IndexError):
        read_tile(slide, grid, len(grid))


def test_resampled_tile_matches_physical_content(pyramid) -> None:
    """A 20x tile read from a 40x scan is the area average of the 448 level-0 px it covers."""
    slide = open_slide(pyramid(2048, 2048, mpp=0.25, levels=1))
    grid = make_tile_grid(slide, tile_size=224, mpp=0.5, mask=mask_of(slide), min_tissue=0)
    assert grid.level == 0 and grid.read_size == (448, 448)
    tile = read_tile(slide, grid, 5)
    x, y = grid.coords[5]
    full = slide.read_region((int(x), int(y)), 0, (448, 448)).astype(np.float64)
    box = full.reshape(224, 2, 224, 2, 3).mean(axis=(1, 3))
    assert np.abs(tile - box).max() <= 1.0


def test_indices_subset(cmu_small) -> None:
    slide = open_slide(cmu_small)
    grid = make_tile_grid(slide, tile_size=224, mpp=0.5, mask=mask_of(slide), min_tissue=0)
    got = dict(iter_tiles(slide, grid, indices=np.array([0, 7, 50])))
    assert sorted(got) == [0, 7, 50]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataset_streams_every_tile_once(cmu_small, num_workers) -> None:
    import torch

    slide = open_slide(cmu_small)
    grid = make_tile_grid(slide, tile_size=224, mpp=0.5, mask=mask_of(slide), min_tissue=0)
    ds = TileDataset(slide, grid, block_size=512)
    seen: list[int] = []
    reference = dict(iter_tiles(slide, grid))
    for batch in ds.loader(batch_size=16, num_workers=num_workers):
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (224, 224, 3)
        for idx, img in zip(batch["index"].tolist(), batch["image"], strict=True):
            assert np.array_equal(img.numpy(), reference[idx])
            seen.append(idx)
    assert sorted(seen) == list(range(len(grid)))
