""".ci/mypy_gate.py reads mypy's real output: one baseline entry per error, without line numbers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_gate():
    spec = importlib.util.spec_from_file_location("mypy_gate", REPO / ".ci" / "mypy_gate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entries_from_real_mypy_output_ignore_line_numbers(tmp_path: Path) -> None:
    gate = load_gate()
    code = 'def f(x: int) -> int:\n    return x\n\n\nf("a")\nf("b")\ny: str = 1\n'
    (tmp_path / "mod.py").write_text(code)
    moved = "\n\n# an edit above the errors moves their lines\n" + code
    (tmp_path / "moved.py").write_text(moved)

    def entries(name: str) -> Counter[str]:
        command = [
            sys.executable,
            "-m",
            "mypy",
            "--config-file=",
            "--no-pretty",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / "cache"),
            name,
        ]
        out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 1, out.stdout + out.stderr
        lines = out.stdout.splitlines()
        assert any(":5: error:" in line or ":8: error:" in line for line in lines), lines  # with line numbers
        return Counter(e.split(":", 1)[1] for e in map(gate.normalise, lines) if e is not None)

    got = entries("mod.py")
    assert got == entries("moved.py")  # same entries once the file name is dropped
    assert sum(got.values()) == 3
    assert got['arg-type:Argument 1 to "f" has incompatible type "str"; expected "int"'] == 2  # both counted
    assignment = (
        'assignment:Incompatible types in assignment (expression has type "int", variable has type "str")'
    )
    assert got[assignment] == 1
    assert gate.normalise("Success: no issues found in 1 source file") is None
    assert gate.normalise("mod.py:3: note: See https://mypy.rtfd.io") is None
    assert gate.normalise('a.py:12: error: Name "x" already defined on line 3  [no-redef]') == (
        'a.py:no-redef:Name "x" already defined on line N'
    )
