"""triton is kept out of a process whose OpenGL runs on a system LLVM (it would crash it), and only then."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from slidescope.viewer._compat import keep_triton_out, system_llvm_loaded

MESA = "7f00-7f10 r-xp 00000000 fe:00 1 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1\n"
PLAIN = "7f00-7f10 r-xp 00000000 fe:00 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"


def test_system_llvm_is_detected_from_the_memory_maps(tmp_path: Path) -> None:
    (tmp_path / "mesa").write_text(PLAIN + MESA)
    (tmp_path / "plain").write_text(PLAIN)
    assert system_llvm_loaded(tmp_path / "mesa") and not system_llvm_loaded(tmp_path / "plain")
    assert not system_llvm_loaded(tmp_path / "missing")


def test_triton_is_blocked_only_with_a_system_llvm_and_before_it_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mesa").write_text(MESA)
    (tmp_path / "plain").write_text(PLAIN)
    # whatever sys.modules holds for triton now is put back after the test
    monkeypatch.setitem(sys.modules, "triton", sys.modules.get("triton"))
    monkeypatch.delitem(sys.modules, "triton")
    assert not keep_triton_out(tmp_path / "plain") and "triton" not in sys.modules
    assert keep_triton_out(tmp_path / "mesa")
    with pytest.raises(ImportError):
        import triton  # noqa: F401
    assert not keep_triton_out(tmp_path / "mesa")  # already decided: nothing more to do
