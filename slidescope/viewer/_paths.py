"""Where the viewer finds the sample slide and keeps its stores."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SlidescopeError

__all__ = ["sample_slide_path", "sample_mask_path", "viewer_cache_dir", "SAMPLE_MASK_MPP"]

#: µm per pixel of the sample slide's tumour mask (sample_data/README.md)
SAMPLE_MASK_MPP = 8.0


def _sample_file(name: str) -> Path:
    """A sample file: inside an installed wheel (``slidescope/_sample_data``) or a source checkout."""
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "_sample_data", package.parent / "sample_data"):
        if (folder / name).is_file():
            return folder / name
    raise SlidescopeError(
        f"the sample file {name} is missing from this installation (looked in {package / '_sample_data'} and "
        f"{package.parent / 'sample_data'}). Reinstall slidescope, or regenerate it from a source checkout with "
        f"`python sample_data/generate.py`."
    )


def sample_slide_path() -> Path:
    """Path of the synthetic sample slide (4096 x 3072 px at 0.5 µm/px)."""
    return _sample_file("sample_slide.tiff")


def sample_mask_path() -> Path:
    """Path of the sample slide's ground-truth tumour mask (PNG at :data:`SAMPLE_MASK_MPP` µm/px)."""
    return _sample_file("sample_slide.tumour.png")


def viewer_cache_dir() -> Path:
    """Folder for the viewer's embedding stores: ``$SLIDESCOPE_CACHE/viewer`` or the user cache dir.

    The user cache dir is platformdirs' (``~/.cache/slidescope`` on Linux).
    """
    env = os.environ.get("SLIDESCOPE_CACHE")
    if env:
        root = Path(env).expanduser()
    else:
        from platformdirs import user_cache_dir

        root = Path(user_cache_dir("slidescope"))
    return root / "viewer"
