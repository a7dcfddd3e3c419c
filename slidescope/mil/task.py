"""``MILTask``: the LightningModule around a registered MIL aggregator (slide classification).

The aggregator ``nn.Module`` is built **inside** ``__init__`` from its registry name and kwargs,
so a checkpoint holds only primitives (plus ``slidescope_version``, ``embed_dim`` and
``checkpoint_schema``) and rebuilds itself with :func:`load_task`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torchmetrics.classification import MulticlassAUROC, MulticlassCohenKappa, MulticlassF1Score, MulticlassRecall

from ..errors import SlidescopeError

log = logging.getLogger(__name__)

__all__ = ["MILTask", "load_task", "CheckpointError", "EncoderMismatchError", "CHECKPOINT_SCHEMA"]

#: bumped when the checkpoint layout changes; newer checkpoints are refused
CHECKPOINT_SCHEMA = 1


class CheckpointError(SlidescopeError):
    """A MIL checkpoint cannot be used (unreadable, newer schema, missing hyperparameters)."""


class EncoderMismatchError(CheckpointError):
    """The checkpoint was trained on embeddings of another encoder or size than the ones given."""


def _create_aggregator(name: str, **kwargs: Any) -> torch.nn.Module:
    """Indirection over the aggregator registry (imported on use)."""
    from .aggregators import create_aggregator

    return create_aggregator(name, **kwargs)


def _version() -> str:
    from .. import __version__

    return __version__


def _metrics(num_classes: int, prefix: str) -> torchmetrics.MetricCollection:
    return torchmetrics.MetricCollection({
        "auroc": MulticlassAUROC(num_classes=num_classes, average="macro"),
        "balanced_accuracy": MulticlassRecall(num_classes=num_classes, average="macro"),
        "f1": MulticlassF1Score(num_classes=num_classes, average="macro"),
        "kappa": MulticlassCohenKappa(num_classes=num_classes),
    }, prefix=prefix)


class MILTask(L.LightningModule):
    """Slide classification with a MIL aggregator.

    Parameters
    ----------
    aggregator : registry name (``"abmil"``, ``"mean"``, ``"clam-sb"``...).
    aggregator_kwargs : extra constructor arguments of the aggregator (JSON-like primitives).
    in_dim : embedding size D of the encoder.
    num_classes, class_names : the classes, in logit order.
    encoder : name of the encoder whose embeddings this model reads (checked on load).
    lr, weight_decay : AdamW.
    epochs : length of the cosine schedule.
    class_weights : cross-entropy weights per class (None: unweighted).

    Batches are ``{"features": (B, N, D), "mask": (B, N) bool, "labels": (B,)}``. The loss is
    ``aggregator.task_loss_weight`` x the weighted cross-entropy plus the aggregator's ``aux_loss``
    (already weighted). Logged keys:
    ``train/loss``, ``val/loss``, ``val/auroc``, ``val/balanced_accuracy``, ``val/f1``,
    ``val/kappa`` (and ``train/...``, ``test/...``).
    """

    def __init__(self, aggregator: str, aggregator_kwargs: dict[str, Any] | None, in_dim: int, num_classes: int,
                 class_names: list[str], encoder: str, lr: float = 1e-4, weight_decay: float = 1e-2,
                 epochs: int = 20, class_weights: list[float] | None = None) -> None:
        super().__init__()
        aggregator_kwargs = dict(aggregator_kwargs or {})
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise CheckpointError(f"{len(class_names)} class names for {num_classes} classes")
        self.save_hyperparameters(logger=False)
        self.hparams.update(slidescope_version=_version(), embed_dim=int(in_dim), checkpoint_schema=CHECKPOINT_SCHEMA)
        self.model = _create_aggregator(aggregator, in_dim=in_dim, num_classes=num_classes, **aggregator_kwargs)
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weight", weight, persistent=False)
        self.train_metrics = _metrics(num_classes, "train/")
        self.val_metrics = _metrics(num_classes, "val/")
        self.test_metrics = _metrics(num_classes, "test/")

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        """``features (B, N, D)``, ``mask (B, N)`` -> the aggregator's output (``logits (B, C)``, ``scores (B, N)``)."""
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return self.model(features, mask, labels=labels)

    def model_step(self, batch: dict[str, torch.Tensor], *, train: bool):
        labels = batch["labels"]
        out = self(batch["features"], batch["mask"], labels=labels if train else None)
        loss = F.cross_entropy(out.logits.float(), labels, weight=self.class_weight)
        loss = float(getattr(self.model, "task_loss_weight", 1.0)) * loss
        if train and getattr(out, "aux_loss", None) is not None:
            loss = loss + out.aux_loss
        return loss, out.logits.float().softmax(-1), labels

    def _stage(self, batch, stage: str, metrics: torchmetrics.MetricCollection):
        loss, probs, labels = self.model_step(batch, train=stage == "train")
        metrics.update(probs, labels)
        bs = int(labels.shape[0])
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=bs)
        return loss

    def training_step(self, batch, batch_idx):
        return self._stage(batch, "train", self.train_metrics)

    def validation_step(self, batch, batch_idx):
        return self._stage(batch, "val", self.val_metrics)

    def test_step(self, batch, batch_idx):
        return self._stage(batch, "test", self.test_metrics)

    def predict_step(self, batch, batch_idx):
        out = self(batch["features"], batch["mask"])
        return {"index": batch["index"], "probs": out.logits.float().softmax(-1),
                "scores": out.scores.float().masked_fill(~batch["mask"], 0.0)}

    def _log_metrics(self, metrics: torchmetrics.MetricCollection) -> None:
        self.log_dict(metrics.compute())
        metrics.reset()

    def on_train_start(self) -> None:
        self.val_metrics.reset()  # drop what the sanity check accumulated

    def on_train_epoch_end(self) -> None:
        self._log_metrics(self.train_metrics)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_metrics(self.val_metrics)
        else:
            self.val_metrics.reset()

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(self.hparams.epochs)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # -- convenience ------------------------------------------------------------------------------
    @property
    def encoder_name(self) -> str:
        return str(self.hparams.encoder)

    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.class_names)

    @torch.no_grad()
    def predict_bag(self, embeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """One slide's ``(N, D)`` embeddings -> ``(probs (C,), scores (N,))`` on the CPU, in eval mode."""
        was = self.training
        self.eval()
        x = torch.as_tensor(embeddings, dtype=torch.float32, device=self.device)[None]
        out = self(x)
        self.train(was)
        return out.logits.float().softmax(-1)[0].cpu(), out.scores.float()[0].cpu()


_INIT_KEYS = ("aggregator", "aggregator_kwargs", "in_dim", "num_classes", "class_names", "encoder", "lr",
              "weight_decay", "epochs", "class_weights")


def load_task(ckpt: str | os.PathLike[str], *, encoder: str | None = None, embed_dim: int | None = None,
              map_location: str | torch.device = "cpu") -> MILTask:
    """Rebuild a :class:`MILTask` from its checkpoint (eval mode).

    ``encoder`` / ``embed_dim``: what the embeddings to be scored are; a checkpoint trained on
    another encoder or size raises :class:`EncoderMismatchError`.
    """
    path = Path(ckpt)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise CheckpointError(f"{path} is not a readable checkpoint ({err})") from err
    hp = dict(data.get("hyper_parameters") or {})
    missing = [k for k in ("aggregator", "in_dim", "num_classes", "class_names", "encoder") if k not in hp]
    if missing:
        raise CheckpointError(f"{path.name} is not a slidescope MIL checkpoint (no {', '.join(missing)} in its "
                              f"hyperparameters)")
    schema = int(hp.get("checkpoint_schema", 1))
    if schema > CHECKPOINT_SCHEMA:
        raise CheckpointError(f"{path.name} has checkpoint schema {schema} (slidescope "
                              f"{hp.get('slidescope_version')}); this slidescope reads up to {CHECKPOINT_SCHEMA}. "
                              f"Upgrade slidescope.")
    trained_enc, trained_dim = str(hp["encoder"]), int(hp.get("embed_dim", hp["in_dim"]))
    if (encoder is not None and encoder != trained_enc) or (embed_dim is not None and int(embed_dim) != trained_dim):
        have_enc = encoder if encoder is not None else trained_enc
        have_dim = f"{embed_dim}-d" if embed_dim is not None else "?-d"
        raise EncoderMismatchError(
            f"{path.name} was trained on {trained_enc!r} {trained_dim}-d embeddings; these are {have_enc!r} "
            f"{have_dim}: extract with --encoder {trained_enc}")
    task = MILTask(**{k: hp[k] for k in _INIT_KEYS if k in hp})
    task.load_state_dict(data["state_dict"])
    task.eval()
    return task
