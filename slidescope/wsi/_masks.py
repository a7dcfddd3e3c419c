"""A :class:`~slidescope.wsi.TissueMask` from a boolean mask computed elsewhere (a learned segmenter, a
pathologist's annotation rasterised, another tool's output), with the same contours and holes as the
classic detector's."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ._polygons import mask_contours
from ._tissue import TissueMask

__all__ = ["tissue_mask_from_array"]


def tissue_mask_from_array(
    mask: np.ndarray,
    *,
    slide_dimensions: tuple[int, int],
    slide_mpp: tuple[float, float],
    params: dict[str, Any] | None = None,
) -> TissueMask:
    """Wrap a boolean tissue mask covering the whole slide as a :class:`TissueMask`.

    Parameters
    ----------
    mask : bool ndarray (h, w); pixel ``(r, c)`` covers level-0 ``[c * w0 / w, (c + 1) * w0 / w)`` x
        ``[r * h0 / h, (r + 1) * h0 / h)``.
    slide_dimensions : level-0 (width, height) of the slide.
    slide_mpp : level-0 µm/px (x, y).
    params : provenance (method, model, thresholds...), JSON-serialisable.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise InvalidParameterError(f"a tissue mask must be a 2-D array, got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    w0, h0 = int(slide_dimensions[0]), int(slide_dimensions[1])
    h, w = mask.shape
    ds = (w0 / w, h0 / h)
    mpp = (float(slide_mpp[0]) * ds[0], float(slide_mpp[1]) * ds[1])
    contours, holes = mask_contours(mask, ds)
    return TissueMask(mask, ds, mpp, (w0, h0), contours, dict(params or {}), holes)
