"""The planned, threaded direct TIFF path (wsi/_prefetch.py): the same tiles as one read per tile through
OpenSlide for any number of threads, each file tile decoded once, a bounded memory that still gives the
same tiles when it is too small, and no thread left behind when the consumer stops early."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_grid import mask_of
from test_stream import assert_same, reference_tiles

from slidescope.wsi import iter_tiles, make_tile_grid, open_slide
from slidescope.wsi._prefetch import default_read_threads, stream_tiles
from slidescope.wsi._stream import block_order


@pytest.fixture
def opened():
    """``opened(path, **kw)`` opens a slide that is closed after the test (the decode counters below make
    a reference cycle, which would otherwise leave the file to the garbage collector)."""
    slides = []

    def open_(path, **kw):
        slides.append(open_slide(path, **kw))
        return slides[-1]

    yield open_
    for slide in slides:
        slide.close()


def _counting(slide) -> list[tuple[int, int, int]]:
    """Record every file-tile decode of the slide's direct reader."""
    source = slide.tile_source()
    calls: list[tuple[int, int, int]] = []
    lock = threading.Lock()
    decode = source.decode

    def counted(level: int, tx: int, ty: int, **kw) -> np.ndarray:
        with lock:
            calls.append((level, tx, ty))
        return decode(level, tx, ty, **kw)

    source.decode = counted
    return calls


