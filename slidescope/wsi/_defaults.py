"""Defaults of the slide layer that light modules (the command line, the run configuration) also need.

Kept free of numpy and the slide libraries, so importing a default costs nothing.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MIN_TISSUE"]

#: default minimum tissue fraction of a kept tile (``min_tissue`` / ``--min-tissue`` everywhere)
DEFAULT_MIN_TISSUE = 0.25
