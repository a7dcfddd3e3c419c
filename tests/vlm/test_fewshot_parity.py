"""Few-shot methods against their reference code (golden files) and scikit-learn; hyperparameter choice that
never scores a slide with a model that saw it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import linear_model
from slidescope.errors import InvalidParameterError

from slidescope.vlm.fewshot import (
    GDA_DEFAULT_ALPHA,
    TIP_INIT_ALPHA,
    TIP_INIT_BETA,
    gda,
    linear_probe,
    simpleshot,
    simpleshot_cosine,
    tip_adapter,
)

GOLDEN = Path(__file__).parents[1] / "golden"


def _golden(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / name) as z:
        data = {k: z[k] for k in z.files}
    assert "provenance" in data and "@" in str(data["provenance"])  # names the reference commit
    return data


# --------------------------------------------------------------------------------- linear probe vs sklearn


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("lam", [0.1, 3.0])
def test_linear_probe_matches_sklearn_logistic_regression(n_classes: int, lam: float) -> None:
    rng = np.random.default_rng(n_classes)
    X = rng.normal(size=(40, 6)) + np.repeat(rng.normal(size=(n_classes, 6)), 40 // n_classes + 1, 0)[:40]
    y = np.resize(np.arange(n_classes), 40)
    X_test = rng.normal(size=(10, 6))
    ref = linear_model.LogisticRegression(C=1.0 / lam, tol=1e-12, max_iter=10_000).fit(X, y)
    probe = linear_probe(X, y, lambdas=[lam], max_iter=2000)  # one lambda: no selection, fit on all of X
    W, b = probe.weight.numpy(), probe.bias.numpy()
    if n_classes == 2:  # one logit, as scikit-learn: column 0 is zero
        assert np.all(W[:, 0] == 0) and b[0] == 0
        np.testing.assert_allclose(W[:, 1], ref.coef_[0], atol=1e-5)
        np.testing.assert_allclose(b[1], ref.intercept_[0], atol=1e-5)
    else:  # multinomial: intercepts are defined up to a shared constant
        np.testing.assert_allclose(W.T, ref.coef_, atol=1e-5)
        np.testing.assert_allclose(b - b.mean(), ref.intercept_ - ref.intercept_.mean(), atol=1e-5)
    np.testing.assert_allclose(probe.predict_proba(X_test).numpy(), ref.predict_proba(X_test), atol=1e-5)


def test_linear_probe_says_how_lambda_was_chosen() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(12, 4)), np.resize([0, 1], 12)
    assert linear_probe(X, y, lambdas=[0.1, 1.0]).tuning == "cross-validation"
    assert linear_probe(X, y, X_val=X[:4], y_val=y[:4], lambdas=[0.1, 1.0]).tuning == "validation"
    one_shot = linear_probe(X[:2], y[:2], lambdas=[0.1, 1.0])  # nothing to hold out: scikit-learn's C=1
    assert one_shot.tuning == "default" and one_shot.hyperparameters == {"lambda": 1.0}


@pytest.mark.parametrize("n_classes", [2, 3])
def test_linear_probe_cross_validation_chooses_as_scikit_learn(n_classes: int) -> None:
    """Without a validation set, lambda is scikit-learn's ``LogisticRegressionCV`` choice (same folds of every
    repeat, scoring by log-loss, C = 1/lambda) and the refitted probe equals its ``refit=True`` model."""
    from slidescope.vlm._fewshot_core import _stratified_folds

    rng = np.random.default_rng(n_classes)
    shots, d = 8, 6
    y = np.repeat(np.arange(n_classes), shots)
    X = rng.normal(size=(n_classes, d))[y] * 0.8 + rng.normal(size=(len(y), d))
    lambdas = [0.03, 0.3, 3.0, 30.0, 300.0]
    probe = linear_probe(X, y, lambdas=lambdas, folds=4, seed=3)
    assert probe.tuning == "cross-validation"
    cv = []  # 3 repeats (the default) of 4 folds, repeat r dealt with seed 1000 * 3 + r
    for r in range(3):
        fold = _stratified_folds(torch.from_numpy(y), 4, 3000 + r).numpy()
        assert sorted(np.bincount(fold)) == [2 * n_classes] * 4  # equal folds: a mean over folds = our sum
        cv += [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(4)]
    ref = linear_model.LogisticRegressionCV(
        Cs=[1 / lam for lam in lambdas],
        cv=cv,
        scoring="neg_log_loss",
        l1_ratios=(0.0,),
        use_legacy_attributes=False,
        tol=1e-10,
        max_iter=10_000,
    ).fit(X, y)
    assert probe.lam == pytest.approx(1 / float(np.ravel(ref.C_)[0]))
    np.testing.assert_allclose(probe.predict_proba(X).numpy(), ref.predict_proba(X), atol=1e-5)


# ------------------------------------------------------------------------------------- reference goldens


def test_tip_adapter_matches_reference_search_and_predictions() -> None:
    g = _golden("tip_adapter.npz")
    zs = lambda x: 100.0 * torch.from_numpy(x).double() @ torch.from_numpy(g["text"]).double().T  # noqa: E731
    model = tip_adapter(
        g["support"],
        g["y_support"],
        X_val=g["val"],
        y_val=g["y_val"],
        zs_val=zs(g["val"]),
        search_scale=tuple(g["search_scale"]),
        search_step=tuple(int(v) for v in g["search_step"]),
    )
    assert model.tuning == "validation"
    assert model.beta == pytest.approx(float(g["best_beta"]), abs=1e-9)
    assert model.alpha == pytest.approx(float(g["best_alpha"]), abs=1e-9)
    assert model.predict(g["test"], zero_shot_logits=zs(g["test"])).tolist() == g["test_pred"].tolist()


def test_gda_matches_reference_alpha_and_predictions() -> None:
    g = _golden("gda.npz")
    zs = lambda x: 100.0 * torch.from_numpy(x).double() @ torch.from_numpy(g["text"]).double().T  # noqa: E731
    model = gda(g["support"], g["y_support"], X_val=g["val"], y_val=g["y_val"], zs_val=zs(g["val"]))
    assert model.tuning == "validation" and model.alpha == float(g["best_alpha"])
    pred = model.predict(g["test"], zero_shot_logits=zs(g["test"]))
    assert pred.tolist() == g["test_pred"].tolist()
    assert 100 * (pred.numpy() == g["y_test"]).mean() == pytest.approx(float(g["test_acc"]))


@pytest.mark.parametrize("norm", ["UN", "L2N", "CL2N"])
def test_simpleshot_matches_reference_nearest_centroid(norm: str) -> None:
    g = _golden("simpleshot.npz")
    model = simpleshot(g["support"], g["y_support"], norm=norm, X_base=g["base"])  # type: ignore[arg-type]
    assert model.predict(g["query"]).tolist() == g[f"pred_{norm}"].tolist()
    if norm == "CL2N":
        assert model.center_source == "base"
        # the cosine variant is a different method: it disagrees with the reference on these queries
        cosine = simpleshot_cosine(g["support"], g["y_support"]).predict(g["query"])
        assert (cosine.numpy() != g["pred_CL2N"]).any()


def test_simpleshot_without_base_set_centres_on_support_mean() -> None:
    g = _golden("simpleshot.npz")
    model = simpleshot(g["support"], g["y_support"])
    assert model.center_source == "support"
    torch.testing.assert_close(model.center, torch.from_numpy(g["support"]).double().mean(0))


# ------------------------------------------------------------------ hyperparameters never tuned on themselves


def _problem(seed: int, shots: int = 4, c: int = 3, d: int = 12):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(c, d))
    y = np.repeat(np.arange(c), shots)
    X = means[y] + 1.5 * rng.normal(size=(len(y), d))
    zs = (
        5.0
        * F.normalize(torch.from_numpy(X), dim=1)
        @ F.normalize(torch.from_numpy(means + rng.normal(size=(c, d))), dim=1).T
    )
    return X, y, zs


def _acc_and_loss(logits: torch.Tensor, y: np.ndarray) -> tuple[float, float]:
    t = torch.from_numpy(y)
    return float((logits.argmax(1) == t).double().mean()), float(F.cross_entropy(logits, t))


def test_tip_adapter_leave_one_out_equals_refitting_without_each_slide() -> None:
    X, y, zs = _problem(1)
    alphas, betas = [0.1, 1.0, 3.0, 10.0], [0.5, 2.0, 5.0]
    model = tip_adapter(X, y, zs=zs, alphas=alphas, betas=betas)
    assert model.tuning == "leave-one-out" and model.uses_zero_shot
    scores = []
    for b in betas:  # brute force: each slide scored by a cache built without it
        for a in alphas:
            logits = []
            for i in range(len(y)):
                keep = np.arange(len(y)) != i
                m = tip_adapter(X[keep], y[keep], alpha=a, beta=b, zs=zs[keep], n_classes=3)
                logits.append(m.logits(X[i : i + 1], zero_shot_logits=zs[i : i + 1]))
            scores.append(_acc_and_loss(torch.cat(logits), y) + ((a, b),))
    best = max(scores, key=lambda t: (t[0], -t[1]))[2]  # best accuracy, ties: lower log-loss
    assert (model.alpha, model.beta) == best
    assert model.hyperparameters == {"alpha": best[0], "beta": best[1]}


def test_gda_leave_one_out_equals_refitting_without_each_slide() -> None:
    X, y, zs = _problem(2)
    model = gda(X, y, zs=zs)
    assert model.tuning == "leave-one-out"
    grid = list(np.logspace(-4, 2, 61))  # the default: 10 per decade over the reference grid's span
    assert model.alpha in grid
    losses = []
    for a in grid:  # brute force: each slide scored by GDA fitted without it
        logits = []
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            m = gda(X[keep], y[keep], zs=zs[keep], alpha=a, n_classes=3)
            logits.append(m.logits(X[i : i + 1], zero_shot_logits=zs[i : i + 1]))
        losses.append(_acc_and_loss(torch.cat(logits), y)[1])
    assert model.alpha == pytest.approx(grid[int(np.argmin(losses))])  # the lowest leave-one-out log-loss
    assert gda(X, y, zs=zs, loo_alphas=[0.5]).alpha == 0.5


def test_one_shot_uses_the_reference_defaults() -> None:
    X, y, zs = _problem(4, shots=1)
    tip = tip_adapter(X, y, zs=zs)
    assert tip.tuning == "default" and (tip.alpha, tip.beta) == (TIP_INIT_ALPHA, TIP_INIT_BETA)
    g = gda(X, y, zs=zs)
    assert g.tuning == "default" and g.alpha == GDA_DEFAULT_ALPHA
    with pytest.raises(InvalidParameterError, match="at least 2 support slides"):
        gda(X, y)  # no prior and one slide per class: a zero covariance, the same prediction for every slide
