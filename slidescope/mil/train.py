"""``train()``: patient-level cross-validated MIL training with Lightning.

Layout of ``out``::

    run.json                 the configuration (a rerun with another one refuses to resume)
    splits.json              patient -> fold (see :class:`~slidescope.mil.data.Splits`)
    fold{k}/best.ckpt        lowest validation loss
    fold{k}/last.ckpt        the latest epoch (resume point)
    fold{k}/predictions.csv  held-out predictions of fold k
    fold{k}/done.json        written last: the fold is finished
    fold{k}/logs/            CSV logs of Lightning
    oof_predictions.csv      slide, patient, label, fold, prob_<class>...   (classification)
                             slide, patient, target, fold, prediction      (regression)
                             slide, patient, time, event, fold, risk       (survival)
    results.csv              per fold and pooled metrics with bootstrap 95% CIs (patients resampled)

For fold k the held-out fold is never seen during training: the remaining patients are split
again (by patient, stratified) into train and validation (early stopping, best checkpoint).

Several devices and nodes (DDP)
-------------------------------
``devices`` and ``num_nodes`` (``--devices``, ``--num-nodes``) above 1 train each fold with
Lightning's DistributedDataParallel (gloo on CPUs, NCCL on GPUs), one process per device::

    slidescope train --manifest m.csv --store stores --encoder uni --devices 4          # 4 GPUs, one machine
    srun slidescope train --manifest m.csv --store stores --encoder uni --devices 4 --num-nodes 2   # SLURM

Launched from a shell (or a Python script), Lightning starts the other ranks itself: it re-runs the
same command line (``sys.argv``) with ``LOCAL_RANK`` set, so every rank runs ``train()`` from its
start; the later folds' Trainers reuse the process group of the first. Under SLURM (``srun`` with
``--ntasks-per-node`` equal to ``--devices``), torchrun or another launcher that sets the rank
variables, Lightning detects the cluster and starts nothing; without a scheduler, several nodes run
the command on each node with ``MASTER_ADDR``, ``MASTER_PORT`` and ``NODE_RANK`` set. Not from a
notebook (Lightning refuses script-launched DDP there). The stores and ``out`` must be on a file
system every node sees.

What is shared and what is not:

- every rank computes the same configuration and splits; only global rank 0 writes ``run.json``,
  ``splits.json``, deletes fold folders (``resume=False``), writes checkpoints, predictions,
  ``done.json`` and the results, and only rank 0 gets the :class:`TrainResult` (the other ranks
  return None). All ranks take the same resume/skip decision per fold (they read the same files;
  the ranks meet at a barrier after each fold, once rank 0 has written it).
- each epoch every rank trains on its own shard of the shuffled training bags (a
  ``DistributedSampler``; up to ``world_size - 1`` bags repeat to even the shards) and DDP averages
  the gradients, so the **effective batch is** ``batch_size x devices x num_nodes``. The learning
  rate is not scaled: to match a one-device run, divide ``batch_size`` by the world size (as the
  test does) or raise ``lr`` yourself.
- every rank scores the whole validation set; the logged losses and metrics are synchronised, so
  early stopping and the best checkpoint follow the same validation loss on every rank (that of
  one device for the same weights). Rank 0 alone predicts the held-out fold after training (on its
  device) while the others wait at a barrier (the process group's timeout, 30 min by default).
- results equal a one-device run's up to nondeterminism: other shards of bags per step, other tile
  subsamples, floating-point reduction order. Aggregators with label-dependent branches
  (``has_aux_loss``: CLAM, DTFD...) train with ``find_unused_parameters=True``; a custom aggregator
  that leaves parameters unused needs ``strategy="ddp_find_unused_parameters_true"``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics as _metrics
from ..errors import InvalidParameterError
from ..metrics import CLASSIFICATION_METRICS
from .data import BagDataModule, SlideRow, Splits, make_splits, read_manifest

log = logging.getLogger(__name__)

__all__ = ["train", "TrainResult", "FoldResult", "classification_metrics", "regression_metrics", "concordance_index",
           "survival_metrics", "bootstrap_ci"]

METRICS = CLASSIFICATION_METRICS  # auroc (OvR), auroc_ovo, balanced_accuracy, f1, f1_weighted, kappa, ...
REGRESSION_METRICS = ("pearson", "spearman", "r2", "mae")
SURVIVAL_METRICS = ("c_index",)


# -- metrics: every definition lives in slidescope.metrics (checked against scikit-learn/lifelines) ------

auroc = _metrics.auroc  # kept here: ``from slidescope.mil.train import auroc`` is public
classification_metrics = _metrics.classification_metrics
concordance_index = _metrics.concordance_index
bootstrap_ci = _metrics.bootstrap_ci
_ranks = _metrics.rankdata


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def regression_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Pearson r, Spearman r (average ranks for ties), R² (1 - SSres/SStot) and MAE; ``(n,)`` arrays.

    Correlations are NaN when either side is constant; R² is NaN when the targets are.
    """
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    f = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if len(y) < 2:
        return {m: float("nan") for m in REGRESSION_METRICS} | {"mae": float(np.abs(y - f).mean()) if len(y) else
                                                                  float("nan")}
    ss_tot = ((y - y.mean()) ** 2).sum()
    return {"pearson": _pearson(y, f), "spearman": _pearson(_ranks(y), _ranks(f)),
            "r2": float(1 - ((y - f) ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
            "mae": float(np.abs(y - f).mean())}


def survival_metrics(time: np.ndarray, risk: np.ndarray, event: np.ndarray) -> dict[str, float]:
    """``{"c_index": Harrell's C}`` (see :func:`concordance_index`)."""
    return {"c_index": concordance_index(time, risk, event)}


def _bootstrap(fn, arrays: tuple[np.ndarray, ...], groups: np.ndarray, *, n: int, seed: int,
               valid=None) -> dict[str, tuple[float, float]]:
    """95% percentile bootstrap of ``fn(*arrays)``, resampling patients (``groups``): ``{metric: (low, high)}``."""
    cis = _metrics.bootstrap_metrics(fn, arrays, groups=groups, n=n, seed=seed, level=0.95, valid=valid)
    return {m: (ci.low, ci.high) for m, ci in cis.items()}


# -- per-task evaluation of predictions ----------------------------------------------------------------

@dataclass(frozen=True)
class _TaskEval:
    """How one task's prediction records become metrics: the metric names, the record columns, the arrays."""

    metrics: tuple[str, ...]
    columns: tuple[str, ...]  # after slide, patient (and before/after fold, see _write_predictions)
    compute: Any  # (records, class_names) -> dict
    ci: Any  # (records, class_names, n, seed) -> dict


def _cls_arrays(preds, class_names):
    labels = np.array([class_names.index(p["label"]) for p in preds], dtype=int)
    probs = np.array([[p[f"prob_{c}"] for c in class_names] for p in preds], dtype=np.float64)
    return labels, probs


def _cls_compute(preds, class_names):
    labels, probs = _cls_arrays(preds, class_names)
    if len(set(labels.tolist())) < 2:
        return {m: float("nan") for m in METRICS}
    return classification_metrics(labels, probs)


def _patients(preds) -> np.ndarray:
    return np.array([str(p.get("patient", p["slide"])) for p in preds])


def _cls_ci(preds, class_names, n, seed):
    labels, probs = _cls_arrays(preds, class_names)
    if len(set(labels.tolist())) < 2:
        return {m: (float("nan"), float("nan")) for m in METRICS}
    k = len(np.unique(labels))  # resamples lacking a class are skipped
    return _bootstrap(classification_metrics, (labels, probs), _patients(preds), n=n, seed=seed,
                      valid=lambda y, _p: len(np.unique(y)) >= k)


def _reg_arrays(preds):
    return (np.array([p["target"] for p in preds], dtype=np.float64),
            np.array([p["prediction"] for p in preds], dtype=np.float64))


def _surv_arrays(preds):
    return (np.array([p["time"] for p in preds], dtype=np.float64), np.array([p["risk"] for p in preds], dtype=np.float64),
            np.array([p["event"] for p in preds], dtype=int))


_EVALS: dict[str, _TaskEval] = {
    "classification": _TaskEval(METRICS, ("label",), _cls_compute, _cls_ci),
    "regression": _TaskEval(
        REGRESSION_METRICS, ("target", "prediction"),
        lambda preds, _c: regression_metrics(*_reg_arrays(preds)),
        lambda preds, _c, n, seed: _bootstrap(regression_metrics, _reg_arrays(preds), _patients(preds), n=n,
                                              seed=seed, valid=lambda y, f: len(np.unique(y)) > 1)),
    "survival": _TaskEval(
        SURVIVAL_METRICS, ("time", "event", "risk"),
        lambda preds, _c: survival_metrics(*_surv_arrays(preds)),
        lambda preds, _c, n, seed: _bootstrap(survival_metrics, _surv_arrays(preds), _patients(preds), n=n,
                                              seed=seed, valid=lambda t, r, e: bool(e.any()))),
}


# -- results ----------------------------------------------------------------------------------------

@dataclass
class FoldResult:
    fold: int
    status: str  # "trained", "resumed" or "skipped" (already done)
    best_checkpoint: Path
    n_train: int
    n_val: int
    n_test: int
    epochs: int
    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]]


