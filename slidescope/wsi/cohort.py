"""Deprecated: the synthetic cohort generator moved to :mod:`slidescope.synthetic`.

``from slidescope.wsi.cohort import make_synthetic_cohort`` still works until the next release, with a
``DeprecationWarning``; import from ``slidescope.synthetic`` instead.
"""

from __future__ import annotations

from typing import Any

from . import _moved_to_synthetic

_MOVED = ("make_synthetic_cohort", "synthetic_report")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return _moved_to_synthetic(__name__, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
