"""Slide-text pretraining with Lightning DDP in real processes: two ranks on the CPU (gloo) against one.

``slidescope pretrain --devices 2`` is run as a user runs it: Lightning's launcher re-executes the command line
for rank 1, whose ``pretrain()`` starts over and joins the Trainer. The two-rank run halves ``--batch-size``:
its ranks' embeddings are gathered, so each step's contrastive loss compares the same number of pairs (the
global batch, batch size x world size) as the one-process run (20 training pairs: 16 + 4 in one process, 2 x (8 +
2) in two), with as many steps per epoch. The two models
then agree up to nondeterminism (other pairs per step, other tile subsamples and sentence drops), which the
tolerances below allow for; both are judged on the held-out slides, which pretraining never saw.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_processes import clean_env, group_alive, launch, wait_all

pytestmark = pytest.mark.slow

ENCODER = "he-descriptor"
EPOCHS = 20  # the held-out scores reach their floors from about 10 epochs on this cohort (measured)
BATCH = 16  # one process; the two ranks use BATCH // 2 each
#: phrasings that never occur in a synthetic report (tests/vlm/test_api.py checks the same ones)
UNSEEN = {
    "tumour": ["sheets of atypical epithelial cells", "cancer", "malignant cells with pleomorphic nuclei"],
    "normal": ["bland connective tissue", "benign collagen with sparse regular nuclei"],
}
#: held-out zero-shot AUROC (8 slides, 4 tumour x 4 normal = 16 pairs, 1/16 each): the two runs may differ by two
#: pairs ranked the other way, and both must reach the floor
AUROC_TOLERANCE = 0.125
AUROC_FLOOR = 0.9
#: held-out class-level retrieval (8 queries per direction, 1/8 each): two queries, and the floor
RETRIEVAL_TOLERANCE = 0.25
RETRIEVAL_FLOOR = 0.75
TIMEOUT_S = 600

#: one training step of SlideTextTask on two ranks (Lightning's launcher starts rank 1 from this file), 4 pairs
#: each, then (rank 0) the same 8 pairs as one batch on one process: the loss and the DDP-averaged gradients
STEP_SCRIPT = """
import json
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from slidescope.vlm.model import SlideTextModel
from slidescope.vlm.pretrain import SlideTextTask, _strategy, collate_pairs
from slidescope.vlm.slide_encoder import PerceiverSlideEncoderConfig
from slidescope.vlm.text import SmallTextTower

TEXTS = ["invasive carcinoma in sheets", "benign stroma", "carcinoma with necrosis", "fat and benign ducts",
         "tumour islands", "no tumour seen", "atypical cells", "normal breast tissue"]


def build() -> SlideTextModel:
    torch.manual_seed(0)
    tower = SmallTextTower.from_texts(TEXTS, width=32, depth=1, heads=2, dropout=0.0)  # no dropout: exact
    return SlideTextModel(PerceiverSlideEncoderConfig.tiny(), tower, dim_latents=16)


gen = torch.Generator().manual_seed(1)
items = [{"features": torch.randn(6 + 3 * i, 24, generator=gen), "label": -1, "index": i, "text": t}
         for i, t in enumerate(TEXTS)]


