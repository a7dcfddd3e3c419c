"""Tile grids defined in physical units.

A tile is ``tile_size`` pixels at ``mpp`` µm/px. On the slide it covers ``extent`` level-0 pixels::

    extent = round(tile_size * mpp / slide_mpp)           (per axis)
    stride = round((tile_size - overlap) * mpp / slide_mpp)
    effective_mpp = extent * slide_mpp / tile_size

so 224 px at 0.5 µm/px on a 0.25 µm/px scan covers 448 level-0 px, and on a 0.265 µm/px scan 256 px
at 0.5 µm/px covers 483 level-0 px (not the 512 of "20x on a 40x slide"). Rounding to whole
level-0 pixels changes the physical extent by less than half a level-0 pixel per tile; the exact
``effective_mpp`` that results is recorded with the grid. Tiles are read from the coarsest pyramid
level at least as fine as ``mpp`` (1% tolerance) and resized once to ``tile_size`` (true area
averaging when shrinking, see :mod:`._stream`).

Tiles start at the slide's (or the ROI's) top-left corner and step by ``stride``. At the right and
bottom edges the *edge policy* decides what happens to the strip narrower than one tile:

* ``edge="drop"`` (default): only tiles wholly inside the slide (or the ROI) exist; the strip is not
  tiled, and the tissue in it is not embedded. Start positions are ``0, stride, ...`` up to
  ``width - extent`` (TRIDENT's and CLAM's positions, less those that cross the edge).
* ``edge="pad"``: the grid goes on until the tiles cover the whole slide (or ROI): one more column
  and row whose tiles cross the edge (the fewest tiles that cover it; with ``overlap=0`` these are
  exactly TRIDENT's positions, every start ``< width``). The part of a tile outside the slide is read
  as white; inside an ROI that is not at the slide's edge the tile reads the slide beyond the ROI.
  ``pad_fraction`` records, per tile, the fraction of its area outside the slide (0 for the others).

``tissue_fraction`` is always the tissue in a tile divided by the *whole* tile's area (the padding
counts as background, as in TRIDENT), so ``min_tissue`` means the same for edge and inner tiles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import EmptyTissueError, InvalidParameterError
from ._defaults import DEFAULT_MIN_TISSUE
from ._slide import Slide

log = logging.getLogger(__name__)

__all__ = ["TileGrid", "make_tile_grid", "DEFAULT_MIN_TISSUE", "MAX_UPSAMPLE", "EDGE_POLICIES", "DOWNSCALES"]

#: a target mpp finer than the scan by more than this factor is refused unless allow_upsample=True
MAX_UPSAMPLE = 1.1
#: what happens at the right and bottom edges (see the module docstring); the first is the default
EDGE_POLICIES = ("drop", "pad")
#: how tiles read at a finer level are shrunk: ``area`` (exact area average, OpenSlide's pixels averaged; the
#: default) or ``jpeg-dct`` (whole factors 2, 4, 8 on JPEG-tiled TIFF levels read directly: each file tile
#: decoded at 1/k by libjpeg-turbo's scaled IDCT, faster, within a measured bound of ``area``; elsewhere area)
DOWNSCALES = ("area", "jpeg-dct")


@dataclass(frozen=True, eq=False)
class TileGrid:
    """Tiles of one slide at one physical resolution.

    Attributes
    ----------
    coords : (N, 2) int64, top-left (x, y) of every tile in level-0 pixels.
    tissue_fraction : (N,) float32, fraction of each tile covered by the tissue mask.
    tile_size : side in pixels of the tiles handed to a model.
    mpp : the requested µm/px; ``effective_mpp`` is what the rounding gives (x, y).
    extent : (w, h) level-0 pixels covered by one tile; ``stride`` the level-0 step between tiles.
    level, read_size : pyramid level read and the (w, h) pixels read there for one tile.
    edge : the edge policy, "drop" or "pad" (see the module docstring).
    pad_fraction : (N,) float32, fraction of each tile's area outside the slide, read as white (all 0
        with ``edge="drop"``; None given: zeros).
    downscale : how tiles are shrunk (:data:`DOWNSCALES`): ``"jpeg-dct"`` only where it applies to this
        slide and tiling (see :func:`make_tile_grid`), else ``"area"``.
    """

    coords: np.ndarray
    tissue_fraction: np.ndarray
    tile_size: int
    mpp: float
    effective_mpp: tuple[float, float]
    extent: tuple[int, int]
    stride: tuple[int, int]
    overlap: int
    level: int
    level_downsample: tuple[float, float]
    read_size: tuple[int, int]
    slide_mpp: tuple[float, float]
    slide_dimensions: tuple[int, int]
    min_tissue: float
    roi: tuple[int, int, int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    edge: str = "drop"
    pad_fraction: np.ndarray | None = None
    downscale: str = "area"

    def __post_init__(self) -> None:
        if self.pad_fraction is None:
            object.__setattr__(self, "pad_fraction", np.zeros(len(self.coords), np.float32))

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @property
    def resample(self) -> float:
        """tile_size / read_size: 1.0 means tiles are read at their native resolution (no resize)."""
        return self.tile_size / self.read_size[0]

    @property
    def tile_um(self) -> tuple[float, float]:
        """Physical side of one tile in µm (x, y)."""
        return self.extent[0] * self.slide_mpp[0], self.extent[1] * self.slide_mpp[1]

    def to_dict(self) -> dict[str, Any]:
        """The grid's parameters (not the coordinates) as JSON-ready values, for provenance.

        They are also the store's cache key of the tiling. Keys that did not exist before are written only
        where they change the pixels, so stores made before them stay valid: ``edge`` only for
        ``"pad"``, ``resize = "area"`` only where tiles are shrunk at a non-integer ratio (where the
        earlier PIL ``BOX`` resize gave other pixels), ``downscale`` only for ``"jpeg-dct"``."""
        new: dict[str, Any] = {"edge": self.edge} if self.edge != "drop" else {}
        if self.downscale != "area":
            new["downscale"] = self.downscale
        (rw, rh), size = self.read_size, self.tile_size
        if (rw > size or rh > size) and (rw % size or rh % size):
            new["resize"] = "area"
        return {
            "tile_size": self.tile_size,
            "mpp": self.mpp,
            "effective_mpp": list(self.effective_mpp),
            "extent": list(self.extent),
            "stride": list(self.stride),
            "overlap": self.overlap,
            "level": self.level,
            "level_downsample": list(self.level_downsample),
            "read_size": list(self.read_size),
            "slide_mpp": list(self.slide_mpp),
            "slide_dimensions": list(self.slide_dimensions),
            "min_tissue": self.min_tissue,
            "roi": list(self.roi) if self.roi else None,
            "n_tiles": len(self),
            **new,
            **self.extra,
        }

    def subset(self, index: np.ndarray) -> TileGrid:
        """A grid with only the given tiles (boolean mask or integer indices)."""
        from dataclasses import replace

        pad = self.pad_fraction if self.pad_fraction is not None else np.zeros(len(self), np.float32)
        return replace(
            self,
            coords=self.coords[index],
            tissue_fraction=self.tissue_fraction[index],
            pad_fraction=pad[index],
        )


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) <= 0:
        raise InvalidParameterError(f"{name} must be a positive whole number of pixels, got {value!r}")
    return int(value)


def _dct_applies(slide: Slide, level: int, read_size: tuple[int, int], tile_size: int) -> bool:
    """Whether ``downscale="jpeg-dct"`` changes how this grid's tiles are read: a whole factor k of 2, 4 or 8
    on both axes, and a read level whose JPEG tiles the direct reader decodes at 1/k."""
    rw, rh = read_size
    k = rw // tile_size
    if rw != rh or rw != k * tile_size or k not in (2, 4, 8):
        return False
    source = slide.tile_source()
    return source is not None and source.has_level(level) and source.can_scale(level, k)


def make_tile_grid(
    slide: Slide,
    *,
    tile_size: int,
    mpp: float,
    overlap: int = 0,
    min_tissue: float = DEFAULT_MIN_TISSUE,
    mask=None,
    roi: tuple[int, int, int, int] | None = None,
    allow_upsample: bool = False,
    allow_empty: bool = False,
    edge: str = "drop",
    downscale: str = "area",
) -> TileGrid:
    """Cut a slide into tiles of ``tile_size`` px at ``mpp`` µm/px.

    A tile covers ``extent = round(tile_size * mpp / slide_mpp)`` level-0 px per axis; it is read from the
    coarsest pyramid level at least as fine as ``mpp`` and resized once. Tiles with at least ``min_tissue``
    tissue are kept: only those wholly inside the slide (or ``roi``) with ``edge="drop"``, also those
    crossing its right and bottom edges with ``edge="pad"`` (see the module docstring).

    Parameters
    ----------
    slide : Slide
        An open slide whose mpp is known.
    tile_size : int
        Tile side in pixels at the target resolution (e.g. 224).
    mpp : float
        Target µm per pixel (e.g. 0.5 for "20x").
    overlap : int, default 0
        Pixels (at the target resolution) shared by neighbouring tiles, ``0 <= overlap < tile_size``.
    min_tissue : float, default DEFAULT_MIN_TISSUE (0.25)
        Keep tiles whose tissue fraction is at least this (0 keeps every tile).
    mask : TissueMask, optional
        The tissue; ``None`` runs :func:`detect_tissue` with its defaults.
    roi : (int, int, int, int), optional
        (x, y, w, h) in level-0 pixels to restrict the grid to.
    allow_upsample : bool, default False
        Permit a target mpp more than 10% finer than the scan (tiles are then upsampled).
    allow_empty : bool, default False
        Return an empty grid instead of raising :class:`EmptyTissueError`.
    edge : {"drop", "pad"}, default "drop"
        The strips at the right and bottom edges narrower than a tile: not tiled ("drop"), or tiled with
        tiles that cross the edge, the part outside the slide read as white ("pad"; a slide or ROI smaller
        than one tile is then one padded tile instead of an error).
    downscale : {"area", "jpeg-dct"}, default "area"
        How tiles read at a finer level are shrunk. ``"area"``: the exact area average (a whole-factor
        block mean at 448 -> 224). ``"jpeg-dct"``: where the factor is whole and 2, 4 or 8 (both axes) and the
        read level is a JPEG-tiled TIFF level that slidescope decodes directly, each file tile is decoded at
        1/k by libjpeg-turbo's scaled IDCT instead of in full and averaged: 1.45-1.8x less CPU per file
        tile at 1/2, pixels within a bound of ``"area"`` (README, *Tiling*: at most 19-23 grey levels, mean
        0.1-0.33, on the test slides at 1/2); it goes into the cache key. Elsewhere (other ratios or formats)
        the grid keeps ``"area"``, and so do tiles not aligned to the factor or crossing the slide's edge.

    Returns
    -------
    TileGrid
        ``coords`` (N, 2) int64, level-0 top-left (x, y), row-major order; ``tissue_fraction`` (N,) float32;
        ``extent`` (level-0 px per tile), ``effective_mpp`` (x, y), ``level`` and ``read_size`` (where and
        how much is read), ``pad_fraction`` (N,) float32 (the part of each tile outside the slide);
        ``len(grid)`` = N.

    Raises
    ------
    InvalidParameterError
        A tile larger than the slide (with ``edge="drop"``), a bad ``tile_size`` / ``mpp`` / ``overlap`` /
        ``edge``, or upsampling not allowed.
    EmptyTissueError
        No tile has enough tissue (unless ``allow_empty``).
    MissingMppError
        The slide has no pixel size.

    Examples
    --------
    >>> import slidescope as ss
    >>> slide = ss.open_slide("sample_data/sample_slide.tiff")          # 0.5 µm/px
    >>> grid = ss.make_tile_grid(slide, tile_size=224, mpp=0.5)
    >>> len(grid), grid.coords.shape, grid.coords.dtype
    (93, (93, 2), dtype('int64'))
    >>> grid.extent, grid.effective_mpp                                # level-0 px per tile, µm/px as cut
    ((224, 224), (0.5, 0.5))
    >>> coarse = ss.make_tile_grid(slide, tile_size=256, mpp=1.0)      # 512 level-0 px, resized to 256
    >>> coarse.extent, coarse.read_size, coarse.effective_mpp
    ((512, 512), (512, 512), (1.0, 1.0))
    """
    tile_size, target = _check_grid_options(tile_size, mpp, overlap, min_tissue)
    if edge not in EDGE_POLICIES:
        raise InvalidParameterError(f"edge must be one of {EDGE_POLICIES} (the edge policy), got {edge!r}")
    if downscale not in DOWNSCALES:
        raise InvalidParameterError(f"downscale must be one of {DOWNSCALES}, got {downscale!r}")
    smx, smy = slide.mpp
    if target * MAX_UPSAMPLE < min(smx, smy) and not allow_upsample:
        raise InvalidParameterError(
            f"{slide.path.name} is scanned at {min(smx, smy):.4g} µm/px; tiles at {target:g} µm/px would be "
            f"upsampled {min(smx, smy) / target:.2f}x with no real detail. Use mpp >= {min(smx, smy):.4g} "
            f"or pass allow_upsample=True."
        )
    ext_x = max(1, round(tile_size * target / smx))
    ext_y = max(1, round(tile_size * target / smy))
    step = tile_size - overlap
    stride_x = max(1, round(step * target / smx))
    stride_y = max(1, round(step * target / smy))

    w0, h0 = slide.dimensions
    rx, ry, rw, rh = _roi_box(roi, (w0, h0))
    if (ext_x > rw or ext_y > rh) and edge == "drop":
        raise InvalidParameterError(
            f"one tile of {tile_size} px at {target:g} µm/px covers {ext_x * smx:.0f} x {ext_y * smy:.0f} µm, "
            f"larger than the {'ROI' if roi else 'slide'} ({rw * smx:.0f} x {rh * smy:.0f} µm). Use a smaller "
            f"tile_size or mpp, or edge='pad'."
        )
    xs = rx + _starts(rw, ext_x, stride_x, edge)
    ys = ry + _starts(rh, ext_y, stride_y, edge)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1)

    if mask is None:
        from ._tissue import detect_tissue

        mask = detect_tissue(slide)
    if tuple(mask.slide_dimensions) != (w0, h0):
        raise InvalidParameterError(
            f"the tissue mask was made for a {mask.slide_dimensions[0]}x{mask.slide_dimensions[1]} slide, "
            f"not this {w0}x{h0} one ({slide.path.name}); detect tissue on this slide."
        )
    pad = _pad_fraction(coords, (ext_x, ext_y), (w0, h0))
    inside = _tissue_fraction(mask.mask, mask.downsample, coords, (ext_x, ext_y))  # of the part inside
    fraction = (inside * (1 - pad)).astype(np.float32)  # of the whole tile (unchanged where pad is 0)
    keep = fraction >= float(min_tissue) if min_tissue > 0 else np.ones(len(coords), bool)
    if mask.is_empty and min_tissue > 0:
        keep[:] = False

    level = slide.best_level_for_mpp(target)
    lw, lh = slide.level_dimensions[level]
    ds = (w0 / lw, h0 / lh)
    read_size = (max(1, round(ext_x / ds[0])), max(1, round(ext_y / ds[1])))

    grid = TileGrid(
        coords=np.ascontiguousarray(coords[keep]),
        tissue_fraction=fraction[keep].astype(np.float32),
        tile_size=tile_size,
        mpp=target,
        effective_mpp=(ext_x * smx / tile_size, ext_y * smy / tile_size),
        extent=(ext_x, ext_y),
        stride=(stride_x, stride_y),
        overlap=int(overlap),
        level=level,
        level_downsample=ds,
        read_size=read_size,
        slide_mpp=(smx, smy),
        slide_dimensions=(w0, h0),
        min_tissue=float(min_tissue),
        roi=None if roi is None else (rx, ry, rw, rh),
        edge=edge,
        pad_fraction=pad[keep].astype(np.float32),
        # a learned segmenter's mask (slidescope.features.segmenters): its name and weights in the cache key
        extra=_tissue_key(mask),
        downscale="jpeg-dct"
        if downscale == "jpeg-dct" and _dct_applies(slide, level, read_size, tile_size)
        else "area",
    )
    if len(grid) == 0 and not allow_empty:
        what = "no tissue was found" if mask.is_empty else f"no tile has >= {min_tissue:.0%} tissue"
        from ._pen import pen_hint

        raise EmptyTissueError(
            f"{slide.path.name}: {what}. If the slide really has tissue, it may be pale: lower the detection "
            f"threshold (detect_tissue(slide, threshold=...)) or min_tissue, or keep every tile with min_tissue=0."
            + pen_hint(mask)
        )
    log.debug(
        "%s: %d tiles of %d px at %.4g µm/px (extent %s level-0 px, level %d, read %s)",
        slide.path.name,
        len(grid),
        tile_size,
        target,
        grid.extent,
        level,
        read_size,
    )
    return grid


def _tissue_key(mask: Any) -> dict[str, Any]:
    """``{"tissue": {name, weights_sha256}}`` for a learned segmenter's mask, ``{}`` for the classic one (so
    the cache keys of classic tilings stay what they were)."""
    params = getattr(mask, "params", None) or {}
    return {"tissue": params["segmenter"]} if "segmenter" in params else {}


def _check_grid_options(tile_size: Any, mpp: Any, overlap: Any, min_tissue: Any) -> tuple[int, float]:
    """``(tile_size, mpp)`` of :func:`make_tile_grid`, checked with ``overlap`` and ``min_tissue``."""
    tile_size = _positive_int("tile_size", tile_size)
    if isinstance(overlap, bool) or not isinstance(overlap, int | np.integer) or not 0 <= overlap < tile_size:
        raise InvalidParameterError(
            f"overlap must be a whole number with 0 <= overlap < tile_size, got {overlap!r}"
        )
    try:
        target = float(mpp)
    except (TypeError, ValueError) as err:
        raise InvalidParameterError(f"mpp must be a number of µm per pixel, got {mpp!r}") from err
    if not np.isfinite(target) or target <= 0:
        raise InvalidParameterError(
            f"mpp must be a positive number of µm per pixel (0.5 is '20x'), got {mpp!r}"
        )
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise InvalidParameterError(f"min_tissue is a fraction between 0 and 1, got {min_tissue!r}")
    return tile_size, target


def _starts(length: int, extent: int, stride: int, edge: str) -> np.ndarray:
    """Tile starts along one axis of ``length`` px, relative to its origin (int64).

    "drop": ``0, stride, ...`` while the tile fits (``start + extent <= length``). "pad": continued until
    a tile reaches the end (the fewest starts whose tiles cover ``[0, length)``)."""
    if edge == "drop":
        return np.arange(0, length - extent + 1, stride, dtype=np.int64)
    n = -(-max(length - extent, 0) // stride) + 1  # ceil((length - extent) / stride) + 1
    return np.arange(n, dtype=np.int64) * stride


def _pad_fraction(coords: np.ndarray, extent: tuple[int, int], dims: tuple[int, int]) -> np.ndarray:
    """Fraction of each tile's area outside the slide (level-0 px), float64 (0 for tiles inside)."""
    if len(coords) == 0:
        return np.zeros(0)
    inside_w = np.clip(dims[0] - coords[:, 0], 0, extent[0])
    inside_h = np.clip(dims[1] - coords[:, 1], 0, extent[1])
    return 1.0 - (inside_w * inside_h) / float(extent[0] * extent[1])


