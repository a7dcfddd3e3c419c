"""Whole-slide images at low resolution, read block by block in bounded memory."""

from __future__ import annotations

import math

import numpy as np

from ._slide import Slide

__all__ = ["read_downsampled", "READ_BLOCK"]

#: Level pixels per block read from the slide (side), bounding the memory of a read.
READ_BLOCK = 2048


def _level0_coord(lv: int, scale: float) -> int:
    """A level-0 coordinate that :meth:`Slide.read_region` maps back to level pixel ``lv``."""
    if scale == 1.0:
        return lv
    x = int(round(lv * scale))
    while x > 0 and math.floor(x / scale) > lv:
        x -= 1
    while math.floor(x / scale) < lv:
        x += 1
    return x


def read_downsampled(slide: Slide, level: int, size: tuple[int, int]) -> np.ndarray:
    """The whole slide as RGB uint8 (mh, mw, 3), area-averaged from ``level`` block by block."""
    from PIL import Image

    mw, mh = size
    w0, h0 = slide.dimensions
    lw, lh = slide.level_dimensions[level]
    sx, sy = w0 / lw, h0 / lh  # level-0 px per level px
    fx, fy = lw / mw, lh / mh  # level px per mask px
    bw = max(1, int(READ_BLOCK // max(fx, 1.0)))
    bh = max(1, int(READ_BLOCK // max(fy, 1.0)))
    out = np.empty((mh, mw, 3), np.uint8)
    for r0 in range(0, mh, bh):
        r1 = min(mh, r0 + bh)
        y0f, y1f = r0 * fy, min(r1 * fy, lh)
        ly0, ly1 = int(math.floor(y0f)), min(lh, max(int(math.ceil(y1f)), int(math.floor(y0f)) + 1))
        for c0 in range(0, mw, bw):
            c1 = min(mw, c0 + bw)
            x0f, x1f = c0 * fx, min(c1 * fx, lw)
            lx0, lx1 = int(math.floor(x0f)), min(lw, max(int(math.ceil(x1f)), int(math.floor(x0f)) + 1))
            block = slide.read_region(
                (_level0_coord(lx0, sx), _level0_coord(ly0, sy)), level, (lx1 - lx0, ly1 - ly0)
            )
            tw, th = c1 - c0, r1 - r0
            box = (x0f - lx0, y0f - ly0, min(x1f - lx0, lx1 - lx0), min(y1f - ly0, ly1 - ly0))
            if block.shape[:2] == (th, tw) and box == (0.0, 0.0, float(tw), float(th)):
                out[r0:r1, c0:c1] = block
            else:
                img = Image.fromarray(block).resize((tw, th), Image.Resampling.BOX, box=box)
                out[r0:r1, c0:c1] = np.asarray(img)
    return out
