"""A tile grid on coordinates another tool chose (TRIDENT, CLAM, a CSV): :func:`grid_from_coords`.

:func:`~slidescope.wsi.make_tile_grid` decides where tiles go; here the level-0 top-left corners and the
level-0 footprint are given, and the rest of the grid (pyramid level read, read size, effective mpp,
tissue fraction) is derived exactly as there, so the tiles are read and resized the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ._grid import TileGrid, _pad_fraction, _tissue_fraction
from ._slide import Slide

__all__ = ["grid_from_coords"]


def grid_from_coords(
    slide: Slide,
    coords: np.ndarray,
    *,
    extent: int,
    tile_size: int,
    mask=None,
    overlap: int = 0,
    extra: dict[str, Any] | None = None,
) -> TileGrid:
    """The tiles at ``coords`` (N, 2) level-0 top-left (x, y), each ``extent`` level-0 px square, handed to
    the encoder as ``tile_size`` px.

    Every tile is kept (the other tool chose them; ``min_tissue`` is 0); ``tissue_fraction`` is measured on
    ``mask`` (default: :func:`~slidescope.wsi.detect_tissue`). A tile that crosses the right or bottom edge
    is read with the part outside the slide white, as with ``edge="pad"`` (``pad_fraction`` says how much).
    ``extra`` is recorded in the grid's parameters (and so in the store's cache key), e.g. where the
    coordinates came from.

    Raises
    ------
    InvalidParameterError
        Coordinates that are not (N, 2) whole numbers, a tile starting outside the slide, or a footprint or
        tile size that is not a positive whole number.
    """
    coords = np.asarray(coords)
    if coords.size == 0:
        coords = coords.reshape(0, 2)
    if coords.ndim != 2 or coords.shape[1] != 2 or not np.issubdtype(coords.dtype, np.integer):
        raise InvalidParameterError(f"coordinates must be (N, 2) whole level-0 pixels, got {coords.shape}")
    extent, tile_size = int(extent), int(tile_size)
    if extent <= 0 or tile_size <= 0:
        raise InvalidParameterError(
            f"a tile needs a positive footprint and size, got {extent} and {tile_size}"
        )
    coords = np.ascontiguousarray(coords.astype(np.int64))
    w0, h0 = slide.dimensions
    outside = (coords[:, 0] < 0) | (coords[:, 1] < 0) | (coords[:, 0] >= w0) | (coords[:, 1] >= h0)
    if outside.any():
        x, y = coords[np.argmax(outside)]
        raise InvalidParameterError(
            f"{int(outside.sum())} of the {len(coords)} given tiles start outside {slide.path.name} "
            f"({w0}x{h0} level-0 px), e.g. ({x}, {y}): are these coordinates for this slide, at level 0?"
        )
    if mask is None:
        from ._tissue import detect_tissue

        mask = detect_tissue(slide)
    smx, smy = slide.mpp
    pad = _pad_fraction(coords, (extent, extent), (w0, h0))
    fraction = _tissue_fraction(mask.mask, mask.downsample, coords, (extent, extent)) * (1 - pad)
    effective = (extent * smx / tile_size, extent * smy / tile_size)
    level = slide.best_level_for_mpp(min(effective))
    lw, lh = slide.level_dimensions[level]
    ds = (w0 / lw, h0 / lh)
    step = max(1, extent - round(overlap * extent / tile_size))
    return TileGrid(
        coords=coords,
        tissue_fraction=fraction.astype(np.float32),
        tile_size=tile_size,
        mpp=float(np.mean(effective)),
        effective_mpp=effective,
        extent=(extent, extent),
        stride=(step, step),
        overlap=int(overlap),
        level=level,
        level_downsample=ds,
        read_size=(max(1, round(extent / ds[0])), max(1, round(extent / ds[1]))),
        slide_mpp=(smx, smy),
        slide_dimensions=(w0, h0),
        min_tissue=0.0,
        extra=dict(extra or {}),
        edge="pad" if pad.any() else "drop",
        pad_fraction=pad.astype(np.float32),
    )
