"""Tissue detection: real slides, synthetic ground truth, blank glass, pale/IHC stains, pen marks,
clean-up, GeoJSON and bad input.

Most checks run :func:`tissue_mask_from_rgb` on small crafted images at 8 µm/px (Beer-Lambert
stains over glass, the scale the detector works at); the rest go through slide files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from slidescope.errors import InvalidParameterError, MissingMppError
from slidescope.synthetic import make_synthetic_slide
from slidescope.wsi import open_slide
from slidescope.wsi import _downsample, _tissue
from slidescope.wsi._tissue import TissueMask, detect_tissue, tissue_mask_from_rgb

MPP = 8.0  # µm/px of the crafted images (the default mask resolution)

# optical densities (log10) of one unit of each absorber, per R, G, B
OD_HAEM = np.array([0.65, 0.70, 0.29])
OD_EOSIN = np.array([0.07, 0.99, 0.11])
OD_DAB = np.array([0.27, 0.57, 0.78])
OD_BLUE_INK = np.array([0.90, 0.60, 0.15])
OD_GREEN_INK = np.array([0.80, 0.25, 0.70])
OD_BLACK_INK = np.array([1.30, 1.30, 1.25])


# -------------------------------------------------------------------------------------------------
# crafted images
# -------------------------------------------------------------------------------------------------
def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth random field scaled to [0, 1]."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (f - f.min()) / max(float(np.ptp(f)), 1e-9)


def glass(
    shape: tuple[int, int], rng: np.random.Generator, *, level: float = 236.0, noise: float = 1.5
) -> np.ndarray:
    """Empty glass, float (h, w, 3): slightly bluish, vignetted (-12 % at the corners), noisy."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2
    light = (1.0 - 0.06 * r2) * (1.0 - 0.04 * xx / w)  # vignetting and a left-right gradient
    tint = np.array([0.0, 1.0, 4.0])
    img = (level + tint)[None, None, :] * light[..., None]
    return img + rng.normal(0.0, noise, (h, w, 3))


