"""A mistyped option or a missing argument is a usage message with exit status 2, never a traceback.

typer >= 0.25 raises the usage errors of its vendored click, which are not ``click.ClickException``; the
entry point (``slidescope.cli.main``) used to let them escape as a Python traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["extract", "x.svs", "--no-such-flag"], "No such option: --no-such-flag"),
        (["train"], "Missing option"),
        (["info", "x.svs", "--qc", "--level", "nine"], "No such option"),
    ],
)
def test_usage_errors_are_messages_with_status_2(args: list[str], says: str, tmp_path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "slidescope", *args], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert res.returncode == 2, res.stderr
    assert says in res.stderr
    assert "Traceback" not in res.stderr and "Usage: " in res.stderr
