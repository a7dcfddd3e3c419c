"""Peak memory and time of the full-size PRISM-style slide encoder on CPU, per slide size.

Each size runs in its own subprocess so that ``ru_maxrss`` (the peak resident set size) belongs to that size
alone. Random weights, fp32, ``torch.inference_mode``, batch of one slide.

Usage::

    python benchmarks/bench_slide_encoder.py                 # 5000 20000 50000 tiles
    python benchmarks/bench_slide_encoder.py 1000 5000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _child(n_tiles: int, threads: int) -> None:
    import resource
    import time

    import torch

    from slidescope.vlm.slide_encoder import PerceiverSlideEncoder, PerceiverSlideEncoderConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = PerceiverSlideEncoderConfig()
    model = PerceiverSlideEncoder(cfg).eval()
    tiles = torch.randn(1, n_tiles, cfg.context_dim)

    def rss_mb() -> float:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    before = rss_mb()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model(tiles)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    assert out["image_embedding"].shape == (1, cfg.latent_dim)
    print(json.dumps({"tiles": n_tiles, "before_mb": before, "peak_mb": peak, "seconds": seconds,
                      "input_mb": tiles.numel() * 4 / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[5000, 20000, 50000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child, args.threads)
        return
    rows = []
    for n in args.sizes:
        res = subprocess.run([sys.executable, __file__, "--child", str(n), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"{'tiles':>8} {'input MB':>9} {'RSS before MB':>14} {'peak RSS MB':>12} {'extra MB':>9} {'time s':>8}")
    for r in rows:
        print(f"{r['tiles']:>8} {r['input_mb']:>9.0f} {r['before_mb']:>14.0f} {r['peak_mb']:>12.0f} "
              f"{r['peak_mb'] - r['before_mb']:>9.0f} {r['seconds']:>8.1f}")


if __name__ == "__main__":
    main()
