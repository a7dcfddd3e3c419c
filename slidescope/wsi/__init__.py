"""Slides: reading (OpenSlide, tiffslide, Pillow, plugins: see ``_backends``), tissue detection, tile grids at
exact mpp, tile streaming.

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
    "MPP_FROM_MANIFEST": "._slide",
    "manifest_slide_mpp": "._inputs",
    "TissueMask": "._tissue",
    "detect_tissue": "._tissue",
    "tissue_mask_from_array": "._masks",
    "PEN_MODES": "._pen",
    "pen_hint": "._pen",
    "render_tiling": "._render",
    "TileGrid": "._grid",
    "make_tile_grid": "._grid",
    "EDGE_POLICIES": "._grid",
    "DOWNSCALES": "._grid",
    "iter_tiles": "._stream",
    "default_read_threads": "._prefetch",
    "read_tile": "._stream",
    "TileDataset": "._dataset",
    "QC_POLICIES": "._qc",
    "QC_MEASURES": "._qc",
    "QC_CHECKS": "._qc",
    "QCGrid": "._qc_grid",
    "tile_qc": "._qc",
    "qc_flags": "._qc",
    "check_qc_thresholds": "._qc",
    "qc_thresholds_used": "._qc",
    "SETTABLE_THRESHOLDS": "._qc",
    "qc_tiles": "._qc_grid",
    "qc_summary": "._qc",
    "class_fractions": "._qc",
    "finish_qc": "._qc_grid",
    "ARTEFACT_MAX": "._qc",
    "LEARNED_PREFIX": "._qc",
    "expand_slides": "._inputs",
    "dicom_series_name": "._inputs",
    "Backend": "._backends",
    "register_backend": "._backends",
    "registered_backends": "._backends",
    "backend_names": "._backends",
    "claims_by_name": "._backends",
}

#: names that moved to slidescope.synthetic (deprecated here; removed in the next release)
_MOVED = ("make_synthetic_slide", "make_synthetic_cohort", "SyntheticSlide")

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from ._backends import (
        Backend as Backend,
        backend_names as backend_names,
        claims_by_name as claims_by_name,
        register_backend as register_backend,
        registered_backends as registered_backends,
    )
    from ._dataset import TileDataset as TileDataset
    from ._grid import (
        DOWNSCALES as DOWNSCALES,
        EDGE_POLICIES as EDGE_POLICIES,
        TileGrid as TileGrid,
        make_tile_grid as make_tile_grid,
    )
    from ._inputs import (
        dicom_series_name as dicom_series_name,
        expand_slides as expand_slides,
        manifest_slide_mpp as manifest_slide_mpp,
    )
    from ._masks import tissue_mask_from_array as tissue_mask_from_array
    from ._pen import PEN_MODES as PEN_MODES, pen_hint as pen_hint
    from ._qc import (
        ARTEFACT_MAX as ARTEFACT_MAX,
        LEARNED_PREFIX as LEARNED_PREFIX,
        QC_CHECKS as QC_CHECKS,
        QC_MEASURES as QC_MEASURES,
        QC_POLICIES as QC_POLICIES,
        SETTABLE_THRESHOLDS as SETTABLE_THRESHOLDS,
        check_qc_thresholds as check_qc_thresholds,
        class_fractions as class_fractions,
        qc_flags as qc_flags,
        qc_summary as qc_summary,
        qc_thresholds_used as qc_thresholds_used,
        tile_qc as tile_qc,
    )
    from ._qc_grid import QCGrid as QCGrid, finish_qc as finish_qc, qc_tiles as qc_tiles
    from ._render import render_tiling as render_tiling
    from ._slide import (
        MPP_FILLED_IN as MPP_FILLED_IN,
        MPP_FROM_MANIFEST as MPP_FROM_MANIFEST,
        Slide as Slide,
        open_slide as open_slide,
    )
    from ._stream import iter_tiles as iter_tiles, read_tile as read_tile
    from ._prefetch import default_read_threads as default_read_threads
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
