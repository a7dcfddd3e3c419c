"""``MILTask``: the LightningModule around a registered MIL aggregator.

Tasks (``task=``): ``"classification"`` (cross-entropy), ``"regression"`` (MSE on targets
standardised with the training fold's mean and std, stored in the hparams so predictions come back
in original units) and ``"survival"`` with ``survival_model="cox"`` (one risk score, Cox partial
likelihood with Breslow ties over the batch: see :func:`cox_loss`) or ``"discrete"`` (one hazard
logit per time bin, the censored discrete-time likelihood: see :func:`discrete_time_nll`).
Aggregators whose auxiliary loss needs a class label (CLAM, DSMIL...) get no labels outside
classification, so their auxiliary term is skipped there.

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
from torchmetrics.classification import (
    MulticlassAUROC,
    MulticlassCohenKappa,
    MulticlassF1Score,
    MulticlassRecall,
)

from ..errors import SlidescopeError

log = logging.getLogger(__name__)

__all__ = [
    "MILTask",
    "load_task",
    "check_resume_checkpoint",
    "CheckpointError",
    "EncoderMismatchError",
    "CHECKPOINT_SCHEMA",
    "cox_loss",
    "discrete_time_nll",
    "SURVIVAL_MODELS",
]

#: survival heads of ``MILTask(task="survival", survival_model=...)``
SURVIVAL_MODELS = ("cox", "discrete")

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
    # logged during training only (val/auroc drives nothing but the logs); every reported number comes from
    # slidescope.metrics on the held-out predictions (see train.py)
    return torchmetrics.MetricCollection(
        {
            "auroc": MulticlassAUROC(num_classes=num_classes, average="macro"),
            "balanced_accuracy": MulticlassRecall(num_classes=num_classes, average="macro"),
            "f1": MulticlassF1Score(num_classes=num_classes, average="macro"),
            "kappa": MulticlassCohenKappa(num_classes=num_classes),
        },
        prefix=prefix,
    )


# -- losses -----------------------------------------------------------------------------------------


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood of a batch, Breslow ties, averaged over its events.

    ``loss = -1/E * sum_{i: event_i} [risk_i - log sum_{j: time_j >= time_i} exp(risk_j)]``

    Parameters
    ----------
    risk : (B,) log hazard ratios (higher = earlier event).
    time : (B,) follow-up times.
    event : (B,) 1 = event, 0 = censored.

    Returns
    -------
    Tensor of shape (): 0 (with a gradient path) when the batch has no event. The risk set is the
    batch, so the loss depends on the batch size: larger batches approximate the cohort likelihood.
    """
    risk = risk.float().reshape(-1)
    time = time.to(risk.device).float().reshape(-1)
    ev = event.to(risk.device).float().reshape(-1)
    at_risk = time[None, :] >= time[:, None]  # (i, j): j is in the risk set of i
    log_denominator = torch.logsumexp(risk[None, :].masked_fill(~at_risk, float("-inf")), dim=1)
    n_events = ev.sum()
    if n_events == 0:
        return risk.sum() * 0.0
    return -((risk - log_denominator) * ev).sum() / n_events


