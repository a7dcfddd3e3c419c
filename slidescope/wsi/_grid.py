"""Tile grids defined in physical units.

A tile is ``tile_size`` pixels at ``mpp`` µm/px. On the slide it covers ``extent`` level-0 pixels::

    extent = round(tile_size * mpp / slide_mpp)           (per axis)
    stride = round((tile_size - overlap) * mpp / slide_mpp)
    effective_mpp = extent * slide_mpp / tile_size

so 224 px at 0.5 µm/px on a 0.25 µm/px scan covers 448 level-0 px, and on a 0.265 µm/px scan 256 px
at 0.5 µm/px covers 483 level-0 px (not the 512 of "20x on a 40x slide"). Rounding to whole
level-0 pixels changes the physical extent by less than half a level-0 pixel per tile; the exact
``effective_mpp`` that results is recorded with the grid. Tiles are read from the coarsest pyramid
level at least as fine as ``mpp`` (1% tolerance) and resized once, anti-aliased, to ``tile_size``.

Only tiles that lie wholly inside the slide (or the ROI) are kept; a partial strip narrower than
one tile at the right and bottom edges is not tiled.
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

__all__ = ["TileGrid", "make_tile_grid", "DEFAULT_MIN_TISSUE", "MAX_UPSAMPLE"]

#: a target mpp finer than the scan by more than this factor is refused unless allow_upsample=True
MAX_UPSAMPLE = 1.1


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
        """The grid's parameters (not the coordinates) as JSON-ready values, for provenance."""
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
            **self.extra,
        }

    def subset(self, index: np.ndarray) -> TileGrid:
        """A grid with only the given tiles (boolean mask or integer indices)."""
        from dataclasses import replace

        return replace(self, coords=self.coords[index], tissue_fraction=self.tissue_fraction[index])


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) <= 0:
        raise InvalidParameterError(f"{name} must be a positive whole number of pixels, got {value!r}")
    return int(value)


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
) -> TileGrid:
    """Cut a slide into tiles of ``tile_size`` px at ``mpp`` µm/px.

    A tile covers ``extent = round(tile_size * mpp / slide_mpp)`` level-0 px per axis; it is read from the
    coarsest pyramid level at least as fine as ``mpp`` and resized once. Only tiles wholly inside the
    slide (or ``roi``) with at least ``min_tissue`` tissue are kept.

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

    Returns
    -------
    TileGrid
        ``coords`` (N, 2) int64, level-0 top-left (x, y), row-major order; ``tissue_fraction`` (N,) float32;
        ``extent`` (level-0 px per tile), ``effective_mpp`` (x, y), ``level`` and ``read_size`` (where and
        how much is read); ``len(grid)`` = N.

    Raises
    ------
    InvalidParameterError
        A tile larger than the slide, a bad ``tile_size`` / ``mpp`` / ``overlap``, or upsampling not allowed.
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
    (94, (94, 2), dtype('int64'))
    >>> grid.extent, grid.effective_mpp                                # level-0 px per tile, µm/px as cut
    ((224, 224), (0.5, 0.5))
    >>> coarse = ss.make_tile_grid(slide, tile_size=256, mpp=1.0)      # 512 level-0 px, resized to 256
    >>> coarse.extent, coarse.read_size, coarse.effective_mpp
    ((512, 512), (512, 512), (1.0, 1.0))
    """
    tile_size, target = _check_grid_options(tile_size, mpp, overlap, min_tissue)
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
    if ext_x > rw or ext_y > rh:
        raise InvalidParameterError(
            f"one tile of {tile_size} px at {target:g} µm/px covers {ext_x * smx:.0f} x {ext_y * smy:.0f} µm, "
            f"larger than the {'ROI' if roi else 'slide'} ({rw * smx:.0f} x {rh * smy:.0f} µm). Use a smaller "
            f"tile_size or mpp."
        )
    xs = rx + np.arange(0, rw - ext_x + 1, stride_x, dtype=np.int64)
    ys = ry + np.arange(0, rh - ext_y + 1, stride_y, dtype=np.int64)
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
    fraction = _tissue_fraction(mask.mask, mask.downsample, coords, (ext_x, ext_y))
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
    sat = np.zeros((h + 1, w + 1), np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.int64), axis=0), axis=1)
    dx, dy = downsample
    x0 = np.clip(np.round(coords[:, 0] / dx).astype(np.int64), 0, w - 1)
    y0 = np.clip(np.round(coords[:, 1] / dy).astype(np.int64), 0, h - 1)
    x1 = np.clip(np.round((coords[:, 0] + extent[0]) / dx).astype(np.int64), x0 + 1, w)
    y1 = np.clip(np.round((coords[:, 1] + extent[1]) / dy).astype(np.int64), y0 + 1, h)
    inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    return (inside / ((x1 - x0) * (y1 - y0))).astype(np.float32)
