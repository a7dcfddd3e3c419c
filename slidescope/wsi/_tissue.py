"""Tissue detection on a low-resolution image of the slide: :func:`detect_tissue` and :class:`TissueMask`.

The slide is read once at a coarse pixel size (8 µm/px by default: a 20 x 15 mm section gives a
2500 x 1875 mask), from the coarsest pyramid level that is at least that fine, block by block, each
block area-averaged down to the mask grid, so time and memory stay bounded whatever the slide.

Algorithm (:func:`tissue_mask_from_rgb`)
----------------------------------------
1. Glass colour: estimated from the bright, near-grey pixels (median of the brightest quarter of
   them); white when there are none (a field that is all tissue).
2. Optical density per channel, ``OD_c = -log10(I_c / glass_c)``. The tissue score is the OD
   *chroma* ``max_c OD_c - min_c OD_c``: stains (haematoxylin, eosin, DAB...) absorb the three
   channels unequally, glass does not. A change of illumination (vignetting, a dim scan, glass at
   230 instead of 255) adds the same OD to every channel, so it leaves the score unchanged; scanner
   noise averaged over a mask pixel is far below the floor.
3. Threshold: Otsu on the score, clipped to [:data:`SCORE_FLOOR`, :data:`SCORE_CEILING`]. The floor
   keeps a blank slide empty; the ceiling keeps a slide that is all tissue (no glass mode to find)
   from being split into dark and light tissue. ``threshold=`` replaces this with a fixed value.
   Hysteresis: fainter pixels (score above max(:data:`SCORE_WEAK_FLOOR`, threshold / 3)) are
   tissue too when connected to clear tissue, which brings in the thin membranes of fat and the
   pale rim of a section without letting isolated faint glass in.
4. Pen and ink (``pen``): blue/green/cyan ink (red clearly below green: neither H&E's
   haematoxylin, eosin nor DAB does that; over tissue, blue ink is told from haematoxylin by its
   low blue/red OD ratio) and black ink (very dark and nearly neutral) are excluded, with a
   one-pixel margin for the blurred edge of the stroke. Tissue marking dye is ink too and is
   excluded the same way. The blued haematoxylin counterstain of IHC slides *is* blue with red
   below green, so on IHC these rules remove the tissue itself; ``pen="auto"`` (the default)
   therefore turns pen removal off when the slide looks like IHC (step 4a), ``"on"`` and ``"off"``
   force it.
4a. IHC test (``pen="auto"``): colour deconvolution (Ruifrok & Johnston 2001, the H-E-DAB matrix
   of :data:`skimage.color.hed_from_rgb`) of the optical densities relative to the glass gives a
   DAB concentration per pixel. A pixel of the tissue candidate (score above the floor, or above
   ``threshold``) counts as DAB-brown when that concentration is above :data:`DAB_MIN_OD` *and*
   its hue is brown: blue absorbed at least :data:`DAB_BLUE_GREEN_RATIO` times as much as green and
   green clearly more than red (:data:`DAB_GREEN_RED_MIN`). The hue gate is needed because the
   deconvolution alone reads the eosin of real H&E scans as DAB (median DAB ~0.2 on
   CMU-1-Small-Region) and black ink as DAB + haematoxylin. The slide is taken as IHC, and pen
   removal is off, when at least :data:`DAB_IHC_FRACTION` of the candidate is DAB-brown. A
   negative IHC (no DAB anywhere) or a brown-pigmented H&E slide is misread; ``pen="off"`` /
   ``"on"`` override, and the empty-tissue errors suggest ``--pen off`` when pen removal took most
   of the candidate (:func:`pen_hint`).
5. Clean up: closing with a disk of ~10 µm, holes filled (``fill_holes``), pen removed, and
   connected pieces smaller than ``min_area_um2`` dropped. No opening: thin strands of tissue
   one or two mask pixels wide are kept.

The pen and ink rules and the IHC test (steps 4, 4a) are in :mod:`slidescope.wsi._pen`; the contours and
GeoJSON rings of :class:`TissueMask` in :mod:`slidescope.wsi._polygons`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._compat import renamed_kwargs
from ..errors import InvalidParameterError

from ._downsample import read_downsampled as _read_downsampled
from ._pen import (
    DAB_BLUE_GREEN_RATIO as DAB_BLUE_GREEN_RATIO,
    DAB_GREEN_RED_MIN as DAB_GREEN_RED_MIN,
    DAB_IHC_FRACTION as DAB_IHC_FRACTION,
    DAB_MIN_OD as DAB_MIN_OD,
    PEN_HINT_FRACTION as PEN_HINT_FRACTION,
    PEN_MODES as PEN_MODES,
    check_pen_mode,
    dab_brown,
    pen_hint as pen_hint,
    pen_mask,
)
from ._polygons import iter_polygons, mask_contours, ring_area_um2, ring_to_list

if TYPE_CHECKING:  # pragma: no cover
    from ._slide import Slide

log = logging.getLogger(__name__)

__all__ = [
    "TissueMask",
    "detect_tissue",
    "tissue_mask_from_rgb",
    "DEFAULT_MASK_MPP",
    "DEFAULT_MIN_AREA_UM2",
    "SCORE_FLOOR",
    "SCORE_CEILING",
    "PEN_MODES",
    "DAB_IHC_FRACTION",
    "pen_hint",
]

#: Default pixel size of the tissue mask, µm/px (a 20 x 15 mm section -> 2500 x 1875 mask).
DEFAULT_MASK_MPP = 8.0
#: Default smallest tissue piece kept, µm² (0.02 mm², a 140 µm square): drops dust and specks.
DEFAULT_MIN_AREA_UM2 = 20_000.0
#: Lowest automatic threshold on the OD-chroma score. Glass (noise, uneven illumination) stays
#: below ~0.01 at mask resolution; H&E scaled to 0.3 of its normal density still scores > 0.05.
SCORE_FLOOR = 0.035
#: Faint pixels above this score (and above a third of the threshold) are tissue when they touch
#: clear tissue (hysteresis): the thin membranes of fat, pale edges of a section.
SCORE_WEAK_FLOOR = 0.025
#: Highest automatic threshold: normal H&E and IHC tissue scores 0.1-1; without this cap Otsu on a
#: slide that is all tissue would split the tissue itself.
SCORE_CEILING = 0.08
#: The mask must stay a low-resolution image: more pixels than this is refused.
MAX_MASK_PIXELS = 120_000_000
#: Radius of the closing disk, µm.
MORPH_RADIUS_UM = 10.0
#: Colour of the "Tissue" class in the GeoJSON (QuPath shows it).
TISSUE_COLOR = [0, 160, 60]


# -------------------------------------------------------------------------------------------------
# result
# -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)  # eq=False: compare masks with np.array_equal, not ==
class TissueMask:
    """Where the tissue is, as a low-resolution mask over the whole slide and as polygons.

    Attributes
    ----------
    mask : bool ndarray, shape (h, w)
        True where there is tissue. Covers the whole slide: pixel ``(r, c)`` is the level-0 area
        ``[c * downsample[0], (c + 1) * downsample[0]) x [r * downsample[1], (r + 1) * downsample[1])``.
    downsample : (float, float)
        Level-0 pixels per mask pixel, (x, y) = ``(w0 / w, h0 / h)`` exactly.
    mpp : (float, float)
        µm per mask pixel (x, y).
    slide_dimensions : (int, int)
        Level-0 (width, height) of the slide.
    contours : tuple of float64 ndarray, each shape (K, 2)
        Outer boundary of every connected tissue piece, (x, y) in level-0 pixels, top-left origin,
        closed (first point == last point), simplified to about one mask pixel.
    params : dict
        The parameters and derived values used (requested and actual mpp, pyramid level read,
        threshold, glass colour...), JSON-serialisable, for provenance.
    holes : tuple of tuple of ndarray
        ``holes[i]`` are the inner boundaries (same format) of ``contours[i]``; empty tuples when
        holes were filled.
    """

    mask: np.ndarray
    downsample: tuple[float, float]
    mpp: tuple[float, float]
    slide_dimensions: tuple[int, int]
    contours: tuple[np.ndarray, ...]
    params: dict = field(default_factory=dict)
    holes: tuple[tuple[np.ndarray, ...], ...] = ()

    @property
    def is_empty(self) -> bool:
        """True when no tissue was found."""
        return not bool(self.mask.any())

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the slide area that is tissue, 0-1."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def area_um2(self) -> float:
        """Tissue area in µm² (mask pixels x pixel area)."""
        return float(self.mask.sum()) * self.mpp[0] * self.mpp[1]

    def to_geojson(self) -> dict[str, Any]:
        """QuPath-compatible GeoJSON ``FeatureCollection``, one ``Polygon`` feature per tissue piece.

        Coordinates are level-0 pixels (x, y), top-left origin, as QuPath expects when the file is
        dropped onto the slide. Each polygon has its outer ring first, then its holes, all closed.
        Properties: ``objectType: "annotation"``, ``classification: {"name": "Tissue", "color"}``,
        ``measurements: {"area_um2"}`` (area of that piece from the mask).
        """
        features = []
        for i, outer in enumerate(self.contours):
            holes = self.holes[i] if i < len(self.holes) else ()
            area = ring_area_um2(outer, self.mpp, self.downsample) - sum(
                ring_area_um2(h, self.mpp, self.downsample) for h in holes
            )
            features.append(
                {
                    "type": "Feature",
                    "id": f"tissue-{i}",
                    "geometry": {
                        "type": "Polygon",
                        "coordinates": [ring_to_list(r) for r in (outer, *holes)],
                    },
                    "properties": {
                        "objectType": "annotation",
                        "name": f"Tissue {i + 1}",
                        "classification": {"name": "Tissue", "color": list(TISSUE_COLOR)},
                        "isLocked": False,
                        "measurements": {"area_um2": round(float(area), 2)},
                    },
                }
            )
        return {"type": "FeatureCollection", "features": features}

    def save_geojson(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_geojson` to ``path`` (UTF-8 JSON) and return the path."""
        p = Path(path)
        p.write_text(json.dumps(self.to_geojson()), encoding="utf-8")
        return p

    @classmethod
    @renamed_kwargs(mpp_slide="slide_mpp")
    def from_geojson(
        cls,
        source: str | os.PathLike[str] | dict | list,
        *,
        slide_dimensions: tuple[int, int],
        slide_mpp: float | tuple[float, float],
        mask_mpp: float = DEFAULT_MASK_MPP,
    ) -> TissueMask:
        """Rasterise polygons (e.g. a tissue annotation drawn in QuPath) into a :class:`TissueMask`.

        Parameters
        ----------
        source : path of a GeoJSON file, or the parsed object: a ``FeatureCollection``, a list of
            features, one ``Feature`` or a bare geometry. Every ``Polygon`` and ``MultiPolygon``
            is used (holes included), whatever its classification; other geometries are ignored.
            Coordinates are level-0 pixels, top-left origin.
        slide_dimensions : level-0 (width, height) of the slide.
        slide_mpp : level-0 µm/px of the slide (one number or (x, y)). The old name ``mpp_slide`` still
            works for one release, with a DeprecationWarning.
        mask_mpp : µm per mask pixel, as in :func:`detect_tissue`.

        Returns
        -------
        TissueMask
            Mask of shape (round(h0 / ds), round(w0 / ds)), ds = mask_mpp / slide_mpp.
        """
        from skimage.draw import polygon as draw_polygon

        data = source
        if not isinstance(source, (dict, list)):
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        slide_mpp = _check_pair(slide_mpp, "slide_mpp")
        _check_positive(mask_mpp, "mask_mpp")
        w0, h0 = (int(v) for v in slide_dimensions)
        if w0 <= 0 or h0 <= 0:
            raise InvalidParameterError(f"slide_dimensions must be positive (w, h), got {slide_dimensions}")
        (mw, mh), ds, mpp = _mask_geometry((w0, h0), slide_mpp, mask_mpp)
        mask = np.zeros((mh, mw), bool)
        n = 0
        for rings in iter_polygons(data):
            for k, ring in enumerate(rings):
                xy = np.asarray(ring, float).reshape(-1, 2)
                if len(xy) < 3:
                    continue
                # level-0 edge coordinates -> mask pixel-centre index coordinates
                cols = xy[:, 0] / ds[0] - 0.5
                rows = xy[:, 1] / ds[1] - 0.5
                rr, cc = draw_polygon(rows, cols, shape=mask.shape)
                mask[rr, cc] = k == 0  # outer ring sets, holes clear
            n += 1
        if n == 0:
            log.warning("from_geojson: no Polygon or MultiPolygon found; the mask is empty")
        contours, holes = mask_contours(mask, ds)
        params = {
            "source": "geojson",
            "mask_mpp_requested": float(mask_mpp),
            "mask_mpp": list(mpp),
            "n_polygons": n,
        }
        return cls(mask, ds, mpp, (w0, h0), contours, params, holes)

    def __repr__(self) -> str:
        h, w = self.mask.shape
        return (
            f"TissueMask({w}x{h} at {self.mpp[0]:.3g} µm/px, {len(self.contours)} pieces, "
            f"{self.tissue_fraction:.1%} tissue, {self.area_um2 / 1e6:.3g} mm²)"
        )


