"""The one metrics module of slidescope: every reported number of mil, vlm, the demo and heatmaps.

numpy only, so every layer can import it. Each metric equals scikit-learn's (or lifelines' for the
C-index) on the inputs it accepts; ``tests/test_metrics.py`` checks this on random data with ties and
missing classes.

Conventions
-----------
- ``y_true`` holds class indices ``0..C-1``; ``y_score`` is ``(n, C)`` scores or probabilities (the
  columns are the classes), or ``(n,)`` scores of class 1 for a binary task. A ``(n, 2)`` score is
  read as binary: its column 1 (as before in mil and vlm).
- Label metrics (accuracy, balanced accuracy, F1, kappa) take predicted labels ``y_pred``;
  :func:`classification_metrics` and :func:`bootstrap_ci` predict ``argmax`` of ``(n, C)`` scores
  (a ``(n,)`` ``y_score`` given to a label metric by name is taken as labels).
- **A class absent from ``y_true`` (one documented behaviour, no warning, no error).** Its AUROC is
  undefined and left out: one-vs-rest macro AUROC averages over the classes present in ``y_true``,
  one-vs-one macro AUROC over the pairs of present classes; with fewer than two classes present the
  AUROC is NaN (scikit-learn raises instead). Balanced accuracy averages the recall of the present
  classes (as scikit-learn). Macro F1 averages over the classes that are true or predicted at least
  once (scikit-learn's label set), weighted F1 weighs by true support. Cohen's kappa is computed
  over all ``C`` classes (absent ones have empty rows; for quadratic weights the distance between
  classes i and j is ``(i - j)**2``, as scikit-learn with ``labels=range(C)``); NaN when undefined
  (chance agreement 1). A NaN in the scores makes the AUROC NaN.
- Ranks (:func:`rankdata`) are average ranks of ties in O(n log n) (one stable sort).
- :func:`bootstrap_ci` and :func:`bootstrap_metrics` return :class:`BootstrapCI` (estimate, low,
  high, n_boot, n_valid): percentile intervals; resamples where a metric is undefined (NaN, e.g. one
  class only) are skipped and counted out of ``n_valid``. With ``groups`` (e.g. patient ids) whole
  groups are resampled (cluster bootstrap), so a patient's slides stay together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from .errors import InvalidParameterError

__all__ = [
    "rankdata",
    "auroc",
    "accuracy",
    "balanced_accuracy",
    "f1_score",
    "cohen_kappa",
    "concordance_index",
    "classification_metrics",
    "CLASSIFICATION_METRICS",
    "regression_metrics",
    "REGRESSION_METRICS",
    "survival_metrics",
    "SURVIVAL_METRICS",
    "BootstrapCI",
    "bootstrap_ci",
    "bootstrap_metrics",
]

#: The names :func:`classification_metrics` returns (and :func:`bootstrap_ci` accepts as ``metric``).
CLASSIFICATION_METRICS = (
    "auroc",
    "auroc_ovo",
    "balanced_accuracy",
    "f1",
    "f1_weighted",
    "kappa",
    "kappa_quadratic",
    "accuracy",
)
#: The names :func:`regression_metrics` returns.
REGRESSION_METRICS = ("pearson", "spearman", "r2", "mae")
#: The names :func:`survival_metrics` returns.
SURVIVAL_METRICS = ("c_index",)


def _arr(x: Any, dtype: Any = None) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def rankdata(x: Any) -> np.ndarray:
    """Average ranks, 1-based (ties share the mean of their ranks), as ``scipy.stats.rankdata``.

    One stable sort and a pass over the runs of equal values: O(n log n).

    Parameters
    ----------
    x : array_like (n,)

    Returns
    -------
    ndarray (n,) float64
    """
    v = _arr(x, np.float64).reshape(-1)
    order = np.argsort(v, kind="mergesort")
    vs = v[order]
    # start of each run of equal values in the sorted array (NaNs form one run at the end)
    new = np.r_[True, (vs[1:] != vs[:-1]) & ~(np.isnan(vs[1:]) & np.isnan(vs[:-1]))]
    starts = np.flatnonzero(new)
    counts = np.diff(np.r_[starts, len(v)])
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = np.repeat(starts + (counts + 1) / 2.0, counts)
    return ranks


def _binary_auroc(pos: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUROC of scores ``s`` for the boolean ``pos``; NaN without both classes or with NaN scores."""
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0 or np.isnan(s).any():
        return float("nan")
    r = rankdata(s)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _check_len(*arrays: np.ndarray) -> None:
    lens = {len(a) for a in arrays}
    if len(lens) > 1:
        raise InvalidParameterError(
            f"the arrays differ in length ({', '.join(str(len(a)) for a in arrays)}); "
            "pass one label/score per slide"
        )


