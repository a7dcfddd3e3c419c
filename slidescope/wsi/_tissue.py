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

The steps are in :mod:`slidescope.wsi._segment` (``method="full"``: every mask pixel analysed); the
default ``method="fast"`` runs them on a 4x coarser image and analyses at the mask's resolution only the
band along the tissue's edges (:mod:`slidescope.wsi._refine`). The pen and ink rules and the IHC test
(steps 4, 4a) are in :mod:`slidescope.wsi._pen`; the contours and GeoJSON rings of :class:`TissueMask`
(traced on first use) in :mod:`slidescope.wsi._polygons`.
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
from ..errors import InvalidParameterError, UnsupportedSlideError

from ._darkfield import darkfield_allowed, darkfield_refusal, darkfield_stats, is_darkfield
from ._downsample import read_downsampled as _read_downsampled
from ._pen import (
    DAB_BLUE_GREEN_RATIO as DAB_BLUE_GREEN_RATIO,
    DAB_GREEN_RED_MIN as DAB_GREEN_RED_MIN,
    DAB_IHC_FRACTION as DAB_IHC_FRACTION,
    DAB_MIN_OD as DAB_MIN_OD,
    PEN_HINT_FRACTION as PEN_HINT_FRACTION,
    PEN_MODES as PEN_MODES,
    check_pen_mode,
    pen_hint as pen_hint,
)
from ._polygons import iter_polygons, mask_contours, ring_area_um2, ring_to_list
from ._refine import COARSE_FACTOR, MIN_COARSE_SIDE, read_coarse, segment_coarse_to_fine
from ._segment import (
    MORPH_RADIUS_UM as MORPH_RADIUS_UM,
    SCORE_CEILING as SCORE_CEILING,
    SCORE_FLOOR as SCORE_FLOOR,
    SCORE_WEAK_FLOOR as SCORE_WEAK_FLOOR,
    label,
    segment as _segment,
)

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
#: The mask must stay a low-resolution image: more pixels than this is refused.
MAX_MASK_PIXELS = 120_000_000
#: Values of ``detect_tissue(method=...)``: coarse to fine (default) or every pixel analysed.
METHODS = ("fast", "full")
#: Colour of the "Tissue" class in the GeoJSON (QuPath shows it).
TISSUE_COLOR = [0, 160, 60]