def discrete_time_nll(
    logits: torch.Tensor, bins: torch.Tensor, event: torch.Tensor, *, alpha: float = 0.0
) -> torch.Tensor:
    """Negative log-likelihood of the discrete-time hazard model with censoring (mean over the batch).

    Zadeh & Schmid (2021), as ``NLLSurvLoss`` of PORPOISE (Chen et al. 2022): hazards
    ``h_k = sigmoid(logits_k)``, survival ``S_k = prod_{m <= k} (1 - h_m)``, ``S_{-1} = 1``.
    An event in bin ``y`` contributes ``-log S_{y-1} - log h_y``; a slide censored in bin ``y``
    contributes ``-log S_y`` (it survived bin ``y``). ``alpha`` up-weights the uncensored term:
    ``(1 - alpha) * (uncensored + censored) + alpha * uncensored``.

    Parameters
    ----------
    logits : (B, K) hazard logits of the K time bins.
    bins : (B,) long, the bin of each slide's time.
    event : (B,) 1 = event, 0 = censored.
    """
    logits = logits.float()
    bins = bins.to(logits.device).long().reshape(-1, 1)
    ev = event.to(logits.device).float().reshape(-1)
    log_h = F.logsigmoid(logits)
    log_s = torch.cumsum(F.logsigmoid(-logits), dim=1)  # log S_k
    log_s_pad = torch.cat([torch.zeros_like(log_s[:, :1]), log_s], dim=1)  # log S_{k-1} at k
    uncensored = -ev * (log_s_pad.gather(1, bins).squeeze(1) + log_h.gather(1, bins).squeeze(1))
    censored = -(1.0 - ev) * log_s_pad.gather(1, bins + 1).squeeze(1)
    return ((1.0 - alpha) * (uncensored + censored) + alpha * uncensored).mean()


# -- task heads: what turns logits into a loss, metrics and a prediction ----------------------------


