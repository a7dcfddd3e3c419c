"""Tissue detection + tile grid on a whole slide: ours now (``method="fast"``, coarse to fine) against ours
before (``method="full"``: every mask pixel analysed, and the polygons traced, as ``detect_tissue`` did before
issue 19) and a CLAM-style baseline (Otsu on the saturation of an OpenSlide thumbnail at 1/64), in one run.

    uv run --locked python benchmarks/bench_tissue.py            # 40,000 x 30,000 synthetic slide + CMU-1
    uv run --locked python benchmarks/bench_tissue.py --quick    # 12,000 x 9,000

Each arm is timed in interleaved rounds (fresh ``open_slide`` per round, the first round discarded: imports
and file caches), median of the rounds; wall time and process CPU time are both reported, because this
machine's 2 cores are shared and wall time drifts. "tissue + grid" is ``detect_tissue`` (8 µm/px mask) then
``make_tile_grid`` (224 px at 0.5 µm/px). The masks of fast and full are compared (IoU) in the same run.

The slide is written once into ``$SLIDESCOPE_BENCH_CACHE`` (default /tmp/slidescope-bench), not the repo.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("SLIDESCOPE_BENCH_CACHE", "/tmp/slidescope-bench"))
REPO = Path(__file__).resolve().parents[1]


def synthetic(width: int, height: int) -> Path:
    from slidescope.synthetic import make_synthetic_slide

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"tissue_{width}x{height}.svs"
    if not path.exists():
        tmp = path.with_suffix(".partial.svs")
        make_synthetic_slide(tmp, width=width, height=height, mpp=0.5, seed=7, n_islands=4)
        tmp.rename(path)
    return path


def cmu() -> Path | None:
    env = os.environ.get("SLIDESCOPE_TEST_DATA")
    base = Path(env) if env else REPO.parent / "shared" / "data"
    p = base / "slides" / "CMU-1-Small-Region.svs"
    return p if p.exists() else None


def ours(path: Path, method: str) -> tuple[float, float, np.ndarray]:
    from slidescope.wsi import detect_tissue, make_tile_grid, open_slide

    slide = open_slide(path)
    t, c = time.perf_counter(), time.process_time()
    mask = detect_tissue(slide, method=method)
    if method == "full":
        _ = mask.contours  # detect_tissue traced them before issue 19
    make_tile_grid(slide, tile_size=224, mpp=0.5, mask=mask, allow_empty=True)
    return time.perf_counter() - t, time.process_time() - c, mask.mask


def clam_otsu(path: Path) -> tuple[float, float, np.ndarray]:
    """CLAM's segmentation, minimal: saturation of an OpenSlide thumbnail at 1/64, median blur, Otsu."""
    import openslide
    from PIL import ImageFilter
    from skimage.filters import threshold_otsu

    t, c = time.perf_counter(), time.process_time()
    o = openslide.OpenSlide(str(path))
    w, h = o.dimensions
    thumb = o.get_thumbnail((max(1, w // 64), max(1, h // 64))).convert("HSV")
    sat = np.asarray(thumb.getchannel("S").filter(ImageFilter.MedianFilter(7)))
    mask = sat > threshold_otsu(sat) if sat.max() > sat.min() else np.zeros_like(sat, bool)
    return time.perf_counter() - t, time.process_time() - c, mask


def measure(path: Path, rounds: int) -> dict[str, tuple[float, float]]:
    arms = {
        "fast": lambda: ours(path, "fast"),
        "full": lambda: ours(path, "full"),
        "clam": lambda: clam_otsu(path),
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in arms}
    for r in range(rounds + 1):
        for name, fn in arms.items():
            wall, cpu, _ = fn()
            if r:  # round 0 warms imports and the page cache
                times[name].append((wall, cpu))
    return {
        k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()
    }


def run(quick: bool = False, rounds: int = 5) -> list[dict]:
    """Rows ``{stage, ours, baseline, unit, ratio}`` (ratio = baseline / ours: > 1 means ours is faster)."""
    from slidescope.wsi import detect_tissue, open_slide

    w, h = (12000, 9000) if quick else (40000, 30000)
    slides = [(f"synthetic {w // 1000}k x {h // 1000}k", synthetic(w, h))]
    if (c := cmu()) is not None:
        slides.append(("CMU-1-Small-Region", c))
    rows = []
    for label, path in slides:
        m = measure(path, rounds)
        s = open_slide(path)
        new_mask, old_mask = detect_tissue(s).mask, detect_tissue(s, method="full").mask
        iou = float((new_mask & old_mask).sum() / max(1, (new_mask | old_mask).sum()))
        fast, full, clam = m["fast"], m["full"], m["clam"]
        print(
            f"{label}: tissue + grid, median of {rounds} rounds (wall s / CPU s)\n"
            f"  ours now (fast)    {fast[0]:.3f} / {fast[1]:.3f}\n"
            f"  ours before (full) {full[0]:.3f} / {full[1]:.3f}   now is {full[0] / fast[0]:.1f}x faster "
            f"(CPU {full[1] / fast[1]:.1f}x)\n"
            f"  CLAM-style Otsu    {clam[0]:.3f} / {clam[1]:.3f}   now vs CLAM {clam[0] / fast[0]:.2f}x "
            f"(CPU {clam[1] / fast[1]:.2f}x)\n"
            f"  mask IoU fast vs full {iou:.4f}",
            file=sys.stderr,
        )
        for name, base in (("ours before (full)", "full"), ("CLAM-style Otsu 1/64", "clam")):
            rows.append(
                {
                    "stage": f"tissue + grid, {label}: fast vs {name} (wall)",
                    "ours": m["fast"][0],
                    "baseline": m[base][0],
                    "unit": "s",
                    "ratio": m[base][0] / m["fast"][0],
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="12k x 9k slide instead of 40k x 30k")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print("| stage | ours | baseline | unit | ours vs baseline |\n|---|---:|---:|---|---:|")
    for r in run(args.quick, args.rounds):
        print(f"| {r['stage']} | {r['ours']:.3f} | {r['baseline']:.3f} | {r['unit']} | {r['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
