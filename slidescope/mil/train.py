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

    slidescope train --manifest m.csv --stores stores --encoder uni --devices 4         # 4 GPUs, one machine
    srun slidescope train --manifest m.csv --stores stores --encoder uni --devices 4 --num-nodes 2  # SLURM

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

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import metrics as _metrics
from ..errors import InvalidParameterError
from ..training import resolve_world, write_atomic
from ._evaluation import EVALS, write_predictions_csv, write_results_csv
from ._folds import run_folds
from .data import SlideRow, Splits, make_splits, read_manifest

__all__ = [
    "train",
    "TrainConfig",
    "train_from_config",
    "TrainResult",
    "FoldResult",
    "classification_metrics",
    "regression_metrics",
    "concordance_index",
    "survival_metrics",
    "bootstrap_ci",
]

METRICS = _metrics.CLASSIFICATION_METRICS  # auroc (OvR), auroc_ovo, balanced_accuracy, f1, kappa, ...
REGRESSION_METRICS = _metrics.REGRESSION_METRICS
SURVIVAL_METRICS = _metrics.SURVIVAL_METRICS

# -- metrics: every definition lives in slidescope.metrics (checked against scikit-learn/scipy/lifelines);
# kept here because ``from slidescope.mil.train import auroc, regression_metrics, ...`` is public
auroc = _metrics.auroc
classification_metrics = _metrics.classification_metrics
regression_metrics = _metrics.regression_metrics
survival_metrics = _metrics.survival_metrics
concordance_index = _metrics.concordance_index
bootstrap_ci = _metrics.bootstrap_ci


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
        return EVALS[self.task].metrics

    def summary(self) -> str:
        names = self.metric_names
        lines = [f"{'':<8}" + "".join(f"{m:>26}" for m in names)]
        for f in self.folds:
            lines.append(f"fold {f.fold:<3}" + "".join(_fmt(f.metrics[m], f.ci[m]) for m in names))
        lines.append(f"{'pooled':<8}" + "".join(_fmt(self.pooled[m], self.pooled_ci[m]) for m in names))
        return "\n".join(lines)


def _fmt(v: float, ci: tuple[float, float]) -> str:
    return f"{v:>9.3f} [{ci[0]:.3f}, {ci[1]:.3f}]".rjust(26)


