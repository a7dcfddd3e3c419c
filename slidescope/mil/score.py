"""``score()``: apply trained MIL checkpoints (an ensemble of folds) to slide stores."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._location import expand_stores  # re-exported here for compatibility; lives in slidescope._location
from .._location import require_local
from ..errors import InvalidParameterError, SlidescopeError
from ..features.store import IncompleteStoreError, SlideStore, StoreCorruptError, StoreError, open_store

log = logging.getLogger(__name__)

__all__ = [
    "score",
    "SlideScore",
    "expand_stores",
    "run_name",
    "check_stores",
    "write_skipped",
    "EmptyStoreError",
]


class EmptyStoreError(InvalidParameterError):
    """A slide store without tiles (a slide without tissue): nothing to score."""


@dataclass
class SlideScore:
    """One slide's ensemble prediction. ``attention (N,)`` is the mean over checkpoints of the tile scores.

    Classification fills ``probs`` and ``predicted`` (a class); regression ``prediction`` (original
    units; ``probs`` empty, ``predicted`` its text); survival ``risk`` (higher = earlier event).
    ``status`` is ``"scored"``, or (``score(..., errors="report")``) ``"empty"`` for a store without tiles and
    ``"failed"`` for one that cannot be scored, ``error`` then saying why (nothing else is filled in).
    """

    slide: str
    store: Path | str
    probs: dict[str, float]
    predicted: str
    attention: np.ndarray
    prediction: float | None = None
    risk: float | None = None
    status: str = "scored"
    error: str | None = None
    #: a patient's row (``score(..., patients=)``): ``slide`` is the patient, these its slides scored together
    slides: tuple[str, ...] = ()

    @classmethod
    def skipped(cls, store: Path | str, err: BaseException) -> SlideScore:
        """The row of a store that was not scored: ``"empty"`` (no tiles) or ``"failed"``."""
        name = str(store).rstrip("/").rsplit("/", 1)[-1]
        return cls(
            slide=name[: -len(".zarr")] if name.endswith(".zarr") else name,
            store=store,
            probs={},
            predicted="",
            attention=np.zeros(0, np.float32),
            status="empty" if isinstance(err, EmptyStoreError) else "failed",
            error=f"{type(err).__name__}: {err}",
        )


def run_name(checkpoint: str | os.PathLike[str]) -> str:
    """The name scores are written under: the run folder of ``<run>/fold<k>/best.ckpt`` (else the file stem)."""
    p = Path(checkpoint).resolve()
    if p.parent.name.startswith("fold"):
        return p.parent.parent.name
    return p.stem


def score(
    checkpoints: list[str | os.PathLike[str]],
    stores: list[str | os.PathLike[str]],
    *,
    out_csv: str | os.PathLike[str] | None = None,
    write_scores: bool = True,
    name: str | None = None,
    device: str = "cpu",
    errors: str = "raise",
    patients: Mapping[str, str] | None = None,
) -> list[SlideScore]:
    """Score slides with an ensemble of MIL checkpoints (e.g. the folds of one run).

    Per slide, the class probabilities (regression: the predictions; survival: the risks) and the tile
    scores (attention) are averaged over the checkpoints. With ``write_scores``, each store gets
    ``scores/<name>/attention`` (N,) with the per-class probabilities, the predicted label and the
    checkpoints in its attrs (what :func:`heatmap` draws).

    Parameters
    ----------
    checkpoints : list of str or os.PathLike
        ``best.ckpt`` files (``TrainResult.checkpoints``); all must share encoder, embedding size, task
        and classes.
    stores : list of str or os.PathLike
        Slide stores (``<slide>.zarr``) or folders of stores.
    out_csv : str or os.PathLike, optional
        CSV with ``slide, prob_<class>..., predicted`` (regression ``slide, prediction``; survival
        ``slide, risk``).
    write_scores : bool, default True
        Write the tile attention into each store.
    name : str, optional
        Name of the scores in the stores; default the run folder of the first checkpoint
        (:func:`run_name`: ``runs/abmil/fold0/best.ckpt`` -> ``"abmil"``).
    device : str, default "cpu"
    errors : {"raise", "report"}, default "raise"
        What a store that cannot be scored does (no tiles, damaged, unfinished, other embeddings): stop
        the batch (raise its error), or give a row with ``status`` ``"empty"`` / ``"failed"`` and the
        ``error``, the other stores scored (``slidescope score`` reports; the CSV then has the scored
        slides and ``<out>.skipped.csv`` lists the others).
    patients : mapping, optional
        Slide (store) name -> patient, for checkpoints trained on patient bags (``train(..., bag="patient")``):
        each patient's slides are scored as one bag, their tiles one after the other in store order, and the
        patient gets one row (``slide`` the patient, ``slides`` its slides; the CSV's first columns are
        ``patient, slides``). Each store gets its part of the attention and the patient's prediction. A slide
        that cannot be scored is skipped (reported as above) and its patient scored from the others.

    Returns
    -------
    list of SlideScore
        One per slide, in store order: ``slide``, ``store``, ``probs`` (class -> probability), ``predicted``,
        ``attention`` float32 (N,) (row i = tile ``store.coords[i]``), ``prediction`` (regression) or
        ``risk`` (survival).

    Raises
    ------
    EncoderMismatchError
        A store lacks embeddings of the checkpoints' encoder, or their size differs (the message says
        which encoder to extract with).
    StoreCorruptError, IncompleteStoreError
        A store's chunk is missing or corrupt, its metadata is inconsistent, or its extraction did not
        finish (the message says to run ``slidescope extract`` again, which rebuilds it).
    InvalidParameterError
        No checkpoint, checkpoints that disagree, or a store with no tiles (:class:`EmptyStoreError`).

    Examples
    --------
    >>> import slidescope as ss
    >>> folds = [f"runs/abmil/fold{k}/best.ckpt" for k in range(5)]
    >>> rows = ss.score(folds, ["stores"], out_csv="predictions.csv")      # doctest: +SKIP
    >>> rows[0].probs, rows[0].attention.shape                             # doctest: +SKIP
    ({'normal': 0.08, 'tumour': 0.92}, (1523,))
    """
    import torch

    from .task import EncoderMismatchError, load_task

    if errors not in ("raise", "report"):
        raise InvalidParameterError(f"errors must be 'raise' or 'report', got {errors!r}")
    if not checkpoints:
        raise InvalidParameterError("give at least one checkpoint")
    tasks = [load_task(c, map_location=device) for c in checkpoints]
    first = tasks[0]
    for c, t in zip(checkpoints, tasks, strict=True):
        if (t.encoder_name, t.hparams.embed_dim, t.class_names, t.task) != (
            first.encoder_name,
            first.hparams.embed_dim,
            first.class_names,
            first.task,
        ):
            raise InvalidParameterError(
                f"{c} differs from {checkpoints[0]} in encoder, embedding size, task or "
                f"classes; an ensemble needs the same ones"
            )
    bags = {t.bag for t in tasks if t.bag is not None}
    if len(bags) > 1:
        raise InvalidParameterError(
            f"the checkpoints were trained on different bags ({', '.join(sorted(bags))}); an ensemble needs one kind"
        )
    _check_bag(bags.pop() if bags else None, patients)
    kind = first.task
    encoder, dim, classes = first.encoder_name, int(first.hparams.embed_dim), first.class_names
    name = name or run_name(checkpoints[0])
    results: list[SlideScore] = []
    for patient, group in _bags(expand_stores(stores), patients):
        read: list[tuple[str | Path, SlideStore, np.ndarray]] = []
        for sp in group:
            try:
                store = open_store(sp, encoder=encoder)
                emb = _embeddings(store, encoder, dim, checkpoints[0], load_task_error=EncoderMismatchError)
            except SlidescopeError as err:
                if errors == "raise":
                    raise
                log.warning("%s not scored: %s", sp, err)
                results.append(SlideScore.skipped(sp, err))
                continue
            read.append((sp, store, emb))
        if not read:
            continue
        probs, att = [], []
        with torch.no_grad():
            for t in tasks:
                p, s = t.predict_bag(np.concatenate([e for _, _, e in read]) if len(read) > 1 else read[0][2])
                probs.append(p.numpy())
                att.append(s.numpy())
        prob = np.mean(probs, axis=0)
        attention = np.mean(att, axis=0).astype(np.float32)
        names = tuple(store.name[: -len(".zarr")] for _, store, _ in read)
        res = SlideScore(
            slide=names[0] if patient is None else patient,
            store=read[0][0],
            probs={},
            predicted="",
            attention=attention,
            slides=() if patient is None else names,
        )
        if kind == "classification":
            res.probs = {c: float(v) for c, v in zip(classes, prob, strict=True)}
            res.predicted = classes[int(prob.argmax())]
            attrs: dict[str, Any] = {"probabilities": res.probs, "predicted": res.predicted}
        else:
            value = float(prob[0])
            res.predicted = f"{value:.6g}"
            res.prediction = value if kind == "regression" else None
            res.risk = value if kind == "survival" else None
            attrs = {_VALUE[kind]: value}
        results.append(res)
        if write_scores:
            attrs.update(
                kind="attention",
                task=kind,
                encoder=encoder,
                model=str(first.hparams.aggregator),
                checkpoints=[str(Path(c).resolve()) for c in checkpoints],
            )
            if patient is not None:
                attrs.update(patient=patient, patient_slides=list(names))
            start = 0
            for sp, store, emb in read:  # each store gets the attention of its own tiles
                writable = SlideStore.open(sp, mode="r+", tiling=store.tiling_key)  # the tiling scored
                writable.write_scores(f"{name}/attention", attention[start : start + len(emb)], attrs=attrs)
                start += len(emb)
    if out_csv is not None:
        write_predictions(out_csv, results)
    return results


def _check_bag(bag: str | None, patients: Mapping[str, str] | None) -> None:
    """Warn where the checkpoints' training bag (None: not recorded) differs from how they are asked to
    score: patient bags scored slide by slide, or slide bags scored by patient. Both run (a patient model on
    one slide, a slide model on a patient's tiles pooled, are sometimes meant), but not as validated."""
    if bag == "patient" and patients is None:
        log.warning(
            "the checkpoints were trained on patient bags (all of a patient's slides as one bag) and are "
            "scoring single slides: give the patients (slidescope score --patients slides.csv; "
            "score(..., patients={slide: patient})) to score as they were trained"
        )
    elif bag == "slide" and patients is not None:
        log.warning(
            "the checkpoints were trained on slide bags and are scoring each patient's slides as one bag "
            "(--patients): leave out --patients to score as they were trained"
        )


def _bags(stores: list, patients: Mapping[str, str] | None) -> list[tuple[str | None, list]]:
    """``(None, [store])`` per store, or ``(patient, [its stores in order])`` per patient."""
    if patients is None:
        return [(None, [sp]) for sp in stores]
    names = [str(sp).rstrip("/").rsplit("/", 1)[-1].removesuffix(".zarr") for sp in stores]
    missing = [n for n in names if n not in patients]
    if missing:
        raise InvalidParameterError(
            f"no patient for slide(s) {', '.join(missing[:10])}: give every scored slide's patient "
            f"(the manifest's slide and patient columns)"
        )
    groups: dict[str, list] = {}
    for sp, n in zip(stores, names, strict=True):
        groups.setdefault(str(patients[n]), []).append(sp)
    return list(groups.items())


def write_predictions(out_csv: str | os.PathLike[str], results: list[SlideScore]) -> Path:
    """The predictions CSV of :func:`score`: ``slide, prob_<class>..., predicted`` (classification),
    ``slide, prediction`` (regression) or ``slide, risk`` (survival); one row per scored slide (per patient:
    ``patient, slides, ...``, the slides joined by ``;``). Slides not
    scored go to ``<out>.skipped.csv`` (:func:`write_skipped`; a stale one is removed)."""
    out_csv = require_local(
        out_csv, "out_csv (the predictions CSV)"
    )  # stores may be URLs; results stay local
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    write_skipped(out_csv, [(r.slide, r.status, r.error or "") for r in results if r.status != "scored"])
    results = [r for r in results if r.status == "scored"]
    by_patient = any(r.slides for r in results)
    head = ["patient", "slides"] if by_patient else ["slide"]

    def lead(r: SlideScore) -> list[str]:
        return [r.slide, ";".join(r.slides)] if by_patient else [r.slide]

    with open(out_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        value = next((v for v in _VALUE.values() if results and getattr(results[0], v) is not None), None)
        if value is None:
            classes = list(results[0].probs) if results else []
            w.writerow([*head, *[f"prob_{c}" for c in classes], "predicted"])
            for r in results:
                w.writerow([*lead(r), *[f"{r.probs[c]:.6f}" for c in classes], r.predicted])
        else:
            w.writerow([*head, value])
            for r in results:
                w.writerow([*lead(r), f"{getattr(r, value):.6f}"])
    return out_csv


#: the SlideScore field (and CSV column) of each non-classification task
_VALUE = {"regression": "prediction", "survival": "risk"}


def write_skipped(out_csv: str | os.PathLike[str], rows: list[tuple[str, str, str]]) -> Path | None:
    """``<out>.skipped.csv`` next to a results CSV: ``slide, status, error`` of the slides not scored (None
    and no file, a stale one removed, when every slide was scored)."""
    out_csv = Path(out_csv)
    path = out_csv.with_name(f"{out_csv.stem}.skipped.csv")
    if not rows:
        path.unlink(missing_ok=True)
        return None
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide", "status", "error"])
        w.writerows(rows)
    return path


def check_stores(stores: list, encoder: str | None = None) -> tuple[list, list[tuple[str, str, str]]]:
    """Split stores (folders expanded) into those that open and have tiles (and, with ``encoder``, whose
    embeddings read back whole), and ``(slide, status, error)`` for the others (status ``"empty"`` or
    ``"failed"``), for commands that score a whole batch at once."""
    good, skipped = [], []
    for sp in expand_stores(stores):
        try:
            store = open_store(sp, encoder=encoder) if encoder else open_store(sp)
            if store.n_tiles == 0:
                raise EmptyStoreError(f"{store.name} has no tiles to score")
            if encoder:
                store.embeddings(encoder)  # read whole: every chunk present, checksums valid
        except SlidescopeError as err:
            row = SlideScore.skipped(sp, err)
            skipped.append((row.slide, row.status, row.error or ""))
            continue
        good.append(sp)
    return good, skipped


def _embeddings(store: SlideStore, encoder: str, dim: int, ckpt, *, load_task_error) -> np.ndarray:
    try:
        emb = store.embeddings(encoder)
    except (StoreCorruptError, IncompleteStoreError):
        raise  # damage or an unfinished extraction is reported as such (its message says to extract again)
    except StoreError as err:
        have = store.encoders()
        detail = ""
        if have:
            d = store.encoder_attrs(have[0]).get("embed_dim")
            detail = f"; these are {have[0]!r} {d}-d"
        raise load_task_error(
            f"{Path(ckpt).name} was trained on {encoder!r} {dim}-d embeddings{detail}: extract "
            f"{store.name} with --encoder {encoder}"
        ) from err
    if emb.ndim != 2 or emb.shape[1] != dim:
        raise load_task_error(
            f"{Path(ckpt).name} was trained on {encoder!r} {dim}-d embeddings; {store.name} "
            f"has {encoder!r} {emb.shape[-1]}-d: extract again with --encoder {encoder}"
        )
    if len(emb) == 0:
        raise EmptyStoreError(f"{store.name} has no tiles to score")
    return emb