def auroc(y_true: Any, y_score: Any, *, multi_class: str = "ovr") -> float:
    """Area under the ROC curve (Mann-Whitney, average ranks for ties).

    Parameters
    ----------
    y_true : array_like (n,) of class indices.
    y_score : array_like (n,) (scores of class 1) or (n, C); ``(n, 2)`` is binary (column 1).
    multi_class : {"ovr", "ovo"}
        For C > 2: macro one-vs-rest (each class against the rest, by its column) or macro
        one-vs-one (Hand & Till: for each pair (a, b) of classes, the slides of a or b, the mean of
        AUROC(a vs b by column a) and AUROC(b vs a by column b)), as scikit-learn's
        ``roc_auc_score(multi_class=...)``.

    Returns
    -------
    float
        NaN when fewer than two classes are present in ``y_true`` (absent classes are left out of
        the macro average, see the module docstring).
    """
    y = _arr(y_true).reshape(-1)
    s = _arr(y_score, np.float64)
    _check_len(y, s)
    if multi_class not in ("ovr", "ovo"):
        raise InvalidParameterError(f"multi_class must be 'ovr' or 'ovo', got {multi_class!r}")
    if s.ndim == 2 and s.shape[1] == 2:
        s = s[:, 1]
    if s.ndim == 1:
        return _binary_auroc(y == 1, s)
    if s.ndim != 2:
        raise InvalidParameterError(f"y_score must be (n,) or (n, C), got shape {s.shape}")
    present = [c for c in range(s.shape[1]) if (y == c).any()]
    if len(present) < 2:
        return float("nan")
    if multi_class == "ovr":
        return float(np.mean([_binary_auroc(y == c, s[:, c]) for c in present]))
    pairs = []
    for i, a in enumerate(present):
        for b in present[i + 1 :]:
            m = (y == a) | (y == b)
            pairs.append((_binary_auroc(y[m] == a, s[m, a]) + _binary_auroc(y[m] == b, s[m, b])) / 2)
    return float(np.mean(pairs))