def _touched(grid, source) -> set[tuple[int, int]]:
    tw, th = source.tile_shape(grid.level)
    lw, lh = source.level_size(grid.level)
    rw, rh = grid.read_size
    ds = np.asarray(grid.level_downsample)
    out = set()
    for x, y in np.floor(grid.coords / ds + 1e-9).astype(int):
        for ty in range(max(y, 0) // th, (min(y + rh, lh) - 1) // th + 1):
            for tx in range(max(x, 0) // tw, (min(x + rw, lw) - 1) // tw + 1):
                out.add((tx, ty))
    return out


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_real_svs_equals_openslide_and_decodes_each_file_tile_once(opened, cmu_small, threads) -> None:
    slide = opened(cmu_small, backend="openslide")
    grid = make_tile_grid(slide, tile_size=224, mpp=0.499, mask=mask_of(slide), min_tissue=0)
    calls = _counting(slide)
    got = dict(iter_tiles(slide, grid, threads=threads))
    assert_same(got, reference_tiles(slide, grid))
    # 224 px tiles over the file's 240 px tiles: neighbours share file tiles, each decoded once
    assert len(calls) == len(set(calls)) == len(_touched(grid, slide.tile_source()))


@pytest.mark.parametrize(
    ("target", "tile_size", "edge"), [(0.5, 224, "drop"), (0.4, 224, "pad"), (1.3, 200, "pad")]
)
def test_resampled_and_padded_grids_equal_one_read_per_tile(opened, pyramid, target, tile_size, edge) -> None:
    """The pyramid's own 0.5 µm/px level, non-integer ratios (resized in the threads) and tiles over the slide's edge
    (the halving path is checked on the real file below)."""
    slide = opened(pyramid(3000, 2000, mpp=0.25, levels=3))
    grid = make_tile_grid(
        slide, tile_size=tile_size, mpp=target, mask=mask_of(slide), min_tissue=0, edge=edge
    )
    reference = reference_tiles(slide, grid)
    for threads in (1, 3):
        assert_same(dict(iter_tiles(slide, grid, threads=threads)), reference)


def test_a_budget_smaller_than_the_plan_gives_the_same_tiles(opened, cmu_small) -> None:
    """Past the memory budget the oldest held file tiles are dropped and decoded again: more decodes,
    same pixels, order and count."""
    slide = opened(cmu_small)
    grid = make_tile_grid(slide, tile_size=224, mpp=0.499, mask=mask_of(slide), min_tissue=0)
    source = slide.tile_source()
    xy = grid.coords
    full = list(stream_tiles(source, 0, xy, grid.read_size, None, threads=2))
    calls = _counting(slide)
    tw, th = source.tile_shape(0)
    small = list(stream_tiles(source, 0, xy, grid.read_size, None, threads=2, budget=2 * tw * th * 3))
    assert len(small) == len(full) == len(grid)
    assert all(np.array_equal(a, b) for a, b in zip(full, small, strict=True))
    assert len(calls) > len(set(calls))  # it did re-decode


def test_stopping_early_leaves_no_thread(opened, cmu_small) -> None:
    slide = opened(cmu_small)
    grid = make_tile_grid(slide, tile_size=224, mpp=0.499, mask=mask_of(slide), min_tissue=0)
    before = {t.name for t in threading.enumerate()}
    tiles = iter_tiles(slide, grid, threads=3)
    for _ in range(3):
        next(tiles)
    assert any(t.name.startswith("slidescope-read") for t in threading.enumerate())
    tiles.close()
    assert {t.name for t in threading.enumerate()} <= before


def test_a_decoder_failure_surfaces_in_order(opened, cmu_small) -> None:
    """An error in a decode thread reaches the consumer as a SlideReadError naming the region, after the
    tiles before it."""
    from slidescope.errors import SlideReadError

    slide = opened(cmu_small)
    grid = make_tile_grid(slide, tile_size=224, mpp=0.499, mask=mask_of(slide), min_tissue=0)
    source = slide.tile_source()
    decode = source.decode
    bad = (0, 5, 5)

    def failing(level: int, tx: int, ty: int, **kw) -> np.ndarray:
        if (level, tx, ty) == bad:
            raise SlideReadError(f"file tile ({tx}, {ty}) of level {level} is damaged: test")
        return decode(level, tx, ty, **kw)

    source.decode = failing
    tw, th = source.tile_shape(0)
    # the first tile, in reading order, that needs the bad file tile: every tile before it is yielded
    order = np.concatenate(block_order(grid))
    needs = [
        x // tw <= bad[1] <= (x + 223) // tw and y // th <= bad[2] <= (y + 223) // th
        for x, y in grid.coords[order]
    ]
    first = needs.index(True)
    seen = []
    with pytest.raises(
        SlideReadError, match=r"CMU-1-Small-Region.svs: cannot decode the region at level 0"
    ) as err:
        for i, _ in iter_tiles(slide, grid, threads=2):
            seen.append(i)
    assert seen == list(order[:first])
    x, y = grid.coords[order[first]]
    assert f"(x={x}, y={y}, 224x224 px)" in str(err.value)


def test_default_threads_share_the_cpus() -> None:
    assert 1 <= default_read_threads() <= 4
    assert default_read_threads(processes=10_000) == 1


def test_rgbx_decode_is_the_same_rgb_on_an_aperio_file(opened, cmu_small) -> None:
    """The direct reader calls imagecodecs itself (with tifffile's colour spaces), for RGB and for RGBX: on
    CMU-1-Small-Region (Aperio: abbreviated JPEG streams with shared tables, RGB colour space) every file
    tile equals tifffile's own decode of the same bytes, also when decoded into a reused scratch array."""
    import tifffile

    slide = opened(cmu_small)
    source = slide.tile_source()
    tw, th = source.tile_shape(0)
    lw, lh = source.level_size(0)
    rgb_scratch, rgbx_scratch = np.empty((th, tw, 3), np.uint8), np.empty((th, tw, 4), np.uint8)
    with tifffile.TiffFile(cmu_small) as tif:
        page = tif.pages[0]
        for ty in range(-(-lh // th)):
            for tx in range(-(-lw // tw)):
                index = ty * (-(-lw // tw)) + tx
                tif.filehandle.seek(page.dataoffsets[index])
                data = tif.filehandle.read(page.databytecounts[index])
                theirs = page.decode(data, index, jpegtables=page.jpegtables)[0].reshape(th, tw, 3)
                rgbx = source.decode(0, tx, ty, rgbx=True)
                assert rgbx.shape == (th, tw, 4)
                assert np.array_equal(rgbx[..., :3], theirs)
                assert np.array_equal(source.decode(0, tx, ty), theirs)
                # into a reused scratch array (the reduced path's): a view of it, the same pixels
                for scratch in (rgb_scratch, rgbx_scratch):
                    got = source.decode(0, tx, ty, rgbx=scratch.shape[2] == 4, out=scratch)
                    assert np.shares_memory(got, scratch)
                    assert np.array_equal(got[..., :3], theirs)


@pytest.mark.parametrize("reduce", [None, (2, 2), (4, 4)])
def test_regions_anywhere_equal_the_white_padded_level(opened, pyramid, reduce) -> None:
    """Regions inside, across, partly and wholly outside the level (negative origins too), cut from the
    file tiles (and reduced, where the region allows: 2 x 2 by OpenCV from RGB, 4 x 4 by Pillow from RGBX,
    each file tile decoded into its thread's reused scratch array): each equals the level read whole, padded
    with white."""
    from slidescope.wsi._resize import block_mean

    slide = opened(pyramid(1000, 700, mpp=0.25, levels=1))
    source = slide.tile_source()
    lw, lh = source.level_size(0)
    tw, th = source.tile_shape(0)
    pad = 600
    level = np.full((lh + 2 * pad, lw + 2 * pad, 3), 255, np.uint8)
    level[pad : pad + lh, pad : pad + lw] = source.read(0, 0, 0, lw, lh)
    xy = np.array(
        [
            [0, 0],
            [tw - 10, th - 6],
            [2 * tw, th],
            [lw - 300, lh - 300],
            [-50, 40],
            [lw - 100, lh - 20],
            [-400, -400],
            [lw + 10, 0],
            [lw - 2 * tw - 2, 2],
            [3, 5],
        ]  # fmt: skip
    )
    for threads in (1, 2):
        got = list(stream_tiles(source, 0, xy, (300, 300), None, threads=threads, reduce=reduce))
        for (x, y), tile in zip(xy, got, strict=True):
            want = level[pad + y : pad + y + 300, pad + x : pad + x + 300]
            k = reduce[0] if reduce else 1
            inside_even = 0 <= x and 0 <= y and x + 300 <= lw and y + 300 <= lh and x % k == y % k == 0
            if reduce is not None and inside_even:  # cut from reduced file tiles
                want = block_mean(want, k, k)
            assert np.array_equal(tile, want), (x, y)


@pytest.mark.parametrize("threads", [1, 2])
def test_halved_tiles_of_a_real_svs_equal_one_read_per_tile(opened, cmu_small, threads) -> None:
    """448 px read, 224 px tiles, on the real Aperio file: each file tile halved once, then assembled."""
    slide = opened(cmu_small)
    grid = make_tile_grid(slide, tile_size=224, mpp=0.998, mask=mask_of(slide), min_tissue=0)
    assert grid.level == 0 and grid.read_size == (448, 448)
    assert_same(dict(iter_tiles(slide, grid, threads=threads)), reference_tiles(slide, grid))
