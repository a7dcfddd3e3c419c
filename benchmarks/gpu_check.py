"""GPU check: where the time goes when slidescope extracts features on one GPU, measured in one run.

    uv run --locked python benchmarks/gpu_check.py --out gpu_check.json   # a GPU machine: < 8 min
    uv run --locked python benchmarks/gpu_check.py --quick                # CPU fallback: < 1 min on 2 cores
    OUT=/some/dir bash benchmarks/gpu_check.sh                            # the prepared command for a GPU box

Rows (tiles/s; each with its peak GPU memory, ``torch.cuda.max_memory_allocated``):

1. **model-only**: the ``uni`` encoder (ViT-L/16 with LayerScale, built by ``create_encoder("uni",
   pretrained=False)``: UNI's own timm kwargs, random weights) in bf16, on uint8 256 px tiles already on the
   GPU, at batch 64 and 256, through extraction's own encode call (``features.extract._encode``: autocast at
   the encoder's ``autocast_dtype``; channels-last is used there only for convolutional encoders, so not for a
   ViT, and not here either). Resizing to 224 and normalising happen inside the encoder, as in extraction.
2. **end-to-end**: ``extract_features`` (what ``slidescope extract`` runs) into a fresh store, on the tissue
   tiles of a synthetic 40,000 x 30,000 slide at 20x (0.5 µm/px, tiles read natively) and of one at 40x (0.25
   µm/px, 512 px read and resized to 256), with 0, 4 and 8 reader processes, batch 256 (what ``"auto"`` gives
   UNI on a GPU). ``ratio`` is end-to-end / model-only at the same batch: 1.0 means the GPU never waits for
   tiles, lower means the run is reader-bound by that much.
3. **JPEG decode** of the 20x slide's own file tiles (those the grid touches): on the CPU with the decoder
   slidescope's reader uses (tifffile's, i.e. libjpeg-turbo through imagecodecs), one thread and one thread per
   core; on the GPU with ``torchvision.io.decode_jpeg(device="cuda")`` in batches of 256 (and nvImageCodec when
   ``nvidia.nvimgcodec`` is importable). ``ratio`` is against the all-cores CPU decode; the note gives the
   largest pixel difference between the GPU's and the CPU's decode of the same tiles.

Without CUDA (or with ``--quick``) the same code paths run on the CPU with ``tiny-uni`` (UNI's config at depth 2,
width 32), two 6,000 x 4,500 slides, about 200 tiles and 0/2 readers; the table then says "no GPU: CPU
fallback". The synthetic slides are written once into ``$SLIDESCOPE_BENCH_CACHE`` (default
/tmp/slidescope-bench). With ``--out`` the rows go to a JSON file and the table to a ``.md`` beside it, rewritten
after every row, so a run stopped by a timeout still leaves what it measured.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CACHE = Path(os.environ.get("SLIDESCOPE_BENCH_CACHE", "/tmp/slidescope-bench"))
CPU_FALLBACK = "no GPU: CPU fallback"


@dataclass
class Plan:
    """What one run measures (full on a GPU, small with ``quick``)."""

    quick: bool
    device: str
    encoder: str = "uni"
    precision: str = "bf16"
    slide_size: tuple[int, int] = (40_000, 30_000)
    batch_sizes: tuple[int, ...] = (64, 256)
    e2e_batch: int = 256
    workers: tuple[int, ...] = (0, 4, 8)
    max_tiles: int | None = None
    decode_tiles: int = 4096
    min_seconds: float = 4.0
    budget_s: float = 420.0

    @classmethod
    def make(cls, quick: bool, device: str | None, budget_s: float | None) -> Plan:
        import torch

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if quick or not dev.startswith("cuda"):
            plan = cls(
                quick=True,
                device=dev,
                encoder="tiny-uni",
                slide_size=(6_000, 4_500),
                batch_sizes=(32, 64),
                e2e_batch=32,  # what batch_size="auto" gives on a CPU
                workers=(0, 2),
                max_tiles=200,
                decode_tiles=200,
                min_seconds=0.3,
                budget_s=120.0,
            )
        else:
            plan = cls(quick=False, device=dev)
        if budget_s is not None:
            plan.budget_s = budget_s
        return plan


@dataclass
class Report:
    """The rows measured so far, printed as one table and saved after every row."""

    plan: Plan
    out: Path | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over_budget(self) -> bool:
        return self.elapsed() > self.plan.budget_s

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        print(
            f"  [{self.elapsed():.0f} s] {row['row']}: {_num(row.get('rate'))} tiles/s",
            file=sys.stderr,
            flush=True,
        )
        self.save(complete=False)

    def attempt(self, name: str, measure: Callable[[], dict[str, Any]]) -> None:
        """Add the row that ``measure()`` returns. A row past the time budget is skipped, and a row that fails
        is reported with its error while the others go on (an unattended run must not lose the rest)."""
        if self.over_budget():
            self.add({"row": name, "tiles": 0, "rate": None, "note": "skipped: time budget spent"})
            return
        try:
            row = {"row": name, **measure()}
        except Exception as err:  # noqa: BLE001 - one broken row must not hide the others' numbers
            self.fail(name, err)
            return
        self.add(row)

    def fail(self, name: str, err: Exception) -> None:
        traceback.print_exc()
        self.add({"row": name, "tiles": 0, "rate": None, "note": f"failed: {type(err).__name__}: {err}"})

    def save(self, *, complete: bool) -> None:
        if self.out is None:
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "complete": complete,
            "gpu": self.plan.device.startswith("cuda"),
            "seconds": round(self.elapsed(), 1),
            "header": self.header,
            "rows": self.rows,
        }
        self.out.write_text(json.dumps(doc, indent=2))
        self.out.with_suffix(".md").write_text(self.table() + "\n")

    def table(self) -> str:
        lines = [*self.header, ""]
        lines += [
            "| row | tiles | tiles/s | ratio | ratio to | peak GPU MiB | note |",
            "|---|---:|---:|---:|---|---:|---|",
        ]
        for r in self.rows:
            ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else ""
            lines.append(
                f"| {r['row']} | {r.get('tiles', 0):,} | {_num(r.get('rate'))} | {ratio} | {r.get('ratio_to', '')} "
                f"| {_num(r.get('peak_gpu_mib'))} | {r.get('note', '')} |"
            )
        return "\n".join(lines)


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


# -- slides ---------------------------------------------------------------------------------------------


def _write_slide(path: str, width: int, height: int, mpp: float) -> str:
    from slidescope.synthetic import make_synthetic_slide

    tmp = Path(path).with_suffix(f".{os.getpid()}.partial.svs")  # runs side by side never share one
    make_synthetic_slide(tmp, width=width, height=height, mpp=mpp, seed=7, n_islands=4)
    tmp.rename(path)
    return path


def synthetic_slides(width: int, height: int) -> dict[str, Path]:
    """The 20x (0.5 µm/px) and 40x (0.25 µm/px) synthetic slides, written once into :data:`CACHE`; the missing
    ones in parallel processes (before CUDA starts in this one)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    want = {f"{mpp}": CACHE / f"gpu_check_{width}x{height}_{mpp}.svs" for mpp in (0.5, 0.25)}
    missing = {k: p for k, p in want.items() if not p.exists()}
    if missing:
        t = time.perf_counter()
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(len(missing), mp_context=ctx) as pool:
            jobs = [pool.submit(_write_slide, str(p), width, height, float(k)) for k, p in missing.items()]
            for job in jobs:
                job.result()
        print(
            f"  wrote {len(missing)} synthetic slide(s) in {time.perf_counter() - t:.0f} s", file=sys.stderr
        )
    return {"20x": want["0.5"], "40x": want["0.25"]}


