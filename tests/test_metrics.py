"""slidescope.metrics against scikit-learn and lifelines (test-only oracles), with ties and missing classes."""

from __future__ import annotations

import itertools
import math
import warnings

import lifelines.utils as lifelines_utils
import numpy as np
import pytest
import sklearn.metrics as sk

from slidescope import metrics
from slidescope.errors import InvalidParameterError

SEEDS = list(range(6))


def _scores(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """Probabilities rounded to 1 decimal: many ties within and across classes."""
    p = rng.dirichlet(np.ones(c), n).round(1)
    p[:, -1] = 1 - p[:, :-1].sum(1)  # rows still sum to 1 (scikit-learn's multiclass AUROC checks this)
    return p


def _quiet(fn, *args, **kwargs):
    """scikit-learn warns on undefined/degenerate cases; pytest turns warnings into errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("seed", SEEDS)
def test_rankdata_average_ties(seed: int) -> None:
    x = np.random.default_rng(seed).integers(0, 7, 200).astype(float)
    r = metrics.rankdata(x)
    # the definition: rank = 1 + (number below) + (number tied - 1) / 2
    expected = np.array([1 + (x < v).sum() + ((x == v).sum() - 1) / 2 for v in x])
    np.testing.assert_array_equal(r, expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_auroc_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = (y + rng.normal(0, 1.5, 300)).round(1)  # ties
    assert metrics.auroc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    two = np.column_stack([1 - s, s])
    assert metrics.auroc(y, two) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize(("seed", "c"), list(itertools.product(SEEDS, (3, 4, 5))))
def test_multiclass_auroc_ovr_ovo_match_sklearn(seed: int, c: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, 250)
    p = _scores(rng, 250, c)
    for mc in ("ovr", "ovo"):
        ref = sk.roc_auc_score(y, p, multi_class=mc, average="macro", labels=np.arange(c))
        assert metrics.auroc(y, p, multi_class=mc) == pytest.approx(ref, abs=1e-12), mc


@pytest.mark.parametrize("seed", SEEDS)
def test_auroc_missing_class_is_left_out(seed: int) -> None:
    """The documented behaviour: classes absent from y_true leave the macro average; < 2 present -> NaN."""
    rng = np.random.default_rng(seed)
    c = 4
    y = rng.choice([0, 1, 3], 200)  # class 2 absent
    p = _scores(rng, 200, c)
    present = [0, 1, 3]
    ovr = np.mean([sk.roc_auc_score(y == k, p[:, k]) for k in present])
    ovo = np.mean(
        [
            (sk.roc_auc_score(y[m] == a, p[m, a]) + sk.roc_auc_score(y[m] == b, p[m, b])) / 2
            for a, b in itertools.combinations(present, 2)
            for m in [(y == a) | (y == b)]
        ]
    )
    assert metrics.auroc(y, p) == pytest.approx(ovr, abs=1e-12)
    assert metrics.auroc(y, p, multi_class="ovo") == pytest.approx(ovo, abs=1e-12)
    assert math.isnan(metrics.auroc(np.zeros(10, int), p[:10]))
    assert math.isnan(metrics.auroc([1, 1], [0.2, 0.3]))
    assert math.isnan(metrics.auroc([0, 1], [np.nan, 0.3]))


@pytest.mark.parametrize(("seed", "missing"), list(itertools.product(SEEDS, (False, True))))
def test_label_metrics_match_sklearn(seed: int, missing: bool) -> None:
    rng = np.random.default_rng(seed)
    c = 5
    y = rng.choice([0, 1, 2, 4] if missing else list(range(c)), 150)  # class 3 never true when missing
    pred = rng.choice(
        [0, 1, 2, 3] if missing else list(range(c)), 150
    )  # class 4 never predicted when missing
    pred[:60] = y[:60]  # better than chance
    assert metrics.accuracy(y, pred) == pytest.approx(sk.accuracy_score(y, pred), abs=1e-12)
    assert metrics.balanced_accuracy(y, pred) == pytest.approx(
        _quiet(sk.balanced_accuracy_score, y, pred), abs=1e-12
    )
    for avg in ("macro", "weighted"):
        ref = _quiet(sk.f1_score, y, pred, average=avg, zero_division=0)
        assert metrics.f1_score(y, pred, average=avg) == pytest.approx(ref, abs=1e-12), avg
    for w in (None, "quadratic", "linear"):
        ref = sk.cohen_kappa_score(y, pred, weights=w, labels=np.arange(c))
        assert metrics.cohen_kappa(y, pred, weights=w, n_classes=c) == pytest.approx(ref, abs=1e-12), w


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_all_names(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 120)
    p = _scores(rng, 120, 3)
    out = metrics.classification_metrics(y, p)
    assert tuple(out) == metrics.CLASSIFICATION_METRICS
    pred = p.argmax(1)
    assert out["auroc_ovo"] == pytest.approx(sk.roc_auc_score(y, p, multi_class="ovo"), abs=1e-12)
    assert out["f1_weighted"] == pytest.approx(sk.f1_score(y, pred, average="weighted"), abs=1e-12)
    assert out["kappa_quadratic"] == pytest.approx(
        sk.cohen_kappa_score(y, pred, weights="quadratic"), abs=1e-12
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_concordance_index_matches_lifelines(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 120
    t = rng.integers(1, 15, n).astype(float)  # tied times
    e = rng.integers(0, 2, n)
    r = rng.integers(0, 6, n).astype(float) - 0.1 * t  # tied risks, informative
    ref = lifelines_utils.concordance_index(t, -r, e)
    assert metrics.concordance_index(t, r, e) == pytest.approx(ref, abs=1e-12)


def test_bootstrap_one_type_groups_and_undefined() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    s = y + rng.normal(0, 1, 120)
    ci = metrics.bootstrap_ci(y, s, "auroc", n=200, seed=0)
    assert isinstance(ci, metrics.BootstrapCI) and ci.n_boot == 200 and ci.n_valid == 200
    assert ci.low < ci.estimate < ci.high
    assert ci.estimate == pytest.approx(sk.roc_auc_score(y, s))
    # groups: 20 patients of 6 slides each share a label and a score offset; resampling patients keeps
    # them together, so the interval is wider than resampling slides as if independent
    patient = np.repeat(np.arange(20), 6)
    yp = (patient % 2).astype(int)
    sp = yp * 0.5 + rng.normal(0, 1, 20)[patient] + rng.normal(0, 0.1, 120)
    by_slide = metrics.bootstrap_ci(yp, sp, "auroc", n=400, seed=1)
    by_patient = metrics.bootstrap_ci(yp, sp, "auroc", groups=patient, n=400, seed=1)
    assert by_patient.high - by_patient.low > by_slide.high - by_slide.low
    many = metrics.bootstrap_metrics(metrics.classification_metrics, (y, np.column_stack([1 - s, s])), n=50)
    assert set(many) == set(metrics.CLASSIFICATION_METRICS)
    assert all(isinstance(v, metrics.BootstrapCI) for v in many.values())
    tiny = metrics.bootstrap_ci([0, 1, 1], [0.1, 0.9, 0.8], "auroc", n=200, seed=1)
    assert tiny.n_valid < 200  # one-class resamples are undefined and skipped
    none = metrics.bootstrap_ci([1, 1], [0.2, 0.3], "auroc", n=20)
    assert math.isnan(none.estimate) and math.isnan(none.low) and none.n_valid == 0
    with pytest.raises(InvalidParameterError, match="metric"):
        metrics.bootstrap_ci(y, s, "nope")
    with pytest.raises(InvalidParameterError, match="length"):
        metrics.bootstrap_ci(y, s[:-1])


def test_heatmap_rank_normalisation_scales() -> None:
    """200k tiles normalise (the old per-tie loop was quadratic in the number of distinct values)."""
    from slidescope.mil.heatmap import normalize_scores

    s = np.random.default_rng(0).random(200_000).round(4)  # ties
    out = normalize_scores(s)
    expected = (metrics.rankdata(s) - 1) / (len(s) - 1)
    np.testing.assert_allclose(out, expected)
    small = normalize_scores(np.array([3.0, 1.0, 3.0, 2.0]))
    np.testing.assert_allclose(small, [(2.5) / 3, 0, 2.5 / 3, 1 / 3])


@pytest.mark.parametrize("seed", SEEDS)
def test_regression_metrics_match_scipy_sklearn(seed: int) -> None:
    from scipy import stats

    rng = np.random.default_rng(seed)
    y = rng.normal(0, 2, 120).round(0)  # ties on both sides
    f = (0.6 * y + rng.normal(0, 1.5, 120)).round(0)
    m = metrics.regression_metrics(y, f)
    assert set(m) == set(metrics.REGRESSION_METRICS)
    assert m["pearson"] == pytest.approx(stats.pearsonr(y, f).statistic, abs=1e-12)
    assert m["spearman"] == pytest.approx(stats.spearmanr(y, f).statistic, abs=1e-12)
    assert m["r2"] == pytest.approx(sk.r2_score(y, f), abs=1e-12)
    assert m["mae"] == pytest.approx(sk.mean_absolute_error(y, f), abs=1e-12)
    # constant targets: the correlations and R² are undefined (NaN here), MAE is not
    const = metrics.regression_metrics(np.ones(5), np.arange(5.0))
    assert all(math.isnan(const[k]) for k in ("pearson", "spearman", "r2")) and const["mae"] == 1.4
    with pytest.raises(InvalidParameterError, match="length"):
        metrics.regression_metrics(y, f[:-1])


def test_survival_metrics_is_the_c_index() -> None:
    rng = np.random.default_rng(0)
    t, r, e = rng.integers(1, 20, 80).astype(float), rng.normal(size=80), rng.integers(0, 2, 80)
    assert metrics.survival_metrics(t, r, e) == {"c_index": metrics.concordance_index(t, r, e)}
    assert metrics.survival_metrics(t, r, e)["c_index"] == pytest.approx(
        lifelines_utils.concordance_index(t, -r, e), abs=1e-12
    )