def blob(
    shape: tuple[int, int], centre: tuple[float, float], radius: float, rng: np.random.Generator
) -> np.ndarray:
    """An irregular roundish region (bool), radius modulated with the angle."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    dy, dx = yy - centre[0], xx - centre[1]
    ang = np.arctan2(dy, dx)
    a, b, ph = rng.uniform(0.05, 0.15), rng.uniform(0.05, 0.12), rng.uniform(0, 6.28, 2)
    rr = radius * (1 + a * np.sin(2 * ang + ph[0]) + b * np.sin(5 * ang + ph[1]))
    return np.hypot(dy, dx) <= rr


def he_od(tissue: np.ndarray, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """H&E optical density (h, w, 3) inside ``tissue``: textured haematoxylin + eosin."""
    shape = tissue.shape
    c_h = 0.15 + 0.55 * smooth_field(rng, shape, 1.5) ** 2
    c_e = 0.25 + 0.45 * smooth_field(rng, shape, 3.0)
    od = c_h[..., None] * OD_HAEM + c_e[..., None] * OD_EOSIN
    return od * (scale * tissue)[..., None]


def ihc_od(tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """IHC: pale haematoxylin counterstain everywhere, brown DAB in patches."""
    shape = tissue.shape
    c_h = 0.10 + 0.15 * smooth_field(rng, shape, 2.0)
    dab = smooth_field(rng, shape, 4.0)
    c_d = np.where(dab > 0.55, 0.2 + 1.2 * (dab - 0.55), 0.0)
    od = c_h[..., None] * OD_HAEM + c_d[..., None] * OD_DAB
    return od * tissue[..., None]


def render(background: np.ndarray, od: np.ndarray) -> np.ndarray:
    """Beer-Lambert: ``I = glass * 10^-OD`` as uint8 RGB."""
    return np.clip(np.rint(background * 10.0 ** (-od)), 0, 255).astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def two_blobs(shape=(240, 300), seed=0) -> tuple[np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    truth = blob(shape, (90, 90), 55, rng) | blob(shape, (150, 215), 65, rng)
    return truth, rng


def write_tiff(path: Path, rgb: np.ndarray, mpp: float | None) -> Path:
    """One-level tiled JPEG TIFF, pixel size in the resolution tags (both backends read it)."""
    import tifffile

    kw = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, rgb, photometric="rgb", tile=(256, 256), compression="jpeg", **kw)
    return path


def upsample(img: np.ndarray, f: int) -> np.ndarray:
    return np.repeat(np.repeat(img, f, axis=0), f, axis=1)


# -------------------------------------------------------------------------------------------------
# real slides
# -------------------------------------------------------------------------------------------------
def at(tm: TissueMask, x: float, y: float) -> bool:
    """Mask value at a level-0 point."""
    return bool(tm.mask[int(y / tm.downsample[1]), int(x / tm.downsample[0])])


def test_cmu_small_region_skin_section(cmu_small: Path) -> None:
    slide = open_slide(cmu_small)
    tm = detect_tissue(slide)
    w0, h0 = slide.dimensions
    # 2220 x 2967 px at 0.499 µm -> 8 µm/px mask of 138 x 185, downsample exactly w0/138, h0/185
    assert tm.mask.shape == (185, 138) and tm.mask.dtype == bool
    assert tm.downsample == (w0 / 138, h0 / 185)
    assert tm.slide_dimensions == (2220, 2967)
    # the skin section runs down the middle, glass left and right: measured 38.8 % tissue
    assert 0.28 < tm.tissue_fraction < 0.50
    assert not at(tm, 2150, 80) and not at(tm, 2150, 2900)  # right-hand glass, top and bottom
    assert not at(tm, 150, 1500) and not at(tm, 100, 2900)  # left-hand glass
    assert at(tm, 1236, 2472) and at(tm, 900, 2000) and at(tm, 1200, 1000)  # dermis / epidermis
    assert at(tm, 500, 1090)  # the thin strand of tissue reaching out to the left is kept
    assert len(tm.contours) >= 1
    for ring in tm.contours:
        assert ring.dtype == np.float64 and ring.shape[1] == 2
        np.testing.assert_array_equal(ring[0], ring[-1])
        assert ring[:, 0].min() >= 0 and ring[:, 0].max() <= w0
        assert ring[:, 1].min() >= 0 and ring[:, 1].max() <= h0
    assert tm.area_um2 == pytest.approx(tm.mask.sum() * tm.mpp[0] * tm.mpp[1])
    assert 0.45e6 < tm.area_um2 < 0.85e6  # about 0.64 mm²


def test_cmu_same_mask_with_both_backends(cmu_small: Path) -> None:
    a = detect_tissue(open_slide(cmu_small, backend="openslide"))
    b = detect_tissue(open_slide(cmu_small, backend="tiffslide"))
    assert a.mask.shape == b.mask.shape
    assert iou(a.mask, b.mask) > 0.95


def test_os1_detail_is_mostly_tissue(ome_detail: Path) -> None:
    tm = detect_tissue(open_slide(ome_detail))
    assert tm.mask.shape == (round(1101 * 0.22710240047237298 / 8), round(1101 * 0.2270972430394695 / 8))
    assert tm.tissue_fraction > 0.9  # a crop from inside a tumour: no glass at all


# -------------------------------------------------------------------------------------------------
# synthetic ground truth
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_slide_ground_truth(tmp_path: Path, seed: int) -> None:
    syn = make_synthetic_slide(
        tmp_path / f"syn{seed}.svs", width=2048, height=1536, mpp=0.5, seed=seed, mask_mpp=8.0
    )
    slide = open_slide(syn.path)
    tm = detect_tissue(slide)
    assert tm.params["level"] == 1  # 2 µm/px level, not the 0.5 µm one
    assert tm.mask.shape == syn.tissue_mask.shape == (96, 128)
    assert iou(tm.mask, syn.tissue_mask) >= 0.9  # measured 0.956 (seed 0), 0.941 (seed 1)


def test_crafted_he_matches_truth() -> None:
    truth, rng = two_blobs(seed=3)
    rgb = render(glass(truth.shape, rng), he_od(truth, rng))
    assert iou(tissue_mask_from_rgb(rgb, mpp=MPP), truth) > 0.95


# -------------------------------------------------------------------------------------------------
# glass, pale and IHC
# -------------------------------------------------------------------------------------------------
def test_blank_glass_gives_nothing() -> None:
    rng = np.random.default_rng(5)
    for level in (250.0, 236.0, 215.0):  # bright, normal and a dim scan
        bg = glass((240, 320), rng, level=level, noise=2.0)
        bg *= 1.0 - 0.08 * smooth_field(rng, (240, 320), 30)[..., None]  # uneven illumination
        assert not tissue_mask_from_rgb(render(bg, np.zeros((240, 320, 3))), mpp=MPP).any()


def test_blank_slide_file_is_empty(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    bg = upsample(glass((96, 128), rng, noise=0.0), 16) + rng.normal(0, 3.0, (1536, 2048, 3))
    slide = open_slide(write_tiff(tmp_path / "blank.tif", render(bg, np.zeros(1)), mpp=0.5))
    tm = detect_tissue(slide)
    assert tm.mask.shape == (96, 128)
    assert tm.is_empty and tm.contours == () and tm.area_um2 == 0.0
    assert tm.to_geojson() == {"type": "FeatureCollection", "features": []}


def test_pale_he_detected() -> None:
    truth, rng = two_blobs(seed=7)
    rgb = render(glass(truth.shape, rng), he_od(truth, rng, scale=0.3))
    normal = render(glass(truth.shape, rng), he_od(truth, rng))
    # really pale: the tissue's mean brightness is ~185 (glass 236), against ~115 at full strength
    assert np.median(rgb[truth].mean(1)) > 175 and np.median(normal[truth].mean(1)) < 130
    assert iou(tissue_mask_from_rgb(rgb, mpp=MPP), truth) > 0.9


def test_ihc_dab_and_light_haematoxylin_detected() -> None:
    truth, rng = two_blobs(seed=8)
    od = ihc_od(truth, rng)
    rgb = render(glass(truth.shape, rng), od)
    assert (od[..., 2] > 0.3).any()  # some real brown DAB in there
    mask = tissue_mask_from_rgb(rgb, mpp=MPP)
    assert iou(mask, truth) > 0.9
    brown = truth & (od @ np.ones(3) > 1.0)
    assert mask[brown].mean() > 0.99  # dark brown DAB is not mistaken for black ink


# -------------------------------------------------------------------------------------------------
# pen marks
# -------------------------------------------------------------------------------------------------
def stroke(
    shape: tuple[int, int], p0: tuple[float, float], p1: tuple[float, float], width: float
) -> np.ndarray:
    """A straight marker stroke (bool) from (row, col) p0 to p1."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    (y0, x0), (y1, x1) = p0, p1
    d = np.array([y1 - y0, x1 - x0])
    t = np.clip(((yy - y0) * d[0] + (xx - x0) * d[1]) / (d @ d), 0, 1)
    return np.hypot(yy - (y0 + t * d[0]), xx - (x0 + t * d[1])) <= width / 2