# -- model ----------------------------------------------------------------------------------------------


def build_encoder(plan: Plan):
    """The encoder as extraction gets it: ``create_encoder(name, pretrained=False)`` on the device at the
    plan's precision, then extraction's own device preparation (``_ready_encoder``)."""
    from slidescope import create_encoder
    from slidescope.features.encoders import list_encoders, register_encoder
    from slidescope.features.encoders.timm_models import tiny_config
    from slidescope.features.extract import _ready_encoder

    if plan.encoder.startswith("tiny-") and plan.encoder not in list_encoders():
        register_encoder(*tiny_config(plan.encoder.removeprefix("tiny-")))
    enc = create_encoder(plan.encoder, pretrained=False, device=plan.device, precision=plan.precision)
    return _ready_encoder(enc, plan.device)


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_mib(dev) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None


def model_only(encoder, dev, batch: int, min_seconds: float) -> tuple[float, int]:
    """Tiles/s of extraction's encode call on random uint8 tiles already on the device, and the tiles timed."""
    import torch

    from slidescope.features.extract import _encode

    side = encoder.config.tile_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, side, side, 3), dtype=torch.uint8, generator=gen).to(dev)
    # the device's ceiling: on a GPU, kernels queued 4 batches ahead between synchronisations (extraction
    # synchronises at every batch, when it copies the embeddings back)
    ahead = 4 if dev.type == "cuda" else 1
    for _ in range(ahead):  # warm-up: kernels chosen, allocator filled
        out = _encode(encoder, x, dev)
    _sync(dev)
    assert out.shape == (batch, encoder.config.embed_dim) and bool(torch.isfinite(out).all())
    done, t = 0, time.perf_counter()
    while True:
        for _ in range(ahead):
            _encode(encoder, x, dev)
            done += batch
        _sync(dev)
        seconds = time.perf_counter() - t
        if seconds >= min_seconds:
            return done / seconds, done


