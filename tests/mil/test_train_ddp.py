"""MIL training with Lightning DDP in real processes: two ranks on the CPU (gloo) against one.

``slidescope train --devices 2`` is run as a user runs it: Lightning's launcher re-executes the
command line for rank 1, whose ``train()`` starts over and joins every fold's Trainer. The two-rank
run halves ``--batch-size`` so that its effective batch (batch size x world size) and its number
of optimiser steps equal the one-process run's; its results then match up to nondeterminism (other
bags per step, other tile subsamples, reduction order), which the tolerance below allows for.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ddp_processes import clean_env, group_alive, launch, wait_all

from slidescope.mil.task import load_task
from slidescope.mil.train import auroc

pytestmark = pytest.mark.slow

ENC = "he-descriptor"
SMALL = {"embed_dim": 64, "attn_dim": 32, "dropout": 0.1}
FOLDS = 2
EPOCHS = 10
BATCH = 4  # one process; the two ranks use BATCH // 2 each
#: pooled out-of-fold AUROC: |two ranks - one| may differ by this much (24 slides, 144 tumour/normal pairs:
#: 0.1 is about 14 pairs ranked the other way), and both must reach the floor
AUROC_TOLERANCE = 0.1
AUROC_FLOOR = 0.9
TIMEOUT_S = 900


def _launch(cohort, out: Path, *, devices: int, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "slidescope",
        "train",
        "--manifest",
        str(cohort.manifest),
        "--store",
        str(cohort.store),
        "--encoder",
        ENC,
        "--model",
        "abmil",
        "--model-kwargs",
        json.dumps(SMALL),
        "--folds",
        str(FOLDS),
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        str(BATCH // devices),
        "--lr",
        "1e-3",
        "--early-stopping-patience",
        "8",
        "--accelerator",
        "cpu",
        "--devices",
        str(devices),
        "--out",
        str(out),
    ]
    return launch(cmd, log=log, cwd=out.parent, env=clean_env())


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _steps_per_epoch(fold_dir: Path) -> float:
    """Optimiser steps per epoch of a fold, from Lightning's CSV log (last logged step / epochs)."""
    rows = _csv(fold_dir / "logs" / "version_0" / "metrics.csv")
    last = max(rows, key=lambda r: int(r["step"]))
    return (int(last["step"]) + 1) / (int(last["epoch"]) + 1)


def test_two_ddp_processes_train_abmil_as_well_as_one(mil_cohort, tmp_path) -> None:
    runs = {n: tmp_path / f"devices{n}" for n in (1, 2)}
    logs = {n: tmp_path / f"devices{n}.log" for n in (1, 2)}
    for out in runs.values():
        out.mkdir()
    # both at once: the machine's time goes mostly to imports, which the two runs can overlap
    procs = {n: _launch(mil_cohort, runs[n], devices=n, log=logs[n]) for n in (1, 2)}
    done = wait_all(procs, logs, timeout=TIMEOUT_S, what="slidescope train")

    if Path("/proc/self/stat").exists():  # rank 1 ends by itself once rank 0 has (no process left behind)
        deadline = time.monotonic() + 120
        while group_alive(procs[2].pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if group_alive(procs[2].pid):
            os.killpg(procs[2].pid, signal.SIGKILL)
            pytest.fail("rank 1 of the DDP run was still running 120 s after rank 0 had ended")

    slides = {Path(r["slide"]).stem for r in mil_cohort.rows}
    scores = {}
    for n, out in runs.items():
        rc, output, _ = done[n]
        assert rc == 0, f"--devices {n} exited with {rc}:\n{output[-4000:]}"
        assert output.count("pooled") == 1, output  # rank 0 reports; rank 1 returns quietly
        assert "Traceback" not in output, output
        assert json.loads((out / "run.json").read_text())["world_size"] == n
        assert (out / "results.csv").is_file()
        for k in range(FOLDS):
            task = load_task(out / f"fold{k}" / "best.ckpt", encoder=ENC, embed_dim=98)
            assert task.hparams.aggregator == "abmil"
            assert json.loads((out / f"fold{k}" / "done.json").read_text())["best_val_loss"] is not None
        oof = _csv(out / "oof_predictions.csv")
        assert sorted(o["slide"] for o in oof) == sorted(slides)  # every slide exactly once
        labels = np.array([o["label"] == "tumour" for o in oof], dtype=int)
        scores[n] = auroc(labels, np.array([float(o["prob_tumour"]) for o in oof]))
        pooled = {r["metric"]: r for r in _csv(out / "results.csv") if r["fold"] == "pooled"}
        assert float(pooled["auroc"]["value"]) == pytest.approx(scores[n], abs=1e-5)

    # each rank trained on its own half of the bags: as many steps per epoch as one process with twice the batch
    n_train = json.loads((runs[2] / "fold0" / "done.json").read_text())["n_train"]
    assert _steps_per_epoch(runs[2] / "fold0") == math.ceil(math.ceil(n_train / 2) / (BATCH // 2))
    assert _steps_per_epoch(runs[1] / "fold0") == math.ceil(n_train / BATCH)
    print(
        f"pooled OOF AUROC: one process {scores[1]:.3f} ({done[1][2]:.0f} s), two DDP processes {scores[2]:.3f} "
        f"({done[2][2]:.0f} s), run side by side"
    )
    assert scores[1] >= AUROC_FLOOR, scores
    assert scores[2] >= AUROC_FLOOR, scores
    assert abs(scores[2] - scores[1]) <= AUROC_TOLERANCE, scores
