"""Few-shot adapters on synthetic Gaussian classes in a CLIP-like normalised space."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slidescope.errors import InvalidParameterError
from slidescope.vlm.fewshot import (
    bootstrap_ci,
    gda,
    knn,
    linear_probe,
    simpleshot,
    tip_adapter,
    tip_adapter_grid,
)
from slidescope.vlm.zeroshot import auroc

D, C = 32, 3


def _data(n_per_class: int, seed: int, spread: float = 0.6, means: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(seed)
    if means is None:
        means = F.normalize(torch.randn(C, D, generator=torch.Generator().manual_seed(1234)), dim=1)
    y = torch.arange(C).repeat_interleave(n_per_class)
    x = means[y] + spread * torch.randn(len(y), D, generator=g) / D**0.5
    return F.normalize(x, dim=1), y, means


@pytest.fixture(scope="module")
def few():
    return _data(4, seed=0)


@pytest.fixture(scope="module")
def test_set():
    return _data(100, seed=1)


@pytest.mark.parametrize(
    "fit",
    [
        lambda X, y: linear_probe(X, y, lambdas=[1e-2, 1e-1, 1.0, 10.0]),
        lambda X, y: simpleshot(X, y),
        lambda X, y: knn(X, y, k=3),
        lambda X, y: gda(X, y),
        lambda X, y: gda(X, y, shrinkage="ledoit-wolf"),
        lambda X, y: gda(X, y, shrinkage=0.5),
        lambda X, y: tip_adapter(X, y),
    ],
    ids=["linear-probe", "simpleshot", "knn", "gda-ks", "gda-lw", "gda-fixed", "tip-adapter"],
)
def test_four_shots_per_class_reach_high_auroc(fit, few, test_set) -> None:
    X, y, _ = few
    Xt, yt, _ = test_set
    model = fit(X, y)
    proba = model.predict_proba(Xt)
    assert proba.shape == (len(yt), C)
    torch.testing.assert_close(proba.sum(1), torch.ones(len(yt), dtype=proba.dtype))
    assert auroc(yt, proba) > 0.95
    assert (model.predict(Xt) == yt).double().mean() > 0.85
    assert model.predict_proba(Xt.numpy()).shape == (len(yt), C)  # numpy in works too


def test_linear_probe_sweeps_lambda_on_validation(few, test_set) -> None:
    X, y, _ = _data(10, seed=3)
    Xv, yv, _ = _data(10, seed=4)
    probe = linear_probe(X, y, X_val=Xv, y_val=yv, lambdas=[1e-3, 1.0, 1e3, 1e6])
    assert set(probe.val_losses) == {1e-3, 1.0, 1e3, 1e6}
    assert probe.lam == min(probe.val_losses, key=probe.val_losses.get)
    assert probe.lam < 1e6  # a huge penalty flattens the probe: worst log-loss
    assert probe.val_losses[1e6] > probe.val_losses[probe.lam]


def _noisy_prior(X: torch.Tensor, means: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    """Zero-shot logits 100 * x T with text directions far from the true class means."""
    g = torch.Generator().manual_seed(seed)
    T = F.normalize(means + noise * torch.randn(means.shape, generator=g), dim=1)
    return 100.0 * F.normalize(X, dim=1) @ T.T


def test_gda_with_a_zero_shot_prior_beats_zero_shot_alone() -> None:
    X, y, means = _data(4, seed=10, spread=1.2)
    Xv, yv, _ = _data(4, seed=11, spread=1.2)
    Xt, yt, _ = _data(200, seed=12, spread=1.2)
    prior = lambda x: _noisy_prior(x, means, noise=0.5, seed=5)  # noqa: E731
    zs_acc = (prior(Xt).argmax(1) == yt).double().mean()
    model = gda(X, y, X_val=Xv, y_val=yv, zs_val=prior(Xv))
    assert model.alpha is not None and model.uses_zero_shot
    ens = model.predict_proba(Xt, zero_shot_logits=prior(Xt))
    ens_acc = (ens.argmax(1) == yt).double().mean()
    assert ens_acc > zs_acc + 0.05
    assert auroc(yt, ens) > auroc(yt, torch.softmax(prior(Xt), 1))
    with pytest.raises(InvalidParameterError, match="zero_shot_logits"):
        model.predict_proba(Xt)


def test_gda_formula_matches_the_reference() -> None:
    X, y, _ = _data(4, seed=20)
    model = gda(X, y, normalize=False)
    Xd, yd = X.double(), y
    mu = torch.stack([Xd[yd == k].mean(0) for k in range(C)])
    Xc = Xd - mu[yd]
    cov = torch.cov(Xc.T)
    P = D * torch.linalg.pinv((len(X) - 1) * cov + torch.trace(cov) * torch.eye(D, dtype=torch.float64))
    torch.testing.assert_close(model.weight, P @ mu.T)
    torch.testing.assert_close(model.bias, np.log(1 / C) - 0.5 * torch.einsum("kd,de,ke->k", mu, P, mu))


def test_tip_adapter_cache_and_blend() -> None:
    X, y, means = _data(4, seed=30)
    Xv, yv, _ = _data(6, seed=31)
    Xt, yt, _ = _data(100, seed=32)
    model = tip_adapter(X, y, alpha=2.0, beta=3.0)
    sims = F.normalize(Xt.double(), dim=1) @ F.normalize(X.double(), dim=1).T
    expected = 2.0 * torch.exp(-3.0 * (1 - sims)) @ F.one_hot(y, C).double()
    torch.testing.assert_close(model.logits(Xt), expected, atol=1e-5, rtol=1e-5)
    prior = lambda x: _noisy_prior(x, means, noise=1.0, seed=6)  # noqa: E731
    tuned = tip_adapter(X, y, X_val=Xv, y_val=yv, zs_val=prior(Xv))
    acc = (tuned.predict(Xt, zero_shot_logits=prior(Xt)) == yt).double().mean()
    assert acc >= (prior(Xt).argmax(1) == yt).double().mean()
    betas, alphas = tip_adapter_grid()  # the reference's ImageNet grid: beta < 7, alpha < 3
    assert tuned.alpha in alphas and tuned.beta in betas and tuned.tuning == "validation"


def test_simpleshot_centers_before_normalising() -> None:
    X = torch.tensor([[10.0, 1.0], [10.0, -1.0]])  # far from the origin: only centering separates them
    model = simpleshot(X, torch.tensor([0, 1]))
    assert model.predict(torch.tensor([[10.0, 0.5], [10.0, -0.5]])).tolist() == [0, 1]


def test_knn_k1_is_nearest_neighbour() -> None:
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    model = knn(X, torch.tensor([0, 1, 1]), k=1)
    assert model.predict(torch.tensor([[1.0, 0.1], [0.6, 0.8]])).tolist() == [0, 1]
    assert knn(X, torch.tensor([0, 1, 1]), k=10).k == 3


def test_errors() -> None:
    X = torch.randn(4, D)
    with pytest.raises(InvalidParameterError, match=r"classes \[1\]"):
        simpleshot(X, torch.tensor([0, 0, 2, 2]))
    with pytest.raises(InvalidParameterError, match="labels"):
        gda(X, torch.tensor([0, 1]))
    with pytest.raises(InvalidParameterError, match="NaN"):
        knn(torch.full((2, D), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(InvalidParameterError, match="shrinkage"):
        gda(X, torch.tensor([0, 1, 0, 1]), shrinkage=2.0)
    model = simpleshot(X, torch.tensor([0, 1, 0, 1]))
    with pytest.raises(InvalidParameterError, match="d="):
        model.predict_proba(torch.randn(2, D + 1))


def test_bootstrap_ci_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    s = y + rng.normal(0, 0.8, 100)
    ci = bootstrap_ci(y, s, "auroc", n=300, seed=0)
    assert ci.low < ci.estimate < ci.high and 0.7 < ci.estimate < 0.95
    assert ci.n_valid == 300
    assert bootstrap_ci(y, s, "auroc", n=300, seed=0) == ci  # seeded
    tiny = bootstrap_ci(np.array([0, 1, 1]), np.array([0.1, 0.9, 0.8]), "auroc", n=200, seed=1)
    assert tiny.n_valid < 200  # single-class resamples skipped
    acc = bootstrap_ci(y, np.stack([1 - s, s], 1), "accuracy", n=100)
    assert 0 <= acc.low <= acc.estimate <= acc.high <= 1
    with pytest.raises(InvalidParameterError, match="metric"):
        bootstrap_ci(y, s, "no-such-metric")


def test_gda_one_shot_without_prior_is_refused_not_constant() -> None:
    """One slide per class gives a zero class-centred covariance: W = 0, the same prediction for every slide."""
    import torch

    from slidescope.errors import InvalidParameterError
    from slidescope.vlm.fewshot import gda

    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 8, generator=g)
    with pytest.raises(InvalidParameterError, match="at least 2 support slides"):
        gda(X, [0, 1])
    # with a zero-shot prior it is defined (prior + alpha * constant)
    clf = gda(X, [0, 1], zs=torch.randn(2, 2, generator=g))
    assert clf.tuning == "default"
    # two slides in one class are enough for a covariance
    gda(torch.randn(3, 8, generator=g), [0, 0, 1])
