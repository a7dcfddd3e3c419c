"""MIL data: the manifest, patient-level splits, bags of tile embeddings and their DataModule.

Three tasks share them (:data:`TASKS`): ``"classification"`` (a ``label`` per slide),
``"regression"`` (a numeric target per slide, from ``label_column``) and ``"survival"`` (``time``
and ``event`` columns, 1 = event, 0 = censored).

A *bag* is one slide's ``(N, D)`` tile embeddings read from its store
(``<store>/<slide key>.zarr``, see :func:`slidescope.features.store.store_path`). Bags of a batch
are padded to the longest one; ``mask`` (``True`` = real tile) says which rows are padding.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..errors import InvalidParameterError
from .._location import as_location
from ..features.store import open_store, store_path
from ..manifests import check_stores, read_rows, resolve_slide, short_list

log = logging.getLogger(__name__)

__all__ = [
    "TASKS",
    "SlideRow",
    "Splits",
    "read_manifest",
    "make_splits",
    "BagDataset",
    "collate_bags",
    "BagDataModule",
]

REQUIRED_COLUMNS = ("slide", "label", "patient")

#: the supervised tasks a manifest can describe
TASKS = ("classification", "regression", "survival")


@dataclass(frozen=True)
class SlideRow:
    """One manifest row. ``slide`` is an absolute path (resolved against the manifest's folder)."""

    slide: str
    label: str
    patient: str
    site: str | None = None
    split: str | None = None
    #: regression: the numeric target (``label`` holds its text)
    target: float | None = None
    #: survival: follow-up time (>= 0, any unit) and event indicator (1 = event, 0 = censored)
    time: float | None = None
    event: int | None = None
    #: a patient bag (:func:`~slidescope.mil._patients.patient_bags`): all its slides in manifest order
    slides: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The slide's store name (its file name without the slide extension); a patient bag's slides' joined
        by ``;``."""
        from ..features.store import slide_key

        return ";".join(slide_key(s) for s in self.slides) if self.slides else slide_key(self.slide)


def read_manifest(
    path: str | os.PathLike[str],
    *,
    store: str | os.PathLike[str] | None = None,
    encoder: str | None = None,
    labels: list[str] | None = None,
    task: str = "classification",
    label_column: str = "label",
    time_column: str = "time",
    event_column: str = "event",
) -> list[SlideRow]:
    """Read and check a training manifest (CSV).

    Columns: ``slide`` (path relative to the manifest), ``patient`` and, per ``task``:
    classification ``label_column`` (a class name); regression ``label_column`` (a number, e.g.
    ``tumour_fraction``); survival ``time_column`` (>= 0) and ``event_column`` (1 = event,
    0 = censored). Optional ``site`` (for site-preserving folds) and ``split`` (an integer fold per
    row: predefined folds).

    Parameters
    ----------
    path : the CSV file.
    store : the store folder; with ``encoder``, every slide must have complete embeddings there.
    encoder : the encoder whose embeddings training will use.
    labels : the allowed labels (any other label is an error); default: whatever is in the file.
    task : one of :data:`TASKS`.
    label_column, time_column, event_column : which columns hold the label/target, time and event.

    Raises
    ------
    InvalidParameterError
        Missing columns, empty file, unknown labels, a single class, non-numeric or constant
        regression targets, missing/negative times, non-binary events, no events at all, or slides
        without a store or without embeddings (all such slides are listed in one message).
    """
    if task not in TASKS:
        raise InvalidParameterError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    needed = {
        "classification": ("slide", label_column, "patient"),
        "regression": ("slide", label_column, "patient"),
        "survival": ("slide", "patient", time_column, event_column),
    }[task]
    path, _, raw = read_rows(
        path, needed, needs=f"a {task} manifest needs {', '.join(needed)} (optional: site, split)"
    )
    rows: list[SlideRow] = []
    blanks = []
    for i, r in enumerate(raw, start=2):
        if not r["slide"] or not r["patient"] or any(not r[c] for c in needed):
            blanks.append(i)
            continue
        rows.append(
            SlideRow(
                slide=resolve_slide(path, r["slide"]),
                label=r.get(label_column, "") or "",
                patient=r["patient"],
                site=r.get("site") or None,
                split=r.get("split") or None,
            )
        )
    if blanks:
        raise InvalidParameterError(f"{path.name}: empty {', '.join(needed)} on line(s) {short_list(blanks)}")
    if task == "regression":
        rows = _regression_rows(path, rows, label_column)
    elif task == "survival":
        rows = _survival_rows(
            path, rows, [(r[time_column], r[event_column]) for r in raw], time_column, event_column
        )
    keys = collections.Counter(r.key for r in rows)
    dup = sorted(k for k, n in keys.items() if n > 1)
    if dup:
        raise InvalidParameterError(
            f"{path.name}: several rows map to the same store name: {short_list(dup)}"
        )
    found = sorted({r.label for r in rows})
    if task == "classification" and labels is not None:
        unknown = sorted(set(found) - set(labels))
        if unknown:
            raise InvalidParameterError(
                f"{path.name}: unknown label(s) {short_list(unknown)}; expected one of {', '.join(labels)}"
            )
    if task == "classification" and len(found) < 2:
        raise InvalidParameterError(
            f"{path.name}: every slide has label {found[0]!r}; a classifier needs at least two classes"
        )
    if store is not None:
        check_stores(path, [r.slide for r in rows], store, encoder)
    return rows


def _regression_rows(path: Path, rows: list[SlideRow], column: str) -> list[SlideRow]:
    out, bad = [], []
    for i, r in enumerate(rows, start=2):
        try:
            v = float(r.label)
        except ValueError:
            v = float("nan")
        if not np.isfinite(v):
            bad.append(f"line {i}: {r.label!r}")
        out.append(dataclasses.replace(r, target=v))
    if bad:
        raise InvalidParameterError(
            f"{path.name}: the regression target column {column!r} must hold finite numbers; "
            f"got {short_list(bad)}. Pick a numeric column with --label-column"
        )
    if len({r.target for r in out}) < 2:
        raise InvalidParameterError(
            f"{path.name}: every slide has the same {column!r} ({out[0].target}); there is nothing to regress"
        )
    return out


def _survival_rows(
    path: Path, rows: list[SlideRow], values: list[tuple[str, str]], time_column: str, event_column: str
) -> list[SlideRow]:
    out, bad_time, bad_event = [], [], []
    for i, (r, (t, e)) in enumerate(zip(rows, values, strict=True), start=2):
        try:
            tv = float(t)
        except ValueError:
            tv = float("nan")
        if not np.isfinite(tv) or tv < 0:
            bad_time.append(f"line {i}: {t!r}")
        try:
            ev = float(e)
        except ValueError:
            ev = float("nan")
        if ev not in (0.0, 1.0):
            bad_event.append(f"line {i}: {e!r}")
        out.append(dataclasses.replace(r, time=tv, event=int(ev) if ev in (0.0, 1.0) else -1))
    if bad_time:
        raise InvalidParameterError(
            f"{path.name}: the time column {time_column!r} must hold numbers >= 0 (time to "
            f"event or censoring); got {short_list(bad_time)}"
        )
    if bad_event:
        raise InvalidParameterError(
            f"{path.name}: the event column {event_column!r} must be 1 (event) or 0 "
            f"(censored); got {short_list(bad_event)}"
        )
    if not any(r.event for r in out):
        raise InvalidParameterError(
            f"{path.name}: every slide is censored ({event_column!r} is 0 everywhere); "
            f"survival models need observed events"
        )
    return out


# -- splits -----------------------------------------------------------------------------------------


@dataclass
class Splits:
    """Patient-level fold assignment: ``patients[patient] = fold`` (0-based)."""

    folds: int
    patients: dict[str, int]
    seed: int = 0
    site_preserving: bool = False
    sites: dict[str, int] = field(default_factory=dict)

    def fold_of(self, row: SlideRow) -> int:
        return self.patients[row.patient]

    def rows_in(self, rows: list[SlideRow], fold: int) -> list[SlideRow]:
        return [r for r in rows if self.patients[r.patient] == fold]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON atomically (a reader, e.g. another DDP rank, sees the old or the new file)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Splits:
        data = json.loads(Path(path).read_text())
        data["patients"] = {str(k): int(v) for k, v in data["patients"].items()}
        data["sites"] = {str(k): int(v) for k, v in data.get("sites", {}).items()}
        return cls(**data)


def _patient_strata(rows: list[SlideRow], *, n_bins: int) -> dict[str, str]:
    """What patients are stratified by: their label (classification), the quantile bin (``n_bins``) of
    their mean target (regression), or whether any of their slides has an event (survival)."""
    if rows and rows[0].target is not None:
        by_patient: dict[str, list[float]] = collections.defaultdict(list)
        for r in rows:
            by_patient[r.patient].append(float(r.target))
        mean = {p: float(np.mean(v)) for p, v in by_patient.items()}
        n_bins = max(1, min(n_bins, len(mean)))
        ordered = sorted(mean, key=lambda p: (mean[p], p))
        return {p: f"q{min(n_bins - 1, i * n_bins // len(ordered)):03d}" for i, p in enumerate(ordered)}
    if rows and rows[0].event is not None:
        ev: dict[str, int] = collections.defaultdict(int)
        for r in rows:
            ev[r.patient] = max(ev[r.patient], int(r.event))
        return {p: f"event={e}" for p, e in ev.items()}
    return _patient_labels(rows)


def _patient_labels(rows: list[SlideRow]) -> dict[str, str]:
    by_patient: dict[str, list[str]] = collections.defaultdict(list)
    for r in rows:
        by_patient[r.patient].append(r.label)
    mixed = sorted(p for p, labs in by_patient.items() if len(set(labs)) > 1)
    if mixed:
        warnings.warn(
            f"patient(s) {short_list(mixed)} have slides with different labels; they are stratified by "
            f"their most common label",
            UserWarning,
            stacklevel=3,
        )
    return {p: collections.Counter(labs).most_common(1)[0][0] for p, labs in by_patient.items()}


def make_splits(
    rows: list[SlideRow], *, folds: int = 5, seed: int = 0, site_preserving: bool = False
) -> Splits:
    """Patient-level stratified k-fold.

    A patient is never in two folds. Patients are stratified by their label (the most common
    one if their slides differ: a warning); for regression by quantile bins of their mean target
    (about ``folds`` patients per bin, at most 10 bins); for survival by their event indicator.
    With ``site_preserving``, whole sites are held out:
    every site goes to exactly one fold (sites are dealt largest first to the smallest fold), so
    there must be at least ``folds`` sites. Rows with an integer ``split`` column use it as their
    fold (predefined folds).

    Returns
    -------
    Splits
        Save it next to the run with :meth:`Splits.save` (``splits.json``).
    """
    if folds < 2:
        raise InvalidParameterError(f"folds must be >= 2, got {folds}")
    plabel = _patient_strata(rows, n_bins=min(10, max(1, len({r.patient for r in rows}) // folds)))
    if any(r.split is not None for r in rows):
        return _predefined(rows, folds=folds, seed=seed)
    rng = np.random.default_rng(seed)
    n_slides = collections.Counter(r.patient for r in rows)
    if site_preserving:
        by_patient: dict[str, list[str]] = collections.defaultdict(list)
        for r in rows:
            if r.site is None:
                raise InvalidParameterError("site_preserving needs a 'site' value on every manifest row")
            by_patient[r.patient].append(r.site)
        psite = {p: collections.Counter(s).most_common(1)[0][0] for p, s in by_patient.items()}
        multi = sorted(p for p, s in by_patient.items() if len(set(s)) > 1)
        if multi:
            warnings.warn(
                f"patient(s) {short_list(multi)} have slides from several sites; each is held out with its "
                f"most common site so that no patient is in two folds",
                UserWarning,
                stacklevel=2,
            )
        site_size = collections.Counter(psite[r.patient] for r in rows)
        if len(site_size) < folds:
            raise InvalidParameterError(
                f"site-preserving folds need at least as many sites as folds: "
                f"{len(site_size)} sites ({', '.join(sorted(site_size))}) for {folds} folds"
            )
        names = sorted(site_size)
        order = sorted(rng.permutation(len(names)).tolist(), key=lambda i: -site_size[names[i]])
        load = [0] * folds
        sites: dict[str, int] = {}
        for i in order:
            k = int(np.argmin(load))
            sites[names[i]] = k
            load[k] += site_size[names[i]]
        return Splits(
            folds=folds,
            patients={p: sites[s] for p, s in sorted(psite.items())},
            seed=seed,
            site_preserving=True,
            sites=sites,
        )
    n_patients = len(plabel)
    if n_patients < folds:
        raise InvalidParameterError(f"{n_patients} patients cannot fill {folds} folds")
    assign: dict[str, int] = {}
    total = np.zeros(folds)
    for label in sorted(set(plabel.values())):
        group = sorted(p for p, lab in plabel.items() if lab == label)
        group = [group[i] for i in rng.permutation(len(group))]
        per = np.zeros(folds)
        for p in group:
            # fewest patients of this label, then fewest slides, then a random tie-break
            cand = np.lexsort((rng.random(folds), total, per))
            k = int(cand[0])
            assign[p] = k
            per[k] += 1
            total[k] += n_slides[p]
    for label in sorted(set(plabel.values())):
        have = {assign[p] for p, lab in plabel.items() if lab == label}
        if len(have) < folds:
            log.warning("stratum %r has patients in only %d of %d folds", label, len(have), folds)
    return Splits(folds=folds, patients=dict(sorted(assign.items())), seed=seed)


def _predefined(rows: list[SlideRow], *, folds: int, seed: int) -> Splits:
    assign: dict[str, int] = {}
    for r in rows:
        try:
            k = int(r.split) if r.split is not None else None
        except ValueError:
            k = None
        if k is None or not 0 <= k < folds:
            raise InvalidParameterError(
                f"the 'split' column must hold a fold number 0..{folds - 1} on every row "
                f"(got {r.split!r} for {r.key}); or drop the column for automatic folds"
            )
        if assign.setdefault(r.patient, k) != k:
            raise InvalidParameterError(f"patient {r.patient} is in folds {assign[r.patient]} and {k}")
    return Splits(folds=folds, patients=dict(sorted(assign.items())), seed=seed)


def inner_validation(
    rows: list[SlideRow], *, fraction: float = 0.2, seed: int = 0
) -> tuple[list[SlideRow], list[SlideRow]]:
    """Split training rows into (train, val) by patient, stratified (>= 1 patient per stratum; see
    :func:`make_splits`; regression uses about ``1 / fraction`` patients per quantile bin)."""
    if rows and rows[0].target is None and rows[0].event is None:
        plabel = {r.patient: r.label for r in rows}
    else:
        plabel = _patient_strata(rows, n_bins=max(1, int(round(fraction * len({r.patient for r in rows})))))
    rng = np.random.default_rng(seed)
    val: set[str] = set()
    for label in sorted(set(plabel.values())):
        group = sorted(p for p, lab in plabel.items() if lab == label)
        n = max(1, int(round(fraction * len(group)))) if len(group) > 1 else 0
        val.update(group[i] for i in rng.permutation(len(group))[:n])
    return [r for r in rows if r.patient not in val], [r for r in rows if r.patient in val]


# -- bags -------------------------------------------------------------------------------------------


class StoreBags(Dataset):
    """Per-slide embeddings read from the stores (cached in memory), with seeded tile subsampling.

    The shared base of the MIL bags and the slide-text pairs: ``rows`` need a ``slide`` path.
    """

    def __init__(
        self,
        rows: list,
        *,
        store: str | os.PathLike[str],
        encoder: str,
        max_instances: int | None = None,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        self.rows = list(rows)
        self.store = as_location(store)  # a local folder or an fsspec URL
        self.encoder = encoder
        self.max_instances = max_instances
        self.cache = cache
        self._rng = np.random.default_rng(seed)
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def embeddings(self, i: int) -> np.ndarray:
        """(N, D) float32 embeddings of slide ``i`` (a patient bag: its slides' tiles one after the other)."""
        if i in self._cache:
            return self._cache[i]
        parts = [
            open_store(store_path(self.store, slide), encoder=self.encoder).embeddings(self.encoder)
            for slide in (getattr(self.rows[i], "slides", ()) or (self.rows[i].slide,))
        ]
        emb = (parts[0] if len(parts) == 1 else np.concatenate(parts)).astype(np.float32)
        if self.cache:
            self._cache[i] = emb
        return emb

    def sample(self, emb: np.ndarray) -> np.ndarray:
        """At most ``max_instances`` tiles, drawn without replacement (a new draw each call), in tile order."""
        if self.max_instances is not None and len(emb) > self.max_instances:
            emb = emb[np.sort(self._rng.choice(len(emb), self.max_instances, replace=False))]
        return emb


class BagDataset(StoreBags):
    """One item per slide: ``{"features": (N, D) float32, "label": long, "index": int}``, plus
    ``"target"`` (regression rows) or ``"time"`` and ``"event"`` (survival rows).

    Parameters
    ----------
    rows : the slides.
    store : the store folder.
    encoder : which embeddings.
    class_names : label order (the label of an item is its index here).
    max_instances : cap on tiles per bag; larger bags are subsampled (without replacement) with a
        generator seeded by ``seed``, differently at each draw. ``None`` keeps every tile (eval).
    cache : keep the embeddings in memory after the first read.
    """

    def __init__(
        self,
        rows: list[SlideRow],
        *,
        store: str | os.PathLike[str],
        encoder: str,
        class_names: list[str],
        max_instances: int | None = None,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        super().__init__(
            rows, store=store, encoder=encoder, max_instances=max_instances, seed=seed, cache=cache
        )
        self.class_names = list(class_names)

    def __getitem__(self, i: int) -> dict[str, Any]:
        emb = self.sample(self.embeddings(i))
        row = self.rows[i]
        label = self.class_names.index(row.label) if row.label in self.class_names else -1
        item: dict[str, Any] = {
            "features": torch.from_numpy(np.ascontiguousarray(emb)),
            "label": label,
            "index": i,
        }
        if row.target is not None:
            item["target"] = float(row.target)
        if row.time is not None:
            item["time"], item["event"] = float(row.time), int(row.event)
        return item


def collate_bags(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad bags to the longest: ``features (B, N, D)``, ``mask (B, N)`` bool (True = real), ``labels (B,)``.

    Regression items add ``targets (B,)`` float (original units); survival items add ``times (B,)``
    float and ``events (B,)`` long.
    """
    n = max(max(int(b["features"].shape[0]) for b in batch), 1)
    d = int(batch[0]["features"].shape[1])
    feats = torch.zeros(len(batch), n, d, dtype=torch.float32)
    mask = torch.zeros(len(batch), n, dtype=torch.bool)
    for i, b in enumerate(batch):
        k = int(b["features"].shape[0])
        feats[i, :k] = b["features"]
        mask[i, :k] = True
    out = {
        "features": feats,
        "mask": mask,
        "labels": torch.tensor([b["label"] for b in batch], dtype=torch.long),
        "index": torch.tensor([b["index"] for b in batch], dtype=torch.long),
    }
    if all("target" in b for b in batch):
        out["targets"] = torch.tensor([b["target"] for b in batch], dtype=torch.float32)
    if all("time" in b for b in batch):
        out["times"] = torch.tensor([b["time"] for b in batch], dtype=torch.float32)
        out["events"] = torch.tensor([b["event"] for b in batch], dtype=torch.long)
    return out


class BagDataModule(L.LightningDataModule):
    """The bags of one cross-validation fold.

    ``test`` is fold ``fold`` of ``splits``; the other folds' patients are split again
    (stratified, by patient, ``val_fraction``) into ``train`` and ``val`` (early stopping), so the
    held-out fold never steers training. ``eval_batch_size`` (default ``batch_size``) batches the
    validation and test bags (a Cox loss needs them together: pass their count or more).

    Under DDP (a Trainer with ``world_size > 1``) the training loader carries its own
    ``DistributedSampler``: every epoch each rank gets its own shard of the shuffled training bags
    (seeded with ``seed + fold``, reshuffled per epoch; up to ``world_size - 1`` bags are repeated so
    every rank runs the same number of steps). The validation and test loaders stay plain:
    :func:`~slidescope.mil.train.train` turns Lightning's sampler replacement off, so every rank
    evaluates the whole validation set and the validation loss is that of one device (a Cox loss
    needs the whole set as its risk set anyway). With ``use_distributed_sampler=True`` (Lightning's
    default) Lightning shards them instead.
    """

    def __init__(
        self,
        rows: list[SlideRow],
        *,
        splits: Splits,
        fold: int,
        store: str | os.PathLike[str],
        encoder: str,
        class_names: list[str],
        batch_size: int = 8,
        max_instances: int = 512,
        val_fraction: float = 0.2,
        num_workers: int = 0,
        seed: int = 0,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        store = str(store)  # checkpoints keep primitives only (they load with torch.load(weights_only=True))
        class_names = [str(c) for c in class_names]
        self.save_hyperparameters(ignore=["rows", "splits"], logger=False)
        self.rows = list(rows)
        self.splits = splits
        self.train_rows: list[SlideRow] = []
        self.val_rows: list[SlideRow] = []
        self.test_rows: list[SlideRow] = []

    def setup(self, stage: str | None = None) -> None:
        if self.test_rows:
            return
        hp = self.hparams
        self.test_rows = self.splits.rows_in(self.rows, hp.fold)
        rest = [r for r in self.rows if self.splits.fold_of(r) != hp.fold]
        self.train_rows, self.val_rows = inner_validation(
            rest, fraction=hp.val_fraction, seed=hp.seed + hp.fold
        )
        common = dict(store=hp.store, encoder=hp.encoder, class_names=hp.class_names)
        self.train_set = BagDataset(
            self.train_rows, max_instances=hp.max_instances, seed=hp.seed + hp.fold, **common
        )
        self.val_set = BagDataset(self.val_rows, **common)
        self.test_set = BagDataset(self.test_rows, **common)

    def _loader(
        self, dataset: BagDataset, *, shuffle: bool = False, batch_size: int | None = None
    ) -> DataLoader:
        gen = torch.Generator().manual_seed(self.hparams.seed + self.hparams.fold) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=batch_size or self.hparams.batch_size,
            shuffle=shuffle,
            generator=gen,
            collate_fn=collate_bags,
            num_workers=self.hparams.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            sampler = DistributedSampler(
                self.train_set,
                num_replicas=trainer.world_size,
                rank=trainer.global_rank,
                shuffle=True,
                seed=self.hparams.seed + self.hparams.fold,
            )
            return DataLoader(
                self.train_set,
                batch_size=self.hparams.batch_size,
                sampler=sampler,
                collate_fn=collate_bags,
                num_workers=self.hparams.num_workers,
            )
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, batch_size=self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, batch_size=self.hparams.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, batch_size=1)

    def class_weights(self) -> list[float]:
        """Inverse class frequency of the training rows, normalised to mean 1."""
        counts = collections.Counter(r.label for r in self.train_rows)
        c = np.array([counts.get(n, 0) for n in self.hparams.class_names], dtype=np.float64)
        w = np.where(c > 0, c.sum() / np.maximum(c, 1) / len(c), 0.0)
        return (w / w[w > 0].mean()).round(6).tolist()

    def target_stats(self) -> tuple[float, float]:
        """Regression: mean and standard deviation of the training rows' targets (std 1 if constant)."""
        t = np.array([r.target for r in self.train_rows], dtype=np.float64)
        sd = float(t.std())
        return float(t.mean()), (sd if sd > 1e-12 else 1.0)

    def time_bins(self, n_bins: int) -> list[float]:
        """Survival: the ``n_bins - 1`` inner cut points of the training rows' event times (quantiles).

        A time ``t`` falls in bin ``searchsorted(cuts, t, side="right")`` (0 .. n_bins - 1).
        """
        t = np.array([r.time for r in self.train_rows if r.event], dtype=np.float64)
        if len(t) == 0:
            raise InvalidParameterError(
                f"fold {self.hparams.fold}: no events among the training slides; use fewer "
                f"folds or a cohort with more events"
            )
        cuts = np.quantile(t, np.arange(1, n_bins) / n_bins) if n_bins > 1 else np.array([])
        return [float(c) for c in cuts]