# -- end to end -----------------------------------------------------------------------------------------


def tissue_grid(path: Path, encoder, max_tiles: int | None):
    """The slide and the encoder's tile grid on its tissue (the first ``max_tiles`` tiles when given)."""
    import slidescope as ss

    slide = ss.open_slide(path)
    grid = ss.make_tile_grid(
        slide, tile_size=encoder.config.tile_size, mpp=encoder.config.mpp, mask=ss.detect_tissue(slide)
    )
    if max_tiles is not None and len(grid) > max_tiles:
        grid = grid.subset(np.arange(max_tiles))
    return slide, grid


def end_to_end(slide, grid, encoder, dev, workers: int, batch: int) -> tuple[float, int]:
    """``extract_features`` into a fresh store: tiles/s over the whole call (reading, encoding, writing)."""
    import slidescope as ss

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as store:
        res = ss.extract_features(
            slide, grid, encoder, store=store, num_workers=workers, batch_size=batch, progress=False
        )
    if res.status != "done" or res.computed != len(grid):
        raise RuntimeError(f"extract_features: status {res.status!r}, {res.computed} of {len(grid)} tiles")
    return res.computed / res.seconds, res.computed


# -- JPEG decode ----------------------------------------------------------------------------------------


@dataclass
class FileTiles:
    """Encoded file tiles of one pyramid level, as stored (``tables``: the TIFF's shared JPEG tables)."""

    blobs: list[bytes]
    indices: list[int]
    tables: bytes | None
    decode: Callable[..., Any]
    shape: tuple[int, int]

    def standalone(self, blob: bytes) -> bytes:
        """A complete JPEG stream: the shared tables spliced in (tables without EOI + tile without SOI)."""
        return self.tables[:-2] + blob[2:] if self.tables else blob

    def cpu_decode(self, i: int) -> np.ndarray:
        return self.decode(self.blobs[i], self.indices[i], jpegtables=self.tables)[0].reshape(
            *self.shape, -1
        )[..., :3]


