"""Whole-slide images at low resolution, read block by block in bounded memory.

The blocks are shrunk with PIL's ``BOX`` filter over the exact (fractional) source box of each block. At
the non-integer ratios of a mask (e.g. 16.09 level px per mask px for CMU-1 at 8 µm/px) that is close to,
but not exactly, area averaging: ``BOX`` weights the input pixels whose centres fall in an output pixel's
footprint equally instead of by their overlap. Measured against exact area averaging (``._resize``) on the
real test slides: at 8 µm/px at most 8 grey levels off (0.4 on average), at 2 µm/px 41 (1.3). It is kept
because tissue masks, and through them the tile coordinates of every existing store, would change; the
tiles themselves are area-averaged exactly (:mod:`._stream`).
"""

from __future__ import annotations

import math

import numpy as np

from ._slide import Slide

__all__ = ["read_downsampled", "READ_BLOCK"]

#: Level pixels per block read from the slide (side), bounding the memory of a read.
READ_BLOCK = 2048


def _read_block(slide: Slide, level: int, x: int, y: int, w: int, h: int, direct: bool) -> np.ndarray:
    """(h, w, 3) at level pixel (x, y), white past the level's edge; its inside part decoded directly
    when ``direct``."""
    from ._stream import _read_level

    lw, lh = slide.level_dimensions[level]
    iw, ih = min(w, lw - x), min(h, lh - y)
    if not direct or (iw, ih) == (w, h) or iw <= 0 or ih <= 0:
        return _read_level(slide, level, x, y, w, h, direct)
    out = np.full((h, w, 3), 255, np.uint8)
    out[:ih, :iw] = _read_level(slide, level, x, y, iw, ih, direct)
    return out


def read_downsampled(
    slide: Slide,
    level: int,
    size: tuple[int, int],
    *,
    extent: tuple[float, float] | None = None,
    window: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """The whole slide as RGB uint8 (mh, mw, 3), box-filtered from ``level`` block by block (see the module).

    Parameters
    ----------
    slide, level : the slide and the pyramid level read.
    size : (mw, mh) of the output grid.
    extent : level-0 (width, height) that the output grid covers from the top-left corner; default the
        slide's dimensions. A larger extent reads white beyond the slide (a grid whose pixels must be whole
        multiples of a finer grid's).
    window : (c0, r0, c1, r1), only this part of the output grid (default all of it); the pixels equal those
        of the same part of the whole grid.

    Blocks inside a level that the direct TIFF reader serves are decoded by it (same pixels as the backend,
    several times faster, see :mod:`._tiff`); the rest through :meth:`Slide.read_region`.
    """
    from PIL import Image

    mw, mh = size
    w0, h0 = slide.dimensions
    lw, lh = slide.level_dimensions[level]
    sx, sy = w0 / lw, h0 / lh  # level-0 px per level px
    ew, eh = (lw, lh) if extent is None else (extent[0] / sx, extent[1] / sy)  # extent in level px
    fx, fy = ew / mw, eh / mh  # level px per output px
    limx, limy = (lw, lh) if extent is None else (math.ceil(ew - 1e-9), math.ceil(eh - 1e-9))
    source = slide.tile_source()
    direct = source is not None and source.has_level(level)
    c_lo, r_lo, c_hi, r_hi = (0, 0, mw, mh) if window is None else window
    bw = max(1, int(READ_BLOCK // max(fx, 1.0)))
    bh = max(1, int(READ_BLOCK // max(fy, 1.0)))
    out = np.empty((r_hi - r_lo, c_hi - c_lo, 3), np.uint8)
    for r0 in range(r_lo, r_hi, bh):
        r1 = min(r_hi, r0 + bh)
        y0f, y1f = r0 * fy, min(r1 * fy, eh)
        ly0, ly1 = int(math.floor(y0f)), min(limy, max(int(math.ceil(y1f)), int(math.floor(y0f)) + 1))
        for c0 in range(c_lo, c_hi, bw):
            c1 = min(c_hi, c0 + bw)
            x0f, x1f = c0 * fx, min(c1 * fx, ew)
            lx0, lx1 = int(math.floor(x0f)), min(limx, max(int(math.ceil(x1f)), int(math.floor(x0f)) + 1))
            block = _read_block(slide, level, lx0, ly0, lx1 - lx0, ly1 - ly0, direct)
            tw, th = c1 - c0, r1 - r0
            box = (x0f - lx0, y0f - ly0, min(x1f - lx0, lx1 - lx0), min(y1f - ly0, ly1 - ly0))
            dest = out[r0 - r_lo : r1 - r_lo, c0 - c_lo : c1 - c_lo]
            if block.shape[:2] == (th, tw) and box == (0.0, 0.0, float(tw), float(th)):
                dest[:] = block
            else:
                img = Image.fromarray(np.ascontiguousarray(block))
                dest[:] = np.asarray(img.resize((tw, th), Image.Resampling.BOX, box=box))
    return out