def _roi_box(roi: tuple[int, int, int, int] | None, dims: tuple[int, int]) -> tuple[int, int, int, int]:
    """The ``(x, y, w, h)`` region to tile, in level-0 px: ``roi`` clipped to the slide, or the whole slide."""
    w0, h0 = dims
    if roi is None:
        return 0, 0, w0, h0
    if len(roi) != 4:
        raise InvalidParameterError(f"roi is (x, y, w, h) in level-0 pixels, got {roi!r}")
    rx, ry, rw, rh = (int(v) for v in roi)
    rx, ry = max(rx, 0), max(ry, 0)
    rw, rh = min(rw, w0 - rx), min(rh, h0 - ry)
    if rw <= 0 or rh <= 0:
        raise InvalidParameterError(f"roi {roi} does not overlap the slide ({w0}x{h0} level-0 px)")
    return rx, ry, rw, rh


def _tissue_fraction(
    mask: np.ndarray, downsample: tuple[float, float], coords: np.ndarray, extent: tuple[int, int]
) -> np.ndarray:
    """Fraction of mask pixels set inside each tile footprint, from a summed-area table (O(1) per tile)."""
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    h, w = mask.shape
    dx, dy = downsample
    x0 = np.clip(np.round(coords[:, 0] / dx).astype(np.int64), 0, w - 1)
    y0 = np.clip(np.round(coords[:, 1] / dy).astype(np.int64), 0, h - 1)
    x1 = np.clip(np.round((coords[:, 0] + extent[0]) / dx).astype(np.int64), x0 + 1, w)
    y1 = np.clip(np.round((coords[:, 1] + extent[1]) / dy).astype(np.int64), y0 + 1, h)
    ys, xs = np.unique(np.concatenate([y0, y1])), np.unique(np.concatenate([x0, x1]))
    sat = _sat_at(mask, ys, xs)
    iy0, iy1, ix0, ix1 = (np.searchsorted(a, v) for a, v in ((ys, y0), (ys, y1), (xs, x0), (xs, x1)))
    inside = sat[iy1, ix1] - sat[iy0, ix1] - sat[iy1, ix0] + sat[iy0, ix0]
    return (inside / ((x1 - x0) * (y1 - y0))).astype(np.float32)