def file_tiles(path: Path, grid, limit: int) -> FileTiles:
    """The file tiles of the grid's level that the grid's tiles touch (at most ``limit``), read with tifffile."""
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        page = tif.series[0].levels[grid.level].keyframe
        th, tw = page.tilelength, page.tilewidth
        ntx = -(-page.imagewidth // tw)
        ds = grid.level_downsample
        touched: set[int] = set()
        for x, y in grid.coords:
            lx, ly = int(x / ds[0]), int(y / ds[1])
            for ty in range(ly // th, (ly + grid.read_size[1] - 1) // th + 1):
                for tx in range(lx // tw, (lx + grid.read_size[0] - 1) // tw + 1):
                    touched.add(ty * ntx + tx)
        indices = sorted(touched)[:limit]
        fh = tif.filehandle
        blobs = []
        for i in indices:
            fh.seek(int(page.dataoffsets[i]))
            blobs.append(fh.read(int(page.databytecounts[i])))
        return FileTiles(blobs, indices, page.jpegtables, page.decode, (th, tw))


def _rate(fn: Callable[[], Any], n: int, min_seconds: float, sync: Callable[[], None]) -> float:
    fn()  # warm-up
    sync()
    done, t = 0, time.perf_counter()
    while True:
        fn()
        sync()
        done += n
        seconds = time.perf_counter() - t
        if seconds >= min_seconds / 2:
            return done / seconds


def cpu_decode_rate(tiles: FileTiles, threads: int, min_seconds: float) -> float:
    """Tiles/s of the CPU decoder in a pool of ``threads`` threads (libjpeg-turbo releases the GIL)."""
    n = len(tiles.blobs)
    if threads == 1:
        return _rate(lambda: [tiles.cpu_decode(i) for i in range(n)], n, min_seconds, lambda: None)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return _rate(lambda: list(pool.map(tiles.cpu_decode, range(n))), n, min_seconds, lambda: None)


def torchvision_decode(
    tiles: FileTiles, dev, min_seconds: float, batch: int = 256
) -> tuple[float, float, float]:
    """``torchvision.io.decode_jpeg`` on ``dev`` in batches: tiles/s, and the max and mean absolute difference
    from the CPU decoder on the first 32 tiles."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg  # type: ignore[import-untyped]

    data = [torch.frombuffer(bytearray(tiles.standalone(b)), dtype=torch.uint8) for b in tiles.blobs]

    def run() -> list:
        out = []
        for s in range(0, len(data), batch):
            out += decode_jpeg(data[s : s + batch], mode=ImageReadMode.RGB, device=dev)
        return out

    rate = _rate(run, len(data), min_seconds, lambda: _sync(dev))
    got = run()[:32]
    diffs = [
        np.abs(img.permute(1, 2, 0).cpu().numpy().astype(np.int16) - tiles.cpu_decode(i).astype(np.int16))
        for i, img in enumerate(got)
    ]
    return rate, float(max(d.max() for d in diffs)), float(np.mean([d.mean() for d in diffs]))


def nvimgcodec_decode(tiles: FileTiles, dev, min_seconds: float, batch: int = 256) -> float | None:
    """Tiles/s of nvImageCodec's batched decode into device memory; None when it is not installed."""
    try:
        from nvidia import nvimgcodec  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        return None
    import torch

    decoder = nvimgcodec.Decoder()
    data = [tiles.standalone(b) for b in tiles.blobs]

    def run() -> None:
        for s in range(0, len(data), batch):
            images = decoder.decode(data[s : s + batch])
            torch.as_tensor(images[-1], device=dev)

    return _rate(run, len(data), min_seconds, lambda: _sync(dev))


# -- the run --------------------------------------------------------------------------------------------


def machine(plan: Plan) -> str:
    import torch

    if plan.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(plan.device))
        gpu = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        gpu = CPU_FALLBACK
    return (
        f"{gpu}; {os.cpu_count()} cores, {platform.machine()}; python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def measure_model(report: Report, encoder, dev) -> dict[int, float]:
    """Model-only rows, one per batch size; returns tiles/s by batch size."""
    plan = report.plan
    rates: dict[int, float] = {}

    def one(batch: int) -> dict[str, Any]:
        _reset_peak(dev)
        rate, n = model_only(encoder, dev, batch, plan.min_seconds)
        rates[batch] = rate
        return {"tiles": n, "rate": rate, "peak_gpu_mib": _peak_mib(dev)}

    for batch in sorted({*plan.batch_sizes, plan.e2e_batch}):
        report.attempt(f"model-only, batch {batch}", functools.partial(one, batch))
    top = max(rates.values(), default=None)
    for row in report.rows:
        if row["row"].startswith("model-only") and row.get("rate") and top:
            row.update(ratio=row["rate"] / top, ratio_to="fastest model-only")
    return rates


def measure_e2e(
    report: Report, encoder, dev, slides: dict[str, Path], model_rate: float | None
) -> FileTiles | None:
    """End-to-end rows on both slides; returns the 20x slide's file tiles for the decode rows."""
    plan = report.plan
    tiles = None
    for key, label in {"20x": "20x native", "40x": "40x -> 20x"}.items():
        try:
            slide, grid = tissue_grid(slides[key], encoder, plan.max_tiles)
            if key == "20x":
                tiles = file_tiles(slides[key], grid, plan.decode_tiles)
        except Exception as err:  # noqa: BLE001 - the other slide's rows still come
            report.fail(f"end-to-end {label}: slide and grid", err)
            continue

        def one(workers: int, slide=slide, grid=grid) -> dict[str, Any]:
            _reset_peak(dev)
            rate, n = end_to_end(slide, grid, encoder, dev, workers, plan.e2e_batch)
            row: dict[str, Any] = {"tiles": n, "rate": rate, "peak_gpu_mib": _peak_mib(dev)}
            if model_rate:
                row.update(ratio=rate / model_rate, ratio_to=f"model-only, batch {plan.e2e_batch}")
            if grid.resample != 1:
                row["note"] = f"read {grid.read_size[0]} px, resized to {grid.tile_size}"
            return row

        for workers in plan.workers:
            report.attempt(f"end-to-end {label}, {workers} readers", functools.partial(one, workers))
        slide.close()
    return tiles


def measure_decode(report: Report, tiles: FileTiles, dev) -> None:
    """CPU decode (1 thread, all cores), torchvision's decode on the device, nvImageCodec when installed."""
    plan = report.plan
    n = len(tiles.blobs)
    rates: dict[str, float] = {}
    threads = os.cpu_count() or 1

    def cpu(pool: int) -> dict[str, Any]:
        rates[str(pool)] = cpu_decode_rate(tiles, pool, plan.min_seconds)
        row: dict[str, Any] = {"tiles": n, "rate": rates[str(pool)]}
        if pool > 1 and "1" in rates:
            row.update(ratio=rates[str(pool)] / rates["1"], ratio_to="CPU, 1 thread")
        return row

    def against_cpu(rate: float) -> dict[str, Any]:
        best = rates.get(str(threads))
        return {"ratio": rate / best, "ratio_to": f"CPU, {threads} threads"} if best else {}

    def torchvision() -> dict[str, Any]:
        _reset_peak(dev)
        rate, max_diff, mean_diff = torchvision_decode(tiles, dev, plan.min_seconds)
        note = f"vs the CPU decode: max abs diff {max_diff:.0f}, mean {mean_diff:.3f} grey levels"
        return {"tiles": n, "rate": rate, **against_cpu(rate), "peak_gpu_mib": _peak_mib(dev), "note": note}

    def nvimgcodec() -> dict[str, Any]:
        _reset_peak(dev)
        rate = nvimgcodec_decode(tiles, dev, plan.min_seconds)
        if rate is None:
            return {"tiles": 0, "rate": None, "note": "nvidia.nvimgcodec is not importable"}
        return {"tiles": n, "rate": rate, **against_cpu(rate), "peak_gpu_mib": _peak_mib(dev)}

    report.attempt("JPEG decode, CPU (tifffile/libjpeg-turbo), 1 thread", lambda: cpu(1))
    report.attempt(f"JPEG decode, CPU, {threads} threads", lambda: cpu(threads))
    where = "GPU" if dev.type == "cuda" else "CPU"
    report.attempt(f"JPEG decode, {where} torchvision.io.decode_jpeg, batch 256", torchvision)
    if dev.type == "cuda":
        report.attempt("JPEG decode, GPU nvImageCodec, batch 256", nvimgcodec)


def run(plan: Plan, out: Path | None = None) -> Report:
    """Measure every row of ``plan``; the report's table is also written to ``out`` (JSON) and ``out.md``."""
    report = Report(plan, out)
    slides = synthetic_slides(*plan.slide_size)  # before CUDA starts here: the writers are processes
    encoder, dev = build_encoder(plan)
    report.header = [
        f"slidescope GPU check{' (--quick)' if plan.quick else ''}: {machine(plan)}",
        f"encoder {plan.encoder} ({encoder.config.architecture}, random weights), {plan.precision} autocast; "
        f"slides {plan.slide_size[0]:,} x {plan.slide_size[1]:,} synthetic, 20x and 40x",
    ]
    rates = measure_model(report, encoder, dev)
    tiles = measure_e2e(report, encoder, dev, slides, rates.get(plan.e2e_batch))
    if tiles is not None:
        measure_decode(report, tiles, dev)
    report.save(complete=True)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the CPU-fallback sizes (tiny model, small slides)")
    ap.add_argument("--device", help="torch device (default: cuda when available, else the CPU fallback)")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here and the table beside it (.md)")
    ap.add_argument(
        "--budget-s",
        type=float,
        help="skip the rows left after this many seconds (default 420; 120 with --quick)",
    )
    args = ap.parse_args(argv)
    plan = Plan.make(args.quick, args.device, args.budget_s)
    report = run(plan, args.out)
    print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
