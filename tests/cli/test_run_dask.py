"""`run` on Dask distributed: a real LocalCluster with 2 worker processes, one of them killed mid-slide."""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

ENCODER = "he-descriptor"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slidescope.synthetic import make_synthetic_cohort

    root = tmp_path_factory.mktemp("dask_cohort")
    return make_synthetic_cohort(root / "cohort", n_slides=4, width=3072, height=2304, seed=5)


def _embeddings(out: Path) -> dict[str, np.ndarray]:
    from slidescope.features.store import open_store

    return {
        Path(p).name: open_store(p).embeddings(ENCODER)
        for p in sorted(glob.glob(str(out / "stores" / "*.zarr")))
    }


def _kill_first_claimant(stores: Path, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the worker process that holds the first store claim it sees (a slide mid-extraction)."""
    while not stop.is_set():
        for lock in glob.glob(str(stores / "*.zarr.lock")):
            try:
                pid = json.loads(Path(lock).read_text())["pid"]
            except (OSError, ValueError, KeyError):
                continue
            if pid != os.getpid():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.002)


@pytest.mark.slow
def test_dask_cluster_matches_local_and_survives_a_killed_worker(cohort: Path, tmp_path: Path) -> None:
    import slidescope as ss
    from slidescope.pipeline._dask import DaskExecutor

    local = ss.run(cohort, out=tmp_path / "local", encoder=ENCODER, progress=False, num_workers=0)
    assert local.exit_code == 0 and local.counts == {"done": 4}

    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_first_claimant, args=(tmp_path / "dask" / "stores", stop, killed))
    watcher.start()
    try:
        res = ss.run(
            cohort,
            out=tmp_path / "dask",
            encoder=ENCODER,
            progress=False,
            num_workers=0,
            executor=DaskExecutor(n_workers=2, threads_per_worker=1),
        )
    finally:
        stop.set()
        watcher.join()
    assert killed, "no worker was caught mid-slide"
    assert res.exit_code == 0 and res.counts == {"done": 4}, [
        (o.key, o.status, o.error_message) for o in res.outcomes
    ]

    # the report is the same as in local mode, plus the retry of the slide whose worker died
    report = json.loads((tmp_path / "dask" / "report.json").read_text())
    attempts = {s["key"]: s["attempts"] for s in report["slides"]}
    assert sorted(attempts.values()) == [1, 1, 1, 2], attempts
    with open(tmp_path / "dask" / "predictions.csv", newline="") as fh:
        keys = [r["slide"] for r in csv.DictReader(fh)]
    assert sorted(keys) == sorted(o.key for o in local.outcomes)  # every slide once

    # identical stores: the killed slide resumed from its last whole chunk and ended the same
    ours, theirs = _embeddings(tmp_path / "dask"), _embeddings(tmp_path / "local")
    assert ours.keys() == theirs.keys() and len(ours) == 4
    for name in ours:
        assert np.array_equal(ours[name], theirs[name]), name
    assert not glob.glob(str(tmp_path / "dask" / "stores" / "*.lock"))

    # the command line, with the executor from the config file: finished slides are skipped, a slide whose
    # record is gone is redone on the cluster
    from typer.testing import CliRunner

    from slidescope.cli import app

    redo = sorted((tmp_path / "dask" / "slides").glob("*.json"))[0]
    redo.unlink()
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"encoder: {ENCODER}\nnum-workers: 0\nexecutor: dask\ndask-workers: 2\n")
    res = CliRunner().invoke(
        app, ["run", str(cohort), "--config", str(cfg), "--out", str(tmp_path / "dask"), "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    assert "1 slides done, 3 skipped" in res.output
    assert redo.exists()


def test_execution_options_are_checked(tmp_path: Path) -> None:
    from slidescope.errors import InvalidParameterError
    from slidescope.pipeline import DaskExecutor, LocalExecutor, execution_options, make_executor

    cfg = tmp_path / "run.toml"
    cfg.write_text(
        'encoder = "he-descriptor"\nexecutor = "dask"\nscheduler = "tcp://10.0.0.1:8786"\n'
        '[dask-cluster]\nkind = "slurm"\njobs = 2\n'
    )
    opts = execution_options(cfg)
    assert opts == {
        "executor": "dask",
        "scheduler": "tcp://10.0.0.1:8786",
        "dask_cluster": {"kind": "slurm", "jobs": 2},
    }
    assert isinstance(make_executor(execution_options(None)), LocalExecutor)
    assert isinstance(make_executor(execution_options(None, executor="dask", dask_workers=2)), DaskExecutor)
    with pytest.raises(InvalidParameterError, match="scheduler address or a cluster description, not both"):
        make_executor(opts)  # both an address and a cluster description
    with pytest.raises(InvalidParameterError, match="executor must be 'local' or 'dask'"):
        execution_options(None, executor="spark")
    with pytest.raises(InvalidParameterError, match="only apply with executor: dask"):
        execution_options(None, scheduler="tcp://x:1")
    with pytest.raises(InvalidParameterError, match="dask-workers must be a positive whole number"):
        execution_options(None, executor="dask", dask_workers=0)
    with pytest.raises(InvalidParameterError, match="unknown cluster kind"):
        DaskExecutor(cluster={"kind": "kubernetes"})