@dataclass
class TrainResult:
    out: Path
    class_names: list[str]
    folds: list[FoldResult]
    pooled: dict[str, float]
    pooled_ci: dict[str, tuple[float, float]]
    oof_csv: Path
    results_csv: Path
    splits: Path
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"

    @property
    def checkpoints(self) -> list[Path]:
        return [f.best_checkpoint for f in self.folds]

    @property
    def metric_names(self) -> tuple[str, ...]:
        return _EVALS[self.task].metrics

    def summary(self) -> str:
        names = self.metric_names
        lines = [f"{'':<8}" + "".join(f"{m:>26}" for m in names)]
        for f in self.folds:
            lines.append(f"fold {f.fold:<3}" + "".join(_fmt(f.metrics[m], f.ci[m]) for m in names))
        lines.append(f"{'pooled':<8}" + "".join(_fmt(self.pooled[m], self.pooled_ci[m]) for m in names))
        return "\n".join(lines)


def _fmt(v: float, ci: tuple[float, float]) -> str:
    return f"{v:>9.3f} [{ci[0]:.3f}, {ci[1]:.3f}]".rjust(26)


# -- training ---------------------------------------------------------------------------------------

def _config(rows: list[SlideRow], **kw: Any) -> dict[str, Any]:
    def entry(r: SlideRow) -> list:
        return [r.key, r.label, r.patient, r.site] + ([r.time, r.event] if r.time is not None else [])

    return {"slides": [entry(r) for r in rows], **kw}


