"""make_tile_grid: physical geometry, rounding, tissue fractions, parameters that make no sense."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from slidescope.errors import EmptyTissueError, InvalidParameterError
from slidescope.wsi import make_tile_grid, open_slide


def mask_of(slide, fn=None, ds: int = 8):
    """A tissue-mask stand-in covering the slide; ``fn(yy, xx)`` (level-0 px) says where tissue is."""
    w0, h0 = slide.dimensions
    mw, mh = max(1, round(w0 / ds)), max(1, round(h0 / ds))
    yy, xx = np.mgrid[0:mh, 0:mw]
    m = np.ones((mh, mw), bool) if fn is None else fn(yy * (h0 / mh), xx * (w0 / mw))
    return SimpleNamespace(
        mask=m, downsample=(w0 / mw, h0 / mh), slide_dimensions=(w0, h0), is_empty=not m.any(), contours=()
    )


@pytest.mark.parametrize(
    ("slide_mpp", "tile_size", "target", "extent"),
    [
        (0.25, 224, 0.5, 448),  # 20x tiles from a 40x scan: 448 level-0 px
        (0.265, 256, 0.5, 483),  # not 512: the exact physical size, TRIDENT #119
        (0.499, 224, 0.5, 224),  # CMU-1: within rounding of native
        (0.2271, 512, 1.0, 2255),
        (0.5, 256, 0.5, 256),
    ],
)
def test_extent_is_physical(pyramid, slide_mpp, tile_size, target, extent) -> None:
    slide = open_slide(pyramid(4096, 3072, mpp=slide_mpp, levels=3))
    grid = make_tile_grid(slide, tile_size=tile_size, mpp=target, mask=mask_of(slide), min_tissue=0)
    assert grid.extent == (extent, extent)
    assert grid.effective_mpp[0] == pytest.approx(extent * slide_mpp / tile_size)
    # rounding to whole level-0 px changes the physical size by at most half a level-0 pixel
    assert abs(grid.effective_mpp[0] - target) * tile_size <= 0.5 * slide_mpp + 1e-9
    assert grid.coords.dtype == np.int64 and grid.coords.shape[1] == 2
    assert np.all(grid.coords[:, 0] + extent <= 4096) and np.all(grid.coords[:, 1] + extent <= 3072)
    # neighbouring tiles touch without gaps or overlap
    xs = np.unique(grid.coords[:, 0])
    assert np.all(np.diff(xs) == extent)
    assert len(grid) == (4096 // extent) * (3072 // extent)
    # read from the coarsest level at least as fine as the target; read_size covers the extent
    level_mpp = slide.level_mpp(grid.level)[0]
    assert level_mpp <= target * 1.01
    assert grid.read_size[0] == round(extent / grid.level_downsample[0])


def test_level_choice_40x_to_20x(pyramid) -> None:
    slide = open_slide(pyramid(2048, 2048, mpp=0.25, levels=3))
    grid = make_tile_grid(slide, tile_size=256, mpp=0.5, mask=mask_of(slide), min_tissue=0)
    assert grid.level == 1 and grid.read_size == (256, 256) and grid.resample == 1.0
    grid = make_tile_grid(slide, tile_size=224, mpp=0.4, mask=mask_of(slide), min_tissue=0)
    assert grid.level == 0 and grid.read_size == (358, 358)  # 224 * 0.4 / 0.25 = 358.4


def test_overlap_and_roi(pyramid) -> None:
    slide = open_slide(pyramid(2048, 2048, mpp=0.5, levels=1))
    grid = make_tile_grid(slide, tile_size=256, mpp=0.5, overlap=64, mask=mask_of(slide), min_tissue=0)
    assert grid.stride == (192, 192)
    assert np.all(np.diff(np.unique(grid.coords[:, 0])) == 192)
    roi = make_tile_grid(
        slide, tile_size=256, mpp=0.5, roi=(300, 400, 600, 512), mask=mask_of(slide), min_tissue=0
    )
    assert len(roi) == 2 * 2
    assert roi.coords[:, 0].min() == 300 and roi.coords[:, 1].min() == 400
    assert np.all(roi.coords[:, 0] + 256 <= 900)


def test_tissue_fraction_from_mask(pyramid) -> None:
    slide = open_slide(pyramid(2048, 1024, mpp=0.5, levels=1))
    left = mask_of(slide, lambda yy, xx: xx < 1000)  # tissue on the left 1000 px
    grid = make_tile_grid(slide, tile_size=256, mpp=0.5, mask=left, min_tissue=0)
    by_x = {int(x): float(f) for (x, _), f in zip(grid.coords, grid.tissue_fraction, strict=True)}
    assert by_x[0] == 1.0 and by_x[512] == 1.0 and by_x[1024] == 0.0
    assert by_x[768] == pytest.approx((1000 - 768) / 256, abs=0.05)
    kept = make_tile_grid(slide, tile_size=256, mpp=0.5, mask=left, min_tissue=0.5)
    assert set(np.unique(kept.coords[:, 0])) == {0, 256, 512, 768}
    assert np.all(kept.tissue_fraction >= 0.5)


def test_grid_metadata_round_trips_to_json(cmu_small) -> None:
    import json

    slide = open_slide(cmu_small)
    grid = make_tile_grid(slide, tile_size=224, mpp=0.5, mask=mask_of(slide), min_tissue=0)
    meta = json.loads(json.dumps(grid.to_dict()))
    assert meta["extent"] == [224, 224] and meta["n_tiles"] == len(grid)
    assert meta["effective_mpp"][0] == pytest.approx(0.499)
    sub = grid.subset(np.arange(3))
    assert len(sub) == 3 and np.array_equal(sub.coords, grid.coords[:3])


# -- parameters that make no sense ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tile_size": 0, "mpp": 0.5},
        {"tile_size": -224, "mpp": 0.5},
        {"tile_size": 224.5, "mpp": 0.5},
        {"tile_size": 224, "mpp": 0},
        {"tile_size": 224, "mpp": -0.5},
        {"tile_size": 224, "mpp": float("nan")},
        {"tile_size": 224, "mpp": "20x"},
        {"tile_size": 224, "mpp": 0.5, "overlap": 224},
        {"tile_size": 224, "mpp": 0.5, "overlap": -1},
        {"tile_size": 224, "mpp": 0.5, "min_tissue": 1.5},
        {"tile_size": 224, "mpp": 0.1},  # 5x upsampling of a 0.5 µm/px scan
        {"tile_size": 224, "mpp": 40.0},  # one tile larger than the slide
        {"tile_size": 224, "mpp": 0.5, "roi": (5000, 5000, 10, 10)},
    ],
)
def test_nonsense_parameters(cmu_small, kwargs) -> None:
    slide = open_slide(cmu_small)
    with pytest.raises(InvalidParameterError) as info:
        make_tile_grid(slide, mask=mask_of(slide), **kwargs)
    assert len(str(info.value)) > 30  # a sentence, not a bare value


def test_upsampling_on_request(cmu_small) -> None:
    slide = open_slide(cmu_small)
    grid = make_tile_grid(
        slide, tile_size=224, mpp=0.25, mask=mask_of(slide), allow_upsample=True, min_tissue=0
    )
    assert grid.read_size == (112, 112) and grid.resample == 2.0


def test_empty_mask(cmu_small) -> None:
    slide = open_slide(cmu_small)
    empty = mask_of(slide, lambda yy, xx: np.zeros_like(xx, bool))
    with pytest.raises(EmptyTissueError, match="no tissue was found.*min_tissue=0"):
        make_tile_grid(slide, tile_size=224, mpp=0.5, mask=empty)
    assert len(make_tile_grid(slide, tile_size=224, mpp=0.5, mask=empty, allow_empty=True)) == 0


def test_mask_from_another_slide(cmu_small, pyramid) -> None:
    other = open_slide(pyramid(1024, 1024, mpp=0.5, levels=1))
    with pytest.raises(InvalidParameterError, match="mask was made for"):
        make_tile_grid(open_slide(cmu_small), tile_size=224, mpp=0.5, mask=mask_of(other))
