"""Dask executor benchmark: scheduling overhead per slide, and slides/hour local vs a Dask LocalCluster.

* Overhead: ``DaskExecutor.map`` over N trivial slide tasks on an already running LocalCluster, minus
  the same tasks run in-process, per slide (target < 50 ms). Cluster start-up is reported apart.
* Throughput: ``slidescope.run`` (he-descriptor embeddings, tissue GeoJSON, no models) over a synthetic
  cohort with the local executor and with a LocalCluster of worker processes, in the same run, as a
  ratio. On a 2-core machine both use the same two cores, so the ratio shows the cost of Dask (not a
  speed-up); on a many-core or many-GPU machine the cluster runs slides side by side.

Run: ``uv run --locked python benchmarks/bench_dask.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache" / "dask"


def _noop(slide: str, config):
    from slidescope.pipeline._slide import SlideOutcome, slide_key

    return SlideOutcome(slide=slide, key=slide_key(slide), status="done")


def overhead(n: int) -> dict[str, float]:
    """Seconds: cluster start, and per-slide overhead of Dask vs in-process."""
    import distributed

    from slidescope.pipeline import LocalExecutor, RunConfig
    from slidescope.pipeline._dask import DaskExecutor

    out = CACHE / "overhead"
    shutil.rmtree(out, ignore_errors=True)
    cfg = RunConfig(out=str(out), encoder="he-descriptor")
    slides = [f"/nowhere/slide-{i}.svs" for i in range(n)]
    t = time.perf_counter()
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    start = time.perf_counter() - t
    try:
        dask = DaskExecutor(cluster.scheduler_address)
        list(dask.map(_noop, slides[:4], cfg))  # connect and warm the workers
        t = time.perf_counter()
        got = list(dask.map(_noop, slides, cfg))
        t_dask = time.perf_counter() - t
    finally:
        cluster.close()
    t = time.perf_counter()
    list(LocalExecutor().map(_noop, slides, cfg))
    t_local = time.perf_counter() - t
    assert len(got) == n
    return {"start": start, "per_slide": (t_dask - t_local) / n, "dask_total": t_dask}


def _warm() -> None:
    import slidescope.features.encoders.timm_models  # noqa: F401  (torch, timm: the imports a worker pays once)
    import slidescope.pipeline._slide  # noqa: F401


def throughput(n_slides: int, size: int) -> dict[str, float]:
    """Slides/hour of ``run`` over a synthetic cohort: local executor; Dask LocalCluster (2 workers x 1
    thread) started by the run (cold: worker start and imports included) and already warm."""
    import distributed

    import slidescope as ss
    from slidescope.pipeline._dask import DaskExecutor
    from slidescope.synthetic import make_synthetic_cohort

    cohort = CACHE / f"cohort-{n_slides}-{size}"
    manifest = cohort / "manifest.csv"
    if not manifest.exists():
        make_synthetic_cohort(cohort, n_slides=n_slides, width=size, height=size * 3 // 4, seed=11)
    rates = {}
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    try:
        with distributed.Client(cluster) as client:
            client.run(_warm)
        runs = (
            ("local", None),
            ("dask cold", DaskExecutor(n_workers=2, threads_per_worker=1)),
            ("dask warm", DaskExecutor(cluster.scheduler_address)),
        )
        for name, executor in runs:
            out = CACHE / f"run-{name.replace(' ', '-')}"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            res = ss.run(
                manifest,
                out=out,
                encoder="he-descriptor",
                executor=executor,
                progress=False,
                num_workers=0 if executor is not None else None,
            )
            dt = time.perf_counter() - t
            assert res.exit_code == 0, res.counts
            rates[name] = n_slides / dt * 3600
    finally:
        cluster.close()
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 100 if args.quick else 400
    o = overhead(n)
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print()
    print("| measure | value | target |")
    print("|---|---:|---:|")
    print(f"| LocalCluster start (2 worker processes) | {o['start']:.2f} s | |")
    print(f"| scheduling overhead per slide ({n} tasks) | {o['per_slide'] * 1e3:.1f} ms | < 50 ms |")
    r = throughput(6 if args.quick else 12, 2048 if args.quick else 3072)
    print(f"| run, local executor | {r['local']:.0f} slides/h | |")
    print(
        f"| run, Dask LocalCluster (2 x 1 thread), started by the run | {r['dask cold']:.0f} slides/h "
        f"({r['dask cold'] / r['local']:.2f}x) | |"
    )
    print(
        f"| run, Dask LocalCluster, workers already warm | {r['dask warm']:.0f} slides/h "
        f"({r['dask warm'] / r['local']:.2f}x) | |"
    )


if __name__ == "__main__":
    main()