def test_pen_marks_are_not_tissue() -> None:
    truth, rng = two_blobs(seed=9)
    shape = truth.shape
    strokes = {
        "blue": (stroke(shape, (20, 10), (110, 290), 22), OD_BLUE_INK),  # crosses the left blob and glass
        "green": (stroke(shape, (230, 120), (150, 295), 22), OD_GREEN_INK),  # right blob and glass
        "black": (stroke(shape, (10, 180), (235, 165), 18), OD_BLACK_INK),  # glass and right blob
    }
    od = he_od(truth, rng)
    for ink, vec in strokes.values():
        # marker edges are soft once averaged down to 8 µm
        cover = ndimage.gaussian_filter(ink.astype(float), 0.7)
        od = od + cover[..., None] * vec
    rgb = render(glass(shape, rng), od)
    mask = tissue_mask_from_rgb(rgb, mpp=MPP)
    any_ink = np.zeros(shape, bool)
    for name, (ink, _) in strokes.items():
        core = ndimage.binary_erosion(ink, iterations=2)
        assert mask[core].mean() < 0.01, f"{name} ink taken for tissue"
        assert (core & truth).sum() > 50 and (core & ~truth).sum() > 50  # over tissue and over glass
        any_ink |= ink
    away = truth & ~ndimage.binary_dilation(any_ink, iterations=3)
    assert mask[away].mean() > 0.97  # tissue next to the strokes is kept
    assert (mask & ~truth & ~ndimage.binary_dilation(any_ink, iterations=3)).sum() < 0.02 * truth.sum()
    # without pen removal the coloured ink on glass is taken for tissue: the option matters
    kept = tissue_mask_from_rgb(rgb, mpp=MPP, remove_pen=False)
    assert kept[strokes["blue"][0] & ~truth].mean() > 0.5


