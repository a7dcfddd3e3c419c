"""The per-fold steps of :func:`~slidescope.mil.train.train`: build each fold's data and task, fit it (or
resume it, or reuse it when done), write its best checkpoint, held-out predictions and ``done.json``.

Every rank runs :func:`run_folds` with the same configuration and plan; only global rank 0 writes and gets
the folds' results (see "Several devices and nodes" in :mod:`slidescope.mil.train`).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..training import ddp_strategy, end_processes, fit_weights_only, launched_processes, lightning_quiet
from ._evaluation import EVALS, predict_fold, read_predictions_csv, write_predictions_csv
from .data import BagDataModule

if TYPE_CHECKING:
    from .train import FoldResult, TrainConfig, _Plan

log = logging.getLogger("slidescope.mil.train")  # the messages of train(), under its logger as before


def run_folds(cfg: TrainConfig, plan: _Plan) -> tuple[list[FoldResult], list[dict[str, Any]]]:
    """Train (or resume, or reuse) every fold; rank 0 gets the folds' results and out-of-fold predictions."""
    fold_results: list[FoldResult] = []
    oof: list[dict[str, Any]] = []
    children: list = []  # rank 0 of a shell-launched DDP run: the rank processes Lightning started
    try:
        for k in range(cfg.folds):
            fdir = cfg.out / f"fold{k}"
            dm = _datamodule(cfg, plan, k)
            if _fold_done(cfg, fdir):
                if not plan.rank0:
                    continue
                preds, info, status = (
                    read_predictions_csv(fdir / "predictions.csv"),
                    _read_done(fdir),
                    "skipped",
                )
                log.info("fold %d: already done, reusing %s", k, fdir / "best.ckpt")
            else:
                trainer, ckpt_cb, status = _fit_fold(cfg, plan, k, dm)
                children = children or launched_processes(trainer)
                if trainer.interrupted:
                    raise KeyboardInterrupt(
                        f"training of fold {k} was interrupted; rerun to resume from {fdir / 'last.ckpt'}"
                    )
                if not plan.rank0:
                    trainer.strategy.barrier("slidescope.mil.train: fold written")
                    continue
                preds, info = _finish_fold(cfg, plan, fdir, dm, trainer, ckpt_cb)
                trainer.strategy.barrier("slidescope.mil.train: fold written")  # a no-op on one device
            fold_results.append(_fold_result(cfg, plan, k, status, dm, preds, info))
            oof.extend({**p, "fold": k} for p in preds)
    except BaseException:
        end_processes(children)  # the other ranks would wait in the next collective until its timeout
        raise
    return fold_results, oof


def _datamodule(cfg: TrainConfig, plan: _Plan, k: int) -> BagDataModule:
    dm = BagDataModule(
        plan.rows,
        splits=plan.splits,
        fold=k,
        store=cfg.store,
        encoder=cfg.encoder,
        class_names=plan.class_names,
        batch_size=plan.batch_size,
        max_instances=cfg.max_instances,
        val_fraction=cfg.val_fraction,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
        eval_batch_size=len(plan.rows) if cfg.cox else None,
    )
    dm.setup("fit")
    return dm


def _fold_done(cfg: TrainConfig, fdir: Path) -> bool:
    """Reuse the fold? The same answer on every rank: rank 0 deletes a fold folder only when it lacks
    last.ckpt and one of done.json, best.ckpt, predictions.csv, so that cannot change another rank's
    answer."""
    return (
        cfg.resume
        and (fdir / "done.json").exists()
        and (fdir / "best.ckpt").exists()
        and (fdir / "predictions.csv").exists()
    )


def _read_done(fdir: Path) -> dict[str, Any]:
    return json.loads((fdir / "done.json").read_text())


def _build_task(cfg: TrainConfig, plan: _Plan, dm: BagDataModule) -> Any:
    """The fold's ``MILTask``: the output head of the task from the fold's training data."""
    from .task import MILTask

    head: dict[str, Any] = {"task": cfg.task}
    num_classes = len(plan.class_names)
    if cfg.task == "regression":
        mean, std = dm.target_stats()
        head.update(target_mean=mean, target_std=std)
        num_classes = 1
    elif cfg.task == "survival":
        bins = dm.time_bins(cfg.n_bins) if cfg.survival_model == "discrete" else None
        head.update(survival_model=cfg.survival_model, time_bins=bins)
        num_classes = len(bins) + 1 if bins is not None else 1
    weights = dm.class_weights() if cfg.class_weighting and cfg.task == "classification" else None
    return MILTask(
        aggregator=cfg.model,
        aggregator_kwargs=cfg.model_kwargs or {},
        in_dim=plan.in_dim,
        num_classes=num_classes,
        class_names=plan.class_names,
        encoder=cfg.encoder,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        epochs=cfg.epochs,
        class_weights=weights,
        bag=cfg.bag,
        **head,
    )