class Grab(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.loss = float(outputs["loss"])

    def on_before_optimizer_step(self, trainer, module, optimizer):  # after DDP's gradient averaging
        self.grads = {n: p.grad.detach().clone() for n, p in module.model.named_parameters() if p.grad is not None}


warnings.simplefilter("ignore")
grab = Grab()
trainer = L.Trainer(accelerator="cpu", devices=2, strategy=_strategy("auto", 2), max_steps=1, logger=False,
                    callbacks=[grab], enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0,
                    limit_val_batches=0)
rank = trainer.global_rank
local = DataLoader(items[4 * rank: 4 * rank + 4], batch_size=4, collate_fn=collate_pairs)  # rank 0: 0-3, 1: 4-7
trainer.fit(SlideTextTask(build()), train_dataloaders=local)
if rank == 0:
    ref = build()
    batch = collate_pairs(items)
    out = ref(batch["features"], batch["mask"], batch["texts"])
    out["loss"].backward()
    diff = {n: float((p.grad - grab.grads[n]).abs().max()) for n, p in ref.named_parameters() if p.grad is not None}
    Path(sys.argv[1]).write_text(json.dumps({
        "ddp_loss": grab.loss, "loss": float(out["loss"]), "max_grad_diff": max(diff.values()),
        "max_grad": max(float(p.grad.abs().max()) for p in ref.parameters() if p.grad is not None),
        "same_params": sorted(diff) == sorted(grab.grads)}))
"""


def _env() -> dict[str, str]:
    """One thread per process: three processes share the machine's cores (oversubscribed OpenMP threads spin)."""
    return clean_env(OMP_NUM_THREADS="1")


def _launch(cohort, out: Path, *, devices: int, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "slidescope",
        "pretrain",
        "--manifest",
        str(cohort.train_manifest),
        "--store",
        str(cohort.store),
        "--encoder",
        ENCODER,
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        str(BATCH // devices),
        "--seed",
        "0",
        "--accelerator",
        "cpu",
        "--devices",
        str(devices),
        "--out",
        str(out),
    ]
    return launch(cmd, log=log, cwd=out.parent, env=_env())


def _no_rank_left(proc: subprocess.Popen) -> None:
    """Rank 1 ends by itself once rank 0 has: no process of the run is left behind."""
    if not Path("/proc/self/stat").exists():
        return
    deadline = time.monotonic() + 120
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("rank 1 of the DDP run was still running 120 s after rank 0 had ended")


def _held_out_scores(model_dir: Path, cohort) -> dict[str, float]:
    """Class-level retrieval between the held-out slides and their reports (the best match has the query's
    class), both directions, and the zero-shot AUROC of the unseen phrasings."""
    from slidescope.features.store import open_store
    from slidescope.vlm.api import zero_shot
    from slidescope.vlm.model import SlideTextModel
    from slidescope.vlm.zeroshot import auroc

    rows = cohort.test_rows
    model = SlideTextModel.load(model_dir)
    with torch.inference_mode():
        v = torch.cat(
            [
                model.encode_slide(
                    torch.from_numpy(open_store(cohort.store_of(r)).embeddings(ENCODER).astype("float32"))[
                        None
                    ]
                )
                for r in rows
            ]
        )
        t = model.encode_text([r["report"] for r in rows])
    labels = [r["label"] for r in rows]
    sim = v @ t.T
    s2t = float(np.mean([labels[int(j)] == labels[i] for i, j in enumerate(sim.argmax(1))]))
    t2s = float(np.mean([labels[int(j)] == labels[i] for i, j in enumerate(sim.argmax(0))]))
    # write=False: the session's stores are shared with other tests
    probs = zero_shot(
        [cohort.store_of(r) for r in rows], UNSEEN, model=model_dir, encoder=ENCODER, write=False
    )
    y = np.array([lab == "tumour" for lab in labels], dtype=int)
    return {
        "slide2text": s2t,
        "text2slide": t2s,
        "zero_shot_auroc": auroc(y, np.array([p.probs["tumour"] for p in probs])),
    }


def test_two_ddp_processes_pretrain_as_well_as_one(vlm_cohort, tmp_path) -> None:
    runs = {n: tmp_path / f"devices{n}" for n in (1, 2)}
    logs = {n: tmp_path / f"devices{n}.log" for n in (1, 2)}
    # both at once: the machine's time goes mostly to imports and start-up, which the two runs can overlap
    procs = {n: _launch(vlm_cohort, runs[n], devices=n, log=logs[n]) for n in (1, 2)}
    done = wait_all(procs, logs, timeout=TIMEOUT_S, what="slidescope pretrain")

    _no_rank_left(procs[2])

    scores, val = {}, {}
    for n, out in runs.items():
        rc, output, _ = done[n]
        assert rc == 0, f"--devices {n} exited with {rc}:\n{output[-4000:]}"
        # rank 0 reports; rank 1 returns quietly
        assert sum(line.startswith("model: ") for line in output.splitlines()) == 1, output
        assert "Traceback" not in output and "Warning" not in output, output
        # written once, by rank 0: no second copy, no temporary folder left behind
        assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model", "splits.json"]
        saved = json.loads((out / "metrics.json").read_text())
        assert saved["world_size"] == n and saved["config"]["batch_size"] == BATCH // n
        assert 0 <= saved["best_epoch"] < saved["epochs"] <= EPOCHS
        val[n] = saved["metrics"]
        scores[n] = _held_out_scores(out / "model", vlm_cohort)
    # the split does not depend on the number of processes
    assert (runs[1] / "splits.json").read_text() == (runs[2] / "splits.json").read_text()

    print(
        f"\nheld-out scores: one process {scores[1]} ({done[1][2]:.0f} s), two DDP processes {scores[2]} "
        f"({done[2][2]:.0f} s), run side by side; best validation: {val[1]} and {val[2]}"
    )
    for n in (1, 2):
        assert scores[n]["zero_shot_auroc"] >= AUROC_FLOOR, scores
        assert min(scores[n]["slide2text"], scores[n]["text2slide"]) >= RETRIEVAL_FLOOR, scores
    assert abs(scores[2]["zero_shot_auroc"] - scores[1]["zero_shot_auroc"]) <= AUROC_TOLERANCE, scores
    for key in ("slide2text", "text2slide"):
        assert abs(scores[2][key] - scores[1][key]) <= RETRIEVAL_TOLERANCE, scores


def test_ddp_step_has_the_loss_and_gradients_of_one_process_on_the_global_batch(tmp_path) -> None:
    """The gathered embeddings make every pair of the other rank a negative: the loss and the gradients of a
    DDP step are those of one process on both ranks' pairs (without the gather they differ by about 0.7 and
    0.03, measured)."""
    script, result, log = tmp_path / "ddp_step.py", tmp_path / "step.json", tmp_path / "step.log"
    script.write_text(STEP_SCRIPT)
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(result)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=tmp_path,
            start_new_session=True,
        )
    rc, output, seconds = wait_all({2: proc}, {2: log}, timeout=TIMEOUT_S, what="slidescope pretrain")[2]
    _no_rank_left(proc)
    assert rc == 0, output[-4000:]
    got = json.loads(result.read_text())
    print(f"\none DDP step ({seconds:.0f} s): {got}")
    assert got["same_params"]
    assert got["ddp_loss"] == pytest.approx(got["loss"], abs=1e-5)
    assert got["max_grad_diff"] <= 1e-5 * max(1.0, got["max_grad"]), got
