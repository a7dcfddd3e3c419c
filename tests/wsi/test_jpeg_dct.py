"""``downscale="jpeg-dct"``: file tiles decoded at 1/k by libjpeg-turbo's scaled IDCT instead of decoded in full
and block-averaged.

The oracle is outside slidescope's reader: OpenSlide's ``read_region`` of the same level-0 pixels, reduced by
numpy's rounded k x k block mean (what ``downscale="area"`` gives, equal to it here). The DCT tiles must stay
within the bound the README states (max 24 grey levels, mean below 0.5) and must differ from it somewhere (the
scaled decode really ran). The real CMU slide's tiles are RGB-coded (no JFIF marker): decoded as YCbCr their
colours would be tens of levels off, so the bound also checks that libjpeg is told the page's colour space.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bad_inputs import corrupt_tile

from slidescope.errors import InvalidParameterError
from slidescope.wsi import detect_tissue, iter_tiles, make_tile_grid, open_slide, read_tile

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data" / "sample_slide.tiff"  # 4096 x 3072 JFIF JPEG tiles of 256 px, 0.5 µm/px
#: the bound stated in the README (measured: 19 on CMU, 23 on the synthetic 40x slide at 1/2)
MAX_DIFF, MEAN_DIFF = 24, 0.5


def _openslide_block_mean(path: Path, grid, index: int, k: int) -> np.ndarray:
    import openslide

    x, y = (int(v) for v in grid.coords[index])
    n = grid.tile_size * k
    with openslide.OpenSlide(str(path)) as osr:
        rgb = np.asarray(osr.read_region((x, y), 0, (n, n)).convert("RGB"), np.uint32)
    s = rgb.reshape(grid.tile_size, k, grid.tile_size, k, 3).sum(axis=(1, 3))
    return ((s + k * k // 2) // (k * k)).astype(
        np.uint8
    )  # rounded mean, as Pillow's reduce and OpenCV's area


@pytest.mark.parametrize(
    ("which", "mpp_factor", "k"), [("cmu", 2, 2), ("cmu", 4, 4), ("cmu", 8, 8), ("sample", 2, 2)]
)
def test_dct_tiles_stay_within_the_stated_bound_of_openslide(cmu_small: Path, which, mpp_factor, k) -> None:
    path = cmu_small if which == "cmu" else SAMPLE
    with open_slide(path) as slide:
        mpp = slide.mpp[0] * mpp_factor
        size = 224 if k == 2 else 112 if k == 4 else 56
        mask = detect_tissue(slide)
        grid = make_tile_grid(slide, tile_size=size, mpp=mpp, mask=mask, min_tissue=0.1, downscale="jpeg-dct")
        exact = make_tile_grid(slide, tile_size=size, mpp=mpp, mask=mask, min_tissue=0.1)
        assert grid.downscale == "jpeg-dct" and grid.read_size == (size * k, size * k)
        indices = np.arange(min(len(grid), 40))
        dct = dict(iter_tiles(slide, grid, indices=indices, threads=2))
        area = dict(iter_tiles(slide, exact, indices=indices, threads=1))
    worst, means = 0, []
    for i in indices:
        want = _openslide_block_mean(path, grid, int(i), k)
        assert np.array_equal(area[i], want)  # "area" is OpenSlide's pixels averaged, exactly
        diff = np.abs(dct[i].astype(np.int16) - want)
        worst, means = max(worst, int(diff.max())), [*means, float(diff.mean())]
    assert 0 < worst <= MAX_DIFF, worst
    assert np.mean(means) < MEAN_DIFF, np.mean(means)


def test_the_option_is_in_the_cache_key_only_where_it_changes_the_pixels(cmu_small: Path) -> None:
    with open_slide(cmu_small) as slide:
        mask = detect_tissue(slide)
        kw = dict(tile_size=224, mask=mask, min_tissue=0.1)
        dct = make_tile_grid(slide, mpp=0.998, downscale="jpeg-dct", **kw)
        area = make_tile_grid(slide, mpp=0.998, **kw)
        assert dct.to_dict()["downscale"] == "jpeg-dct" and "downscale" not in area.to_dict()
        assert dct.to_dict() != area.to_dict()
        # no whole factor of 2, 4 or 8 (native; 1.5x): the tiles are the same, so is the key
        for mpp in (0.499, 0.7485):
            a = make_tile_grid(slide, mpp=mpp, downscale="jpeg-dct", **kw)
            assert a.downscale == "area" and a.to_dict() == make_tile_grid(slide, mpp=mpp, **kw).to_dict()
        # read_tile gives what iter_tiles gives, with any number of threads; direct=False the exact pixels
        idx = np.arange(min(len(dct), 12))
        one, two = (
            dict(iter_tiles(slide, dct, indices=idx, threads=1)),
            dict(iter_tiles(slide, dct, indices=idx, threads=2)),
        )
        backend = dict(iter_tiles(slide, dct, indices=idx, direct=False))
        exact = dict(iter_tiles(slide, area, indices=idx))
        for i in idx:
            assert np.array_equal(one[i], two[i]) and np.array_equal(read_tile(slide, dct, int(i)), one[i])
            assert np.array_equal(backend[i], exact[i])
        with pytest.raises(InvalidParameterError, match="downscale must be one of"):
            make_tile_grid(slide, mpp=0.998, downscale="dct", **kw)


def test_a_damaged_tile_is_read_as_the_exact_path_reads_it(tmp_path: Path) -> None:
    """A file tile cut short: the scaled decode does not guess; the tile goes the exact path's way, which
    defers to the backend (OpenSlide refuses it: the same SlideReadError as with "area")."""
    from slidescope.errors import SlideReadError

    path = tmp_path / "damaged.tiff"
    shutil.copy(SAMPLE, path)
    with open_slide(SAMPLE) as slide:
        grid = make_tile_grid(slide, tile_size=224, mpp=1.0, downscale="jpeg-dct")
    x, y = (int(v) for v in grid.coords[len(grid) // 2])
    corrupt_tile(path, x // 256, y // 256, "eoi")
    with open_slide(path) as slide:
        grid = make_tile_grid(slide, tile_size=224, mpp=1.0, downscale="jpeg-dct")
        assert grid.downscale == "jpeg-dct"
        with pytest.raises(SlideReadError, match=rf"file tile \({x // 256}, {y // 256}\) of level 0"):
            for _ in iter_tiles(slide, grid):
                pass