def _sat_at(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The summed-area table ``sum(mask[:y, :x])`` at the sorted unique ``ys`` x ``xs`` only (int64), from
    one pass over the mask (sums of the bands between the wanted rows, then columns) instead of the whole
    table's two cumulative sums."""
    out = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    for axis, at in ((0, ys), (1, xs)):
        ends = at[at > 0]
        starts = np.concatenate([[0], ends[ends < out.shape[axis]]]).astype(np.intp)
        # the mask's band sums eight columns at a time (_row_band_sums); the small table's in int64
        bands = _row_band_sums(out, starts) if axis == 0 else np.add.reduceat(out, starts, axis=1)
        part = np.cumsum(bands, axis=axis, dtype=np.int64)
        part = np.take(part, np.arange(len(ends)), axis=axis)
        shape = list(part.shape)
        shape[axis] = len(at) - len(ends)  # y = 0 or x = 0: nothing above or left
        out = np.concatenate([np.zeros(shape, np.int64), part], axis=axis)
    return out


#: rows of a 0/1 mask summed per byte before a byte could overflow
_LANE_ROWS = 255


def _row_band_sums(u: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``np.add.reduceat(u, starts, axis=0)`` of the 0/1 uint8 ``u`` (h, w), int32, 8x faster.

    Eight columns are added at once as one uint64 word each: every byte of the word is one column's sum,
    which cannot carry into the next byte while a band has at most :data:`_LANE_ROWS` rows, so taller bands
    are summed in parts of that many rows, then the parts added."""
    h, w = u.shape
    stops = np.append(starts[1:], h)
    if len(starts) and int((stops - starts).max()) > _LANE_ROWS:
        pieces = [np.arange(a, b, _LANE_ROWS) for a, b in zip(starts.tolist(), stops.tolist(), strict=True)]
        parts = np.concatenate(pieces)
        first = np.cumsum([0] + [len(p) for p in pieces[:-1]])
    else:
        parts, first = starts, None
    w8 = w - w % 8
    sums = np.empty((len(parts), w), np.int32)
    if w8:
        words = np.add.reduceat(u[:, :w8].view(np.uint64), parts, axis=0)
        sums[:, :w8] = words.view(np.uint8).reshape(len(parts), w8)
    if w8 < w:
        sums[:, w8:] = np.add.reduceat(u[:, w8:], parts, axis=0, dtype=np.int32)
    return sums if first is None else np.add.reduceat(sums, first, axis=0)
