"""Slide-text contrastive pretraining on (tile embeddings, report) pairs with the CLIP loss.

PRISM's contrastive heads (``docs/REFERENCE-models.md`` §1.2), without its captioning loss.

Three layers, as in :mod:`slidescope.mil.train`:

* :class:`~slidescope.vlm.model.SlideTextModel`: the pure ``nn.Module`` (slide encoder, text tower, heads);
* :class:`SlideTextTask` (``LightningModule``): the symmetric contrastive loss, the optimizer, validation
  retrieval metrics (slide->text and text->slide recall@1/@5) and ``train/…``, ``val/…`` logging;
* :class:`ReportDataModule`: reads the embedding store, samples report sentences and pads bags.

:func:`pretrain` assembles them. The artefact is ``out/model`` written by :meth:`SlideTextModel.save` at the
lowest validation loss, so the model rebuilds itself with :meth:`SlideTextModel.load` (no Lightning needed).
The patient-level split is data: ``out/splits.json`` lists the training and validation patients.

Several devices and nodes (DDP)
-------------------------------
``devices`` and ``num_nodes`` (``--devices``, ``--num-nodes``) above 1 pretrain with Lightning's
DistributedDataParallel (gloo on CPUs, NCCL on GPUs), one process per device, launched as
:func:`slidescope.mil.train` is::

    slidescope pretrain --manifest m.csv --stores stores --encoder uni --out runs/st --devices 4       # one machine
    srun slidescope pretrain --manifest m.csv --stores stores --encoder uni --out runs/st --devices 4 --num-nodes 2

From a shell or a script Lightning starts the other ranks itself (it re-runs ``sys.argv`` with ``LOCAL_RANK``
set, so every rank runs :func:`pretrain` from its start); under SLURM (``--ntasks-per-node`` equal to
``--devices``), torchrun or another launcher that sets the rank variables it starts nothing. Not from a
notebook. The stores and ``out`` must be on a file system every node sees.

What is shared and what is not:

- every rank reads the same manifest and computes the same split and the same text tower: the small tower's
  tokenizer is trained on the same training reports, and the word-level trainer orders words of equal count
  deterministically (the same vocabulary in every process, whatever its hash seed); the ranks still compare a
  fingerprint of their vocabularies when training starts and stop with an error if they differ. The initial
  weights come from the same seed (and DDP copies rank 0's).
- only global rank 0 creates ``out`` and writes ``splits.json``, the best ``model/`` (into a temporary
  folder, then renamed into place) and ``metrics.json`` (atomically); only rank 0 gets the
  :class:`PretrainResult`, the other ranks return None once rank 0 has written everything.
- the contrastive loss sees the **global batch**: each rank embeds its own ``batch_size`` pairs, the slide
  and text embeddings of all ranks are gathered (with gradients) and every rank computes the CLIP loss on
  the ``batch_size x world_size`` pairs, so every pair is a negative for every other one, as on one device
  with that batch. The loss value is the one-device loss of that global batch, and DDP's averaging of the
  gradients gives its exact gradient (the gather's backward sums each embedding's gradient over the ranks).
  Without the gather each rank's negatives would be its local batch only, another objective.
- each epoch every rank trains on its own shard of the shuffled training pairs (a ``DistributedSampler``
  that drops up to ``world_size - 1`` pairs per epoch, a different few each epoch, rather than repeating
  pairs: a repeated pair would be its own negative). The **effective batch is** ``batch_size x devices x
  num_nodes``; the learning rate is not scaled: to match a one-device run divide ``batch_size`` by the world
  size (as the test does) or change ``lr`` yourself.
- every rank scores the whole validation set (one batch); ``val/loss``, the recall@k and the training
  losses are logged synchronised, so early stopping and the best model follow the same validation loss on
  every rank (that of one device for the same weights).
- results equal a one-device run's up to nondeterminism: other pairs per step, other tile subsamples and
  sentence drops (each rank draws from its own stream), floating-point reduction order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from ..errors import InvalidParameterError, SlidescopeError
from ..features.store import open_store, store_path
from ..training import ddp_strategy, resolve_world
from ._pretrain_data import (
    ReportDataModule,
    ReportDataset,
    ReportRow,
    collate_pairs as collate_pairs,  # public here: tests and callers import it from this module
    read_report_manifest,
    split_patients,
)
from ._pretrain_steps import _text_tower, _trainer, _write_splits, fit_and_write
from .model import SlideTextModel, clip_loss
from .slide_encoder import PerceiverSlideEncoderConfig
from .text import SmallTextTower, TextTower

log = logging.getLogger(__name__)

__all__ = [
    "ReportRow",
    "read_report_manifest",
    "split_patients",
    "ReportDataset",
    "ReportDataModule",
    "SlideTextTask",
    "retrieval_metrics",
    "pretrain",
    "PretrainResult",
    "default_slide_encoder",
]

FreezeText = Literal["none", "all", "partial"]


# ------------------------------------------------------------------------------------------ task


def retrieval_metrics(slide_emb: Tensor, text_emb: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Recall@k of matching pairs ``(slide_emb[i], text_emb[i])`` in both directions (cosine ranking).

    Keys ``slide2text_r@k`` and ``text2slide_r@k``; k is capped at the number of candidates.
    """
    sim = torch.nn.functional.normalize(slide_emb, dim=-1) @ torch.nn.functional.normalize(text_emb, dim=-1).T
    target = torch.arange(sim.shape[0], device=sim.device)
    out = {}
    for name, s in (("slide2text", sim), ("text2slide", sim.T)):
        # rank of the true match = number of candidates scoring strictly higher
        rank = (s > s[target, target][:, None]).sum(1)
        for k in ks:
            out[f"{name}_r@{k}"] = float((rank < min(k, s.shape[1])).float().mean())
    return out


