"""Pictures of what tiling did: a thumbnail with the tissue mask and the tiles drawn on it."""

from __future__ import annotations

import numpy as np

from ._grid import TileGrid
from ._slide import Slide

__all__ = ["render_tiling"]


def render_tiling(slide: Slide, grid: TileGrid | None = None, mask=None, *, size: int = 1024) -> np.ndarray:
    """RGB ``uint8 (h, w, 3)`` thumbnail (longest side ``size``) with tissue tinted green and
    its contours and the tile outlines drawn: kept tiles in blue."""
    from PIL import Image, ImageDraw

    thumb = slide.get_thumbnail((size, size))
    th, tw = thumb.shape[:2]
    w0, h0 = slide.dimensions
    sx, sy = tw / w0, th / h0
    img = Image.fromarray(thumb).convert("RGB")
    if mask is not None and not mask.is_empty:
        m = Image.fromarray(mask.mask.astype(np.uint8) * 255).resize((tw, th), Image.Resampling.NEAREST)
        tint = Image.new("RGB", (tw, th), (40, 180, 60))
        img = Image.composite(Image.blend(img, tint, 0.25), img, m)
    draw = ImageDraw.Draw(img)
    if mask is not None:
        for contour in mask.contours:
            pts = [(float(x) * sx, float(y) * sy) for x, y in contour]
            if len(pts) >= 2:
                draw.line(pts, fill=(0, 140, 30), width=2)
    if grid is not None and len(grid):
        ex, ey = grid.extent[0] * sx, grid.extent[1] * sy
        for x, y in grid.coords:
            x0, y0 = x * sx, y * sy
            draw.rectangle([x0, y0, x0 + ex, y0 + ey], outline=(30, 60, 220), width=1)
    return np.asarray(img)