# -------------------------------------------------------------------------------------------------
# clean-up
# -------------------------------------------------------------------------------------------------
def test_small_specks_dropped_by_physical_area() -> None:
    rng = np.random.default_rng(10)
    shape = (200, 200)
    specks = np.zeros(shape, bool)
    for cy, cx in [(30, 30), (30, 170), (170, 30), (100, 40)]:
        specks |= blob(shape, (cy, cx), 4, rng)  # ~50 px = 3,200 µm² each
    piece = blob(shape, (130, 140), 14, rng)  # ~600 px = 40,000 µm²
    truth = specks | piece
    rgb = render(glass(shape, rng), he_od(truth, rng))
    mask = tissue_mask_from_rgb(rgb, mpp=MPP)  # default min area 20,000 µm²
    assert not mask[specks].any()
    assert mask[piece].mean() > 0.95
    assert tissue_mask_from_rgb(rgb, mpp=MPP, min_area_um2=0)[specks].mean() > 0.9
    # the same scene at 4 µm/px (twice the pixels) keeps the same pieces: areas are in µm²
    fine = tissue_mask_from_rgb(upsample(rgb, 2), mpp=MPP / 2)
    assert not fine[upsample(specks, 2)].any() and fine[upsample(piece, 2)].mean() > 0.95
    # larger than the piece: nothing left
    assert not tissue_mask_from_rgb(rgb, mpp=MPP, min_area_um2=200_000).any()


def test_hole_inside_tissue_filled_only_when_asked() -> None:
    rng = np.random.default_rng(11)
    shape = (200, 200)
    yy, xx = np.mgrid[0:200, 0:200]
    r = np.hypot(yy - 100, xx - 100)
    ring = (r <= 70) & (r > 25)
    rgb = render(glass(shape, rng), he_od(ring, rng))
    hole = r <= 20
    assert tissue_mask_from_rgb(rgb, mpp=MPP)[hole].all()
    assert not tissue_mask_from_rgb(rgb, mpp=MPP, fill_holes=False)[hole].any()


# -------------------------------------------------------------------------------------------------
# reading, GeoJSON
# -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def square_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3072 x 2048 at 0.5 µm/px, glass with an H&E square at x 1000-2600, y 800-1600 (level 0)."""
    rng = np.random.default_rng(12)
    low = np.zeros((256, 384), bool)  # 8 level-0 px per pixel
    low[100:200, 125:325] = True
    od = upsample(he_od(low, rng), 8)
    noise = rng.standard_normal((2048, 3072, 3), dtype=np.float32) * 2.0
    bg = upsample(glass(low.shape, rng, noise=0.0), 8) + noise
    return write_tiff(tmp_path_factory.mktemp("tissue") / "square.tif", render(bg, od), mpp=0.5)


def test_geojson_position_and_round_trip(square_slide: Path, tmp_path: Path) -> None:
    slide = open_slide(square_slide)
    tm = detect_tissue(slide)
    ds = tm.downsample
    assert tm.mask.shape == (128, 192) and ds == (16.0, 16.0) and tm.mpp == (8.0, 8.0)
    assert len(tm.contours) == 1
    ring = tm.contours[0]
    # the square comes back where it is on the slide (level-0 px, top-left origin), within a mask px
    x, y = ring[:, 0], ring[:, 1]
    assert x.min() == pytest.approx(1000, abs=ds[0]) and x.max() == pytest.approx(2600, abs=ds[0])
    assert y.min() == pytest.approx(800, abs=ds[1]) and y.max() == pytest.approx(1600, abs=ds[1])
    assert len(ring) <= 12  # a square simplifies to a handful of vertices

    gj = tm.to_geojson()
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 1
    feat = gj["features"][0]
    assert feat["type"] == "Feature" and feat["geometry"]["type"] == "Polygon"
    assert feat["properties"]["objectType"] == "annotation"
    assert feat["properties"]["classification"]["name"] == "Tissue"
    assert len(feat["properties"]["classification"]["color"]) == 3
    assert feat["properties"]["measurements"]["area_um2"] == pytest.approx(1600 * 800 * 0.25, rel=0.05)
    outer = feat["geometry"]["coordinates"][0]
    assert all(len(p) == 2 and all(isinstance(v, float) for v in p) for p in outer)
    assert outer[0] == outer[-1] and len(outer) >= 4
    json.dumps(gj)  # plain JSON types only

    path = tm.save_geojson(tmp_path / "tissue.geojson")
    back = TissueMask.from_geojson(path, slide_dimensions=slide.dimensions, slide_mpp=slide.mpp)
    assert back.mask.shape == tm.mask.shape and back.downsample == tm.downsample
    assert iou(back.mask, tm.mask) > 0.95
    # a coarser mask from the same polygons
    coarse = TissueMask.from_geojson(gj, slide_dimensions=slide.dimensions, slide_mpp=0.5, mask_mpp=32.0)
    assert coarse.mask.shape == (32, 48)
    assert coarse.area_um2 == pytest.approx(tm.area_um2, rel=0.1)


