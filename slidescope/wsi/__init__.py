"""Slides: reading (OpenSlide, tiffslide), tissue detection, tile grids at exact mpp, tile streaming.

Public names are loaded on first use so ``import slidescope.wsi`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "Slide": "._slide",
    "open_slide": "._slide",
    "TissueMask": "._tissue",
    "detect_tissue": "._tissue",
    "TileGrid": "._grid",
    "make_tile_grid": "._grid",
    "iter_tiles": "._stream",
    "read_tile": "._stream",
    "TileDataset": "._dataset",
    "expand_slides": "._inputs",
    "make_synthetic_slide": ".synthetic",
    "make_synthetic_cohort": ".cohort",
    "SyntheticSlide": ".synthetic",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from ._dataset import TileDataset
    from ._grid import TileGrid, make_tile_grid
    from ._inputs import expand_slides
    from ._slide import Slide, open_slide
    from ._stream import iter_tiles, read_tile
    from ._tissue import TissueMask, detect_tissue
    from .cohort import make_synthetic_cohort
    from .synthetic import SyntheticSlide, make_synthetic_slide


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
