"""MIL benchmark: aggregator inference against its compute floor, TransMIL scaling, training, bag loading.

    uv run python benchmarks/bench_mil.py [--tiles 20000] [--dim 1024] [--repeats 7] [--quick]

Everything is measured in one run, ours and its reference interleaved (this VM's speed drifts):

* ABMIL (gated, 1024 -> 512 -> 256, the registry default) inference on one slide of ``--tiles`` tiles,
  fp32 on the CPU, against the compute floor: the same matrix products and activations (embedding
  Linear+ReLU, the tanh and sigmoid attention branches, the attention Linear, softmax, the weighted
  sum, the classifier) as raw torch ops on the same weights. Target: ABMIL <= 1.25x the floor.
* TransMIL inference for 5k ... 100k tiles: the time per tile stays about constant (linear growth,
  Nystrom attention).
* Training throughput: ABMIL on bags of 512 sampled tiles, batch 8, AdamW, CPU, in bags/s.
* Bag loading: one slide's (50,000 x 1,024) float16 embeddings read from our store
  (``SlideStore.embeddings``: checksummed 1024-row chunks, as extraction writes them) against h5py
  (contiguous), same data, warm cache; also zarr's generic read of the same store (what
  ``SlideStore.embeddings`` did before). Target: ours >= 0.5x the h5py rate.

``run(quick)`` returns the ABMIL and bag-loading rows that ``benchmarks/run_all.py`` prints.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each function ``repeats`` times, round-robin, after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k] += _time(fn, 1)
    return times


# -- (a) ABMIL against its compute floor ----------------------------------------------------------------


def abmil_vs_floor(n: int, d: int, repeats: int) -> tuple[float, float]:
    from slidescope.mil.aggregators import create_aggregator

    torch.manual_seed(0)
    model = create_aggregator("abmil", in_dim=d, num_classes=2).eval()
    x = torch.randn(1, n, d)
    emb, att, cls = model.embed[0], model.attention, model.classifier
    we, be = emb.weight, emb.bias
    wa, ba = att.attention_a[0].weight, att.attention_a[0].bias
    wb, bb = att.attention_b[0].weight, att.attention_b[0].bias
    wc, bc = att.attention_c.weight, att.attention_c.bias
    wk, bk = cls.weight, cls.bias
    f = torch.nn.functional

    def floor() -> torch.Tensor:
        h = torch.relu(f.linear(x[0], we, be))  # (N, E)
        g = torch.tanh(f.linear(h, wa, ba)) * torch.sigmoid(f.linear(h, wb, bb))
        a = torch.softmax(f.linear(g, wc, bc)[:, 0], dim=0)  # (N,)
        return f.linear(a @ h, wk, bk)

    def ours() -> torch.Tensor:
        return model(x).logits

    with torch.inference_mode():
        assert torch.allclose(floor(), ours()[0], atol=1e-4)
        t = _interleaved({"ours": ours, "floor": floor}, repeats)
    return statistics.median(t["ours"]), statistics.median(t["floor"])


# -- (b) TransMIL scaling ---------------------------------------------------------------------------------


def transmil_scaling(sizes: list[int], d: int, repeats: int) -> list[tuple[int, float]]:
    from slidescope.mil.aggregators import create_aggregator

    torch.manual_seed(0)
    model = create_aggregator("transmil", in_dim=d, num_classes=2).eval()
    rows = []
    with torch.inference_mode():
        for n in sizes:
            x = torch.randn(1, n, d)
            model(x)  # warm-up
            rows.append((n, min(_time(lambda x=x: model(x), repeats))))
    return rows


# -- (c) training throughput ------------------------------------------------------------------------------


def abmil_training(d: int, steps: int, batch: int = 8, tiles: int = 512) -> float:
    from slidescope.mil.aggregators import create_aggregator

    torch.manual_seed(0)
    model = create_aggregator("abmil", in_dim=d, num_classes=2).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-2)
    x = torch.randn(batch, tiles, d)
    mask = torch.ones(batch, tiles, dtype=torch.bool)
    y = torch.randint(0, 2, (batch,))

    def step() -> None:
        out = model(x, mask, labels=y)
        loss = torch.nn.functional.cross_entropy(out.logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    t = _time(step, steps)
    return batch / statistics.median(t)


# -- (d) bag loading --------------------------------------------------------------------------------------


def _make_store(root: Path, data: np.ndarray) -> Path:
    """A real slide store with ``data`` as complete embeddings of a fake encoder (as extraction writes them)."""
    from slidescope.features.store import CacheKey, SlideStore

    n, d = data.shape
    coords = np.stack([np.arange(n) % 500, np.arange(n) // 500], 1).astype(np.int64) * 224
    path = root / "slide.zarr"
    store = SlideStore.create_or_open(
        path,
        slide_attrs={"fingerprint": "bench"},
        tiling={"tile": 224},
        coords=coords,
        tissue_fraction=np.ones(n, np.float32),
    )
    key = CacheKey(
        encoder={"name": "bench"},
        weights_digest=None,
        precision="fp32",
        dtype="float16",
        package_version="bench",
    )
    writer = store.prepare_embeddings(key, embed_dim=d)
    for c in range(-(-n // writer.chunk_rows)):
        s = c * writer.chunk_rows
        writer.write_chunk(c, data[s : s + writer.chunk_rows])
    writer.finish()
    return path


def bag_loading(n: int, d: int, repeats: int) -> dict[str, float]:
    import h5py

    from slidescope.features.store import _read, open_store

    data = np.random.default_rng(0).normal(size=(n, d)).astype(np.float16)
    gb = data.nbytes / 1e9
    tmp = Path(tempfile.mkdtemp())
    try:
        path = _make_store(tmp, data)
        with h5py.File(tmp / "a.h5", "w") as fh:
            fh.create_dataset("e", data=data)
        os.sync()

        def ours() -> np.ndarray:
            return open_store(path).embeddings("bench")

        def zarr_generic() -> np.ndarray:  # the read path before: zarr's codec pipeline
            return _read(open_store(path).embeddings("bench", lazy=True))

        def h5() -> np.ndarray:
            with h5py.File(tmp / "a.h5", "r") as fh:
                return fh["e"][:]

        for fn in (ours, zarr_generic, h5):
            assert np.array_equal(fn(), data)
        t = _interleaved({"ours": ours, "zarr generic (before)": zarr_generic, "h5py": h5}, repeats)
    finally:
        shutil.rmtree(tmp)
    return {k: gb / statistics.median(v) for k, v in t.items()} | {
        f"{k} best": gb / min(v) for k, v in t.items()
    }


def run(
    quick: bool = False, *, tiles: int = 20_000, dim: int = 1024, repeats: int | None = None
) -> list[dict]:
    """Rows ``{stage, ours, baseline, unit, ratio}`` for ``run_all.py`` (ratio > 1: ours faster).

    MIL: ABMIL inference on one slide against the same matrix products as raw torch ops (the compute floor).
    Store: reading one slide's (50,000 x 1,024) float16 embeddings (``SlideStore.embeddings``) against h5py.
    """
    r = repeats or (3 if quick else 7)
    ours, floor = abmil_vs_floor(tiles, dim, r)
    rates = bag_loading(50_000, dim, r)
    return [
        {
            "stage": f"MIL: ABMIL inference, one slide of {tiles:,} x {dim:,} (CPU fp32) vs raw torch ops",
            "ours": ours * 1e3,
            "baseline": floor * 1e3,
            "unit": "ms",
            "ratio": floor / ours,
        },
        {
            "stage": f"store: read one slide's (50,000 x {dim:,}) float16 embeddings vs h5py (warm)",
            "ours": rates["ours"],
            "baseline": rates["h5py"],
            "unit": "GB/s",
            "ratio": rates["ours"] / rates["h5py"],
        },
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="TransMIL up to 20k tiles, fewer repeats")
    args = ap.parse_args()
    sizes = [5_000, 10_000, 20_000] if args.quick else [5_000, 10_000, 20_000, 50_000, 100_000]
    r = 3 if args.quick else args.repeats
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, CPU, fp32; "
        f"medians of {r} interleaved runs"
    )
    print()

    ours, floor = abmil_vs_floor(args.tiles, args.dim, r)
    print(f"ABMIL inference, one slide of {args.tiles:,} tiles x {args.dim:,}")
    print("| model | ABMIL (ms) | floor: raw torch ops (ms) | ABMIL / floor | target |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| abmil (gated, {args.dim}->512->256) | {ours * 1e3:.1f} | {floor * 1e3:.1f} | {ours / floor:.2f}x "
        f"| <= 1.25x |"
    )
    print()

    print("TransMIL inference (default widths), one slide")
    print("| tiles | time (s) | µs per tile | per tile vs 5k |")
    print("|---:|---:|---:|---:|")
    rows = transmil_scaling(sizes, args.dim, max(1, min(r, 3)))
    base = rows[0][1] / rows[0][0]
    for n, t in rows:
        print(f"| {n:,} | {t:.3f} | {t / n * 1e6:.1f} | {t / n / base:.2f}x |")
    print()

    bps = abmil_training(args.dim, steps=5 if args.quick else 10)
    print("Training (ABMIL, bags of 512 tiles, batch 8, AdamW, forward+backward+step)")
    print("| model | bags/s |")
    print("|---|---:|")
    print(f"| abmil | {bps:.1f} |")
    print()

    rates = bag_loading(50_000, 1024, r)
    h = rates["h5py"]
    print("Bag loading: (50,000 x 1,024) float16 per slide, warm cache, GB/s (median; best in brackets)")
    print("| reader | GB/s | / h5py | target |")
    print("|---|---:|---:|---:|")
    for k, target in (("ours", ">= 0.5x"), ("zarr generic (before)", ""), ("h5py", "")):
        print(f"| {k} | {rates[k]:.2f} [{rates[k + ' best']:.2f}] | {rates[k] / h:.2f}x | {target} |")


if __name__ == "__main__":
    main()
