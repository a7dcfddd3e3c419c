"""The synthetic H&E pyramid generator: format, ground truth, look, determinism, errors.

Read back with openslide and tiffslide directly (not slidescope's own reader), so these tests pin the
file format itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import openslide
import pytest
import tiffslide
from scipy import ndimage

from slidescope.errors import InvalidParameterError
from slidescope.synthetic import SyntheticSlide, make_synthetic_slide

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data" / "sample_slide.tiff"
SAMPLE_MASK = REPO / "sample_data" / "sample_slide.tumour.png"
SAMPLE_MASK_MPP = 8.0  # documented in sample_data/README.md


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    path = tmp_path_factory.mktemp("synthetic") / "syn.svs"
    return make_synthetic_slide(path, width=2048, height=1536, mpp=0.5, seed=0)


def _read(
    path: Path, level: int, loc: tuple[int, int], size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    with openslide.OpenSlide(str(path)) as o:
        a = np.asarray(o.read_region(loc, level, size).convert("RGB"))
    t = tiffslide.TiffSlide(path)
    try:
        b = np.asarray(t.read_region(loc, level, size, as_array=True))
    finally:
        t.close()
    return a, b


def _haematoxylin(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2hed

    return rgb2hed(rgb)[..., 0]


def _mask_centres(mask: np.ndarray, n: int, f: float, seed: int = 0) -> list[tuple[int, int]]:
    """Up to n level-0 (x, y) centres of random True pixels of a mask with f level-0 px per pixel."""
    ys, xs = np.nonzero(mask)
    pick = np.random.default_rng(seed).choice(ys.size, size=min(n, ys.size), replace=False)
    return [(int((xs[i] + 0.5) * f), int((ys[i] + 0.5) * f)) for i in pick]


# -------------------------------------------------------------------------------------------------
# format
# -------------------------------------------------------------------------------------------------
def test_both_readers_agree_on_geometry_and_mpp(slide: SyntheticSlide) -> None:
    o = openslide.OpenSlide(str(slide.path))
    t = tiffslide.TiffSlide(slide.path)
    try:
        assert o.properties["openslide.vendor"] == "aperio" and t.properties["tiffslide.vendor"] == "aperio"
        assert o.dimensions == t.dimensions == (2048, 1536)
        assert o.level_count == t.level_count == 2
        assert o.level_dimensions == t.level_dimensions == ((2048, 1536), (512, 384))
        assert np.allclose(o.level_downsamples, t.level_downsamples)
        assert np.allclose(o.level_downsamples, (1.0, 4.0))
        for key in ("mpp-x", "mpp-y"):
            assert float(o.properties[f"openslide.{key}"]) == 0.5
            assert float(t.properties[f"tiffslide.{key}"]) == 0.5
        assert float(o.properties["openslide.objective-power"]) == 20
        assert float(t.properties["tiffslide.objective-power"]) == 20
        assert {"thumbnail", "label", "macro"} <= set(o.associated_images)
        assert {"thumbnail", "label", "macro"} <= set(t.associated_images)
        assert max(o.associated_images["thumbnail"].size) <= 768
    finally:
        o.close()
        t.close()


def test_level_count_follows_size(tmp_path: Path) -> None:
    # n_levels=None: 4x steps while the smallest side is above 1000 px
    syn = make_synthetic_slide(tmp_path / "a.svs", width=1000, height=777, n_levels=3, seed=1)
    with openslide.OpenSlide(str(syn.path)) as o:
        assert o.level_dimensions == ((1000, 777), (250, 195), (63, 49))
    t = tiffslide.TiffSlide(syn.path)
    assert t.level_dimensions == ((1000, 777), (250, 195), (63, 49))
    t.close()
    assert syn.tissue_mask.shape == (math.ceil(777 / 16), math.ceil(1000 / 16))


def test_pixels_agree_between_readers(slide: SyntheticSlide) -> None:
    # measured: identical (mean and max abs difference 0); both decode with libjpeg-turbo
    for level, loc, size in [(0, (0, 0), (700, 500)), (0, (900, 700), (600, 512)), (1, (0, 0), (512, 384))]:
        a, b = _read(slide.path, level, loc, size)
        assert a.shape == b.shape == (size[1], size[0], 3)
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.mean() < 0.5 and diff.max() <= 8


def test_level1_is_a_downsample_of_level0(slide: SyntheticSlide) -> None:
    lv0, _ = _read(slide.path, 0, (512, 384), (1024, 768))
    lv1, _ = _read(slide.path, 1, (512, 384), (256, 192))
    box = lv0.reshape(192, 4, 256, 4, 3).mean(axis=(1, 3))
    assert np.abs(box - lv1).mean() < 3.0


def test_background_corners_are_near_white(slide: SyntheticSlide) -> None:
    for loc in [(0, 0), (2048 - 64, 0), (0, 1536 - 64), (2048 - 64, 1536 - 64)]:
        a, _ = _read(slide.path, 0, loc, (64, 64))
        assert np.all(np.abs(a.reshape(-1, 3).mean(0) - 242) < 3)
        assert a.std() < 3


# -------------------------------------------------------------------------------------------------
# ground truth
# -------------------------------------------------------------------------------------------------
def test_masks_shape_and_content(slide: SyntheticSlide) -> None:
    assert slide.mask_mpp == 8.0 and slide.mask_downsample == 16
    assert slide.tissue_mask.shape == slide.tumour_mask.shape == (96, 128)
    assert slide.tissue_mask.dtype == slide.tumour_mask.dtype == np.bool_
    assert slide.has_tumour
    assert not (slide.tumour_mask & ~slide.tissue_mask).any()
    assert 0.25 < slide.tissue_mask.mean() < 0.55
    assert 0.04 < slide.tumour_mask.sum() / slide.tissue_mask.sum() < 0.22
    assert not slide.tissue_mask[0].any() and not slide.tissue_mask[:, 0].any()  # clear of the edges


def test_masks_match_the_pixels(slide: SyntheticSlide) -> None:
    f = slide.mask_downsample
    glass = ndimage.binary_erosion(~slide.tissue_mask, iterations=2, border_value=1)
    tissue = ndimage.binary_erosion(slide.tissue_mask, iterations=2)
    for x, y in _mask_centres(glass, 20, f):
        a, _ = _read(slide.path, 0, (x - 4, y - 4), (8, 8))
        assert a.mean() > 236
    dark = [_read(slide.path, 0, (x - 4, y - 4), (8, 8))[0].mean() for (x, y) in _mask_centres(tissue, 40, f)]
    assert np.median(dark) < 215  # (fat vacuoles are tissue but nearly white, hence the median)


def test_tumour_is_more_haematoxylin_rich(slide: SyntheticSlide) -> None:
    f = slide.mask_downsample
    tumour = ndimage.binary_erosion(slide.tumour_mask, iterations=1)
    normal = ndimage.binary_erosion(
        slide.tissue_mask & ~ndimage.binary_dilation(slide.tumour_mask, iterations=3)
    )

    def stats(mask: np.ndarray) -> tuple[float, float]:
        h_means, nuclear = [], []
        for x, y in _mask_centres(mask, 12, f, seed=1):
            a, _ = _read(slide.path, 0, (x - 32, y - 32), (64, 64))
            h = _haematoxylin(a)
            h_means.append(h.mean())
            nuclear.append((a.mean(-1) < 120).mean())  # dark purple nuclear pixels
        return float(np.mean(h_means)), float(np.mean(nuclear))

    h_tum, nuc_tum = stats(tumour)
    h_norm, nuc_norm = stats(normal)
    # measured (seeds 0, 1, 5): H 0.090-0.099 vs 0.010-0.015, nuclear-pixel fraction 0.40-0.44 vs 0.02-0.06
    assert h_tum > 2 * h_norm
    assert nuc_tum > 3 * nuc_norm and nuc_tum > 0.2


def test_no_tumour(tmp_path: Path) -> None:
    syn = make_synthetic_slide(tmp_path / "n.svs", width=1024, height=768, tumour=False, seed=2)
    assert not syn.has_tumour
    assert syn.tumour_mask.shape == syn.tissue_mask.shape and not syn.tumour_mask.any()
    assert syn.tissue_mask.any()
    with openslide.OpenSlide(str(syn.path)) as o:
        assert o.properties["aperio.Synthetic Tumour"] == "0"


def test_empty_glass(tmp_path: Path) -> None:
    syn = make_synthetic_slide(tmp_path / "e.svs", width=1024, height=768, n_islands=0, tumour=False)
    assert not syn.tissue_mask.any() and not syn.tumour_mask.any()
    a, _ = _read(syn.path, 0, (0, 0), (1024, 768))
    assert a.min() > 225


def test_no_seams_at_tile_borders(slide: SyntheticSlide) -> None:
    # nuclei and fibres are drawn in global coordinates: the jump across a tile border (x = 256k) is no
    # larger than across any other 8-px JPEG block border (measured 1.73 vs 2.05 for seed 0)
    a, _ = _read(slide.path, 0, (0, 0), (2048, 1536))
    g = np.abs(np.diff(a.astype(np.float32).mean(-1), axis=1))  # g[:, x - 1] = |I[x] - I[x - 1]|
    tile_cols = np.arange(256, 2048, 256) - 1
    block_cols = np.setdiff1d(np.arange(8, 2048, 8) - 1, tile_cols)
    assert g[:, tile_cols].mean() < 1.5 * g[:, block_cols].mean()


# -------------------------------------------------------------------------------------------------
# determinism
# -------------------------------------------------------------------------------------------------
def test_same_seed_same_file_different_seed_different_pixels(tmp_path: Path) -> None:
    kw = {"width": 1024, "height": 768, "mpp": 0.5}
    a = make_synthetic_slide(tmp_path / "a.svs", seed=3, **kw)
    b = make_synthetic_slide(tmp_path / "b.svs", seed=3, **kw)
    c = make_synthetic_slide(tmp_path / "c.svs", seed=4, **kw)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert np.array_equal(a.tumour_mask, b.tumour_mask) and np.array_equal(a.tissue_mask, b.tissue_mask)
    pa, _ = _read(a.path, 0, (0, 0), (1024, 768))
    pc, _ = _read(c.path, 0, (0, 0), (1024, 768))
    assert np.abs(pa.astype(int) - pc.astype(int)).mean() > 5
    assert not np.array_equal(a.tissue_mask, c.tissue_mask)


# -------------------------------------------------------------------------------------------------
# errors
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0}, "width"),
        ({"height": -5}, "height"),
        ({"width": 100.5}, "width"),
        ({"mpp": 0}, "mpp"),
        ({"mpp": -0.5}, "mpp"),
        ({"mpp": float("nan")}, "mpp"),
        ({"mpp": "fast"}, "mpp"),
        ({"tile_size": 100}, "multiple of 16"),
        ({"tile_size": 0}, "tile_size"),
        ({"n_levels": 0}, "n_levels"),
        ({"width": 64, "height": 64, "n_levels": 6}, "n_levels"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"jpeg_quality": 101}, "jpeg_quality"),
        ({"seed": -1}, "seed"),
        ({"n_islands": -1}, "n_islands"),
        ({"n_islands": 0}, "tumour=True needs tissue"),
        ({"mask_mpp": 0.1}, "mask_mpp"),
        ({"mask_mpp": 0}, "mask_mpp"),
        ({"background": (300, 0, 0)}, "background"),
        ({"background": (1, 2)}, "background"),
    ],
)
def test_bad_parameters(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        make_synthetic_slide(tmp_path / "bad.svs", **kwargs)
    assert not (tmp_path / "bad.svs").exists()


# -------------------------------------------------------------------------------------------------
# the committed sample
# -------------------------------------------------------------------------------------------------
def test_sample_slide_opens_and_is_small() -> None:
    assert SAMPLE.is_file(), "run `python sample_data/generate.py`"
    assert SAMPLE.stat().st_size < 8 * 2**20
    o = openslide.OpenSlide(str(SAMPLE))
    t = tiffslide.TiffSlide(SAMPLE)
    try:
        assert o.dimensions == t.dimensions == (4096, 3072)
        assert o.level_dimensions == t.level_dimensions
        assert float(o.properties["openslide.mpp-x"]) == float(t.properties["tiffslide.mpp-x"]) == 0.5
    finally:
        o.close()
        t.close()


def test_sample_tumour_mask() -> None:
    from PIL import Image

    with Image.open(SAMPLE_MASK) as im:
        assert im.mode == "L"
        mask = np.asarray(im)
    f = SAMPLE_MASK_MPP / 0.5
    assert mask.shape == (math.ceil(3072 / f), math.ceil(4096 / f))
    assert set(np.unique(mask)) == {0, 255}
    assert 0.01 < (mask == 255).mean() < 0.15
