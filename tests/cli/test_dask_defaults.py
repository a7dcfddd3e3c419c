"""The Dask executor with the command line's defaults (issue 18, defect 14).

Every slide used to fail with "AssertionError: daemonic processes are not allowed to have children": a
Dask worker is a daemonic process and the per-slide extraction started DataLoader reader processes in
it by default. The other Dask tests pass ``--num-workers 0`` and so never saw it; these run the exact
default commands (no ``--num-workers``, no ``--device``, no batch size).
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("distributed")

ENCODER = "he-descriptor"


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slidescope.synthetic import make_synthetic_slide

    return make_synthetic_slide(
        tmp_path_factory.mktemp("dask_defaults") / "s1.svs", width=2048, height=1536, seed=1
    ).path


def _cli(*args: str):
    """The command in this process (its root callback configures logging: restored afterwards)."""
    from slidescope.cli import app

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_extraction_in_a_daemonic_process_with_default_workers(slide: Path, tmp_path: Path) -> None:
    """The mechanism without Dask: a multiprocessing.Pool worker is daemonic, like a Dask worker."""
    from slidescope.features.extract import ExtractJob, extract_job
    from slidescope.features.store import open_store

    job = ExtractJob(out=str(tmp_path / "S"), encoder=ENCODER)  # num_workers=None: the default
    assert job.num_workers is None
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        res = pool.apply(extract_job, (str(slide), job))
    assert res.status == "done", (res.error_type, res.error)
    store = open_store(res.store)
    assert store.embeddings(ENCODER).shape == (res.n_tiles, 98) and res.n_tiles > 0


@pytest.mark.slow
def test_extract_and_run_on_dask_with_the_default_command_line(
    slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slidescope.features.store import open_store

    # One LocalCluster worker whatever the machine, to keep this short: the cluster's size is cores / 2 of
    # this process's os.cpu_count(). The per-slide reading defaults, which are what failed, are computed
    # in the worker processes, which see the real core count.
    monkeypatch.setattr(os, "cpu_count", lambda: 2)

    # slidescope extract SLIDE --executor dask --out S
    stores = tmp_path / "S"
    res = _cli("extract", str(slide), "--executor", "dask", "--out", str(stores))
    assert res.exit_code == 0, res.output
    assert "s1.svs: done" in res.output and "1 of 1 slides ok" in res.output
    store = open_store(stores / "s1.zarr")
    n = len(store.coords)
    emb = store.embeddings(ENCODER)
    assert n > 0 and emb.shape == (n, 98) and np.isfinite(emb).all()
    report = json.loads((stores / "reports" / "extract-latest.json").read_text())
    assert [(r["status"], r["n_tiles"], r["extra"].get("attempts")) for r in report["slides"]] == [
        ("done", n, 1)
    ]

    # slidescope run SLIDE --encoder he-descriptor --executor dask --out R
    out = tmp_path / "R"
    res = _cli("run", str(slide), "--encoder", ENCODER, "--executor", "dask", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "1 slides done, 0 skipped (finished before), 0 failed, of 1" in res.output
    record = json.loads((out / "slides" / "s1.json").read_text())
    assert record["status"] == "done" and record["attempts"] == 1 and record["n_tiles"] == n
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["slide"], int(r["n_tiles"])) for r in rows] == [("s1", n)]
    # the same tiles and embeddings as extract's (the slide's store under R/stores)
    assert np.array_equal(open_store(out / "stores" / "s1.zarr").embeddings(ENCODER), emb)


@pytest.mark.slow
def test_extract_on_an_external_scheduler_with_default_options(slide: Path, tmp_path: Path) -> None:
    """Workers behind an existing scheduler (as ``dask worker`` starts them: nanny, daemonic process)."""
    import distributed

    from slidescope.features.store import open_store

    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        stores = tmp_path / "S"
        res = _cli(
            "extract",
            str(slide),
            "--executor",
            "dask",
            "--scheduler",
            cluster.scheduler_address,
            "--out",
            str(stores),
        )
    assert res.exit_code == 0, res.output
    assert "s1.svs: done" in res.output
    store = open_store(stores / "s1.zarr")
    assert store.embeddings(ENCODER).shape == (len(store.coords), 98) and len(store.coords) > 0
