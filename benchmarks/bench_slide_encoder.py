"""Peak memory and time of the full-size PRISM-style slide encoder on CPU, per slide size.

Each size runs in its own subprocess so that ``ru_maxrss`` (the peak resident set size) belongs to that size
alone. Random weights, fp32, ``torch.inference_mode``, batch of one slide.

Usage::

    python benchmarks/bench_slide_encoder.py                 # 5000 20000 50000 tiles
    python benchmarks/bench_slide_encoder.py 1000 5000 --threads 2

``run(quick)`` returns the rows that ``benchmarks/run_all.py`` prints: streaming cross-attention vs attending to
every tile at once, time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _child(n_tiles: int, threads: int, chunk: int | None = None) -> None:
    import resource
    import time

    import torch

    from slidescope.vlm.slide_encoder import PerceiverSlideEncoder, PerceiverSlideEncoderConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = PerceiverSlideEncoderConfig() if chunk is None else PerceiverSlideEncoderConfig(xattn_chunk=chunk)
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
    print(
        json.dumps(
            {
                "tiles": n_tiles,
                "before_mb": before,
                "peak_mb": peak,
                "seconds": seconds,
                "input_mb": tiles.numel() * 4 / 2**20,
            }
        )
    )


def measure(n_tiles: int, threads: int = 2, chunk: int | None = None) -> dict:
    """One size in a fresh subprocess: ``{tiles, input_mb, before_mb, peak_mb, seconds}``."""
    cmd = [sys.executable, __file__, "--child", str(n_tiles), "--threads", str(threads)]
    if chunk is not None:
        cmd += ["--chunk", str(chunk)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(quick: bool = False, *, threads: int = 2) -> list[dict]:
    """Rows ``{stage, ours, baseline, unit, ratio}`` for ``run_all.py`` (ratio > 1: ours better).

    The full-size (PRISM) slide encoder with its streaming cross-attention (chunks of 8,192 tiles) against the
    same model attending to all tiles at once (one softmax over every tile, the plain implementation):
    time and peak memory above the model, each size in its own process.
    """
    n = 20_000 if quick else 50_000
    ours, plain = measure(n, threads), measure(n, threads, chunk=10**9)
    extra = [r["peak_mb"] - r["before_mb"] for r in (ours, plain)]
    return [
        {
            "stage": f"slide encoder (PRISM size, CPU fp32): {n:,} tiles, time vs unchunked attention",
            "ours": ours["seconds"],
            "baseline": plain["seconds"],
            "unit": "s",
            "ratio": plain["seconds"] / ours["seconds"],
        },
        {
            "stage": f"slide encoder: {n:,} tiles, peak memory above the model vs unchunked",
            "ours": extra[0],
            "baseline": extra[1],
            "unit": "MB",
            "ratio": extra[1] / max(extra[0], 1.0),
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[5000, 20000, 50000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child, args.threads, args.chunk)
        return
    rows = [measure(n, args.threads) for n in args.sizes]
    print(
        f"{'tiles':>8} {'input MB':>9} {'RSS before MB':>14} {'peak RSS MB':>12} {'extra MB':>9} {'time s':>8}"
    )
    for r in rows:
        print(
            f"{r['tiles']:>8} {r['input_mb']:>9.0f} {r['before_mb']:>14.0f} {r['peak_mb']:>12.0f} "
            f"{r['peak_mb'] - r['before_mb']:>9.0f} {r['seconds']:>8.1f}"
        )


if __name__ == "__main__":
    main()
