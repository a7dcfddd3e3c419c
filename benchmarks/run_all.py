"""Every benchmark in one table: each stage of the pipeline, ours against the plain baseline measured in the same run.

    uv run --locked python benchmarks/run_all.py --quick     # a few minutes on a 2-core CPU
    uv run --locked python benchmarks/run_all.py             # the full sizes of each script
    uv run --locked python benchmarks/run_all.py --only extract,mil --json rows.json

Stages (each from its own script, which still runs alone with its own, longer report):

* ``wsi`` (bench_wsi.py): tile reading, ``iter_tiles`` vs a plain OpenSlide ``read_region`` loop; tissue,
  ``detect_tissue`` vs Otsu on a 1/64 OpenSlide thumbnail;
* ``peers`` (bench_peers.py): tile reading, ``iter_tiles`` vs the fastest peer reader on the same tiles (cuCIM
  with its cache, one loop and batched; fastslide with its cache; skipped with the reason where not installed:
  ``uv run --with cucim python benchmarks/run_all.py`` adds cuCIM's CPU wheel for the run);
* ``tissue`` (bench_tissue.py): tissue detection + tile grid on a whole slide (40k x 30k; 12k x 9k with
  ``--quick``) and on CMU-1-Small-Region, ``method="fast"`` vs ``"full"`` and vs a CLAM-style Otsu at 1/64,
  wall time, median of 5 interleaved rounds;
* ``extract`` (bench_extract.py): ``extract_features`` vs a CLAM-style loop (OpenSlide + the same encoder,
  one process), he-descriptor on the CPU and, when a GPU is present, ViT-L/16 bf16 on it; store writes vs h5py;
* ``mil`` (bench_mil.py): ABMIL inference vs the same products as raw torch ops; store reads vs h5py;
* ``slide-encoder`` (bench_slide_encoder.py): the PRISM-size slide encoder's streaming cross-attention vs
  attending to every tile at once (time, peak memory);
* ``zero-shot`` (bench_zero_shot.py, when present): cached, batched prompt scoring vs encoding the prompts per
  slide, slide level and MI-Zero tile level.

Not run here: ``gpu_check.py``, the GPU check (ViT-L/16 bf16 alone, ``extract_features`` end to end with 0/4/8
readers, GPU vs CPU JPEG decode, peak GPU memory); on a GPU machine run ``OUT=dir bash benchmarks/gpu_check.sh``
(its CPU fallback, ``gpu_check.py --quick``, runs in the test suite).

``ratio`` is always "how many times better ours is": ours / baseline for rates (tiles/s, GB/s, slides/s),
baseline / ours for times and memory (s, ms, MB). Below 1 means the baseline wins (e.g. tissue detection
does more work than a bare Otsu threshold).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: stage name -> (module, kwargs for its run() besides quick)
STAGES: dict[str, str] = {
    "wsi": "bench_wsi",
    "peers": "bench_peers",
    "tissue": "bench_tissue",
    "extract": "bench_extract",
    "mil": "bench_mil",
    "slide-encoder": "bench_slide_encoder",
    "zero-shot": "bench_zero_shot",
}


def available() -> dict[str, str]:
    """The stages whose script exists (bench_zero_shot.py may be absent)."""
    return {k: m for k, m in STAGES.items() if (HERE / f"{m}.py").exists()}


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {gpu}; python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def collect(stages: list[str], *, quick: bool, device: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Run each stage's ``run(quick)``; a stage that fails is reported and the others go on."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    mods = available()
    for stage in stages:
        t = time.perf_counter()
        print(f"[{stage}] running {mods[stage]}.run(quick={quick})...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(mods[stage])
            kwargs = {"device": device} if stage == "extract" and device else {}
            got = module.run(quick, **kwargs)
        except Exception as err:  # noqa: BLE001 - one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            errors.append(f"{stage}: {type(err).__name__}: {err}")
            continue
        for r in got:
            r.setdefault("ratio", r["ours"] / r["baseline"] if r.get("baseline") else float("nan"))
            rows.append({"group": stage, **r})
        print(f"[{stage}] {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return rows, errors


def _num(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| stage | ours | baseline | unit | ours vs baseline |", "|---|---:|---:|---|---:|"]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {_num(r['ours'])} | {_num(r['baseline'])} | {r['unit']} | {r['ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a few minutes on a 2-core CPU")
    ap.add_argument("--only", help=f"comma-separated stages among {', '.join(STAGES)}")
    ap.add_argument("--device", help="extraction device for the GPU row (default: cuda when available)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    have = available()
    stages = list(have)
    if args.only:
        stages = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in stages if s not in have]
        if unknown:
            ap.error(f"unknown or missing stage(s) {unknown}; available: {', '.join(have)}")
    missing = [s for s in STAGES if s not in have]
    t0 = time.perf_counter()
    rows, errors = collect(stages, quick=args.quick, device=args.device)
    print()
    print(
        f"slidescope benchmarks{' (--quick)' if args.quick else ''}: {machine()}; {time.perf_counter() - t0:.0f} s"
    )
    print()
    print(format_table(rows))
    if missing:
        print(f"\nnot run (script absent): {', '.join(missing)}")
    for e in errors:
        print(f"\nFAILED {e}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "quick": args.quick, "rows": rows}, indent=2))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
