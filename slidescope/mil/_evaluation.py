"""How :func:`~slidescope.mil.train.train` turns held-out predictions into files and metrics.

Per task (:data:`EVALS`): which metrics, which prediction columns, how the records become arrays for
:mod:`slidescope.metrics` (every definition lives there) and their patient-level bootstrap intervals; and the
prediction CSVs (``fold{k}/predictions.csv``, ``oof_predictions.csv``) and ``results.csv`` of a run folder.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import metrics as _metrics
from ..metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS, SURVIVAL_METRICS

if TYPE_CHECKING:
    from .data import BagDataModule


def bootstrap(
    fn, arrays: tuple[np.ndarray, ...], groups: np.ndarray, *, n: int, seed: int, valid=None
) -> dict[str, tuple[float, float]]:
    """95% percentile bootstrap of ``fn(*arrays)``, resampling patients (``groups``).

    Returns ``{metric: (low, high)}``.
    """
    cis = _metrics.bootstrap_metrics(fn, arrays, groups=groups, n=n, seed=seed, level=0.95, valid=valid)
    return {m: (ci.low, ci.high) for m, ci in cis.items()}


@dataclass(frozen=True)
class TaskEval:
    """How one task's prediction records become metrics: the metric names, the record columns, the arrays."""

    metrics: tuple[str, ...]
    columns: tuple[str, ...]  # after slide, patient (and before/after fold, see write_predictions_csv)
    compute: Any  # (records, class_names) -> dict
    ci: Any  # (records, class_names, n, seed) -> dict


def _cls_arrays(preds, class_names):
    labels = np.array([class_names.index(p["label"]) for p in preds], dtype=int)
    probs = np.array([[p[f"prob_{c}"] for c in class_names] for p in preds], dtype=np.float64)
    return labels, probs


def _cls_compute(preds, class_names):
    labels, probs = _cls_arrays(preds, class_names)
    if len(set(labels.tolist())) < 2:
        return {m: float("nan") for m in CLASSIFICATION_METRICS}
    return _metrics.classification_metrics(labels, probs)


def _patients(preds) -> np.ndarray:
    return np.array([str(p.get("patient", p["slide"])) for p in preds])


def _cls_ci(preds, class_names, n, seed):
    labels, probs = _cls_arrays(preds, class_names)
    if len(set(labels.tolist())) < 2:
        return {m: (float("nan"), float("nan")) for m in CLASSIFICATION_METRICS}
    k = len(np.unique(labels))  # resamples lacking a class are skipped
    return bootstrap(
        _metrics.classification_metrics,
        (labels, probs),
        _patients(preds),
        n=n,
        seed=seed,
        valid=lambda y, _p: len(np.unique(y)) >= k,
    )


def _reg_arrays(preds):
    return (
        np.array([p["target"] for p in preds], dtype=np.float64),
        np.array([p["prediction"] for p in preds], dtype=np.float64),
    )


def _surv_arrays(preds):
    return (
        np.array([p["time"] for p in preds], dtype=np.float64),
        np.array([p["risk"] for p in preds], dtype=np.float64),
        np.array([p["event"] for p in preds], dtype=int),
    )


EVALS: dict[str, TaskEval] = {
    "classification": TaskEval(CLASSIFICATION_METRICS, ("label",), _cls_compute, _cls_ci),
    "regression": TaskEval(
        REGRESSION_METRICS,
        ("target", "prediction"),
        lambda preds, _c: _metrics.regression_metrics(*_reg_arrays(preds)),
        lambda preds, _c, n, seed: bootstrap(
            _metrics.regression_metrics,
            _reg_arrays(preds),
            _patients(preds),
            n=n,
            seed=seed,
            valid=lambda y, f: len(np.unique(y)) > 1,
        ),
    ),
    "survival": TaskEval(
        SURVIVAL_METRICS,
        ("time", "event", "risk"),
        lambda preds, _c: _metrics.survival_metrics(*_surv_arrays(preds)),
        lambda preds, _c, n, seed: bootstrap(
            _metrics.survival_metrics,
            _surv_arrays(preds),
            _patients(preds),
            n=n,
            seed=seed,
            valid=lambda t, r, e: bool(e.any()),
        ),
    ),
}


# -- prediction records and run files ----------------------------------------------------------------


def predict_fold(task, dm: BagDataModule) -> list[dict[str, Any]]:
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
            probs = zip(task.class_names, value.tolist(), strict=True)
            rec.update(label=row.label, **{f"prob_{c}": float(p) for c, p in probs})
        preds.append(rec)
    return preds


def write_predictions_csv(
    path: Path,
    preds: list[dict[str, Any]],
    class_names: list[str],
    *,
    fold: bool = False,
    task: str = "classification",
) -> None:
    """Prediction records as CSV; ``fold`` adds the ``fold`` column (``oof_predictions.csv``)."""
    given = EVALS[task].columns
    if task == "classification":
        cols = ["slide", "patient", "label", *(["fold"] if fold else []), *[f"prob_{c}" for c in class_names]]
    else:  # the prediction (last given column) after the fold
        cols = ["slide", "patient", *given[:-1], *(["fold"] if fold else []), given[-1]]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for p in preds:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in p.items()})


_FLOAT_COLUMNS = ("target", "prediction", "time", "risk")


def read_predictions_csv(path: Path) -> list[dict[str, Any]]:
    """The records :func:`write_predictions_csv` wrote (numbers as float, ``event`` as int)."""
    with open(path, newline="") as fh:
        return [{k: _parse(k, v) for k, v in r.items()} for r in csv.DictReader(fh)]


def _parse(column: str, value: str) -> Any:
    if column.startswith("prob_") or column in _FLOAT_COLUMNS:
        return float(value)
    return int(value) if column == "event" else value


def _r(v: float) -> str:
    return "" if v is None or np.isnan(v) else f"{v:.6g}"


def write_results_csv(
    path: Path,
    metric_names: tuple[str, ...],
    folds: list[Any],
    pooled: dict[str, float],
    pooled_ci: dict[str, tuple[float, float]],
    n_pooled: int,
) -> None:
    """``results.csv``: per fold (:class:`~slidescope.mil.train.FoldResult`) and pooled metrics, 95% CIs."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["fold", "metric", "value", "ci_low", "ci_high", "n_slides"])
        for f in folds:
            for m in metric_names:
                w.writerow([f.fold, m, _r(f.metrics[m]), _r(f.ci[m][0]), _r(f.ci[m][1]), f.n_test])
        for m in metric_names:
            w.writerow(["pooled", m, _r(pooled[m]), _r(pooled_ci[m][0]), _r(pooled_ci[m][1]), n_pooled])
