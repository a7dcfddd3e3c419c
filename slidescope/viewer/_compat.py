"""Keeping torch's optional ``triton`` out of a napari process that already runs a system LLVM.

Mesa's software OpenGL (llvmpipe: Xvfb, VMs, remote desktops) and LLVM-based GPU drivers load the
system ``libLLVM`` into the process. ``triton`` (installed with torch on Linux) carries its own
static LLVM whose initialisers then bind to the loaded library and crash the interpreter
(segmentation fault in ``llvm::cl::Option::addArgument`` while loading ``libtriton.so``). torch,
torchvision and timm import triton only to offer ``torch.compile`` kernels, which the viewer never
uses, so in that situation triton is blocked before the first torch import and torch goes on
without it. A process without a system LLVM, or one that imported triton already, is left alone.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["system_llvm_loaded", "keep_triton_out"]


def system_llvm_loaded(maps: Path = Path("/proc/self/maps")) -> bool:
    """True when a shared ``libLLVM`` is mapped into this process (Linux; False where unknown)."""
    try:
        text = maps.read_text()
    except OSError:
        return False
    return "/libLLVM" in text


def keep_triton_out(maps: Path = Path("/proc/self/maps")) -> bool:
    """Block ``import triton`` when a system LLVM is loaded and triton is not; True if it was blocked.

    Call it before the first import of torch in a napari process (the viewer does, before it
    extracts or scores)."""
    if "triton" in sys.modules or not system_llvm_loaded(maps):
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # `import triton` now raises ImportError
    log.info(
        "a system LLVM (software OpenGL) is loaded: triton is kept out of this process, whose static LLVM "
        "would crash it; torch runs without torch.compile kernels here"
    )
    return True