# -- the configuration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """The arguments of :func:`train` as one object (the same names, defaults and meaning; see there).

    ``train(manifest, **kw)`` is ``train_from_config(TrainConfig(manifest, **kw))``; ``out`` becomes a
    ``Path``. ``dataclasses.replace(config, seed=1)`` gives a variant.
    """

    manifest: str | os.PathLike[str]
    store: str | os.PathLike[str]
    encoder: str
    out: Path
    model: str = "abmil"
    model_kwargs: dict[str, Any] | None = None
    folds: int = 5
    epochs: int = 20
    batch_size: int | None = None
    lr: float = 2e-4
    weight_decay: float = 1e-2
    seed: int = 0
    max_instances: int = 512
    val_fraction: float = 0.2
    early_stopping_patience: int = 5
    site_preserving: bool = False
    class_weighting: bool = True
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None
    num_workers: int = 0
    resume: bool = True
    bootstrap: int = 1000
    callbacks: list | None = None
    progress: bool = False
    task: str = "classification"
    label_column: str = "label"
    survival_model: str = "cox"
    time_column: str = "time"
    event_column: str = "event"
    n_bins: int = 4
    bag: str = "slide"

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))

    @property
    def cox(self) -> bool:
        """A Cox survival model (its loss compares the bags of a batch: larger batches, whole-set
        evaluation)."""
        return self.task == "survival" and self.survival_model == "cox"

    def check(self) -> None:
        """Options that are wrong whatever the data (checked before the manifest is read)."""
        from ._patients import BAGS
        from .task import SURVIVAL_MODELS

        if self.bag not in BAGS:
            raise InvalidParameterError(f"unknown bag {self.bag!r}; use one of {', '.join(BAGS)}")
        if self.task == "survival" and self.survival_model not in SURVIVAL_MODELS:
            raise InvalidParameterError(
                f"unknown survival model {self.survival_model!r}; use one of {', '.join(SURVIVAL_MODELS)}"
            )
        if self.task == "survival" and self.survival_model == "discrete" and self.n_bins < 2:
            raise InvalidParameterError(
                f"n_bins must be >= 2 for the discrete survival model, got {self.n_bins}"
            )


@dataclass(frozen=True)
class _Plan:
    """What every rank derives from the configuration before training (the same on every rank)."""

    rows: list[SlideRow]
    class_names: list[str]
    in_dim: int
    batch_size: int
    run_config: dict[str, Any]  # run.json's "config": a rerun with another one refuses to resume
    splits: Splits
    world_size: int
    global_rank: int

    @property
    def rank0(self) -> bool:
        return self.global_rank == 0


# -- training ---------------------------------------------------------------------------------------


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
    bag: str = "slide",
) -> TrainResult:
    """Train one model per fold with patient-level cross-validation and report held-out metrics.

    The same arguments as one object: :class:`TrainConfig` and :func:`train_from_config`.

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
    bag : {"slide", "patient"}, default "slide"
        What one bag is: one slide's tiles with its label, or all of a patient's slides' tiles one after the
        other (manifest order) with the patient's label (:func:`~slidescope.mil._patients.patient_bags`; its
        slides must agree on the label). With ``"patient"`` the rows of ``oof_predictions.csv`` are patients
        (``slide``: their slides joined by ``;``) and :func:`score` needs ``patients=``.

    Returns
    -------
    TrainResult
        ``folds`` (per fold: status, best checkpoint, slide counts, epochs, metrics with CIs), ``pooled``
        and ``pooled_ci`` out-of-fold metrics (classification:
        :data:`slidescope.metrics.CLASSIFICATION_METRICS`, i.e. AUROC one-vs-rest and one-vs-one macro,
        balanced accuracy, F1 macro and weighted, Cohen's kappa unweighted and quadratic, accuracy; CIs:
        95% percentile bootstrap resampling patients),
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
    >>> run = ss.train("slides.csv", store="stores", encoder="uni", out="runs/abmil")  # doctest: +SKIP
    >>> print(run.summary())                                                                 # doctest: +SKIP
    >>> ss.score(run.checkpoints, ["stores"], out_csv="predictions.csv")                     # doctest: +SKIP

    ``examples/train_abmil_cv.py`` runs this offline on a synthetic cohort.
    """
    config = TrainConfig(
        manifest=manifest,
        store=store,
        encoder=encoder,
        out=Path(out),
        model=model,
        model_kwargs=model_kwargs,
        folds=folds,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        max_instances=max_instances,
        val_fraction=val_fraction,
        early_stopping_patience=early_stopping_patience,
        site_preserving=site_preserving,
        class_weighting=class_weighting,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
        num_workers=num_workers,
        resume=resume,
        bootstrap=bootstrap,
        callbacks=callbacks,
        progress=progress,
        task=task,
        label_column=label_column,
        survival_model=survival_model,
        time_column=time_column,
        event_column=event_column,
        n_bins=n_bins,
        bag=bag,
    )
    return train_from_config(config)


def train_from_config(config: TrainConfig) -> TrainResult:
    """:func:`train` with its arguments in a :class:`TrainConfig`: plan, then train or reuse each fold, then
    summarise. Under DDP only global rank 0 returns the :class:`TrainResult`; the other ranks return None."""
    plan = _plan(config)
    _prepare_out(config, plan)
    fold_results, oof = run_folds(config, plan)
    if not plan.rank0:
        return None  # type: ignore[return-value]
    return _summarise(config, plan, fold_results, oof)


def _run_config(
    cfg: TrainConfig, rows: list[SlideRow], *, batch_size: int, class_names: list[str], in_dim: int
) -> dict[str, Any]:
    """run.json's ``config`` (its key order is part of the file: keep it)."""

    def entry(r: SlideRow) -> list:
        return [r.key, r.label, r.patient, r.site] + ([r.time, r.event] if r.time is not None else [])

    config = {
        "slides": [entry(r) for r in rows],
        "encoder": cfg.encoder,
        "model": cfg.model,
        "model_kwargs": cfg.model_kwargs or {},
        "folds": cfg.folds,
        "seed": cfg.seed,
        "site_preserving": cfg.site_preserving,
        "max_instances": cfg.max_instances,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "batch_size": batch_size,
        "val_fraction": cfg.val_fraction,
        "class_weighting": cfg.class_weighting,
        "class_names": class_names,
        "in_dim": in_dim,
    }
    if cfg.bag != "slide":  # slide-bag runs keep the configuration of earlier versions
        config["bag"] = cfg.bag
    if cfg.task != "classification":  # classification runs keep the configuration of earlier versions
        config.update(task=cfg.task, label_column=cfg.label_column, class_weighting=False)
        if cfg.task == "survival":
            config.update(
                survival_model=cfg.survival_model,
                n_bins=cfg.n_bins if cfg.survival_model == "discrete" else None,
            )
    return config