# -------------------------------------------------------------------------------------------------
# public functions
# -------------------------------------------------------------------------------------------------
def detect_tissue(
    slide: Slide,
    *,
    mpp: float = DEFAULT_MASK_MPP,
    min_area_um2: float = DEFAULT_MIN_AREA_UM2,
    pen: str = "auto",
    fill_holes: bool = True,
    threshold: float | None = None,
    remove_pen: bool | None = None,
) -> TissueMask:
    """Find the tissue on a slide.

    Parameters
    ----------
    slide : Slide
        An open slide (:func:`open_slide`) with a known pixel size.
    mpp : float, default 8.0
        µm per pixel of the mask (fast, and fine enough for tiling at 256 px x 0.5 µm = 128 µm). It is
        read from the coarsest pyramid level at least that fine, in blocks, area-averaged. A value finer
        than the slide's own pixels is raised to them.
    min_area_um2 : float, default 20,000
        Tissue pieces smaller than this (µm², i.e. 0.02 mm²) are dropped. Independent of ``mpp``.
    pen : {"auto", "on", "off"}, default "auto"
        Pen removal: ``"on"`` excludes blue, green and black ink (pen marks, marking dye); ``"off"`` keeps
        everything; ``"auto"`` is ``"on"`` unless the slide looks like IHC (DAB-brown in at least
        :data:`DAB_IHC_FRACTION` of the tissue, see the module docstring), where the blue haematoxylin
        counterstain would be taken for ink. ``params["pen_used"]`` says what was done.
    fill_holes : bool, default True
        Fill holes completely enclosed by tissue (lumens, tears, fat).
    threshold : float, optional
        Fixed threshold on the OD-chroma score (see the module docstring; 0.035-0.08 is the usual range)
        instead of the automatic one.
    remove_pen : bool, optional
        The older spelling of ``pen``, kept for existing code: True is ``pen="on"``, False ``pen="off"``.

    Returns
    -------
    TissueMask
        ``mask``: bool array of shape (round(h0 / ds), round(w0 / ds)) with ds = mpp / slide mpp, at least
        1 x 1; ``mpp`` (x, y) of the mask; ``contours`` in level-0 px; ``area_um2``; ``to_geojson()`` /
        ``save_geojson(path)`` for QuPath.

    Raises
    ------
    InvalidParameterError
        ``mpp`` not a positive finite number, or so fine that the mask would be huge; ``pen`` not one of
        auto, on, off.
    MissingMppError
        The slide has no pixel size: open it with ``open_slide(path, slide_mpp=...)``.

    Examples
    --------
    >>> import slidescope as ss
    >>> slide = ss.open_slide("sample_data/sample_slide.tiff")
    >>> mask = ss.detect_tissue(slide)
    >>> mask
    TissueMask(256x192 at 8 µm/px, 3 pieces, 31.1% tissue, 0.979 mm²)
    >>> mask.mask.shape, mask.mask.dtype                      # (H, W) at mask.mpp
    ((192, 256), dtype('bool'))
    >>> mask.to_geojson()["type"]                             # contours in level-0 px, for QuPath
    'FeatureCollection'
    """
    _check_positive(mpp, "mpp")
    _check_nonneg(min_area_um2, "min_area_um2")
    if threshold is not None:
        _check_positive(threshold, "threshold")
    pen = check_pen_mode(pen, remove_pen)
    slide_mpp = slide.mpp  # MissingMppError propagates, its message says to pass slide_mpp=
    w0, h0 = slide.dimensions
    eff_mpp = max(float(mpp), float(slide_mpp[0]), float(slide_mpp[1]))
    if eff_mpp > mpp:
        log.warning(
            "tissue mask at %.4g µm/px requested but the slide's pixels are %.4g µm; using %.4g",
            mpp,
            max(slide_mpp),
            eff_mpp,
        )
    (mw, mh), ds, mask_mpp = _mask_geometry((w0, h0), slide_mpp, eff_mpp)
    if mw * mh > MAX_MASK_PIXELS:
        raise InvalidParameterError(
            f"a tissue mask at {mpp} µm/px would have {mw}x{mh} pixels; tissue detection works on a "
            f"low-resolution image: use mpp >= "
            f"{eff_mpp * math.sqrt(mw * mh / MAX_MASK_PIXELS):.3g} (default 8)"
        )
    level = slide.best_level_for_mpp(eff_mpp)
    rgb = _read_downsampled(slide, level, (mw, mh))
    pixel_mpp = float(math.sqrt(mask_mpp[0] * mask_mpp[1]))
    mask, info = _segment(
        rgb,
        mpp=pixel_mpp,
        min_area_um2=min_area_um2,
        pen_mode=pen,
        fill_holes=fill_holes,
        threshold=threshold,
    )
    contours, holes = mask_contours(mask, ds)
    params = {
        "mpp": float(mpp),
        "mask_mpp": [float(mask_mpp[0]), float(mask_mpp[1])],
        "min_area_um2": float(min_area_um2),
        "pen": pen,
        "fill_holes": bool(fill_holes),
        "threshold": None if threshold is None else float(threshold),
        "level": int(level),
        "level_dimensions": list(slide.level_dimensions[level]),
        "slide_mpp": [float(slide_mpp[0]), float(slide_mpp[1])],
        "slide": slide.path.name,
        "backend": slide.backend,
        **info,
    }
    result = TissueMask(mask, ds, mask_mpp, (int(w0), int(h0)), contours, params, holes)
    log.info("%s: %r", slide.path.name, result)
    return result


