"""Slides: reading (OpenSlide, tiffslide), tissue detection, tile grids at exact mpp, tile streaming.

Public names are loaded on first use so ``import slidescope.wsi`` stays cheap. The synthetic data
generator moved to :mod:`slidescope.synthetic`; its old names here still work until the next release,
with a ``DeprecationWarning``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_MIN_TISSUE": "._defaults",
    "Slide": "._slide",
    "open_slide": "._slide",
    "MPP_FILLED_IN": "._slide",
    "TissueMask": "._tissue",
    "detect_tissue": "._tissue",
    "PEN_MODES": "._pen",
    "pen_hint": "._pen",
    "render_tiling": "._render",
    "TileGrid": "._grid",
    "make_tile_grid": "._grid",
    "iter_tiles": "._stream",
    "read_tile": "._stream",
    "TileDataset": "._dataset",
    "expand_slides": "._inputs",
    "dicom_series_name": "._inputs",
}

#: names that moved to slidescope.synthetic (deprecated here; removed in the next release)
_MOVED = ("make_synthetic_slide", "make_synthetic_cohort", "SyntheticSlide")

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from ._dataset import TileDataset as TileDataset
    from ._grid import TileGrid as TileGrid, make_tile_grid as make_tile_grid
    from ._inputs import dicom_series_name as dicom_series_name, expand_slides as expand_slides
    from ._pen import PEN_MODES as PEN_MODES, pen_hint as pen_hint
    from ._render import render_tiling as render_tiling
    from ._slide import MPP_FILLED_IN as MPP_FILLED_IN, Slide as Slide, open_slide as open_slide
    from ._stream import iter_tiles as iter_tiles, read_tile as read_tile
    from ._tissue import TissueMask as TissueMask, detect_tissue as detect_tissue


_lazy_getattr, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


def _moved_to_synthetic(old: str, name: str) -> Any:
    """``slidescope.synthetic.<name>``, with a DeprecationWarning that ``<old>.<name>`` moved there."""
    warnings.warn(
        f"{old}.{name} moved to slidescope.synthetic.{name}: import it from slidescope.synthetic "
        f"(the old name goes in the next release).",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module("slidescope.synthetic"), name)


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return _moved_to_synthetic(__name__, name)
    return _lazy_getattr(name)
