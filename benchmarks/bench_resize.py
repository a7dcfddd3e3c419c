"""Tile resize benchmark: slidescope's area-averaging resize vs OpenCV's ``INTER_AREA`` (the same averaging,
the oracle of tests/golden/area_resize.npz) and PIL ``BOX`` (the resize used before), per tile.

For each read size -> tile size (257 -> 256 and 444 -> 224: non-integer ratios of 20x reads from real scans;
448 -> 224: the integer ratio of an exact 0.25 µm/px scan; 512 -> 224, 483 -> 224) all run on the same RGB
tile in the same process, best of several rounds, single-threaded. Printed: ms per tile, ours / OpenCV as a
speed ratio (> 1: ours faster) and the largest pixel difference from OpenCV. PIL BOX is not area averaging
at non-integer ratios (see ``slidescope/wsi/_resize.py``); at 2x2 slidescope calls OpenCV itself.

Run: ``OMP_NUM_THREADS=1 uv run --locked python benchmarks/bench_resize.py [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

PAIRS = ((257, 256), (444, 224), (448, 224), (483, 224), (512, 224))


def best_ms(fn, rounds: int, repeat: int = 30) -> float:
    fn()  # warm-up (and the weight cache for ours)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best * 1e3


def main() -> None:
    from slidescope.wsi._resize import resize_tile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    import cv2

    cv2.setNumThreads(1)  # single-threaded, as ours (a benchmark process: no one else's setting changed)
    print(
        f"{'read -> tile':>14}  {'ours ms':>8}  {'OpenCV ms':>9}  {'PIL BOX ms':>10}  "
        f"{'OpenCV / ours':>13}  {'max diff vs OpenCV':>18}"
    )
    for n, m in PAIRS:
        tile = rng.integers(0, 256, (n, n, 3), dtype=np.uint8)
        ours = best_ms(lambda t=tile, m=m: resize_tile(t, m), args.rounds)
        ocv = best_ms(lambda t=tile, m=m: cv2.resize(t, (m, m), interpolation=cv2.INTER_AREA), args.rounds)
        box = best_ms(
            lambda t=tile, m=m: np.asarray(Image.fromarray(t).resize((m, m), Image.Resampling.BOX)),
            args.rounds,
        )
        diff = np.abs(
            resize_tile(tile, m).astype(int) - cv2.resize(tile, (m, m), interpolation=cv2.INTER_AREA)
        )
        print(
            f"{f'{n} -> {m}':>14}  {ours:8.3f}  {ocv:9.3f}  {box:10.3f}  {ocv / ours:12.2f}x  {int(diff.max()):18d}"
        )


if __name__ == "__main__":
    main()
