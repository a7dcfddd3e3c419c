"""Golden file ``area_resize.npz``: OpenCV's ``INTER_AREA`` shrink of fixed tiles, the oracle of area averaging.

Run by hand, outside the package (never by pytest), in a scratch environment with OpenCV (not a slidescope
dependency)::

    uv venv /tmp/cvenv --python 3.11 && uv pip install --python /tmp/cvenv/bin/python \
        opencv-python-headless numpy
    /tmp/cvenv/bin/python tests/golden/make_area_resize.py

Reference function called: ``cv2.resize(tile, dsize, interpolation=cv2.INTER_AREA)`` on ``uint8`` tiles. When
shrinking by a non-integer factor OpenCV weights every source pixel by the area of its overlap with the
destination pixel's footprint (``resizeArea_`` with ``computeResizeAreaTab``); at integer factors it takes the
block mean (``resizeAreaFast_``). Results are rounded to the nearest integer (``saturate_cast``).
Inputs, for each size pair ``n -> m``: a structured ``(n, n, 3)`` tile (:func:`structured`: stripes of periods
near the pixel pitch, a gradient, a hard edge; rebuilt by the test, not stored) shrunk to ``(m, m)``, and two
strips of uniform noise from a fixed seed (the hardest case; stored, and kept narrow so the file stays small):
``(n, 8, 3) -> (m, 6)`` and ``(8, n, 3) -> (6, m)``, so each axis is checked at ``n -> m`` (and at 8 -> 6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("area_resize.npz")
#: (n -> m): 257 -> 256 (TRIDENT-like 20x read), 300 -> 224, 448 -> 224 (integer), 513 -> 256, 483 -> 224
PAIRS = ((257, 256), (300, 224), (448, 224), (513, 256), (483, 224))
SEED = 1405


def structured(n: int) -> np.ndarray:
    """Integer-exact structure, uint8 (n, n, 3): stripes of periods near the pixel pitch (R), a diagonal
    gradient (G), a hard slanted edge (B). Integer arithmetic only, so it is the same on every platform and
    the test rebuilds it instead of reading it from the golden file."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.int64)
    stripes = ((7 * xx + 3 * yy) % 13) * 19 + (xx % 2) * 8
    gradient = (xx + yy) * 255 // (2 * n - 2)
    edge = np.where(37 * xx + 100 * yy > 60 * n, 230, 20)
    return np.stack([stripes, gradient, edge], axis=-1).astype(np.uint8)


def main() -> None:
    import cv2  # here: the test imports structured() without OpenCV

    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {}
    for n, m in PAIRS:
        tiles = {
            "structured": (structured(n), (m, m)),
            "noise_rows": (rng.integers(0, 256, (n, 8, 3), dtype=np.uint8), (6, m)),
            "noise_cols": (rng.integers(0, 256, (8, n, 3), dtype=np.uint8), (m, 6)),
        }
        for kind, (tile, dsize) in tiles.items():  # dsize is OpenCV's (width, height)
            if kind != "structured":  # the structured tile is rebuilt by the test
                arrays[f"in_{kind}_{n}_{m}"] = tile
            arrays[f"out_{kind}_{n}_{m}"] = cv2.resize(tile, dsize, interpolation=cv2.INTER_AREA)
    np.savez_compressed(
        OUT,
        pairs=np.array(PAIRS, np.int64),
        provenance=np.array(
            f"opencv-python-headless {cv2.__version__} (numpy {np.__version__}); "
            "cv2.resize(tile, dsize, interpolation=cv2.INTER_AREA) on uint8 tiles; "
            f"inputs: numpy default_rng({SEED}).integers(0, 256) and make_area_resize.structured(n)"
        ),
        **arrays,
    )
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {', '.join(f'{n}->{m}' for n, m in PAIRS)}")


if __name__ == "__main__":
    main()
