"""Classic (weight-free) per-tile quality control: focus, brightness, saturation, folds, pen and bubbles.

Every measure is computed on the uint8 RGB tiles at the tile's own mpp, as the encoder sees them,
vectorised over a batch (:func:`tile_qc`, numpy, integers where exact): focus, brightness, dark and bright
fractions on the full tile; saturation, density and pen on the tile averaged 4 x 4 (2 µm/px at 0.5 µm/px:
areas, not single pixels, and 16 x cheaper). :func:`qc_tiles` reads the tiles of a grid once (in spatial
blocks, like the extraction) and returns the grid with the measures and, with ``policy="exclude"``, without
the flagged tiles (:class:`QCGrid`), before anything is embedded; with ``defer=True`` (``"flag"``) it reads
nothing and the extraction measures the tiles as its readers read them (:func:`finish_qc` completes it).

Measures (one float per tile):

* ``focus``: the mean squared 4-neighbour Laplacian of the grey tile (Pech-Pacheco's variance of the
  Laplacian about zero) over its non-glass pixels. The Laplacian, not Tenengrad: one 3x3 stencil
  instead of two Sobel filters, and it weighs the finest frequencies most, which are what a Gaussian
  blur of a few pixels removes first. A mean per pixel, so tiles of any size compare; over the tissue
  only (pixels darker than :data:`GLASS_LUMINANCE`), so a tile half on glass is not taken for a blurred
  one. It depends on the tile's mpp (a finer mpp sees more blur per pixel): compare values of one mpp.
* ``brightness``: mean luminance (Rec. 601 grey, 0-255) of the whole tile.
* ``saturation``: mean HSV saturation ((max - min) / max) of the non-glass pixels (0-1), 4 x 4 averaged.
* ``density``: median optical density (log10 of glass over grey) of the tile's tissue, on the tile
  averaged 4 x 4. Where tissue folds over itself it is about twice the slide's usual density.
* ``dark_fraction``: fraction of the tile darker than :data:`DARK_LUMINANCE` (dark spots, debris).
* ``pen_fraction``: fraction of the tile that the classic detector's pen rule
  (:func:`slidescope.wsi._pen.pen_mask`, the one tissue detection removes ink with, without its margin)
  takes for ink, on the tile averaged 4 x 4 (2 µm/px at 0.5 µm/px): marker strokes, and dye specks too.
  NaN (not measured, never flagged) on slides whose tissue detection ran without pen removal (``pen="off"``,
  or ``"auto"`` on a slide that looks like IHC: the rule takes a blue counterstain for ink).
* ``bright_fraction``: fraction of the tile brighter than the glass by :data:`BRIGHT_MARGIN` grey levels
  (the bright rims of air bubbles and refraction edges; nothing on a scanner that clips glass to white).

Flags (checks): ``blur`` (focus < :data:`FOCUS_MIN`), ``fold`` (density > :data:`FOLD_RATIO` x the
median density of the slide's tiles: relative, so pale and dark stainings alike), ``dark``
(dark_fraction > :data:`DARK_MAX`), ``pen`` (pen_fraction > :data:`PEN_MAX`), ``bubble``
(bright_fraction > :data:`BRIGHT_MAX`). The defaults were set on synthetic slides with injected artefacts
(:func:`slidescope.synthetic.make_artefact_slide`) and checked on the tiles of the real H&E test slides;
they are not calibrated on a labelled real cohort.

Learned artefact measures (``qc_model="grandqc"``, computed by
:func:`slidescope.features.segmenters.artefact_measures` and passed to :func:`qc_tiles` as ``measures``):
``grandqc_fold``, ``grandqc_dark_spot``, ``grandqc_pen``, ``grandqc_bubble``, ``grandqc_out_of_focus``, the
fraction of the tile that GrandQC's artefact model gives each class (:func:`class_fractions`); each is
also a check, flagging above :data:`ARTEFACT_MAX`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ._grid import TileGrid
from ._pen import pen_mask

__all__ = [
    "QC_POLICIES",
    "QC_MEASURES",
    "SETTABLE_THRESHOLDS",
    "check_qc_thresholds",
    "qc_thresholds_used",
    "QC_CHECKS",
    "FOCUS_MIN",
    "FOLD_RATIO",
    "DARK_LUMINANCE",
    "DARK_MAX",
    "PEN_MAX",
    "BRIGHT_MARGIN",
    "BRIGHT_MAX",
    "GLASS_LUMINANCE",
    "ARTEFACT_MAX",
    "LEARNED_PREFIX",
    "tile_qc",
    "qc_flags",
    "qc_summary",
    "class_fractions",
]

#: values of the ``qc`` option: no QC (the default: stores and caches as before), measure and record, or
#: measure, record and drop the flagged tiles before embedding
QC_POLICIES = ("off", "flag", "exclude")
#: the per-tile measures, in the order they are stored
QC_MEASURES = (
    "focus",
    "brightness",
    "saturation",
    "density",
    "dark_fraction",
    "pen_fraction",
    "bright_fraction",
)
#: the checks (flags) and the measure each one reads
QC_CHECKS = {
    "blur": "focus",
    "fold": "density",
    "dark": "dark_fraction",
    "pen": "pen_fraction",
    "bubble": "bright_fraction",
}
#: ``blur`` below this focus (mean squared Laplacian, grey levels²) at 0.5 µm/px. Clean synthetic H&E tiles
#: give 90-1000 (median ~600), the real H&E test slides 5 %-95 % quantiles 690-3100; synthetic tiles blurred
#: with sigma 3 px give 5-13. Other mpps or very pale stains may need another value (``thresholds=``).
FOCUS_MIN = 60.0
#: ``fold`` where a tile's tissue density exceeds this multiple of the slide's median tile density. A fold
#: doubles the density of the tissue under it, so it is found where that tissue is not much paler than the
#: slide's usual (injected folds on synthetic slides: 1.6-4.7 x; clean tissue up to 1.65 x, tiles mostly on
#: glass with a dark edge more)
FOLD_RATIO = 1.7
#: a pixel darker than this luminance counts as dark (black spots, debris)
DARK_LUMINANCE = 30.0
#: ``dark`` above this dark fraction
DARK_MAX = 0.10
#: ``pen`` above this ink fraction (injected synthetic strokes: 0.03-0.08; CMU-1-Small-Region, which has
#: green dye specks on its tissue: 14 % of its tiles above it)
PEN_MAX = 0.02
#: a pixel brighter than the glass by this many grey levels counts as bright (bubble rims)
BRIGHT_MARGIN = 8.0
#: ``bubble`` above this bright fraction
BRIGHT_MAX = 0.02
#: pixels at least this bright (and nearly neutral) are glass, left out of focus and saturation
GLASS_LUMINANCE = 215.0
#: a learned artefact check (``grandqc_fold``...) flags a tile where that class covers more than this
#: fraction of it (as ``min_tissue`` keeps a tile with 25 % tissue; not calibrated on a labelled cohort)
ARTEFACT_MAX = 0.25
#: the names of the learned artefact measures and checks start with this (``grandqc_fold``, ``grandqc_pen``...)
LEARNED_PREFIX = "grandqc_"
#: the default thresholds, as recorded with the stored values and in the cache key of ``exclude``
THRESHOLDS = {
    "focus_min": FOCUS_MIN,
    "fold_ratio": FOLD_RATIO,
    "dark_luminance": DARK_LUMINANCE,
    "dark_max": DARK_MAX,
    "pen_max": PEN_MAX,
    "bright_margin": BRIGHT_MARGIN,
    "bright_max": BRIGHT_MAX,
}

#: the thresholds a user may set (``qc_tiles(thresholds=...)``, ``--qc-thresholds``): those applied to the
#: measures; ``dark_luminance`` and ``bright_margin`` act while the tiles are measured and stay fixed
SETTABLE_THRESHOLDS = ("focus_min", "fold_ratio", "dark_max", "pen_max", "bright_max", "artefact_max")


def check_qc_thresholds(thresholds: Any) -> dict[str, float]:
    """The checked threshold overrides: None or ``""`` (none), a dict, or ``"focus_min=40,pen_max=0.05"``.

    Names must be among :data:`SETTABLE_THRESHOLDS`, values finite and >= 0 (``fold_ratio`` > 0).
    Returns only what is set (an empty dict keeps every default, and every cache key as it was)."""
    if thresholds is None or thresholds == "":
        return {}
    pairs: dict[str, Any]
    if isinstance(thresholds, str):
        pairs = {}
        for part in thresholds.split(","):
            name, sep, value = part.partition("=")
            if not sep or not name.strip():
                raise InvalidParameterError(
                    f"QC thresholds are name=value pairs separated by commas (e.g. focus_min=40,pen_max=0.05), "
                    f"got {part.strip()!r}"
                )
            pairs[name.strip()] = value.strip()
    elif isinstance(thresholds, dict):
        pairs = dict(thresholds)
    else:
        raise InvalidParameterError(f"QC thresholds must be a dict or 'name=value,...', got {thresholds!r}")
    out: dict[str, float] = {}
    for name, value in pairs.items():
        if name not in SETTABLE_THRESHOLDS:
            why = (
                f"{name} acts while the tiles are measured and is fixed ({THRESHOLDS[name]:g})"
                if name in THRESHOLDS
                else f"unknown QC threshold {name!r}"
            )
            raise InvalidParameterError(
                f"{why}; the thresholds that can be set: {', '.join(SETTABLE_THRESHOLDS)}"
            )
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InvalidParameterError(f"QC threshold {name} must be a number, got {value!r}") from None
        if not math.isfinite(number) or number < 0 or (name == "fold_ratio" and number == 0):
            raise InvalidParameterError(
                f"QC threshold {name} must be a finite number >= 0 (fold_ratio > 0), got {value!r}"
            )
        out[name] = number
    return out


def qc_thresholds_used(overrides: dict[str, float] | None = None) -> dict[str, float]:
    """Every threshold the checks use: the defaults (:data:`THRESHOLDS` and :data:`ARTEFACT_MAX`) with
    ``overrides`` (:func:`check_qc_thresholds`) instead of them."""
    return {**THRESHOLDS, "artefact_max": ARTEFACT_MAX, **(overrides or {})}


#: the closing of ink pixels, per tile of a batch (no reach along the batch axis)
_SQUARE = np.ones((1, 3, 3), bool)
#: Rec. 601 luma weights x 1000: the grey of a uint8 pixel x 1000, exactly, in int32
_LUMA_1000 = (299, 587, 114)
#: pixels of the tiles whose grey measures are computed at once
_CACHE_PIXELS = 100_000


def tile_qc(images: Any, *, glass: Iterable[float] | None = None) -> dict[str, np.ndarray]:
    """The QC measures of a batch of tiles (see the module docstring).

    Computed in integers where they can be: the grey level x 1000 (exact in int32), its Laplacian (exact),
    the 4 x 4 sums of the colour channels (exact in uint16); only the squared Laplacian, the optical
    densities and the means are floats. The values equal the same formulas in float64 up to float32
    rounding (against the earlier all-float32 version: focus and brightness within relative 5e-7, the
    other measures identical, on the benchmark's tiles), except pixels exactly at a threshold's grey
    level, which the integers decide exactly.

    Parameters
    ----------
    images : uint8 array or tensor, shape (B, H, W, 3) (or one tile (H, W, 3)), RGB as the encoder gets it.
    glass : RGB of the empty glass (``TissueMask.params["glass_rgb"]``); None: white (255, 255, 255).

    Returns
    -------
    dict
        One float32 array (B,) per name of :data:`QC_MEASURES`.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InvalidParameterError(
            f"tile_qc needs uint8 RGB tiles (B, H, W, 3), got {images.dtype} {images.shape}"
        )
    glass_rgb = np.asarray([255.0, 255.0, 255.0] if glass is None else list(glass), np.float32)
    glass_grey = float(0.299 * glass_rgb[0] + 0.587 * glass_rgb[1] + 0.114 * glass_rgb[2])
    # a few tiles at a time, in buffers allocated once: the intermediates stay in the CPU's cache and no
    # page is mapped anew per operation (about 2x faster than whole-batch temporaries)
    step = max(1, _CACHE_PIXELS // (images.shape[1] * images.shape[2]))
    work = _GreyWork(min(step, len(images)), images.shape[1], images.shape[2])
    parts = [work.measures(images[i : i + step], glass_grey) for i in range(0, len(images), step)]
    values = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    small = _shrink(images)
    values.update(_colour(small, glass_grey))
    values["pen_fraction"] = _pen_fraction(small, glass_rgb)
    return {name: np.asarray(values[name], np.float32) for name in QC_MEASURES}


class _GreyWork:
    """Buffers for the grey measures of up to ``b`` tiles of ``h`` x ``w`` px, reused batch after batch."""

    def __init__(self, b: int, h: int, w: int) -> None:
        self.grey = np.empty((b, h, w), np.int32)
        self.tmp = np.empty((b, h, w), np.int32)
        inner = (b, max(h - 2, 0), max(w - 2, 0))
        self.lap = np.empty(inner, np.int32)
        self.lap2 = np.empty(inner, np.float32)
        self.mask = np.empty(inner, bool)
        self.flag = np.empty((b, h, w), bool)

    def measures(self, x: np.ndarray, glass_grey: float) -> dict[str, np.ndarray]:
        """Focus, brightness, dark and bright fractions of uint8 tiles (B, H, W, 3)."""
        n = len(x)
        grey, tmp, lap, lap2, mask = self.grey[:n], self.tmp[:n], self.lap[:n], self.lap2[:n], self.mask[:n]
        w = _LUMA_1000
        np.multiply(x[..., 0], np.int32(w[0]), out=grey)  # the grey level x 1000, exact
        for ch in (1, 2):
            grey += np.multiply(x[..., ch], np.int32(w[ch]), out=tmp)
        pixels = grey[0].size
        # the 4-neighbour Laplacian (sign as scipy.ndimage.laplace), valid part (B, H - 2, W - 2), x 1000
        c = grey[:, 1:-1, 1:-1]
        np.add(grey[:, :-2, 1:-1], grey[:, 2:, 1:-1], out=lap)
        lap += grey[:, 1:-1, :-2]
        lap += grey[:, 1:-1, 2:]
        lap -= np.multiply(c, 4, out=tmp[:, : c.shape[1], : c.shape[2]])
        np.copyto(lap2, lap)
        lap2 *= lap2
        # integer thresholds (faster than float ones; for integer grey, "< t" is "< ceil(t)", "> t" "> floor(t)")
        np.less(c, math.ceil(1000 * GLASS_LUMINANCE), out=mask)  # the tissue (not glass) pixels
        n_inner = np.count_nonzero(mask, axis=(1, 2))
        few = n_inner < 0.02 * c[0].size  # a tile (nearly) all glass: the mean over the whole tile
        focus = np.zeros(n, np.float64)
        if few.any():
            focus[few] = lap2[few].mean(axis=(1, 2), dtype=np.float64)
        lap2 *= mask
        tissue_focus = lap2.sum(axis=(1, 2), dtype=np.float64) / np.maximum(n_inner, 1)
        focus = np.where(few, focus, tissue_focus)
        flag = self.flag[:n]
        dark = np.count_nonzero(np.less(grey, math.ceil(1000 * DARK_LUMINANCE), out=flag), axis=(1, 2))
        bright_min = math.floor(1000 * (glass_grey + BRIGHT_MARGIN))
        bright = np.count_nonzero(np.greater(grey, bright_min, out=flag), axis=(1, 2))
        return {
            "focus": focus / 1e6,
            "brightness": grey.sum(axis=(1, 2), dtype=np.int64) / (1000.0 * pixels),
            "dark_fraction": dark / pixels,
            "bright_fraction": bright / pixels,
        }


def _shrink(x: np.ndarray, factor: int = 4) -> np.ndarray:
    """uint8 tiles (B, H, W, 3) averaged ``factor`` x ``factor`` (rounded half to even; the sums exact in
    uint16) -> uint8 (B, H // factor, W // factor, 3). Tiles smaller than ``factor``: themselves."""
    b, h, w, _ = x.shape
    if h < factor or w < factor:
        return x
    h, w = h - h % factor, w - w % factor  # as avg_pool2d: the last rows and columns that do not fill a block
    rows = x[:, :h, :w].reshape(b, h // factor, factor, w * 3)
    s = rows[:, :, 0].astype(np.uint16)
    for i in range(1, factor):
        s += rows[:, :, i]
    cols = s.reshape(b, h // factor, w // factor, factor, 3)
    total = cols[..., 0, :].copy()
    for i in range(1, factor):
        total += cols[..., i, :]
    return np.round(total / np.float32(factor * factor)).astype(np.uint8)


def _grey(images: np.ndarray) -> np.ndarray:
    rgb = images.astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _colour(small: np.ndarray, glass_grey: float) -> dict[str, np.ndarray]:
    """Saturation and density of the tiles averaged 4 x 4 (uint8 (B, h, w, 3))."""
    b = len(small)
    grey = _grey(small).reshape(b, -1)
    r, g, bl = (small[..., c].reshape(b, -1) for c in range(3))
    vmax = np.maximum(np.maximum(r, g), bl).astype(np.float32)
    sat = (vmax - np.minimum(np.minimum(r, g), bl)) / np.maximum(vmax, 1.0)
    tissue = (grey < GLASS_LUMINANCE) | (sat > 0.15)
    n = tissue.sum(axis=1)
    # the median density is the density of the median grey (the optical density falls as the grey rises):
    # the logarithm of two pixels per tile instead of all
    ordered = np.sort(np.where(tissue, grey, np.inf), axis=1)  # the tissue's grey levels first, in order
    rows, some = np.arange(b), n > 0
    lo = np.where(some, ordered[rows, np.maximum(n - 1, 0) // 2], 1.0)
    hi = np.where(some, ordered[rows, np.maximum(n, 1) // 2], 1.0)
    glass_od = max(glass_grey, 1.0)
    od_lo, od_hi = (np.log10(glass_od / np.maximum(v, 1.0)) for v in (lo, hi))
    return {
        "saturation": (sat * tissue).sum(axis=1) / np.maximum(n, 1),
        "density": np.where(some, (od_lo + od_hi) / 2, 0.0).astype(np.float32),
    }


def _pen_fraction(small: np.ndarray, glass: np.ndarray) -> np.ndarray:
    """Ink fraction per (shrunk) tile: the pen rule of tissue detection (:func:`._pen.pen_mask`), per pixel
    on the whole batch, then its one-pixel margin and the erosion that takes it off again (a closing of
    the ink pixels) per tile."""
    from scipy import ndimage

    levels = np.log10(np.arange(256, dtype=np.float32) + 1.0)
    od = [np.float32(np.log10(glass[c] + 1.0)) - levels[small[..., c]] for c in range(3)]
    ink = pen_mask(small, od, glass, margin=False)
    if ink.any():
        ink = ndimage.binary_dilation(ink, structure=_SQUARE)
        ink = ndimage.binary_erosion(ink, _SQUARE, border_value=1)
    return ink.reshape(len(small), -1).mean(axis=1)


def qc_flags(
    values: dict[str, np.ndarray], thresholds: dict[str, float] | None = None
) -> dict[str, np.ndarray]:
    """Boolean (N,) flags per check of :data:`QC_CHECKS` from the measures of :func:`tile_qc`.

    ``values`` are those of all the slide's tiles: ``fold`` compares each tile's density with their
    median. ``thresholds`` overrides names of :data:`THRESHOLDS` (``focus_min``, ``fold_ratio``,
    ``dark_max``, ``pen_max``, ``bright_max``; ``dark_luminance`` and ``bright_margin`` act when
    measuring, not here)."""
    t = qc_thresholds_used(thresholds)
    density = values["density"]
    usual = float(np.median(density)) if len(density) else 0.0
    flags = {
        "blur": values["focus"] < t["focus_min"],
        "fold": density > t["fold_ratio"] * usual,
        "dark": values["dark_fraction"] > t["dark_max"],
        "pen": values["pen_fraction"] > t["pen_max"],
        "bubble": values["bright_fraction"] > t["bright_max"],
    }
    # the learned artefact fractions, where measured: one check each, named as the measure
    for name in sorted(values):
        if name.startswith(LEARNED_PREFIX):
            flags[name] = values[name] > t["artefact_max"]
    return flags


def class_fractions(
    grid: TileGrid, class_map: np.ndarray, map_mpp: tuple[float, float], classes: dict[int, str]
) -> dict[str, np.ndarray]:
    """Per tile of ``grid``, the fraction of its pixels of each class of a per-pixel class map.

    Parameters
    ----------
    grid : the tiles (level-0 ``coords`` and ``extent``).
    class_map : int (h, w), one class per pixel of the whole slide at ``map_mpp`` (e.g. GrandQC's artefact
        classes, :func:`slidescope.features.segment_artefacts`).
    map_mpp : µm/px (x, y) of ``class_map``.
    classes : class index -> measure name (e.g. ``{2: "grandqc_fold"}``); the other classes are not counted.

    Returns
    -------
    dict
        name -> float32 (N,): the share of the tile's map pixels (its footprint rounded to whole map pixels,
        the part inside the slide) that are of that class.
    """
    h, w = class_map.shape
    fx, fy = grid.slide_mpp[0] / map_mpp[0], grid.slide_mpp[1] / map_mpp[1]  # map px per level-0 px
    ex, ey = grid.extent
    x0 = np.clip(np.round(grid.coords[:, 0] * fx).astype(np.int64), 0, w)
    y0 = np.clip(np.round(grid.coords[:, 1] * fy).astype(np.int64), 0, h)
    x1 = np.clip(np.maximum(np.round((grid.coords[:, 0] + ex) * fx).astype(np.int64), x0 + 1), 0, w)
    y1 = np.clip(np.maximum(np.round((grid.coords[:, 1] + ey) * fy).astype(np.int64), y0 + 1), 0, h)
    k = max(classes) + 1 if classes else 1
    out = np.zeros((len(grid), k), np.float32)
    for i in range(len(grid)):
        box = class_map[y0[i] : y1[i], x0[i] : x1[i]]
        if box.size:
            counts = np.bincount(box.ravel(), minlength=k)[:k]
            out[i] = counts / box.size
    return {name: out[:, c].copy() for c, name in classes.items()}


def qc_summary(
    values: dict[str, np.ndarray] | None,
    *,
    tissue_mm2: float | None = None,
    policy: str | None = None,
    thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A slide's QC in a few numbers: tiles, the fraction flagged per check, focus quantiles.

    ``values`` are the measures of the tiles (:func:`tile_qc`, a store's ``qc()``); None or empty: only
    ``tissue_mm2`` and ``policy``. ``thresholds``: those set instead of the defaults (listed in the summary
    as ``thresholds``, only when some are)."""
    out: dict[str, Any] = {"policy": policy, "tissue_mm2": tissue_mm2}
    if thresholds:
        out["thresholds"] = dict(thresholds)
    if not values or "focus" not in values:
        return out
    n = len(values["focus"])
    flags = qc_flags(values, thresholds)
    out["n_tiles"] = n
    out["flagged_fraction"] = {k: round(float(v.mean()), 4) if n else 0.0 for k, v in flags.items()}
    any_flag = np.zeros(n, bool)
    for f in flags.values():
        any_flag |= f
    out["flagged_any"] = round(float(any_flag.mean()), 4) if n else 0.0
    out["excluded"] = int(any_flag.sum()) if policy == "exclude" else 0
    focus = values["focus"]
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    out["focus_quantiles"] = (
        {f"q{int(q * 100):02d}": round(float(np.quantile(focus, q)), 2) for q in qs} if n else {}
    )
    for name in ("brightness", "saturation"):
        if name in values and n:
            v = float(np.mean(values[name]))
            out[f"mean_{name}"] = round(v, 4) if math.isfinite(v) else None
    return out