def test_geojson_round_trip_real_slide_with_holes(cmu_small: Path) -> None:
    slide = open_slide(cmu_small)
    for fill in (True, False):
        tm = detect_tissue(slide, fill_holes=fill)
        gj = tm.to_geojson()
        back = TissueMask.from_geojson(gj, slide_dimensions=slide.dimensions, slide_mpp=slide.mpp)
        assert iou(back.mask, tm.mask) > 0.95
    assert any(tm.holes)  # fill_holes=False keeps the holes as inner rings


def test_blockwise_reading_matches_one_read(square_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slide = open_slide(square_slide)
    whole = _downsample.read_downsampled(slide, 0, (192, 128))
    monkeypatch.setattr(_downsample, "READ_BLOCK", 300)  # many blocks, not aligned with the file tiles
    blocks = _downsample.read_downsampled(slide, 0, (192, 128))
    assert np.abs(whole.astype(int) - blocks.astype(int)).max() <= 1
    # a non-integer reduction (5.3 level px per mask px) is seamless too
    odd = _downsample.read_downsampled(slide, 0, (580, 387))
    monkeypatch.setattr(_downsample, "READ_BLOCK", 4096)
    ref = _downsample.read_downsampled(slide, 0, (580, 387))
    assert np.abs(odd.astype(int) - ref.astype(int)).max() <= 2


def test_mask_shape_rules(square_slide: Path) -> None:
    slide = open_slide(square_slide)
    tm = detect_tissue(slide, mpp=7.0)  # 3072 * 0.5 / 7 = 219.4 -> 219 columns; 146.3 -> 146 rows
    assert tm.mask.shape == (146, 219)
    assert tm.downsample == (3072 / 219, 2048 / 146)
    assert tm.mpp == pytest.approx((0.5 * 3072 / 219, 0.5 * 2048 / 146))
    tiny = detect_tissue(slide, mpp=5000.0, min_area_um2=0)
    assert tiny.mask.shape == (1, 1)
    assert tm.params["mpp"] == 7.0 and tm.params["min_area_um2"] == _tissue.DEFAULT_MIN_AREA_UM2


# -------------------------------------------------------------------------------------------------
# bad input
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -8.0, math.nan, math.inf, "8"])
def test_bad_mpp_rejected(square_slide: Path, bad: object) -> None:
    slide = open_slide(square_slide)
    with pytest.raises(InvalidParameterError, match="mpp"):
        detect_tissue(slide, mpp=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="mpp"):
        tissue_mask_from_rgb(np.full((8, 8, 3), 240, np.uint8), mpp=bad)  # type: ignore[arg-type]


def test_bad_other_parameters(square_slide: Path) -> None:
    slide = open_slide(square_slide)
    with pytest.raises(InvalidParameterError, match="min_area_um2"):
        detect_tissue(slide, min_area_um2=-1)
    with pytest.raises(InvalidParameterError, match="threshold"):
        detect_tissue(slide, threshold=0)
    with pytest.raises(InvalidParameterError, match="rgb"):
        tissue_mask_from_rgb(np.zeros((8, 8), np.uint8), mpp=8)


def test_slide_without_mpp(tmp_path: Path) -> None:
    rgb = np.full((512, 512, 3), 236, np.uint8)
    path = write_tiff(tmp_path / "nompp.tif", rgb, mpp=None)
    with pytest.raises(MissingMppError, match="mpp="):
        detect_tissue(open_slide(path))
    tm = detect_tissue(open_slide(path, slide_mpp=0.5))  # the fix the message suggests works
    assert tm.is_empty and tm.mask.shape == (32, 32)
    # a mask finer than the slide's own pixels is raised to them, not upsampled
    fine = detect_tissue(open_slide(path, slide_mpp=0.5), mpp=0.1)
    assert fine.mask.shape == (512, 512) and fine.mpp == (0.5, 0.5)