# -------------------------------------------------------------------------------------------------
# result
# -------------------------------------------------------------------------------------------------
class _Rings:
    """The ``contours`` and ``holes`` fields of :class:`TissueMask`: None (the default) traces both from the
    mask on first use, so detection and tiling, which need only the mask, do not pay for the polygons."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return None  # the field's default
        value = obj.__dict__.get(self.slot)
        if value is None:
            contours, holes = mask_contours(obj.mask, obj.downsample)
            obj.__dict__["_contours"], obj.__dict__["_holes"] = contours, holes
            value = obj.__dict__[self.slot]
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.slot] = None if value is None else tuple(value)


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
        closed (first point == last point), simplified to about one mask pixel. Traced from ``mask`` on
        first use (None, the default, when constructing).
    params : dict
        The parameters and derived values used (requested and actual mpp, pyramid level read,
        threshold, glass colour...), JSON-serialisable, for provenance.
    holes : tuple of tuple of ndarray
        ``holes[i]`` are the inner boundaries (same format) of ``contours[i]``; empty tuples when
        holes were filled. Traced with ``contours``; ``()`` when ``contours`` was given without it.
    """

    mask: np.ndarray
    downsample: tuple[float, float]
    mpp: tuple[float, float]
    slide_dimensions: tuple[int, int]
    contours: _Rings = _Rings()
    params: dict = field(default_factory=dict)
    holes: _Rings = _Rings()

    def __post_init__(self) -> None:
        if self.__dict__.get("_contours") is not None and self.__dict__.get("_holes") is None:
            self.__dict__["_holes"] = ()  # contours given without holes: none, as before

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
        params = {
            "source": "geojson",
            "mask_mpp_requested": float(mask_mpp),
            "mask_mpp": list(mpp),
            "n_polygons": n,
        }
        return cls(mask, ds, mpp, (w0, h0), None, params)

    @property
    def n_pieces(self) -> int:
        """Number of tissue pieces (8-connected pixels of ``mask``), counted without tracing the contours;
        ``len(contours)`` once they are traced (which leaves out pieces of a pixel or two)."""
        if self.__dict__.get("_contours") is not None:
            return len(self.contours)
        return label(self.mask, connectivity=8)[1] if self.mask.any() else 0

    def __repr__(self) -> str:
        h, w = self.mask.shape
        return (
            f"TissueMask({w}x{h} at {self.mpp[0]:.3g} µm/px, {self.n_pieces} pieces, "
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
    method: str = "fast",
    allow_darkfield: bool = False,
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
    method : {"fast", "full"}, default "fast"
        ``"full"`` analyses every mask pixel (the detector of earlier releases). ``"fast"`` runs the same
        steps on a 4x coarser image (32 µm/px by default) and analyses at the mask's resolution only the
        band along the tissue's edges (:mod:`slidescope.wsi._refine`): about 10x faster on a large slide,
        its masks within IoU 0.98 of ``"full"`` on the test slides (the threshold and the IHC test then
        come from the coarse image). Masks of fewer than 64 x 64 pixels always use ``"full"``.
    allow_darkfield : bool, default False
        Analyse a slide even when its background is dark. By default a slide whose low-resolution image is
        mostly near-black with hardly any light pixels (a fluorescence image stored as 8-bit RGB; rule and
        margins in :mod:`slidescope.wsi._darkfield`) is refused with :class:`UnsupportedSlideError`, as
        multiplex files are at open. ``SLIDESCOPE_ALLOW_DARKFIELD=1`` in the environment does the same as
        True (for the command line).

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
        auto, on, off; ``method`` not fast or full.
    MissingMppError
        The slide has no pixel size: open it with ``open_slide(path, slide_mpp=...)``.
    UnsupportedSlideError
        The slide has a dark background (fluorescence stored as RGB) and ``allow_darkfield`` is False.

    Examples
    --------
    >>> import slidescope as ss
    >>> slide = ss.open_slide("sample_data/sample_slide.tiff")
    >>> mask = ss.detect_tissue(slide)
    >>> mask
    TissueMask(256x192 at 8 µm/px, 3 pieces, 30.8% tissue, 0.97 mm²)
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
    if method not in METHODS:
        raise InvalidParameterError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
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
    pixel_mpp = float(math.sqrt(mask_mpp[0] * mask_mpp[1]))
    used = method if min(mw, mh) >= COARSE_FACTOR * MIN_COARSE_SIDE else "full"
    # the dark-field check looks at the coarse image, which the fast method then analyses: read once
    coarse = read_coarse(slide, (mw, mh), pixel_mpp, level) if used == "fast" else None
    if not darkfield_allowed(allow_darkfield):
        _refuse_darkfield(slide, (mw, mh), pixel_mpp, None if coarse is None else coarse[0])
    if used == "fast":
        mask, info = segment_coarse_to_fine(
            slide,
            level=level,
            size=(mw, mh),
            mpp=pixel_mpp,
            min_area_um2=min_area_um2,
            pen_mode=pen,
            fill_holes=fill_holes,
            threshold=threshold,
            coarse_image=coarse,
        )
    else:
        rgb = _read_downsampled(slide, level, (mw, mh))
        mask, info = _segment(
            rgb,
            mpp=pixel_mpp,
            min_area_um2=min_area_um2,
            pen_mode=pen,
            fill_holes=fill_holes,
            threshold=threshold,
        )
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
        "method": used,
        **info,
    }
    result = TissueMask(mask, ds, mask_mpp, (int(w0), int(h0)), None, params)
    log.info(
        "%s: tissue mask %dx%d at %.3g µm/px, %.1f%% tissue (%s)",
        slide.path.name,
        mw,
        mh,
        mask_mpp[0],
        100 * result.tissue_fraction,
        used,
    )
    return result


def _refuse_darkfield(slide: Slide, size: tuple[int, int], mpp: float, coarse: np.ndarray | None) -> None:
    """Raise :class:`UnsupportedSlideError` when the slide's image at the coarse detection resolution has a dark
    background. ``coarse``: that image from :func:`._refine.read_coarse` (its pixels over the slide are looked
    at, not the white past its right and bottom edges), or None to read it here."""
    k = COARSE_FACTOR
    if coarse is None:
        rgb = _read_downsampled(
            slide, slide.best_level_for_mpp(mpp * k), (math.ceil(size[0] / k), math.ceil(size[1] / k))
        )
    else:
        rgb = coarse[: max(1, size[1] // k), : max(1, size[0] // k)]
    stats = darkfield_stats(rgb)
    if is_darkfield(stats):
        raise UnsupportedSlideError(f"{slide.path.name} {darkfield_refusal(stats)}")


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
