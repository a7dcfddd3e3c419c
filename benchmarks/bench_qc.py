"""Classic tile QC cost per slide against tissue detection + tiling, reading and a real encoder (synthetic slide).

    uv run --locked python benchmarks/bench_qc.py            # 40,000 x 30,000 px at 0.5 µm/px
    uv run --locked python benchmarks/bench_qc.py --quick    # 12,000 x 9,000 px

The slide is bench_wsi.py's (generated once into benchmarks/.cache/, shared with it). One process, one
thread per library (set OMP_NUM_THREADS=1 for a fair single-core figure). Timed, on the tissue tiles of a
224 px grid at 0.5 µm/px:

* ``tissue``: :func:`detect_tissue`; ``grid``: :func:`make_tile_grid`;
* ``read``: reading every tile (``iter_tiles``), what the encoder's loader does anyway;
* ``qc compute``: :func:`tile_qc` on those tiles, in batches of 64: what ``--qc flag`` adds to the
  extraction (its readers measure the tiles they read for the encoder);
* ``qc_tiles exclude``: the QC pass of ``--qc exclude`` (its own read + compute, before embedding, so that
  the flagged tiles are dropped first);
* ``encoder``: a real encoder's forward on 64 of those tiles, per tile x all tiles: timm's ViT-S/16
  (``vit_small_patch16_224``, random weights, fp32, the same thread): the smallest ViT of the catalogue's
  family; UNI's ViT-L/16 costs ~14x its FLOPs.

Ratios: QC compute and the exclude pass over tissue + grid (the issue's target: <= 10 %), QC compute over
reading and over the encoder.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(quick: bool = False) -> list[dict]:
    from bench_wsi import synthetic

    from slidescope.wsi import detect_tissue, iter_tiles, make_tile_grid, open_slide, qc_tiles, tile_qc

    size = (12_000, 9_000) if quick else (40_000, 30_000)
    path = synthetic(*size, 0.5)
    tile_qc(np.zeros((1, 224, 224, 3), np.uint8))  # imports torch once, outside the timings
    times: dict[str, float] = {}
    with open_slide(path) as slide:
        t = time.perf_counter()
        mask = detect_tissue(slide)
        times["tissue"] = time.perf_counter() - t
        t = time.perf_counter()
        grid = make_tile_grid(slide, tile_size=224, mpp=0.5, mask=mask)
        times["grid"] = time.perf_counter() - t
        glass = mask.params.get("glass_rgb")
        batch = np.empty((64, 224, 224, 3), np.uint8)
        n, read, compute = 0, 0.0, 0.0
        t = time.perf_counter()
        for _, tile in iter_tiles(slide, grid):
            batch[n] = tile
            n += 1
            if n == len(batch):
                read += time.perf_counter() - t
                t = time.perf_counter()
                tile_qc(batch, glass=glass)
                compute += time.perf_counter() - t
                n = 0
                t = time.perf_counter()
        read += time.perf_counter() - t
        if n:
            t = time.perf_counter()
            tile_qc(batch[:n], glass=glass)
            compute += time.perf_counter() - t
        times["read"], times["qc compute"] = read, compute
        t = time.perf_counter()
        qc_tiles(slide, grid, "exclude", mask=mask)
        times["qc_tiles exclude"] = time.perf_counter() - t
        times["encoder"] = _encoder_seconds(batch) * len(grid)
    base = times["tissue"] + times["grid"]
    label = f"{size[0]}x{size[1]} @0.5, {len(grid)} tiles"
    rows = [{"case": label, "stage": k, "seconds": round(v, 3)} for k, v in times.items()]
    ratios = {
        "qc compute / (tissue + grid)": compute / base,
        "qc_tiles exclude / (tissue + grid)": times["qc_tiles exclude"] / base,
        "qc compute / read": compute / read,
        "qc compute / encoder (ViT-S/16, CPU)": compute / times["encoder"],
        "qc compute per tile (ms)": 1e3 * compute / max(len(grid), 1),
        "read per tile (ms)": 1e3 * read / max(len(grid), 1),
    }
    rows += [{"case": label, "stage": k, "ratio": round(v, 3)} for k, v in ratios.items()]
    return rows


def _encoder_seconds(batch: np.ndarray) -> float:
    """Seconds per tile of timm's ViT-S/16 (random weights, fp32, this thread) on ``batch`` (uint8 tiles)."""
    import timm
    import torch

    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        model(x[:2])  # warm-up
        t = time.perf_counter()
        model(x)
    return (time.perf_counter() - t) / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 12k x 9k slide")
    args = parser.parse_args()
    for row in run(args.quick):
        value = f"{row['seconds']:.2f} s" if "seconds" in row else f"{row['ratio']:.3f}"
        print(f"{row['case']:<36} {row['stage']:<40} {value}")


if __name__ == "__main__":
    main()
