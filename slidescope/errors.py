"""The exceptions slidescope raises. Every message says what to do next.

All derive from :class:`SlidescopeError`, so a batch runner can catch one type, record
``type(err).__name__`` and the message per slide, and go on.
"""

from __future__ import annotations

__all__ = [
    "SlidescopeError",
    "SlideNotFoundError",
    "UnsupportedSlideError",
    "SlideReadError",
    "MissingMppError",
    "EmptyTissueError",
    "InvalidParameterError",
    "MissingDependencyError",
]


class SlidescopeError(Exception):
    """Base class of every error slidescope raises on purpose."""


class SlideNotFoundError(SlidescopeError, FileNotFoundError):
    """The slide path does not exist or is not a file."""


class UnsupportedSlideError(SlidescopeError):
    """No backend can open the file (not a slide, unknown compression, truncated header...)."""


class SlideReadError(SlidescopeError):
    """The slide opened but a region could not be decoded (corrupt tile, truncated file)."""


class MissingMppError(SlidescopeError):
    """The slide carries no pixel size and the caller did not give one."""


class EmptyTissueError(SlidescopeError):
    """Tissue detection or the tile grid found nothing to work on."""


class InvalidParameterError(SlidescopeError, ValueError):
    """A parameter value that cannot work (tile size, mpp, overlap, backend name...)."""


class MissingDependencyError(SlidescopeError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""
