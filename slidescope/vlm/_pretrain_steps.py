"""The steps of :func:`~slidescope.vlm.pretrain.pretrain`: the text tower, the Trainer, the fit, and the files
rank 0 writes (``splits.json``, ``metrics.json``)."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L

from ..errors import InvalidParameterError
from ..training import end_processes, launched_processes, lightning_quiet, write_atomic
from ._pretrain_data import ReportDataModule, ReportRow
from .text import HFTextTower, SmallTextTower, TextTower

if TYPE_CHECKING:
    from .pretrain import SlideTextTask, _SaveBest


def _text_tower(
    text: str | os.PathLike[str] | TextTower, reports: list[str], *, text_width: int, text_depth: int
) -> TextTower:
    if isinstance(text, TextTower):
        return text
    if str(text) == "small":
        return SmallTextTower.from_texts(
            reports,
            vocab_size=8000,
            width=text_width,
            depth=text_depth,
            heads=4,
            max_length=128,
            pooling="mean",
            dropout=0.1,
        )
    path = Path(text)
    if not path.is_dir():
        raise InvalidParameterError(
            f"text={text!r}: use 'small' (trained from scratch on the reports), a folder "
            "with a Hugging Face encoder, or a TextTower"
        )
    return HFTextTower.from_pretrained(path)


def _write_splits(out: Path, train_rows: list[ReportRow], val_rows: list[ReportRow]) -> None:
    """Rank 0: ``out/splits.json`` (atomically), the training and validation patients and slides."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(
        out / "splits.json",
        json.dumps(
            {
                "train_patients": sorted({r.patient for r in train_rows}),
                "val_patients": sorted({r.patient for r in val_rows}),
                "train_slides": [r.key for r in train_rows],
                "val_slides": [r.key for r in val_rows],
            },
            indent=2,
        ),
    )


def _trainer(
    out: Path,
    saver: _SaveBest,
    *,
    epochs: int,
    early_stopping_patience: int | None,
    accelerator: str,
    devices: int | str,
    num_nodes: int,
    strategy: Any,
    precision: str | None,
    progress: bool,
) -> L.Trainer:
    """The Trainer of :func:`pretrain`: ``saver`` (and early stopping on ``val/loss``), no Lightning logger
    or checkpoints (the artefact is the saved model)."""
    callbacks: list[L.Callback] = [saver]
    if early_stopping_patience is not None:
        from lightning.pytorch.callbacks import EarlyStopping

        callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=early_stopping_patience))
    with lightning_quiet(progress):
        return L.Trainer(
            max_epochs=epochs,
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            precision=precision,
            logger=False,
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            deterministic=True,
            default_root_dir=str(out),
            # ReportDataModule shards the training pairs itself; every rank validates on all
            use_distributed_sampler=False,
        )


def _fit(trainer: L.Trainer, task: SlideTextTask, dm: ReportDataModule, *, progress: bool) -> None:
    with lightning_quiet(progress):
        # one optimisation step per epoch on small cohorts is expected
        warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
        # Lightning's all_gather (DDP) still calls it; torch >= 2.10 deprecates it
        warnings.filterwarnings(
            "ignore",
            message=r".*distributed\.nn\.functional\.all_gather is deprecated.*",
            category=FutureWarning,
        )
        trainer.fit(task, datamodule=dm)


def _write_metrics(
    path: Path,
    saver: _SaveBest,
    trainer: L.Trainer,
    *,
    metrics: dict[str, float],
    seconds: float,
    world_size: int,
    config: dict[str, Any],
) -> None:
    """Rank 0: ``metrics.json`` (atomically), the best validation metrics, epochs, time and configuration."""
    from .. import __version__

    write_atomic(
        path,
        json.dumps(
            {
                "metrics": metrics,
                "best_epoch": saver.best_epoch,
                "epochs": int(trainer.current_epoch),
                "seconds": seconds,
                "world_size": world_size,
                "config": config,
                "slidescope_version": __version__,
            },
            indent=2,
        ),
    )


def fit_and_write(
    trainer: L.Trainer,
    task: SlideTextTask,
    dm: ReportDataModule,
    saver: _SaveBest,
    *,
    out: Path,
    rank0: bool,
    world_size: int,
    config: dict[str, Any],
    t0: float,
    progress: bool,
) -> tuple[dict[str, float], float]:
    """Fit, then rank 0 writes ``metrics.json`` (``config`` its configuration) and every rank waits for it.

    Returns the best validation metrics and the seconds since ``t0``. On any error or interruption the rank
    processes this one started are ended (they would wait in the next collective until its timeout).
    """
    try:
        _fit(trainer, task, dm, progress=progress)
        if trainer.interrupted:
            raise KeyboardInterrupt("pretraining was interrupted")
        seconds = time.perf_counter() - t0
        metrics = {k: float(v) for k, v in saver.best_metrics.items()}
        if rank0:
            _write_metrics(
                out / "metrics.json",
                saver,
                trainer,
                metrics=metrics,
                seconds=seconds,
                world_size=world_size,
                config=config,
            )
        # the other ranks return once rank 0 has written (a no-op on one device)
        trainer.strategy.barrier("slidescope.vlm.pretrain: written")
    except BaseException:
        # the other ranks would wait in the next collective until its timeout: end the ones this process started
        end_processes(launched_processes(trainer))
        raise
    return metrics, seconds