def _plan(cfg: TrainConfig) -> _Plan:
    """Read the manifest, check the options, make the splits and learn this process's DDP rank."""
    from ..features.store import open_store, store_path

    cfg.check()
    batch_size = cfg.batch_size if cfg.batch_size is not None else 32 if cfg.cox else 8
    rows = read_manifest(
        cfg.manifest,
        store=cfg.store,
        encoder=cfg.encoder,
        task=cfg.task,
        label_column=cfg.label_column,
        time_column=cfg.time_column,
        event_column=cfg.event_column,
    )
    if cfg.bag == "patient":
        from ._patients import patient_bags

        rows = patient_bags(rows)
    class_names = sorted({r.label for r in rows}) if cfg.task == "classification" else []
    first = open_store(store_path(cfg.store, rows[0].slide), encoder=cfg.encoder)
    in_dim = int(first.encoder_attrs(cfg.encoder).get("embed_dim") or first.embeddings(cfg.encoder).shape[1])
    if cfg.folds < 2:
        raise InvalidParameterError(f"folds must be >= 2, got {cfg.folds}")
    run_config = _run_config(cfg, rows, batch_size=batch_size, class_names=class_names, in_dim=in_dim)
    # which rank this process is: known before any process is launched (Lightning's cluster environments)
    world_size, global_rank = resolve_world(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        progress=cfg.progress,
    )
    splits = make_splits(rows, folds=cfg.folds, seed=cfg.seed, site_preserving=cfg.site_preserving)
    return _Plan(
        rows=rows,
        class_names=class_names,
        in_dim=in_dim,
        batch_size=batch_size,
        run_config=run_config,
        splits=splits,
        world_size=world_size,
        global_rank=global_rank,
    )


def _prepare_out(cfg: TrainConfig, plan: _Plan) -> None:
    """Refuse to resume a run of another configuration; rank 0 writes run.json and splits.json."""
    out, run_json = cfg.out, cfg.out / "run.json"
    # every rank checks (and fails) alike: rank 0 replaces these files atomically and with the same content
    if cfg.resume and run_json.exists():
        old = json.loads(run_json.read_text()).get("config")
        config = plan.run_config
        if old != json.loads(json.dumps(config)):
            changed = sorted(k for k in config if (old or {}).get(k) != json.loads(json.dumps(config[k])))
            raise InvalidParameterError(
                f"{out} holds a run with another configuration (differs in: "
                f"{', '.join(changed) or 'format'}); use another --out or "
                f"resume=False"
            )
        if (out / "splits.json").exists() and Splits.load(out / "splits.json") != plan.splits:
            raise InvalidParameterError(
                f"{out}/splits.json differs from the splits of this manifest; use "
                f"another --out or resume=False"
            )
    if plan.rank0:  # the Lightning launcher starts the other ranks later, inside the first fit
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:
            for k in range(cfg.folds):
                shutil.rmtree(out / f"fold{k}", ignore_errors=True)
        from .. import __version__

        write_atomic(
            run_json,
            json.dumps(
                {
                    "config": plan.run_config,
                    "epochs": cfg.epochs,
                    "world_size": plan.world_size,
                    "slidescope_version": __version__,
                },
                indent=2,
            ),
        )
        plan.splits.save(out / "splits.json")


def _summarise(
    cfg: TrainConfig, plan: _Plan, fold_results: list[FoldResult], oof: list[dict[str, Any]]
) -> TrainResult:
    """Rank 0: the out-of-fold predictions, pooled metrics and ``results.csv``."""
    evaluation, out = EVALS[cfg.task], cfg.out
    oof_csv = out / "oof_predictions.csv"
    write_predictions_csv(oof_csv, oof, plan.class_names, fold=True, task=cfg.task)
    pooled = evaluation.compute(oof, plan.class_names)
    pooled_ci = evaluation.ci(oof, plan.class_names, cfg.bootstrap, cfg.seed)
    results_csv = out / "results.csv"
    write_results_csv(results_csv, evaluation.metrics, fold_results, pooled, pooled_ci, len(oof))
    return TrainResult(
        out=out,
        class_names=plan.class_names,
        folds=fold_results,
        pooled=pooled,
        pooled_ci=pooled_ci,
        oof_csv=oof_csv,
        results_csv=results_csv,
        splits=out / "splits.json",
        task=cfg.task,
    )