def _labels(y_true: Any, y_pred: Any, n_classes: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    y = _arr(y_true).reshape(-1).astype(np.int64)
    p = _arr(y_pred).reshape(-1).astype(np.int64)
    _check_len(y, p)
    if len(y) == 0:
        raise InvalidParameterError("no slides to score")
    c = int(max(y.max(), p.max()) + 1) if n_classes is None else int(n_classes)
    if min(y.min(), p.min()) < 0 or max(y.max(), p.max()) >= c:
        raise InvalidParameterError(f"labels must be class indices in 0..{c - 1}")
    return y, p, c


def _confusion(y: np.ndarray, p: np.ndarray, c: int) -> np.ndarray:
    return np.bincount(y * c + p, minlength=c * c).reshape(c, c).astype(np.float64)


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of slides whose predicted class is the true one (``sklearn.metrics.accuracy_score``)."""
    y, p, _ = _labels(y_true, y_pred, None)
    return float((y == p).mean())


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """Mean recall over the classes present in ``y_true`` (``sklearn.metrics.balanced_accuracy_score``)."""
    y, p, c = _labels(y_true, y_pred, None)
    cm = _confusion(y, p, c)
    support = cm.sum(1)
    present = support > 0
    return float((np.diag(cm)[present] / support[present]).mean())


def f1_score(y_true: Any, y_pred: Any, *, average: str = "macro") -> float:
    """F1 (``sklearn.metrics.f1_score``, zero_division=0): ``"macro"`` or ``"weighted"`` (by true support).

    The classes are those true or predicted at least once; a class with no true positive has F1 0.
    """
    y, p, c = _labels(y_true, y_pred, None)
    if average not in ("macro", "weighted"):
        raise InvalidParameterError(f"average must be 'macro' or 'weighted', got {average!r}")
    cm = _confusion(y, p, c)
    support, predicted, tp = cm.sum(1), cm.sum(0), np.diag(cm)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros(c), where=denom > 0)  # = 2PR/(P+R)
    if average == "weighted":
        return float((f1 * support).sum() / support.sum())
    return float(f1[denom > 0].mean())


def cohen_kappa(
    y_true: Any, y_pred: Any, *, weights: str | None = None, n_classes: int | None = None
) -> float:
    """Cohen's kappa (``sklearn.metrics.cohen_kappa_score`` with ``labels=range(n_classes)``).

    Parameters
    ----------
    y_true, y_pred : array_like (n,) class indices.
    weights : {None, "quadratic", "linear"}
        Disagreement weights: 1 off the diagonal (unweighted), ``(i - j)**2`` or ``|i - j|`` by
        class index (for ordinal classes, e.g. grades).
    n_classes : int, optional
        The number of classes C (default: the largest label + 1); matters for weighted kappa only.

    Returns
    -------
    float
        ``1 - sum(W * O) / sum(W * E)``; NaN when the expected disagreement is 0.
    """
    y, p, c = _labels(y_true, y_pred, n_classes)
    cm = _confusion(y, p, c)
    expected = np.outer(cm.sum(1), cm.sum(0)) / cm.sum()
    i, j = np.indices((c, c))
    if weights is None:
        w = (i != j).astype(np.float64)
    elif weights == "quadratic":
        w = (i - j).astype(np.float64) ** 2
    elif weights == "linear":
        w = np.abs(i - j).astype(np.float64)
    else:
        raise InvalidParameterError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")
    den = (w * expected).sum()
    return float(1 - (w * cm).sum() / den) if den > 0 else float("nan")


def concordance_index(time: Any, risk: Any, event: Any) -> float:
    """Harrell's C-index: the fraction of comparable pairs whose risks are ordered like their times.

    Equal to ``lifelines.utils.concordance_index(time, -risk, event)``. A pair (i, j) is comparable
    when i had an event first: ``event_i == 1`` and ``time_i < time_j``, or ``time_i == time_j`` with
    j censored. Two events at the same time are not comparable. A comparable pair counts 1 when
    ``risk_i > risk_j``, 0.5 when tied in risk, else 0. NaN without comparable pairs. O(n²) memory in
    blocks of rows (fine up to tens of thousands of patients).

    Parameters
    ----------
    time : (n,) follow-up times. risk : (n,) predicted risk (higher = earlier event).
    event : (n,) 1 = event, 0 = censored.
    """
    t = _arr(time, np.float64).reshape(-1)
    r = _arr(risk, np.float64).reshape(-1)
    e = _arr(event).reshape(-1).astype(bool)
    if not len(t) == len(r) == len(e):
        raise InvalidParameterError(f"time, risk and event differ in length ({len(t)}, {len(r)}, {len(e)})")
    n_pairs = score = 0.0
    for a in range(0, len(t), 2048):
        ti, ri, ei = t[a : a + 2048, None], r[a : a + 2048, None], e[a : a + 2048, None]
        # comparable[i, j]: i's event is known to precede j's time
        comparable = ei & ((ti < t[None, :]) | ((ti == t[None, :]) & ~e[None, :]))
        n_pairs += comparable.sum()
        score += ((ri > r[None, :]) & comparable).sum() + 0.5 * ((ri == r[None, :]) & comparable).sum()
    return float(score / n_pairs) if n_pairs else float("nan")


def _predicted(y_score: np.ndarray) -> np.ndarray:
    return y_score.argmax(1) if y_score.ndim == 2 else y_score


def classification_metrics(y_true: Any, y_score: Any) -> dict[str, float]:
    """Every classification metric of ``(n, C)`` scores at once (predictions: ``argmax``).

    Returns
    -------
    dict
        ``auroc`` (macro one-vs-rest), ``auroc_ovo`` (macro one-vs-one), ``balanced_accuracy``,
        ``f1`` (macro), ``f1_weighted``, ``kappa`` (unweighted), ``kappa_quadratic``, ``accuracy``
        (see :data:`CLASSIFICATION_METRICS`).
    """
    y = _arr(y_true).reshape(-1).astype(np.int64)
    s = _arr(y_score, np.float64)
    if s.ndim != 2:
        raise InvalidParameterError(f"y_score must be (n, C) scores, got shape {s.shape}")
    c = s.shape[1]
    pred = s.argmax(1)
    return {
        "auroc": auroc(y, s),
        "auroc_ovo": auroc(y, s, multi_class="ovo"),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "f1": f1_score(y, pred),
        "f1_weighted": f1_score(y, pred, average="weighted"),
        "kappa": cohen_kappa(y, pred, n_classes=c),
        "kappa_quadratic": cohen_kappa(y, pred, weights="quadratic", n_classes=c),
        "accuracy": accuracy(y, pred),
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def regression_metrics(targets: Any, predictions: Any) -> dict[str, float]:
    """Pearson r, Spearman r, R² and MAE of ``(n,)`` predictions (see :data:`REGRESSION_METRICS`).

    Equal to ``scipy.stats.pearsonr``, ``scipy.stats.spearmanr`` (Pearson r of average ranks, so ties
    share their mean rank), ``sklearn.metrics.r2_score`` (``1 - SSres/SStot``) and
    ``sklearn.metrics.mean_absolute_error``. The correlations are NaN when either side is constant (or
    fewer than 2 values), R² is NaN when the targets are constant (scikit-learn returns 0 or 1 there),
    MAE is NaN without values.
    """
    y = _arr(targets, np.float64).reshape(-1)
    f = _arr(predictions, np.float64).reshape(-1)
    _check_len(y, f)
    if len(y) < 2:
        mae = float(np.abs(y - f).mean()) if len(y) else float("nan")
        return {m: float("nan") for m in REGRESSION_METRICS} | {"mae": mae}
    ss_tot = ((y - y.mean()) ** 2).sum()
    return {
        "pearson": _pearson(y, f),
        "spearman": _pearson(rankdata(y), rankdata(f)),
        "r2": float(1 - ((y - f) ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
        "mae": float(np.abs(y - f).mean()),
    }


def survival_metrics(time: Any, risk: Any, event: Any) -> dict[str, float]:
    """``{"c_index": Harrell's C}`` (see :func:`concordance_index` and :data:`SURVIVAL_METRICS`)."""
    return {"c_index": concordance_index(time, risk, event)}


_NAMED: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auroc": auroc,
    "auroc_ovo": lambda y, s: auroc(y, s, multi_class="ovo"),
    "accuracy": lambda y, s: accuracy(y, _predicted(s)),
    "balanced_accuracy": lambda y, s: balanced_accuracy(y, _predicted(s)),
    "f1": lambda y, s: f1_score(y, _predicted(s)),
    "f1_weighted": lambda y, s: f1_score(y, _predicted(s), average="weighted"),
    "kappa": lambda y, s: cohen_kappa(y, _predicted(s), n_classes=s.shape[1] if s.ndim == 2 else None),
    "kappa_quadratic": lambda y, s: cohen_kappa(
        y, _predicted(s), weights="quadratic", n_classes=s.shape[1] if s.ndim == 2 else None
    ),
}


class BootstrapCI(NamedTuple):
    """A metric on the full data with its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    n_boot: int  # resamples drawn
    n_valid: int  # resamples the metric was defined on (e.g. AUROC needs two classes)


def bootstrap_metrics(
    fn: Callable[..., dict[str, float]],
    arrays: Sequence[Any],
    *,
    groups: Any = None,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    valid: Callable[..., bool] | None = None,
) -> dict[str, BootstrapCI]:
    """Percentile bootstrap of every metric ``fn(*arrays)`` returns (a dict of floats).

    Parameters
    ----------
    fn : callable(*arrays) -> dict[str, float]
    arrays : sequence of (n, ...) arrays, resampled together along their first axis.
    groups : array_like (n,), optional
        Resample whole groups (e.g. patients) with replacement instead of rows.
    n, seed, level : resamples, seed of ``numpy.random.default_rng``, interval level.
    valid : callable(*resampled) -> bool, optional
        Resamples failing it are skipped (besides those where a metric is NaN).

    Returns
    -------
    dict[str, BootstrapCI]
        NaN bounds (``n_valid`` 0) for a metric undefined on every resample.
    """
    if n < 1 or not 0 < level < 1:
        raise InvalidParameterError(f"n must be >= 1 and level in (0, 1), got n={n}, level={level}")
    arrays = [_arr(a) for a in arrays]
    _check_len(*arrays)
    size = len(arrays[0])
    if groups is None:
        members = None
    else:
        g = _arr(groups).reshape(-1)
        _check_len(arrays[0], g)
        _, inverse = np.unique(g, return_inverse=True)
        order = np.argsort(inverse, kind="mergesort")
        members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    rng = np.random.default_rng(seed)
    estimate = fn(*arrays)
    draws: dict[str, list[float]] = {m: [] for m in estimate}
    for _ in range(n):
        if members is None:
            idx = rng.integers(0, size, size)
        else:
            idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        sample = [a[idx] for a in arrays]
        if valid is not None and not valid(*sample):
            continue
        for m, v in fn(*sample).items():
            if not np.isnan(v):
                draws[m].append(v)
    tail = (1 - level) / 2
    out = {}
    for m, vals in draws.items():
        lo, hi = np.quantile(vals, [tail, 1 - tail]) if vals else (np.nan, np.nan)
        out[m] = BootstrapCI(float(estimate[m]), float(lo), float(hi), n, len(vals))
    return out


def bootstrap_ci(
    y_true: Any,
    y_score: Any,
    metric: str | Callable[[np.ndarray, np.ndarray], float] = "auroc",
    *,
    groups: Any = None,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapCI:
    """Percentile bootstrap CI of one metric over ``n`` resamples of the slides (or of ``groups``).

    Parameters
    ----------
    y_true : (n,) class indices. y_score : (n,) or (n, C) scores.
    metric : str or callable(y_true, y_score) -> float
        A name of :data:`CLASSIFICATION_METRICS` or a callable (NaN = undefined on that resample).
    groups, n, seed, level : see :func:`bootstrap_metrics`.

    Returns
    -------
    BootstrapCI
    """
    fn = _NAMED.get(metric) if isinstance(metric, str) else metric
    if fn is None:
        raise InvalidParameterError(f"unknown metric {metric!r}; use one of {sorted(_NAMED)} or a callable")

    def one(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
        try:
            return {"m": float(fn(y, s))}
        except (ValueError, ZeroDivisionError):  # e.g. a scikit-learn metric on a one-class resample
            return {"m": float("nan")}

    return bootstrap_metrics(one, (y_true, y_score), groups=groups, n=n, seed=seed, level=level)["m"]
