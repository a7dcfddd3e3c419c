"""The data of :func:`~slidescope.vlm.pretrain.pretrain`: the (slide, report) manifest, the patient split,
the dataset of (tile embeddings, report) pairs and its Lightning data module.

Public through :mod:`slidescope.vlm.pretrain` (``from slidescope.vlm.pretrain import ReportDataModule``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import InvalidParameterError
from ..features.store import slide_key
from ..manifests import check_stores, read_rows, resolve_slide
from ..mil.data import StoreBags, collate_bags

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class ReportRow:
    """One (slide, report) pair; ``slide`` is absolute (resolved against the manifest's folder)."""

    slide: str
    patient: str
    report: str
    label: str | None = None

    @property
    def key(self) -> str:
        return slide_key(self.slide)


def read_report_manifest(
    path: str | os.PathLike[str],
    *,
    store: str | os.PathLike[str] | None = None,
    encoder: str | None = None,
    report_column: str = "report",
    label_column: str | None = "label",
) -> list[ReportRow]:
    """Read a pretraining manifest: columns ``slide``, ``patient`` and ``report_column`` (free text).

    With ``store`` and ``encoder`` every slide must have complete embeddings (all missing ones are listed in
    one message). ``label_column`` is kept when present (for stratified splits and evaluation), never required.
    """
    path, columns, raw = read_rows(
        path,
        ("slide", "patient", report_column),
        needs=f"a pretraining manifest needs slide, patient and {report_column} (free-text report)",
    )
    empty = [r["slide"] for r in raw if not r[report_column]]
    if empty:
        raise InvalidParameterError(
            f"{path.name}: {len(empty)} slide(s) have an empty {report_column!r}: "
            f"{', '.join(empty[:5])}; drop them or write their reports"
        )
    has_label = label_column is not None and label_column in columns
    rows = [
        ReportRow(
            slide=resolve_slide(path, r["slide"]),
            patient=r["patient"] or r["slide"],
            report=r[report_column],
            label=r[label_column] if has_label and label_column is not None else None,
        )
        for r in raw
    ]
    if store is not None and encoder is not None:
        check_stores(path, [r.slide for r in rows], store, encoder)
    return rows


def split_patients(
    rows: list[ReportRow],
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[ReportRow], list[ReportRow]]:
    """(train, val) rows split by patient, stratified by label when every row has one; >= 2 val slides."""
    if not 0.0 < val_fraction < 1.0:
        raise InvalidParameterError(f"val_fraction must be in (0, 1), got {val_fraction}")
    patients = sorted({r.patient for r in rows})
    if len(patients) < 4:
        raise InvalidParameterError(
            f"pretraining needs at least 4 patients (train and validation), got {len(patients)}"
        )
    plabel = {r.patient: (r.label or "") for r in rows}
    rng = np.random.default_rng(seed)
    val: set[str] = set()
    for label in sorted(set(plabel.values())):
        group = sorted(p for p, lab in plabel.items() if lab == label)
        n = int(round(val_fraction * len(group)))
        val.update(group[i] for i in rng.permutation(len(group))[:n])
    rest = [p for p in patients if p not in val]
    while sum(r.patient in val for r in rows) < 2 and len(rest) > 2:  # retrieval needs >= 2 candidates
        val.add(rest.pop(int(rng.integers(len(rest)))))
    train = [r for r in rows if r.patient not in val]
    if len(train) < 2:
        raise InvalidParameterError("val_fraction leaves fewer than 2 training slides")
    return train, [r for r in rows if r.patient in val]


def _sentences(report: str) -> list[str]:
    return [s for s in _SENTENCE.split(report.strip()) if s]


class ReportDataset(StoreBags):
    """One item per slide: ``features (N, D)``, ``text`` and ``index``.

    Training items subsample ``max_instances`` tiles and, with ``sentence_dropout``, keep a random non-empty
    subset of the report's sentences in random order (a report says several independent things; the text tower
    should learn each). Evaluation items (``train=False``) keep every tile and the whole report.
    """

    def __init__(
        self,
        rows: list[ReportRow],
        *,
        store: str | os.PathLike[str],
        encoder: str,
        max_instances: int | None = 512,
        train: bool = False,
        sentence_dropout: float = 0.3,
        seed: int = 0,
    ) -> None:
        super().__init__(
            rows, store=store, encoder=encoder, max_instances=max_instances if train else None, seed=seed
        )
        self.train = train
        self.sentence_dropout = sentence_dropout

    def text(self, i: int) -> str:
        report = self.rows[i].report
        if not self.train or self.sentence_dropout <= 0:
            return report
        parts = _sentences(report)
        keep = [p for p in parts if self._rng.random() >= self.sentence_dropout]
        keep = keep or [parts[self._rng.integers(len(parts))]]
        return " ".join(keep[j] for j in self._rng.permutation(len(keep)))

    def __getitem__(self, i: int) -> dict[str, Any]:
        emb = self.sample(self.embeddings(i))
        return {
            "features": torch.from_numpy(np.ascontiguousarray(emb)),
            "label": -1,
            "index": i,
            "text": self.text(i),
        }


def collate_pairs(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """``features (B, N, D)``, ``mask (B, N)`` (True = real tile), ``index (B,)`` and ``texts`` (list of B str)."""
    out: dict[str, Any] = collate_bags(batch)
    out["texts"] = [b["text"] for b in batch]
    return out


class ReportDataModule(L.LightningDataModule):
    """Training and validation (slide, report) pairs; the validation set is one batch (for retrieval)."""

    def __init__(
        self,
        train_rows: list[ReportRow],
        val_rows: list[ReportRow],
        *,
        store: str | os.PathLike[str],
        encoder: str,
        batch_size: int = 32,
        max_instances: int | None = 512,
        sentence_dropout: float = 0.3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["train_rows", "val_rows"], logger=False)
        self.train_rows, self.val_rows = list(train_rows), list(val_rows)
        self.train_set: ReportDataset | None = None
        self.val_set: ReportDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            h = self.hparams
            rank = self.trainer.global_rank if self.trainer is not None else 0
            # each DDP rank its own stream of tile subsamples and sentence drops (rank 0: that of one device)
            self.train_set = ReportDataset(
                self.train_rows,
                store=h.store,
                encoder=h.encoder,
                max_instances=h.max_instances,
                train=True,
                sentence_dropout=h.sentence_dropout,
                seed=h.seed + rank,
            )
            self.val_set = ReportDataset(self.val_rows, store=h.store, encoder=h.encoder, max_instances=None)

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        if world > 1:
            # this rank's shard of the pairs, reshuffled every epoch (Lightning calls set_epoch); the remainder
            # is dropped, not padded with repeats: a repeated pair in a contrastive batch is its own negative
            sampler = DistributedSampler(
                self.train_set,
                num_replicas=world,
                rank=trainer.global_rank,
                shuffle=True,
                seed=h.seed,
                drop_last=True,
            )
            n = len(sampler)
        else:
            sampler, n = None, len(self.train_set)
        bs = min(h.batch_size, n)
        # drop_last: a last batch of one pair has a trivial contrastive loss. Under DDP the ranks' embeddings are
        # gathered, so the last batch of the step holds world x (shard % bs) pairs: only one device can get one
        drop_last = world * (n % bs) == 1
        if sampler is not None:
            return DataLoader(
                self.train_set, batch_size=bs, sampler=sampler, collate_fn=collate_pairs, drop_last=drop_last
            )
        return DataLoader(
            self.train_set,
            batch_size=bs,
            shuffle=True,
            collate_fn=collate_pairs,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(h.seed),
        )

    def val_dataloader(self) -> DataLoader:
        # every rank the whole set: pretrain() turns Lightning's sampler replacement off
        return DataLoader(self.val_set, batch_size=len(self.val_set), collate_fn=collate_pairs)