def _weights_only(trainer: Any) -> dict[str, bool]:
    """``weights_only=True`` for ``Trainer.fit`` where this Lightning takes it (2.5 and later); with an older
    one the checkpoint was already checked with ``torch.load(weights_only=True)`` (see
    :func:`~slidescope.mil.task.check_resume_checkpoint`), and torch >= 2.6 defaults to it."""
    import inspect

    return {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}


def _quiet_lightning() -> None:
    """Known-harmless Lightning messages, silenced inside ``train()`` only (warnings stay errors elsewhere)."""
    # bags are read from an in-memory cache; worker processes would only add start-up time
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # tiny cohorts: fewer batches than the logging interval is expected
    warnings.filterwarnings("ignore", message=r".*number of training batches.*logging interval.*")
    # resuming writes into the fold's own checkpoint folder on purpose
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    # CPU-only hosts: Lightning points out that a GPU/TPU/HPU could be used (only when one exists)
    warnings.filterwarnings("ignore", message=r".*available but not used.*")
    # torch >= 2.10 deprecates LeafSpec, which lightning's CombinedLoader still constructs
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*", category=FutureWarning)
    # torchmetrics: a validation set may lack a class in early epochs of a small cohort
    warnings.filterwarnings("ignore", message=r".*No (positive|negative) samples in targets.*")


