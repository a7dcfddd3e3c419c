"""The steps of tissue detection on a low-resolution RGB image (see :mod:`slidescope.wsi._tissue`).

:func:`segment` is the whole detector on one image, every pixel analysed (``method="full"`` of
:func:`~slidescope.wsi.detect_tissue`); :mod:`slidescope.wsi._refine` runs the same steps on a coarse image
and refines the boundary. Steps: :func:`analyse` (glass colour, OD-chroma score, IHC test, pen, threshold),
:func:`hysteresis`, :func:`clean` (closing, hole filling, pen, smallest pieces).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ._pen import DAB_IHC_FRACTION, dab_brown, pen_mask

__all__ = [
    "SCORE_FLOOR",
    "SCORE_WEAK_FLOOR",
    "SCORE_CEILING",
    "MORPH_RADIUS_UM",
    "Analysis",
    "optical_density",
    "chroma",
    "analyse",
    "hysteresis",
    "clean",
    "close_cross",
    "dilate_square",
    "fill_holes",
    "label",
    "segment",
]

#: Lowest automatic threshold on the OD-chroma score. Glass (noise, uneven illumination) stays
#: below ~0.01 at mask resolution; H&E scaled to 0.3 of its normal density still scores > 0.05.
SCORE_FLOOR = 0.035
#: Faint pixels above this score (and above a third of the threshold) are tissue when they touch
#: clear tissue (hysteresis): the thin membranes of fat, pale edges of a section.
SCORE_WEAK_FLOOR = 0.025
#: Highest automatic threshold: normal H&E and IHC tissue scores 0.1-1; without this cap Otsu on a
#: slide that is all tissue would split the tissue itself.
SCORE_CEILING = 0.08
#: Radius of the closing disk, µm.
MORPH_RADIUS_UM = 10.0

#: log10(I + 1) for every uint8 intensity: optical densities through a lookup table
_LOG_LEVELS = np.log10(np.arange(256, dtype=np.float32) + 1.0)


@dataclass
class Analysis:
    """What :func:`analyse` found on one image: the per-pixel score and pen, and the global decisions."""

    glass: np.ndarray  # RGB of the empty glass, float32 (3,)
    od: list[np.ndarray]  # optical density per channel relative to the glass, float32
    score: np.ndarray  # OD chroma, float32
    pen: np.ndarray  # pen and ink pixels (with their one-pixel margin), bool
    pen_used: str  # "on" or "off"
    dab_fraction: float
    auto: float | None  # Otsu's threshold before clipping (None with a fixed threshold)
    t: float  # threshold used
    t_low: float  # weak threshold of the hysteresis


def glass_colour(rgb: np.ndarray, max_samples: int = 250_000) -> np.ndarray:
    """Estimated RGB of the empty glass: the bright near-neutral pixels; white if there are none."""
    flat = rgb.reshape(-1, 3)
    step = max(1, len(flat) // max_samples)  # a subsample is plenty for a median
    sub = flat[::step].astype(np.float32)
    r, g, b = sub[:, 0], sub[:, 1], sub[:, 2]
    bright = (r + g + b) / 3.0
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    neutral = (spread <= 24) & (bright >= 150)
    if int(neutral.sum()) < max(16, 0.005 * len(sub)):
        return np.array([255.0, 255.0, 255.0], np.float32)
    cand, cb = sub[neutral], bright[neutral]
    top = cand[cb >= np.percentile(cb, 75)]
    return np.median(top, axis=0).astype(np.float32)


def otsu(values: np.ndarray, nbins: int = 256) -> float | None:
    """Otsu's threshold of a 1-D sample (None when it is too small or constant)."""
    if values.size < 16:
        return None
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:
        return None
    hist, edges = np.histogram(values, bins=nbins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def disk(radius: int) -> np.ndarray:
    """The closing's structuring element: a digital disk (radius 1 is the 4-neighbour cross)."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx * xx + yy * yy <= radius * radius + radius * 0.5


def optical_density(rgb: np.ndarray, glass: np.ndarray) -> list[np.ndarray]:
    """``OD_c = log10(glass_c + 1) - log10(I_c + 1)`` per channel, float32, through a lookup table."""
    # one lookup per channel: the table already holds log10(glass_c + 1) - log10(I + 1)
    return [(np.float32(np.log10(glass[c] + 1.0)) - _LOG_LEVELS)[rgb[..., c]] for c in range(3)]


def chroma(od: list[np.ndarray]) -> np.ndarray:
    """The tissue score: OD chroma ``max_c OD_c - min_c OD_c`` (float32)."""
    return np.maximum(np.maximum(od[0], od[1]), od[2]) - np.minimum(np.minimum(od[0], od[1]), od[2])


def analyse(
    rgb: np.ndarray, *, pen_mode: str, threshold: float | None, glass_samples: int = 250_000
) -> Analysis:
    """Steps 1-4a of the detector on one image: glass, score, IHC test, pen, threshold."""
    h, w = rgb.shape[:2]
    glass = glass_colour(rgb, glass_samples)
    od = optical_density(rgb, glass)
    score = chroma(od)
    # step 4a: does the slide look like IHC? (DAB-brown share of the tissue candidate)
    candidate = score > (SCORE_FLOOR if threshold is None else float(threshold))
    n_candidate = int(candidate.sum())
    dab_fraction = float((dab_brown(od) & candidate).sum() / n_candidate) if n_candidate else 0.0
    pen_used = pen_mode if pen_mode != "auto" else ("off" if dab_fraction >= DAB_IHC_FRACTION else "on")
    pen = pen_mask(rgb, od, glass) if pen_used == "on" else np.zeros((h, w), bool)
    if threshold is None:
        auto = otsu(score[~pen]) if (~pen).any() else None
        t = SCORE_FLOOR if auto is None else float(np.clip(auto, SCORE_FLOOR, SCORE_CEILING))
    else:
        auto, t = None, float(threshold)
    t_low = min(t, max(SCORE_WEAK_FLOOR, t / 3.0))
    return Analysis(glass, od, score, pen, pen_used, dab_fraction, auto, t, t_low)


def hysteresis(score: np.ndarray, pen: np.ndarray, t: float, t_low: float) -> np.ndarray:
    """Pixels above ``t``, and those above ``t_low`` 8-connected to them; pen excluded."""
    strong = (score > t) & ~pen
    if not strong.any():
        return strong
    weak = (score > t_low) & ~pen
    labels, n = label(weak, connectivity=8)
    keep = np.zeros(n + 1, bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    return keep[labels]


def dilate_square(mask: np.ndarray) -> np.ndarray:
    """Binary dilation by the 3 x 3 square (outside the image counts as False), by shifted ORs."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    rows = out.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def close_cross(mask: np.ndarray) -> np.ndarray:
    """Closing by the 4-neighbour cross (:func:`disk` of radius 1) with the edges replicated, by shifts.

    Equal to ``ndimage.binary_closing`` of the edge-padded image, cropped (a test checks it)."""
    a = np.pad(mask, 1, mode="edge")
    d = a.copy()
    d[1:] |= a[:-1]
    d[:-1] |= a[1:]
    d[:, 1:] |= a[:, :-1]
    d[:, :-1] |= a[:, 1:]
    e = d.copy()  # erosion: outside the padded image counts as False (scipy's border_value=0)
    e[1:] &= d[:-1]
    e[:-1] &= d[1:]
    e[:, 1:] &= d[:, :-1]
    e[:, :-1] &= d[:, 1:]
    e[0] = e[-1] = False
    e[:, 0] = e[:, -1] = False
    return e[1:-1, 1:-1]


def label(mask: np.ndarray, connectivity: Literal[4, 8] = 4) -> tuple[np.ndarray, int]:
    """The connected pieces of the bool ``mask``, numbered 1..n (0 off the mask): ``(labels, n)``.

    ``connectivity``: 4 (edge neighbours, ``ndimage.label``'s default) or 8 (corners too, its
    ``structure=np.ones((3, 3))``). The labelling is cc3d's (``connected-components-3d``), 2-3x faster than
    ``ndimage.label`` on a 2,500 x 1,875 mask (7-10 against 20 ms). The pieces are scipy's, numbered 1..n but
    not always in scipy's order (``tests/wsi/test_tissue_speed_quality.py`` checks it against scipy).
    """
    import cc3d

    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    if mask.size == 0:
        return np.zeros(mask.shape, np.uint16), 0
    # as 0/1 uint8, which cc3d labels in its multi-valued mode: its binary mode (bool input) labels some
    # background pixels at connectivity 8 in cc3d 4.0-4.1.1 (not 3.24), found by the test against scipy
    data = np.asarray(mask, bool).view(np.uint8)
    labels, n = cc3d.connected_components(data, connectivity=connectivity, return_N=True)
    return labels, int(n)


#: up to this many holes (or pieces of background reaching the edge), :func:`fill_holes` finds the pixels to
#: fill by comparisons instead of a lookup per pixel
_FEW = 8


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every background piece that does not reach the image border set (4-connected
    background, as ``ndimage.binary_fill_holes``; one labelling instead of its repeated dilations).

    Only the mask's bounding box grown by one pixel is labelled: every background pixel outside the box
    reaches the border in a straight line, so a piece is a hole exactly when it does not reach the grown
    box's edge (a slide's tissue often covers a small part of it)."""
    out = mask.copy()
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return out
    h, w = mask.shape
    r0, r1 = max(0, int(rows[0]) - 1), min(h, int(rows[-1]) + 2)
    cols = np.flatnonzero(mask[r0:r1].any(axis=0))
    c0, c1 = max(0, int(cols[0]) - 1), min(w, int(cols[-1]) + 2)
    _fill_holes_into(out[r0:r1, c0:c1])
    return out


def _fill_holes_into(mask: np.ndarray) -> None:
    """Fill the holes of ``mask`` in place, labelling all of it (see :func:`fill_holes`)."""
    labels, n = label(~mask)  # 4-connected background, as ndimage.binary_fill_holes
    if n == 0:
        return
    outside = np.zeros(n + 1, bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        outside[edge] = True
    if outside[1:].all():  # no holes
        return
    holes = np.flatnonzero(~outside[1:]) + 1
    if len(holes) <= _FEW:  # a comparison per hole is ~20x cheaper than a lookup per pixel
        for hole in holes:
            mask |= labels == hole
        return
    reach = np.flatnonzero(outside[1:]) + 1
    if len(reach) <= _FEW:  # many holes but few pieces reaching the edge: everything else is filled
        fill = labels != 0
        for piece in reach:
            fill &= labels != piece
        mask |= fill
        return
    outside[0] = False
    mask[...] = ~outside[labels]


def clean(
    tissue: np.ndarray,
    pen: np.ndarray,
    *,
    mpp: float,
    min_area_um2: float,
    fill: bool,
    closing: bool = True,
) -> np.ndarray:
    """Step 5: closing with a disk of ~10 µm, holes filled, pen removed, small pieces dropped."""
    from scipy import ndimage

    if not tissue.any():
        return tissue
    radius = max(1, int(round(MORPH_RADIUS_UM / mpp)))
    if closing:
        # closing bridges gaps of ~2 radius (loose stroma, nuclei-free gaps); no opening, which
        # would cut thin strands of real tissue (specks go with min_area_um2). The image is padded
        # by replication so tissue touching the border is not eroded there.
        if radius == 1:
            tissue = close_cross(tissue)
        else:
            padded = np.pad(tissue, radius, mode="edge")
            padded = ndimage.binary_closing(padded, structure=disk(radius))
            tissue = padded[radius:-radius, radius:-radius]
    if fill:
        tissue = fill_holes(tissue)
    tissue &= ~pen
    min_px = min_area_um2 / (mpp * mpp)
    if min_px > 0 and tissue.any():
        labels, n = label(tissue, connectivity=8)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_px
        keep[0] = False
        tissue = keep[labels]
    return tissue


def info_of(a: Analysis, *, radius: int) -> dict:
    """The derived values of an analysis for ``TissueMask.params`` (JSON-ready)."""
    strong_all = a.score > a.t
    n_strong = int(strong_all.sum())
    removed = float((strong_all & a.pen).sum() / n_strong) if n_strong else 0.0
    return {
        "pen_used": a.pen_used,
        "dab_fraction": round(a.dab_fraction, 5),
        # share of what scores as tissue that pen removal excluded (see pen_hint)
        "pen_removed_fraction": round(removed, 5),
        "glass_rgb": [round(float(v), 1) for v in a.glass],
        "threshold_auto": None if a.auto is None else round(float(a.auto), 5),
        "threshold_used": round(float(a.t), 5),
        "threshold_weak": round(float(a.t_low), 5),
        "pen_fraction": round(float(a.pen.mean()), 5) if a.pen_used == "on" else 0.0,
        "morph_radius_px": radius,
    }


def segment(
    rgb: np.ndarray,
    *,
    mpp: float,
    min_area_um2: float,
    pen_mode: str,
    fill_holes: bool,
    threshold: float | None,
) -> tuple[np.ndarray, dict]:
    """The whole detector on one image, every pixel analysed: (bool mask, info)."""
    a = analyse(rgb, pen_mode=pen_mode, threshold=threshold)
    tissue = hysteresis(a.score, a.pen, a.t, a.t_low)
    tissue = clean(tissue, a.pen, mpp=mpp, min_area_um2=min_area_um2, fill=fill_holes)
    radius = max(1, int(round(MORPH_RADIUS_UM / mpp)))
    return tissue.astype(bool, copy=False), info_of(a, radius=radius)