def tissue_mask_from_rgb(
    rgb: np.ndarray,
    *,
    mpp: float,
    min_area_um2: float = DEFAULT_MIN_AREA_UM2,
    pen: str = "auto",
    fill_holes: bool = True,
    threshold: float | None = None,
    remove_pen: bool | None = None,
) -> np.ndarray:
    """Tissue mask of a low-resolution RGB image of a slide (the core of :func:`detect_tissue`).

    Parameters
    ----------
    rgb : uint8 ndarray, shape (h, w, 3)
        The slide (or a part of it) at ``mpp`` µm/px, area-averaged (not point-sampled).
    mpp : µm per pixel of ``rgb``; sets the sizes of ``min_area_um2`` and of the clean-up.
    min_area_um2, pen, fill_holes, threshold, remove_pen : as in :func:`detect_tissue`.

    Returns
    -------
    bool ndarray, shape (h, w)
        True where there is tissue.
    """
    _check_positive(mpp, "mpp")
    _check_nonneg(min_area_um2, "min_area_um2")
    if threshold is not None:
        _check_positive(threshold, "threshold")
    pen = check_pen_mode(pen, remove_pen)
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidParameterError(f"rgb must be an (h, w, 3) image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise InvalidParameterError(f"rgb must be uint8, got {arr.dtype}")
    mask, _ = _segment(
        arr[..., :3],
        mpp=float(mpp),
        min_area_um2=min_area_um2,
        pen_mode=pen,
        fill_holes=fill_holes,
        threshold=threshold,
    )
    return mask


# -------------------------------------------------------------------------------------------------
# segmentation
# -------------------------------------------------------------------------------------------------
def _glass_colour(rgb: np.ndarray) -> np.ndarray:
    """Estimated RGB of the empty glass: the bright near-neutral pixels; white if there are none."""
    flat = rgb.reshape(-1, 3)
    step = max(1, len(flat) // 250_000)  # a subsample is plenty for a median
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


def _otsu(values: np.ndarray, nbins: int = 256) -> float | None:
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


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx * xx + yy * yy <= radius * radius + radius * 0.5


def _segment(
    rgb: np.ndarray,
    *,
    mpp: float,
    min_area_um2: float,
    pen_mode: str,
    fill_holes: bool,
    threshold: float | None,
) -> tuple[np.ndarray, dict]:
    from scipy import ndimage

    h, w = rgb.shape[:2]
    glass = _glass_colour(rgb)
    # optical density relative to the glass, per channel, through a lookup table (uint8 input)
    levels = np.log10(np.arange(256, dtype=np.float32) + 1.0)
    od = [np.float32(np.log10(glass[c] + 1.0)) - levels[rgb[..., c]] for c in range(3)]
    score = np.maximum(np.maximum(od[0], od[1]), od[2]) - np.minimum(np.minimum(od[0], od[1]), od[2])

    # step 4a: does the slide look like IHC? (DAB-brown share of the tissue candidate)
    candidate = score > (SCORE_FLOOR if threshold is None else float(threshold))
    n_candidate = int(candidate.sum())
    dab_fraction = float((dab_brown(od) & candidate).sum() / n_candidate) if n_candidate else 0.0
    pen_used = pen_mode if pen_mode != "auto" else ("off" if dab_fraction >= DAB_IHC_FRACTION else "on")
    remove_pen = pen_used == "on"
    pen = pen_mask(rgb, od, glass) if remove_pen else np.zeros((h, w), bool)

    if threshold is None:
        auto = _otsu(score[~pen]) if (~pen).any() else None
        t = SCORE_FLOOR if auto is None else float(np.clip(auto, SCORE_FLOOR, SCORE_CEILING))
    else:
        auto, t = None, float(threshold)
    # hysteresis: faint pixels (fat membranes, pale edges) count when connected to clear tissue
    t_low = min(t, max(SCORE_WEAK_FLOOR, t / 3.0))
    strong = (score > t) & ~pen
    weak = (score > t_low) & ~pen
    if strong.any():
        labels, _ = ndimage.label(weak, structure=np.ones((3, 3), bool))
        ids = np.unique(labels[strong])
        keep = np.zeros(int(labels.max()) + 1, bool)
        keep[ids] = True
        keep[0] = False
        tissue = keep[labels]
    else:
        tissue = strong

    radius = max(1, int(round(MORPH_RADIUS_UM / mpp)))
    if tissue.any():
        # closing bridges gaps of ~2 radius (loose stroma, nuclei-free gaps); no opening, which
        # would cut thin strands of real tissue (specks go with min_area_um2). The image is padded
        # by replication so tissue touching the border is not eroded there.
        padded = np.pad(tissue, radius, mode="edge")
        padded = ndimage.binary_closing(padded, structure=_disk(radius))
        tissue = padded[radius:-radius, radius:-radius]
        if fill_holes:
            tissue = ndimage.binary_fill_holes(tissue)
        tissue &= ~pen
        min_px = min_area_um2 / (mpp * mpp)
        if min_px > 0 and tissue.any():
            labels, n = ndimage.label(tissue, structure=np.ones((3, 3), bool))
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            keep = sizes >= min_px
            keep[0] = False
            tissue = keep[labels]
    strong_all = score > t
    n_strong = int(strong_all.sum())
    info = {
        "pen_used": pen_used,
        "dab_fraction": round(dab_fraction, 5),
        # share of what scores as tissue that pen removal excluded (see pen_hint)
        "pen_removed_fraction": round(float((strong_all & pen).sum() / n_strong), 5) if n_strong else 0.0,
        "glass_rgb": [round(float(v), 1) for v in glass],
        "threshold_auto": None if auto is None else round(float(auto), 5),
        "threshold_used": round(float(t), 5),
        "threshold_weak": round(float(t_low), 5),
        "pen_fraction": round(float(pen.mean()), 5) if remove_pen else 0.0,
        "morph_radius_px": radius,
    }
    return tissue.astype(bool, copy=False), info


# -------------------------------------------------------------------------------------------------
# reading
# -------------------------------------------------------------------------------------------------
def _mask_geometry(
    dims: tuple[int, int], slide_mpp: tuple[float, float], mask_mpp: float
) -> tuple[tuple[int, int], tuple[float, float], tuple[float, float]]:
    """(mask w, h), exact downsample (x, y) and mask µm/px (x, y) for a slide."""
    w0, h0 = dims
    mw = max(1, int(round(w0 * slide_mpp[0] / mask_mpp)))
    mh = max(1, int(round(h0 * slide_mpp[1] / mask_mpp)))
    ds = (w0 / mw, h0 / mh)
    return (mw, mh), ds, (slide_mpp[0] * ds[0], slide_mpp[1] * ds[1])


# -------------------------------------------------------------------------------------------------
# checks
# -------------------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    numeric = isinstance(value, (int, float, np.integer, np.floating))
    return numeric and not isinstance(value, (bool, np.bool_))


def _check_positive(value: Any, name: str) -> None:
    ok = _is_number(value) and math.isfinite(float(value)) and float(value) > 0
    if not ok:
        raise InvalidParameterError(f"{name} must be a positive finite number, got {value!r}")


def _check_nonneg(value: Any, name: str) -> None:
    ok = _is_number(value) and math.isfinite(float(value)) and float(value) >= 0
    if not ok:
        raise InvalidParameterError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_pair(value: Any, name: str) -> tuple[float, float]:
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2:
        raise InvalidParameterError(f"{name} must be a number or an (x, y) pair, got {value!r}")
    for v in pair:
        _check_positive(v, name)
    return float(pair[0]), float(pair[1])
