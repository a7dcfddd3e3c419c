"""The CLI starts light (issue 19): ``import slidescope.cli`` and ``--help`` import no model, array-processing
or slide-reading stack; those load inside the commands that use them. No timing is asserted (the machine's
load varies); ``python -X importtime -m slidescope info --help`` shows where start-up time goes.
"""

from __future__ import annotations

import subprocess
import sys

#: Modules a command that does not need them must not pay for at start-up. numpy is not on the list: the
#: ``--backend`` help names the registered readers, and the reader registry (wsi/_backends.py) imports it.
HEAVY = (
    "torch",
    "timm",
    "lightning",
    "transformers",
    "open_clip",
    "scipy",
    "skimage",
    "PIL",
    "zarr",
    "h5py",
    "pandas",
    "dask",
    "openslide",
    "tiffslide",
    "tifffile",
    "napari",
)


def _imported(code: str) -> list[str]:
    probe = f"import sys; {code}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_cli_loads_no_heavy_stack() -> None:
    assert _imported("import slidescope.cli") == []


def test_help_of_light_commands_loads_no_heavy_stack() -> None:
    for args in ([], ["info"], ["tile"], ["extract"], ["run"]):
        code = (
            "from slidescope.cli import app; import contextlib, io;"
            f"f = io.StringIO(); r = contextlib.redirect_stdout(f); r.__enter__();"
            f"app({[*args, '--help']!r}, standalone_mode=False); r.__exit__(None, None, None)"
        )
        assert _imported(code) == [], args