def _freeze_text(tower: TextTower, mode: FreezeText) -> None:
    if mode not in ("none", "all", "partial"):
        raise InvalidParameterError(f"freeze_text must be 'none', 'all' or 'partial', got {mode!r}")
    if mode == "none":
        return
    if mode == "all":
        tower.requires_grad_(False)
        return
    # partial: freeze the embeddings and every layer but the last; final norms / poolers stay trainable
    layer_of = {n: int(m.group(1)) for n, _ in tower.named_parameters() if (m := re.search(r"\.(\d+)\.", n))}
    last = max(layer_of.values(), default=None)
    for name, p in tower.named_parameters():
        if "embed" in name or (name in layer_of and layer_of[name] != last):
            p.requires_grad_(False)


class SlideTextTask(L.LightningModule):
    """Contrastive (CLIP) training of a :class:`SlideTextModel`.

    The model is injected (a from-scratch text tower owns a tokenizer trained on the reports, which is not a
    primitive); ``hparams`` keep the optimisation settings only. The checkpoint that matters is the directory
    written by :meth:`SlideTextModel.save`, which is self-describing.
    """

    def __init__(
        self,
        model: SlideTextModel,
        *,
        lr: float = 1e-3,
        text_lr: float | None = None,
        weight_decay: float = 1e-2,
        epochs: int = 50,
        freeze_text: FreezeText = "none",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"], logger=False)
        self.model = model
        _freeze_text(model.text_tower, freeze_text)
        self._val: list[tuple[Tensor, Tensor]] = []
        self.val_metrics: dict[str, float] = {}

    def _step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return self.model(batch["features"], batch["mask"], batch["texts"])

    def _gather(self, x: Tensor) -> Tensor:
        """``(B, d)`` of this rank -> ``(world_size x B, d)`` of all ranks, rank order; gradients flow back."""
        if self.trainer.world_size == 1:
            return x
        return self.all_gather(x, sync_grads=True).flatten(0, 1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        m = self.model
        v = self._gather(m.encode_slide(batch["features"], batch["mask"]))
        t = self._gather(m.encode_text(batch["texts"]))
        # the CLIP loss of the global batch on every rank (its value and, once DDP averages, its gradient)
        loss = clip_loss(m.similarity(v, t))
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(v), sync_dist=True)
        self.log(
            "train/logit_scale",
            m.scale().detach(),
            on_step=False,
            on_epoch=True,
            batch_size=len(v),
            sync_dist=True,
        )
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self._step(batch)  # every rank holds the whole validation set: nothing to gather
        self.log(
            "val/loss",
            out["loss"],
            on_step=False,
            on_epoch=True,
            batch_size=len(batch["texts"]),
            sync_dist=True,
        )
        self._val.append((out["slide_emb"].detach(), out["text_emb"].detach()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        v = torch.cat([a for a, _ in self._val])
        t = torch.cat([b for _, b in self._val])
        self._val.clear()
        self.val_metrics = retrieval_metrics(v, t)
        for k, val in self.val_metrics.items():
            self.log(f"val/{k}", val, batch_size=len(v), sync_dist=True)

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:
            _check_same_tokenizer(self)

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        text = [p for p in self.model.text_tower.parameters() if p.requires_grad]
        text_ids = {id(p) for p in self.model.text_tower.parameters()}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in text_ids]
        groups = [{"params": rest, "lr": h.lr}]
        if text:
            groups.append({"params": text, "lr": h.text_lr if h.text_lr is not None else h.lr})
        opt = torch.optim.AdamW(groups, weight_decay=h.weight_decay)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, steps // 10)

        def schedule(step: int) -> float:  # linear warm-up, cosine decay to 10%
            if step < warmup:
                return (step + 1) / warmup
            return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _vocab_fingerprint(tokenizer: Any) -> int:
    """A 63-bit hash of a tokenizer's vocabulary (token -> id); 0 when it has none to compare."""
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is None:
        return 0
    digest = hashlib.sha256(json.dumps(sorted(get_vocab().items())).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _check_same_tokenizer(task: SlideTextTask) -> None:
    """Under DDP: stop on every rank when the ranks' text towers tokenize differently (their token ids, hence
    their embedding rows, would mean other words on each rank)."""
    mine = torch.tensor(
        [_vocab_fingerprint(task.model.text_tower.tokenizer)], dtype=torch.long, device=task.device
    )
    every = task.all_gather(mine).flatten()
    if not bool((every == every[0]).all()):
        raise SlidescopeError(
            f"the DDP ranks built different tokenizers (vocabulary fingerprints "
            f"{every.tolist()}); give every rank the same manifest and text tower"
        )


def _save_model(model: SlideTextModel, directory: Path) -> None:
    """``model.save(directory)`` so that a reader sees the previous model or the new one, never a mix."""
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    old = directory.with_name(f".{directory.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    if directory.exists():
        os.replace(directory, old)  # a directory cannot replace a non-empty one in a single rename
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


class _SaveBest(L.Callback):
    """Save the model into ``directory`` whenever ``val/loss`` reaches a new minimum (rank 0 only; a new model
    replaces the previous one whole, see :func:`_save_model`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.best = math.inf
        self.best_epoch = -1
        self.best_metrics: dict[str, float] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: SlideTextTask) -> None:
        if trainer.sanity_checking:
            return
        loss = trainer.callback_metrics.get("val/loss")
        if loss is None or not float(loss) < self.best:
            return
        self.best, self.best_epoch = float(loss), int(trainer.current_epoch)
        self.best_metrics = {"val_loss": self.best, **pl_module.val_metrics}
        if trainer.is_global_zero:
            _save_model(pl_module.model, self.directory)


# ------------------------------------------------------------------------------------------ entry point


def default_slide_encoder(context_dim: int, **overrides: Any) -> PerceiverSlideEncoderConfig:
    """A small Perceiver (24 latents of width 128, 2 layers) for cohorts of tens to hundreds of slides."""
    values: dict[str, Any] = dict(
        latent_seq=24,
        latent_dim=128,
        context_dim=context_dim,
        mhsa_heads=4,
        perceiver_depth=2,
        transformer_depth=1,
        xattn_chunk=4096,
    )
    values.update(overrides)
    return PerceiverSlideEncoderConfig(**values)


@dataclass
class PretrainResult:
    """What :func:`pretrain` produced: the saved model, the best validation metrics and the split."""

    model_dir: Path
    metrics: dict[str, float]
    best_epoch: int
    epochs: int
    seconds: float
    train_patients: list[str] = field(default_factory=list)
    val_patients: list[str] = field(default_factory=list)

    def summary(self) -> str:
        m = ", ".join(f"{k} {v:.3f}" for k, v in self.metrics.items())
        return f"best epoch {self.best_epoch} of {self.epochs} ({self.seconds:.0f} s): {m}"


def _strategy(strategy: str, world_size: int) -> Any:
    """``"auto"`` on several processes: DDP that finds unused parameters. The contrastive loss does not reach
    every parameter: the slide encoder's image-latent norm (kept for PRISM's layout), a BERT pooler, the layers
    of a causal language model past the pooled one."""
    return ddp_strategy(strategy, world_size, find_unused_parameters=True)


def _slide_encoder_config(
    config: PerceiverSlideEncoderConfig | None, *, store: str | os.PathLike[str], encoder: str, slide: str
) -> PerceiverSlideEncoderConfig:
    """``config`` (default: :func:`default_slide_encoder`) checked against the embedding width of ``slide``."""
    first = open_store(store_path(store, slide), encoder=encoder)
    in_dim = int(first.encoder_attrs(encoder).get("embed_dim") or first.embeddings(encoder).shape[1])
    cfg = config or default_slide_encoder(in_dim)
    if cfg.context_dim != in_dim:
        raise InvalidParameterError(
            f"slide_encoder.context_dim={cfg.context_dim} but {encoder!r} embeddings "
            f"have {in_dim} dimensions; set context_dim={in_dim}"
        )
    return cfg


def pretrain(
    manifest: str | os.PathLike[str],
    *,
    store: str | os.PathLike[str],
    encoder: str,
    out: str | os.PathLike[str],
    text: str | os.PathLike[str] | TextTower = "small",
    slide_encoder: PerceiverSlideEncoderConfig | None = None,
    dim_latents: int = 128,
    text_width: int = 128,
    text_depth: int = 2,
    epochs: int = 60,
    batch_size: int = 32,
    lr: float = 1e-3,
    text_lr: float | None = None,
    weight_decay: float = 1e-2,
    seed: int = 0,
    max_instances: int | None = 512,
    sentence_dropout: float = 0.3,
    freeze_text: FreezeText = "none",
    val_fraction: float = 0.2,
    early_stopping_patience: int | None = 15,
    report_column: str = "report",
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str = "auto",
    precision: str | None = None,
    progress: bool = False,
) -> PretrainResult:
    """Pretrain a slide-text model with the symmetric CLIP loss on (slide tile embeddings, report) pairs.

    Parameters
    ----------
    manifest : CSV with ``slide``, ``patient`` and ``report_column``; every row is used (hold test slides out of it).
    store, encoder : the store folder and which tile embeddings (N, D) feed the slide encoder.
    out : run folder; ``out/model`` is the :class:`SlideTextModel` at the lowest validation loss,
        ``out/splits.json`` the patients, ``out/metrics.json`` the best validation metrics.
    text : ``"small"`` (a :class:`SmallTextTower` whose tokenizer is trained on the *training* reports only),
        a folder with a Hugging Face encoder, or a ready :class:`TextTower`.
    slide_encoder : Perceiver config; default :func:`default_slide_encoder` with ``context_dim`` = embedding dim.
    batch_size : (slide, report) pairs per contrastive batch, per device: under DDP the loss compares the
        ``batch_size x world_size`` pairs of all devices (see "Several devices and nodes" in the module
        docstring); ``lr`` is not scaled with it.
    freeze_text : ``"none"``, ``"all"`` (a pretrained tower stays as is) or ``"partial"`` (only its last layer
        and final norms train).
    val_fraction : fraction of patients (stratified by ``label`` when the manifest has one) for validation.
    max_instances : tiles per training bag (subsampled); validation bags keep every tile.
    early_stopping_patience : stop after this many epochs without a lower validation loss (``None``: never).
    devices, num_nodes : devices per node and nodes; above 1 in all, DDP with one process per device (launching,
        what is synchronised and what differs from one device: the module docstring).
    strategy : ``"auto"`` (DDP, finding unused parameters, on several devices) or a Lightning strategy name.
    accelerator, precision : passed to ``lightning.Trainer``.

    Returns
    -------
    PretrainResult or None
        ``metrics`` holds ``val_loss`` and ``slide2text_r@1/@5``, ``text2slide_r@1/@5`` at the best epoch.
        Under DDP only global rank 0 writes and returns it; the other ranks return None.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if epochs < 1 or batch_size < 2:
        raise InvalidParameterError(f"epochs must be >= 1 and batch_size >= 2, got {epochs} and {batch_size}")
    rows = read_report_manifest(manifest, store=store, encoder=encoder, report_column=report_column)
    train_rows, val_rows = split_patients(rows, val_fraction=val_fraction, seed=seed)
    cfg = _slide_encoder_config(slide_encoder, store=store, encoder=encoder, slide=rows[0].slide)
    # which rank this process is, before anything is written or launched (Lightning's cluster environments)
    world_size, global_rank = resolve_world(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
        progress=progress,
    )
    rank0 = global_rank == 0
    _check_shards(len(train_rows), world_size)
    task = _slide_text_task(
        text,
        train_rows,
        cfg,
        seed=seed,
        text_width=text_width,
        text_depth=text_depth,
        dim_latents=dim_latents,
        lr=lr,
        text_lr=text_lr,
        weight_decay=weight_decay,
        epochs=epochs,
        freeze_text=freeze_text,
    )
    dm = ReportDataModule(
        train_rows,
        val_rows,
        store=store,
        encoder=encoder,
        batch_size=batch_size,
        max_instances=max_instances,
        sentence_dropout=sentence_dropout,
        seed=seed,
    )
    if rank0:  # a shell-launched DDP run starts the other ranks later, inside fit
        _write_splits(out, train_rows, val_rows)
    saver = _SaveBest(out / "model")
    trainer = _trainer(
        out,
        saver,
        epochs=epochs,
        early_stopping_patience=early_stopping_patience,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=_strategy(strategy, world_size),
        precision=precision,
        progress=progress,
    )
    config = {  # metrics.json's "config" (rank 0 writes it once fitted)
        "encoder": encoder,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
        "epochs": epochs,
        "early_stopping_patience": early_stopping_patience,
        "max_instances": max_instances,
        "freeze_text": freeze_text,
        "val_fraction": val_fraction,
        "text": str(text) if not isinstance(text, TextTower) else type(text).__name__,
        "slide_encoder": cfg.to_dict(),
        "dim_latents": dim_latents,
    }
    metrics, seconds = fit_and_write(
        trainer,
        task,
        dm,
        saver,
        out=out,
        rank0=rank0,
        world_size=world_size,
        config=config,
        t0=t0,
        progress=progress,
    )
    if not rank0:
        return None  # type: ignore[return-value]  # as mil.train(): single-process callers need no None check
    return _result(out, saver, trainer, metrics, seconds, train_rows, val_rows)


def _check_shards(n_train: int, world_size: int) -> None:
    """Every DDP process needs at least one training pair."""
    if n_train < world_size:
        raise InvalidParameterError(
            f"{n_train} training slides cannot give each of {world_size} DDP "
            f"processes a pair; use fewer devices"
        )


def _slide_text_task(
    text: str | os.PathLike[str] | TextTower,
    train_rows: list[ReportRow],
    cfg: PerceiverSlideEncoderConfig,
    *,
    seed: int,
    text_width: int,
    text_depth: int,
    dim_latents: int,
    freeze_text: FreezeText,
    **optim: Any,
) -> SlideTextTask:
    """The seeded text tower (a small one learns its tokenizer from the training reports), the model and its
    :class:`SlideTextTask` (``optim``: ``lr``, ``text_lr``, ``weight_decay``, ``epochs``)."""
    L.seed_everything(seed, workers=True, verbose=False)  # every rank: the same tower and initial weights
    tower = _text_tower(text, [r.report for r in train_rows], text_width=text_width, text_depth=text_depth)
    if isinstance(tower, SmallTextTower) and freeze_text != "none" and not isinstance(text, TextTower):
        log.warning(
            "freeze_text=%r freezes a text tower with random weights (text='small'); only the slide "
            "side will learn",
            freeze_text,
        )
    return SlideTextTask(
        SlideTextModel(cfg, tower, dim_latents=dim_latents), freeze_text=freeze_text, **optim
    )


def _result(
    out: Path,
    saver: _SaveBest,
    trainer: L.Trainer,
    metrics: dict[str, float],
    seconds: float,
    train_rows: list[ReportRow],
    val_rows: list[ReportRow],
) -> PretrainResult:
    """Rank 0: the :class:`PretrainResult` (and the log line) of a finished run."""
    log.info("pretraining done in %.0f s; best epoch %d: %s", seconds, saver.best_epoch, metrics)
    return PretrainResult(
        model_dir=out / "model",
        metrics=metrics,
        best_epoch=saver.best_epoch,
        epochs=int(trainer.current_epoch),
        seconds=seconds,
        train_patients=sorted({r.patient for r in train_rows}),
        val_patients=sorted({r.patient for r in val_rows}),
    )
