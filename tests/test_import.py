"""`import slidescope` stays light: no torch, napari, Qt or slide library at import time."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_light() -> None:
    code = (
        "import sys, slidescope, slidescope.wsi, slidescope.errors;"
        "heavy = [m for m in ('torch', 'napari', 'PyQt5', 'qtpy', 'openslide', 'tiffslide', 'timm', 'lightning')"
        " if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names_resolve() -> None:
    import slidescope

    for name in ("open_slide", "detect_tissue", "make_tile_grid", "SlidescopeError", "MissingMppError"):
        assert getattr(slidescope, name) is not None
    assert slidescope.open_slide is slidescope.wsi.open_slide