def _fit_fold(cfg: TrainConfig, plan: _Plan, k: int, dm: BagDataModule) -> tuple[Any, Any, str]:
    """Fit fold ``k`` from scratch or from its ``last.ckpt``.

    Returns ``(trainer, best-checkpoint callback, status)``, status ``"trained"`` or ``"resumed"``.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from .task import check_resume_checkpoint

    fdir = cfg.out / f"fold{k}"
    last = fdir / "last.ckpt"
    ckpt_path = str(last) if cfg.resume and last.exists() else None
    if ckpt_path is not None:  # weights_only: a planted pickle never runs; a damaged one says what to do
        check_resume_checkpoint(last, fold=k)
    if plan.rank0:
        if ckpt_path is None and fdir.exists():
            shutil.rmtree(fdir)
        fdir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed + k, workers=True, verbose=False)
    lit = _build_task(cfg, plan, dm)
    ckpt_cb = ModelCheckpoint(
        dirpath=str(fdir),
        filename="best",
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    # every epoch, whether or not it improved (lightning >= 2.6 writes save_last only with a new best)
    last_cb = ModelCheckpoint(
        dirpath=str(fdir), filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    stop_cb = EarlyStopping(monitor="val/loss", mode="min", patience=cfg.early_stopping_patience)
    # DDP: find_unused_parameters where the aggregator's auxiliary loss leaves label-dependent branches out
    # of some steps (CLAM, DTFD, ACMIL...)
    strategy = ddp_strategy(
        cfg.strategy, plan.world_size, find_unused_parameters=bool(getattr(lit.model, "has_aux_loss", True))
    )
    with lightning_quiet(cfg.progress):
        trainer = L.Trainer(
            max_epochs=cfg.epochs,
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            strategy=strategy,
            precision=cfg.precision,
            logger=CSVLogger(str(fdir), name="logs"),
            callbacks=[ckpt_cb, last_cb, stop_cb, *(cfg.callbacks or [])],
            enable_progress_bar=cfg.progress,
            enable_model_summary=False,
            log_every_n_steps=1,
            deterministic=True,
            num_sanity_val_steps=0,
            default_root_dir=str(fdir),
            # BagDataModule shards the training bags itself; every rank validates on all bags
            use_distributed_sampler=False,
        )
        trainer.fit(lit, datamodule=dm, ckpt_path=ckpt_path, **fit_weights_only(trainer))
    return trainer, ckpt_cb, "resumed" if ckpt_path else "trained"


def _finish_fold(
    cfg: TrainConfig, plan: _Plan, fdir: Path, dm: BagDataModule, trainer: Any, ckpt_cb: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rank 0: ``best.ckpt`` in place, the held-out predictions, then ``done.json`` (written last)."""
    from .task import load_task

    best = Path(ckpt_cb.best_model_path) if ckpt_cb.best_model_path else fdir / "best.ckpt"
    if best.resolve() != (fdir / "best.ckpt").resolve():  # Lightning may report a relative path
        shutil.copyfile(best, fdir / "best.ckpt")
    # on the training device: under DDP the other ranks wait for this at the barrier after the fold
    best_task = load_task(fdir / "best.ckpt", encoder=cfg.encoder, embed_dim=plan.in_dim)
    preds = predict_fold(best_task.to(trainer.strategy.root_device), dm)
    write_predictions_csv(fdir / "predictions.csv", preds, plan.class_names, task=cfg.task)
    info = {
        "epochs": int(trainer.current_epoch),
        "best_val_loss": float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None else None,
        "n_train": len(dm.train_rows),
        "n_val": len(dm.val_rows),
        "n_test": len(dm.test_rows),
    }
    (fdir / "done.json").write_text(json.dumps(info, indent=2))
    return preds, info


def _fold_result(
    cfg: TrainConfig,
    plan: _Plan,
    k: int,
    status: str,
    dm: BagDataModule,
    preds: list[dict[str, Any]],
    info: dict[str, Any],
) -> FoldResult:
    from .train import FoldResult

    evaluation = EVALS[cfg.task]
    return FoldResult(
        fold=k,
        status=status,
        best_checkpoint=cfg.out / f"fold{k}" / "best.ckpt",
        n_train=info.get("n_train", len(dm.train_rows)),
        n_val=info.get("n_val", len(dm.val_rows)),
        n_test=len(preds),
        epochs=int(info.get("epochs", 0)),
        metrics=evaluation.compute(preds, plan.class_names),
        ci=evaluation.ci(preds, plan.class_names, cfg.bootstrap, cfg.seed),
    )