class _Head:
    """Task-specific part of :class:`MILTask`; ``hp`` are its hyperparameters."""

    def __init__(self, hp: Any) -> None:
        self.hp = hp

    def num_outputs(self) -> int:
        return int(self.hp.num_classes)

    def metrics(self, prefix: str) -> torchmetrics.MetricCollection:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], class_weight) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` logits -> ``(B, C')`` predictions (probabilities, original units or risk)."""
        raise NotImplementedError

    def update(self, metrics, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def labels(self, batch):
        """Labels passed to the aggregator (only classification has class indices)."""
        return None


class _Classification(_Head):
    def metrics(self, prefix):
        return _metrics(self.num_outputs(), prefix)

    def loss(self, logits, batch, class_weight):
        return F.cross_entropy(logits.float(), batch["labels"], weight=class_weight)

    def predict(self, logits):
        return logits.float().softmax(-1)

    def update(self, metrics, logits, batch):
        metrics.update(self.predict(logits), batch["labels"])

    def labels(self, batch):
        return batch["labels"]


class _Regression(_Head):
    def num_outputs(self):
        return 1

    def metrics(self, prefix):
        return torchmetrics.MetricCollection(
            {"mae": torchmetrics.MeanAbsoluteError(), "mse": torchmetrics.MeanSquaredError()}, prefix=prefix
        )

    def loss(self, logits, batch, class_weight):
        z = (batch["targets"].to(logits.device) - float(self.hp.target_mean)) / float(self.hp.target_std)
        return F.mse_loss(logits.float()[:, 0], z)

    def predict(self, logits):
        return logits.float() * float(self.hp.target_std) + float(self.hp.target_mean)

    def update(self, metrics, logits, batch):
        metrics.update(self.predict(logits)[:, 0], batch["targets"].to(logits.device))


class _ConcordanceIndex(torchmetrics.Metric):
    """Harrell's C over an epoch (gathers risk, time and event; see ``slidescope.mil.train.concordance_index``)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("risk", default=[], dist_reduce_fx="cat")
        self.add_state("time", default=[], dist_reduce_fx="cat")
        self.add_state("event", default=[], dist_reduce_fx="cat")

    def update(self, risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> None:
        self.risk.append(risk.detach().float().reshape(-1))
        self.time.append(time.detach().float().reshape(-1))
        self.event.append(event.detach().long().reshape(-1))

    def compute(self) -> torch.Tensor:
        from torchmetrics.utilities import dim_zero_cat

        from ..metrics import concordance_index

        if not len(self.risk):
            return torch.tensor(float("nan"))
        t, r, e = (dim_zero_cat(x).cpu().numpy() for x in (self.time, self.risk, self.event))
        return torch.tensor(concordance_index(t, r, e), dtype=torch.float32)


class _Survival(_Head):
    def metrics(self, prefix):
        return torchmetrics.MetricCollection({"c_index": _ConcordanceIndex()}, prefix=prefix)

    def update(self, metrics, logits, batch):
        metrics.update(self.predict(logits)[:, 0], batch["times"], batch["events"])


class _Cox(_Survival):
    def num_outputs(self):
        return 1

    def loss(self, logits, batch, class_weight):
        return cox_loss(logits[:, 0], batch["times"], batch["events"])

    def predict(self, logits):
        return logits.float()[:, :1]


class _Discrete(_Survival):
    def num_outputs(self):
        return len(self.hp.time_bins) + 1

    def loss(self, logits, batch, class_weight):
        cuts = torch.tensor(list(self.hp.time_bins), dtype=torch.float32, device=logits.device)
        bins = torch.searchsorted(cuts, batch["times"].to(logits.device).float().contiguous(), right=True)
        return discrete_time_nll(logits, bins, batch["events"])

    def predict(self, logits):
        """Risk = minus the sum over bins of the survival function (B, 1)."""
        return -torch.cumprod(torch.sigmoid(-logits.float()), dim=1).sum(1, keepdim=True)


_HEADS: dict[str, type[_Head]] = {
    "classification": _Classification,
    "regression": _Regression,
    "survival/cox": _Cox,
    "survival/discrete": _Discrete,
}


def _head_name(task: str, survival_model: str) -> str:
    name = f"survival/{survival_model}" if task == "survival" else task
    if name not in _HEADS:
        raise CheckpointError(
            f"unknown task {task!r} (survival model {survival_model!r}); tasks: classification, "
            f"regression, survival with survival_model one of {', '.join(SURVIVAL_MODELS)}"
        )
    return name


class MILTask(L.LightningModule):
    """Slide classification, regression or survival with a MIL aggregator.

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
    task : ``"classification"``, ``"regression"`` or ``"survival"``.
    target_mean, target_std : regression: the training fold's target statistics (the model predicts
        ``(y - mean) / std``; :meth:`predict_bag` returns original units).
    survival_model : ``"cox"`` (num_classes 1) or ``"discrete"`` (num_classes = ``len(time_bins) + 1``).
    time_bins : discrete survival: the inner cut points of the time bins (training-fold quantiles).
    bag : what one bag was in training: ``"slide"`` or ``"patient"`` (``train(..., bag=)``); :func:`score`
        checks it against how it is asked to score. None: not recorded (checkpoints before it was).

    Under DDP every logged value is synchronised across ranks (losses: bag-weighted means over all
    ranks; metrics: torchmetrics gathers every rank's states).

    Batches are ``{"features": (B, N, D), "mask": (B, N) bool, "labels": (B,)}``. The loss is
    ``aggregator.task_loss_weight`` x the aggregator's class-weighted ``task_loss`` (cross-entropy, or its
    paper's criterion: DSMIL's binary cross-entropy) plus its ``aux_loss`` (already weighted); before each
    optimiser step the aggregator's own gradient clipping runs (``clip_gradients_``: DTFD-MIL's). Logged keys:
    ``train/loss``, ``val/loss``, ``val/auroc``, ``val/balanced_accuracy``, ``val/f1``,
    ``val/kappa`` (and ``train/...``, ``test/...``); regression ``val/mae``, ``val/mse``; survival
    ``val/c_index``.
    """

    def __init__(
        self,
        aggregator: str,
        aggregator_kwargs: dict[str, Any] | None,
        in_dim: int,
        num_classes: int,
        class_names: list[str],
        encoder: str,
        lr: float = 1e-4,
        weight_decay: float = 1e-2,
        epochs: int = 20,
        class_weights: list[float] | None = None,
        task: str = "classification",
        target_mean: float = 0.0,
        target_std: float = 1.0,
        survival_model: str = "cox",
        time_bins: list[float] | None = None,
        bag: str | None = None,
    ) -> None:
        super().__init__()
        aggregator_kwargs = dict(aggregator_kwargs or {})
        class_names = [str(c) for c in class_names]
        time_bins = [float(t) for t in time_bins] if time_bins is not None else None
        target_mean, target_std = float(target_mean), float(target_std)
        head = _head_name(task, survival_model)
        if task == "classification" and len(class_names) != num_classes:
            raise CheckpointError(f"{len(class_names)} class names for {num_classes} classes")
        if head == "survival/discrete" and time_bins is None:
            raise CheckpointError(
                "survival_model='discrete' needs time_bins (the inner cut points of the bins)"
            )
        self.save_hyperparameters(logger=False)
        self.hparams.update(
            slidescope_version=_version(), embed_dim=int(in_dim), checkpoint_schema=CHECKPOINT_SCHEMA
        )
        self.head = _HEADS[head](self.hparams)
        if self.head.num_outputs() != num_classes:
            raise CheckpointError(
                f"task {head} needs num_classes={self.head.num_outputs()}, got {num_classes}"
            )
        self.model = _create_aggregator(
            aggregator, in_dim=in_dim, num_classes=num_classes, **aggregator_kwargs
        )
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weight", weight, persistent=False)
        self.train_metrics = self.head.metrics("train/")
        self.val_metrics = self.head.metrics("val/")
        self.test_metrics = self.head.metrics("test/")

    # -- forward ----------------------------------------------------------------------------------
    def forward(
        self, features: torch.Tensor, mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ):
        """``features (B, N, D)``, ``mask (B, N)`` -> the aggregator's output (``logits (B, C)``, ``scores (B, N)``)."""
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return self.model(features, mask, labels=labels)

    def model_step(self, batch: dict[str, torch.Tensor], *, train: bool):
        labels = self.head.labels(batch)
        out = self(batch["features"], batch["mask"], labels=labels if train else None)
        if isinstance(self.head, _Classification) and hasattr(self.model, "task_loss"):
            # the aggregator's own criterion (cross-entropy unless its paper uses another, e.g. DSMIL's BCE)
            loss = self.model.task_loss(out.logits, batch["labels"], self.class_weight)
        else:
            loss = self.head.loss(out.logits, batch, self.class_weight)
        loss = float(getattr(self.model, "task_loss_weight", 1.0)) * loss
        if train and getattr(out, "aux_loss", None) is not None:
            loss = loss + out.aux_loss
        return loss, out.logits

    def _stage(self, batch, stage: str, metrics: torchmetrics.MetricCollection):
        loss, logits = self.model_step(batch, train=stage == "train")
        self.head.update(metrics, logits.detach(), batch)
        bs = int(batch["features"].shape[0])
        # sync_dist: under DDP the epoch value is the bag-weighted mean over every rank's batches, identical
        # on all ranks, so EarlyStopping and ModelCheckpoint take the same decision everywhere
        self.log(
            f"{stage}/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=stage != "test",
            batch_size=bs,
            sync_dist=True,
        )
        return loss

    def training_step(self, batch, batch_idx):
        return self._stage(batch, "train", self.train_metrics)

    def validation_step(self, batch, batch_idx):
        return self._stage(batch, "val", self.val_metrics)

    def test_step(self, batch, batch_idx):
        return self._stage(batch, "test", self.test_metrics)

    def predict_step(self, batch, batch_idx):
        out = self(batch["features"], batch["mask"])
        return {
            "index": batch["index"],
            "probs": self.head.predict(out.logits),
            "scores": out.scores.float().masked_fill(~batch["mask"], 0.0),
        }

    def _log_metrics(self, metrics: torchmetrics.MetricCollection) -> None:
        # compute() already gathers the states of every rank; sync_dist keeps the logged values equal on all ranks
        self.log_dict(metrics.compute(), sync_dist=True)
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

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """The aggregator's published clipping (e.g. DTFD-MIL's per-module norm 5), then the Trainer's own."""
        clip = getattr(self.model, "clip_gradients_", None)
        if clip is not None:
            clip()
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

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

    @property
    def task(self) -> str:
        """``"classification"``, ``"regression"`` or ``"survival"``."""
        return str(self.hparams.get("task", "classification"))

    @property
    def bag(self) -> str | None:
        """What one bag was in training (``"slide"``, ``"patient"``), None where the checkpoint predates
        its record."""
        bag = self.hparams.get("bag")
        return None if bag is None else str(bag)

    @torch.no_grad()
    def predict_bag(self, embeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """One slide's ``(N, D)`` embeddings -> ``(prediction, scores (N,))`` on the CPU, in eval mode.

        ``prediction`` is ``probs (C,)`` for classification, ``(1,)`` the target in original units for
        regression, ``(1,)`` the risk (higher = earlier event) for survival.
        """
        was = self.training
        self.eval()
        x = torch.as_tensor(embeddings, dtype=torch.float32, device=self.device)[None]
        out = self(x)
        self.train(was)
        return self.head.predict(out.logits)[0].cpu(), out.scores.float()[0].cpu()


def check_resume_checkpoint(path: str | os.PathLike[str], *, fold: int | None = None) -> None:
    """Check that a training checkpoint (a fold's ``last.ckpt``) loads with ``torch.load(weights_only=True)``
    before Lightning resumes from it (which is also asked for ``weights_only=True``).

    A planted pickle is refused without running any of it; a truncated or damaged file raises
    :class:`CheckpointError` naming the file and saying to delete it (the fold then restarts from scratch).
    """
    p = Path(path)
    where = f"fold {fold}: " if fold is not None else ""
    fix = (
        f"Delete {p} to restart {'this fold' if fold is not None else 'training'} from scratch (or train "
        f"with --no-resume / resume=False)."
    )
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a bad or unsafe file
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{where}the resume checkpoint {p} cannot be loaded safely (torch.load with "
            f"weights_only=True: {detail}). {fix}"
        ) from err
    if not isinstance(data, dict) or "state_dict" not in data:
        raise CheckpointError(f"{where}{p} is not a Lightning training checkpoint (no state_dict). {fix}")


_INIT_KEYS = (
    "aggregator",
    "aggregator_kwargs",
    "in_dim",
    "num_classes",
    "class_names",
    "encoder",
    "lr",
    "weight_decay",
    "epochs",
    "class_weights",
    "task",
    "target_mean",
    "target_std",
    "survival_model",
    "time_bins",
    "bag",
)


def load_task(
    ckpt: str | os.PathLike[str],
    *,
    encoder: str | None = None,
    embed_dim: int | None = None,
    map_location: str | torch.device = "cpu",
) -> MILTask:
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
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({err}); replace it with the best.ckpt "
            f"of a training run (slidescope train --out RUN writes RUN/fold<k>/best.ckpt)"
        ) from err
    hp = dict(data.get("hyper_parameters") or {})
    missing = [k for k in ("aggregator", "in_dim", "num_classes", "class_names", "encoder") if k not in hp]
    if missing:
        raise CheckpointError(
            f"{path.name} is not a slidescope MIL checkpoint (no {', '.join(missing)} in its hyperparameters)"
        )
    schema = int(hp.get("checkpoint_schema", 1))
    if schema > CHECKPOINT_SCHEMA:
        raise CheckpointError(
            f"{path.name} has checkpoint schema {schema} (slidescope "
            f"{hp.get('slidescope_version')}); this slidescope reads up to {CHECKPOINT_SCHEMA}. "
            f"Upgrade slidescope."
        )
    trained_enc, trained_dim = str(hp["encoder"]), int(hp.get("embed_dim", hp["in_dim"]))
    if (encoder is not None and encoder != trained_enc) or (
        embed_dim is not None and int(embed_dim) != trained_dim
    ):
        have_enc = encoder if encoder is not None else trained_enc
        have_dim = f"{embed_dim}-d" if embed_dim is not None else "?-d"
        raise EncoderMismatchError(
            f"{path.name} was trained on {trained_enc!r} {trained_dim}-d embeddings; these are {have_enc!r} "
            f"{have_dim}: extract with --encoder {trained_enc}"
        )
    task = MILTask(**{k: hp[k] for k in _INIT_KEYS if k in hp})
    task.load_state_dict(data["state_dict"])
    task.eval()
    return task