@contextlib.contextmanager
def _lightning_info(show: bool):
    """Lightning logs "GPU available...", tips and stop reasons at INFO to stdout; keep them for ``progress``."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    if not show:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _world(*, accelerator: str, devices: int | str, num_nodes: int, strategy: str, precision: str | None,
           progress: bool) -> tuple[int, int]:
    """``(world_size, global_rank)`` of this process, as the fold Trainers will see them.

    A Trainer resolves both at construction from Lightning's cluster environments (its own launcher's
    ``LOCAL_RANK``/``NODE_RANK``, SLURM, torchrun, LSF...) without launching anything.
    """
    import lightning as L

    with warnings.catch_warnings(), _lightning_info(progress):
        _quiet_lightning()
        probe = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                          precision=precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False)
    return int(probe.world_size), int(probe.global_rank)


def _fold_strategy(strategy: str, world_size: int, task: Any) -> Any:
    """``"auto"`` on several processes: DDP (the script launcher); ``find_unused_parameters`` where the
    aggregator's auxiliary loss leaves label-dependent branches out of some steps (CLAM, DTFD, ACMIL...)."""
    if strategy != "auto" or world_size == 1:
        return strategy
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(find_unused_parameters=bool(getattr(task.model, "has_aux_loss", True)))


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that a concurrent reader (another rank) sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def train(
    manifest: str | os.PathLike[str],
    *,
    store: str | os.PathLike[str],
    encoder: str,
    out: str | os.PathLike[str],
    model: str = "abmil",
    model_kwargs: dict[str, Any] | None = None,
    folds: int = 5,
    epochs: int = 20,
    batch_size: int | None = None,
    lr: float = 2e-4,
    weight_decay: float = 1e-2,
    seed: int = 0,
    max_instances: int = 512,
    val_fraction: float = 0.2,
    early_stopping_patience: int = 5,
    site_preserving: bool = False,
    class_weighting: bool = True,
    accelerator: str = "auto",
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: str | None = None,
    num_workers: int = 0,
    resume: bool = True,
    bootstrap: int = 1000,
    callbacks: list | None = None,
    progress: bool = False,
    task: str = "classification",
    label_column: str = "label",
    survival_model: str = "cox",
    time_column: str = "time",
    event_column: str = "event",
    n_bins: int = 4,
) -> TrainResult:
    """Train one model per fold with patient-level cross-validation and report held-out metrics.

    Parameters
    ----------
    manifest : str or os.PathLike
        CSV with ``slide`` (path relative to the CSV), ``label`` and ``patient`` (optional ``site``,
        ``split``); see :func:`read_manifest`.
    store : str or os.PathLike
        Folder of the slides' stores; every slide needs complete ``encoder`` embeddings (N, D).
    encoder : str
        Which embeddings to train on.
    out : str or os.PathLike
        Run folder (see the module docstring for its layout).
    model : str, default "abmil"
        Aggregator registry name (:func:`~slidescope.mil.list_aggregators`).
    model_kwargs : dict, optional
        Its hyper-parameters.
    folds : int, default 5
        Patient-level cross-validation folds (:func:`make_splits`, with ``seed`` and ``site_preserving``).
    epochs : int, default 20
        Maximum epochs per fold; AdamW (``lr``, ``weight_decay``) with a cosine schedule over them. These
        defaults are slidescope's own recipe, not a published one (see Notes for CLAM's).
    batch_size : int, optional
        Bags per batch: 8 by default, 32 for a Cox model (its loss compares the bags of a batch: small
        batches give a noisy partial likelihood; validation and test use all their bags at once).
    lr, weight_decay : float
        AdamW learning rate (2e-4) and weight decay (1e-2).
    seed : int, default 0
        Seed of the splits, bag subsampling and initialisation.
    max_instances : int or None, default 512
        Tiles per training bag (subsampled, seeded); None trains on every tile. Evaluation uses every tile.
    val_fraction : float, default 0.2
        Fraction of each fold's training patients held out for validation (early stopping, best checkpoint).
    early_stopping_patience : int, default 5
        Epochs without a lower validation loss before a fold stops.
    site_preserving : bool, default False
        Hold out whole sites per fold (manifest column ``site``).
    class_weighting : bool, default True
        Weight the cross-entropy by inverse class frequency of each fold's training set.
    accelerator, devices, num_nodes, precision
        Passed to ``lightning.Trainer`` (``precision="bf16-mixed"``/``"16-mixed"`` for mixed precision on
        GPU). ``devices`` per node times ``num_nodes`` above 1 trains with DDP, one process per device; see
        "Several devices and nodes" in the module docstring for how to launch it, what is synchronised and
        what differs from one device (the effective batch is ``batch_size`` x world size; ``lr`` is not
        scaled).
    strategy : str, default "auto"
        DDP when the world size is above 1 (``find_unused_parameters`` for aggregators with an auxiliary
        loss), else one device; or a Lightning strategy name such as ``"ddp_find_unused_parameters_true"``.
    num_workers : int, default 0
        DataLoader workers (bags are read from an in-memory cache).
    resume : bool, default True
        A fold with ``done.json`` is reused; a fold with ``last.ckpt`` continues from it. ``False`` deletes
        the fold folders and starts again.
    bootstrap : int, default 1000
        Bootstrap resamples of the 95% confidence intervals.
    callbacks : list, optional
        Extra Lightning callbacks (added to every fold).
    progress : bool, default False
        Lightning's progress bars and messages.
    task : {"classification", "regression", "survival"}
        ``classification``: ``label_column`` holds classes; ``regression``: ``label_column`` holds numbers
        (MSE on targets standardised with each fold's training mean and std); ``survival``: ``time_column``
        and ``event_column``.
    label_column : str, default "label"
    survival_model : {"cox", "discrete"}
        ``cox``: a risk score with the Cox partial likelihood (Breslow ties); ``discrete``: ``n_bins`` time
        bins from quantiles of the training fold's event times, the censored discrete-time hazard
        likelihood (risk = minus the sum of the survival curve).
    time_column, event_column : str
        Survival: time to event or censoring, and 1 = event / 0 = censored.
    n_bins : int, default 4
        Discrete survival: time bins.

    Returns
    -------
    TrainResult
        ``folds`` (per fold: status, best checkpoint, slide counts, epochs, metrics with CIs), ``pooled``
        and ``pooled_ci`` out-of-fold metrics (classification: :data:`slidescope.metrics.CLASSIFICATION_METRICS`,
        i.e. AUROC one-vs-rest and one-vs-one macro, balanced accuracy, F1 macro and weighted, Cohen's kappa
        unweighted and quadratic, accuracy; CIs: 95% percentile bootstrap resampling patients),
        ``checkpoints`` (the folds' ``best.ckpt``, for :func:`score`), ``oof_csv``,
        ``results_csv``, ``splits``; ``summary()`` is a printable table. Under DDP only global rank 0
        predicts, writes and returns results; the other ranks return None.

    Raises
    ------
    InvalidParameterError
        A bad manifest (missing columns, too few patients per class for the folds), a run folder holding
        another configuration (with ``resume``), or a bad option.

    Notes
    -----
    Training recipe. The defaults (AdamW, lr 2e-4, weight decay 1e-2, cosine schedule over at most 20
    epochs, early stopping after 5 epochs without a lower validation loss, 8 bags per batch of at most 512
    random tiles, class-weighted cross-entropy) are slidescope's own, chosen for short cross-validated runs
    on small cohorts and CPUs; they follow no published recipe. CLAM's (mahmoodlab/CLAM, README commands
    and ``main.py``): Adam with a constant lr 2e-4 (``main.py`` default 1e-4) and L2 weight decay 1e-5, up
    to 200 epochs, early stopping with patience 20 that never stops before epoch 50, one bag with all its
    tiles per step, dropout 0.25, classes balanced by weighted sampling. The closest settings here are
    ``epochs=200, lr=2e-4, weight_decay=1e-5, early_stopping_patience=20, batch_size=1,
    max_instances=None`` (AdamW with its decoupled decay, the cosine schedule and early stopping from the
    first epoch remain, and class weighting stands in for weighted sampling).

    Examples
    --------
    >>> import slidescope as ss
    >>> run = ss.train("slides.csv", store="stores", encoder="uni", out="runs/abmil", folds=5)  # doctest: +SKIP
    >>> print(run.summary())                                                                 # doctest: +SKIP
    >>> ss.score(run.checkpoints, ["stores"], out_csv="predictions.csv")                     # doctest: +SKIP

    ``examples/train_abmil_cv.py`` runs this offline on a synthetic cohort.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from .task import MILTask, check_resume_checkpoint, load_task

    out = Path(out)
    from .task import SURVIVAL_MODELS

    if task == "survival" and survival_model not in SURVIVAL_MODELS:
        raise InvalidParameterError(f"unknown survival model {survival_model!r}; use one of "
                                    f"{', '.join(SURVIVAL_MODELS)}")
    if task == "survival" and survival_model == "discrete" and n_bins < 2:
        raise InvalidParameterError(f"n_bins must be >= 2 for the discrete survival model, got {n_bins}")
    cox = task == "survival" and survival_model == "cox"
    if batch_size is None:
        batch_size = 32 if cox else 8
    rows = read_manifest(manifest, store=store, encoder=encoder, task=task, label_column=label_column,
                         time_column=time_column, event_column=event_column)
    evaluation = _EVALS[task]
    class_names = sorted({r.label for r in rows}) if task == "classification" else []
    from ..features.store import open_store, store_path

    first = open_store(store_path(store, rows[0].slide), encoder=encoder)
    in_dim = int(first.encoder_attrs(encoder).get("embed_dim") or first.embeddings(encoder).shape[1])
    if folds < 2:
        raise InvalidParameterError(f"folds must be >= 2, got {folds}")

    config = _config(rows, encoder=encoder, model=model, model_kwargs=model_kwargs or {}, folds=folds, seed=seed,
                     site_preserving=site_preserving, max_instances=max_instances, lr=lr, weight_decay=weight_decay,
                     batch_size=batch_size, val_fraction=val_fraction, class_weighting=class_weighting,
                     class_names=class_names, in_dim=in_dim)
    if task != "classification":  # classification runs keep the configuration of earlier versions
        config.update(task=task, label_column=label_column, class_weighting=False)
        if task == "survival":
            config.update(survival_model=survival_model, n_bins=n_bins if survival_model == "discrete" else None)
    # which rank this process is: known before any process is launched (Lightning's cluster environments)
    world_size, global_rank = _world(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                                     strategy=strategy, precision=precision, progress=progress)
    rank0 = global_rank == 0
    run_json = out / "run.json"
    splits = make_splits(rows, folds=folds, seed=seed, site_preserving=site_preserving)
    # every rank checks (and fails) alike: rank 0 replaces these files atomically and with the same content
    if resume and run_json.exists():
        old = json.loads(run_json.read_text()).get("config")
        if old != json.loads(json.dumps(config)):
            changed = sorted(k for k in config if (old or {}).get(k) != json.loads(json.dumps(config[k])))
            raise InvalidParameterError(f"{out} holds a run with another configuration (differs in: "
                                        f"{', '.join(changed) or 'format'}); use another --out or resume=False")
        if (out / "splits.json").exists() and Splits.load(out / "splits.json") != splits:
            raise InvalidParameterError(f"{out}/splits.json differs from the splits of this manifest; use another "
                                        f"--out or resume=False")
    if rank0:  # the Lightning launcher starts the other ranks later, inside the first fit
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            for k in range(folds):
                shutil.rmtree(out / f"fold{k}", ignore_errors=True)
        from .. import __version__

        _write_atomic(run_json, json.dumps({"config": config, "epochs": epochs, "world_size": world_size,
                                            "slidescope_version": __version__}, indent=2))
        splits.save(out / "splits.json")

    fold_results: list[FoldResult] = []
    oof: list[dict[str, Any]] = []
    children: list = []  # rank 0 of a shell-launched DDP run: the rank processes Lightning started
    try:
        for k in range(folds):
            fdir = out / f"fold{k}"
            done = fdir / "done.json"
            dm = BagDataModule(rows, splits=splits, fold=k, store=store, encoder=encoder, class_names=class_names,
                               batch_size=batch_size, max_instances=max_instances, val_fraction=val_fraction,
                               num_workers=num_workers, seed=seed, eval_batch_size=len(rows) if cox else None)
            dm.setup("fit")
            # the same decision on every rank: rank 0 deletes a fold folder only when it lacks last.ckpt and one
            # of done.json, best.ckpt, predictions.csv, so that cannot change another rank's answer to these tests
            if resume and done.exists() and (fdir / "best.ckpt").exists() and (fdir / "predictions.csv").exists():
                if not rank0:
                    continue
                info = json.loads(done.read_text())
                preds = _read_predictions(fdir / "predictions.csv")
                status = "skipped"
                log.info("fold %d: already done, reusing %s", k, fdir / "best.ckpt")
            else:
                last = fdir / "last.ckpt"
                ckpt_path = str(last) if resume and last.exists() else None
                if ckpt_path is not None:  # weights_only: a planted pickle never runs; a damaged one says what to do
                    check_resume_checkpoint(last, fold=k)
                status = "resumed" if ckpt_path else "trained"
                if rank0:
                    if ckpt_path is None and fdir.exists():
                        shutil.rmtree(fdir)
                    fdir.mkdir(parents=True, exist_ok=True)
                L.seed_everything(seed + k, workers=True, verbose=False)
                head: dict[str, Any] = {"task": task}
                num_classes = len(class_names)
                if task == "regression":
                    mean, std = dm.target_stats()
                    head.update(target_mean=mean, target_std=std)
                    num_classes = 1
                elif task == "survival":
                    bins = dm.time_bins(n_bins) if survival_model == "discrete" else None
                    head.update(survival_model=survival_model, time_bins=bins)
                    num_classes = len(bins) + 1 if bins is not None else 1
                lit = MILTask(aggregator=model, aggregator_kwargs=model_kwargs or {}, in_dim=in_dim,
                              num_classes=num_classes, class_names=class_names, encoder=encoder, lr=lr,
                              weight_decay=weight_decay, epochs=epochs,
                              class_weights=dm.class_weights() if class_weighting and task == "classification"
                              else None, **head)
                ckpt_cb = ModelCheckpoint(dirpath=str(fdir), filename="best", monitor="val/loss", mode="min",
                                          save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
                # every epoch, whether or not it improved (lightning >= 2.6 writes save_last only with a new best)
                last_cb = ModelCheckpoint(dirpath=str(fdir), filename="last", monitor=None, save_top_k=1,
                                          enable_version_counter=False)
                stop_cb = EarlyStopping(monitor="val/loss", mode="min", patience=early_stopping_patience)
                with warnings.catch_warnings(), _lightning_info(progress):
                    _quiet_lightning()
                    trainer = L.Trainer(
                        max_epochs=epochs, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                        strategy=_fold_strategy(strategy, world_size, lit), precision=precision,
                        logger=CSVLogger(str(fdir), name="logs"),
                        callbacks=[ckpt_cb, last_cb, stop_cb, *(callbacks or [])],
                        enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=1,
                        deterministic=True, num_sanity_val_steps=0, default_root_dir=str(fdir),
                        # BagDataModule shards the training bags itself; every rank validates on all bags
                        use_distributed_sampler=False,
                    )
                    trainer.fit(lit, datamodule=dm, ckpt_path=ckpt_path, **_weights_only(trainer))
                children = children or list(getattr(trainer.strategy.launcher, "procs", None) or [])
                if trainer.interrupted:
                    raise KeyboardInterrupt(f"training of fold {k} was interrupted; rerun to resume from {last}")
                if not rank0:
                    trainer.strategy.barrier("slidescope.mil.train: fold written")
                    continue
                best = Path(ckpt_cb.best_model_path) if ckpt_cb.best_model_path else fdir / "best.ckpt"
                if best.resolve() != (fdir / "best.ckpt").resolve():  # Lightning may report a relative path
                    shutil.copyfile(best, fdir / "best.ckpt")
                # on the training device: under DDP the other ranks wait for this at the barrier below
                best_task = load_task(fdir / "best.ckpt", encoder=encoder, embed_dim=in_dim)
                preds = _predict(best_task.to(trainer.strategy.root_device), dm)
                _write_predictions(fdir / "predictions.csv", preds, class_names, task=task)
                info = {"epochs": int(trainer.current_epoch), "best_val_loss": float(ckpt_cb.best_model_score)
                        if ckpt_cb.best_model_score is not None else None,
                        "n_train": len(dm.train_rows), "n_val": len(dm.val_rows), "n_test": len(dm.test_rows)}
                done.write_text(json.dumps(info, indent=2))
                trainer.strategy.barrier("slidescope.mil.train: fold written")  # a no-op on one device
            metrics = evaluation.compute(preds, class_names)
            ci = evaluation.ci(preds, class_names, bootstrap, seed)
            fold_results.append(FoldResult(fold=k, status=status, best_checkpoint=fdir / "best.ckpt",
                                           n_train=info.get("n_train", len(dm.train_rows)),
                                           n_val=info.get("n_val", len(dm.val_rows)), n_test=len(preds),
                                           epochs=int(info.get("epochs", 0)), metrics=metrics, ci=ci))
            oof.extend({**p, "fold": k} for p in preds)
    except BaseException:
        # the other ranks would wait in the next collective until its timeout: end the ones this process started
        for proc in children:
            if proc.poll() is None:
                proc.kill()
        raise

    if not rank0:
        return None  # type: ignore[return-value]
    oof_csv = out / "oof_predictions.csv"
    _write_predictions(oof_csv, oof, class_names, fold=True, task=task)
    pooled = evaluation.compute(oof, class_names)
    pooled_ci = evaluation.ci(oof, class_names, bootstrap, seed)
    results_csv = out / "results.csv"
    with open(results_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["fold", "metric", "value", "ci_low", "ci_high", "n_slides"])
        for f in fold_results:
            for m in evaluation.metrics:
                w.writerow([f.fold, m, _r(f.metrics[m]), _r(f.ci[m][0]), _r(f.ci[m][1]), f.n_test])
        for m in evaluation.metrics:
            w.writerow(["pooled", m, _r(pooled[m]), _r(pooled_ci[m][0]), _r(pooled_ci[m][1]), len(oof)])
    return TrainResult(out=out, class_names=class_names, folds=fold_results, pooled=pooled, pooled_ci=pooled_ci,
                       oof_csv=oof_csv, results_csv=results_csv, splits=out / "splits.json", task=task)


def _r(v: float) -> str:
    return "" if v is None or np.isnan(v) else f"{v:.6g}"


def _predict(task, dm: BagDataModule) -> list[dict[str, Any]]:
    """Held-out predictions of one fold (every tile of each bag)."""
    preds = []
    for i, row in enumerate(dm.test_rows):
        value, _ = task.predict_bag(dm.test_set.embeddings(i))
        rec: dict[str, Any] = {"slide": row.key, "patient": row.patient}
        if task.task == "regression":
            rec.update(target=float(row.target), prediction=float(value[0]))
        elif task.task == "survival":
            rec.update(time=float(row.time), event=int(row.event), risk=float(value[0]))
        else:
            rec.update(label=row.label, **{f"prob_{c}": float(p) for c, p in zip(task.class_names, value.tolist(),
                                                                                 strict=True)})
        preds.append(rec)
    return preds


def _write_predictions(path: Path, preds: list[dict[str, Any]], class_names: list[str], *, fold: bool = False,
                       task: str = "classification") -> None:
    given = _EVALS[task].columns
    if task == "classification":
        cols = ["slide", "patient", "label", *(["fold"] if fold else []), *[f"prob_{c}" for c in class_names]]
    else:  # the prediction (last given column) after the fold
        cols = ["slide", "patient", *given[:-1], *(["fold"] if fold else []), given[-1]]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for p in preds:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in p.items()})


def _read_predictions(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as fh:
        return [{k: (float(v) if k.startswith("prob_") or k in _FLOAT_COLUMNS else int(v) if k == "event" else v)
                 for k, v in r.items()} for r in csv.DictReader(fh)]


_FLOAT_COLUMNS = ("target", "prediction", "time", "risk")
