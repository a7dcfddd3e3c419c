"""Few-shot and training-free adaptation on slide embeddings (``docs/REFERENCE-models.md`` §6).

Every function takes embeddings ``X`` (n, d) with integer labels ``y`` (n,) in ``[0, C)`` and returns a fitted
object whose ``predict_proba(X)`` gives (B, C) probabilities:

* :func:`linear_probe`: L2-regularised logistic regression, lambda swept on a validation split (TITAN protocol);
* :func:`simpleshot`: class prototypes after centering and L2 normalisation;
* :func:`knn`: cosine k-nearest neighbours;
* :func:`gda`: Gaussian discriminant analysis with a shrunk shared covariance, optionally ensembled with
  zero-shot logits (alpha chosen on validation), as Wang et al. (ICLR 2024);
* :func:`tip_adapter`: the Tip-Adapter cache model blended with zero-shot logits.

Zero-shot logits are any (B, C) logits, e.g. ``torch.log(zero_shot_logits(...))`` or ``100 * x @ T``.
:func:`bootstrap_ci` gives percentile confidence intervals of any metric (1000 resamples, as TITAN).
Computation is in float64 on CPU; results are float32-free ``torch`` tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InvalidParameterError
from .zeroshot import auroc

log = logging.getLogger(__name__)

__all__ = [
    "FewShotClassifier",
    "linear_probe",
    "simpleshot",
    "knn",
    "gda",
    "tip_adapter",
    "bootstrap_ci",
    "BootstrapCI",
    "accuracy",
    "balanced_accuracy",
    "DEFAULT_LAMBDAS",
    "GDA_ALPHAS",
]

ArrayLike = Tensor | np.ndarray | Sequence[float]
DEFAULT_LAMBDAS = tuple(float(v) for v in np.logspace(-5, 6, 45))  # TITAN's linear-probe grid (C = 1/lambda)
GDA_ALPHAS = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
TIP_BETAS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.0)
TIP_ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0)


# ------------------------------------------------------------------------------------------- helpers


def _x(X: ArrayLike, name: str = "X", dim: int | None = None) -> Tensor:
    t = torch.as_tensor(np.asarray(X) if not isinstance(X, Tensor) else X.detach().cpu()).to(torch.float64)
    if t.ndim != 2 or t.shape[0] == 0:
        raise InvalidParameterError(f"{name} must be a non-empty (n, d) array, got shape {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise InvalidParameterError(f"{name} has d={t.shape[1]}, the model was fitted on d={dim}")
    if not torch.isfinite(t).all():
        raise InvalidParameterError(f"{name} holds NaN or inf values")
    return t


def _y(y: ArrayLike, n: int, n_classes: int | None, name: str = "y") -> tuple[Tensor, int]:
    t = torch.as_tensor(np.asarray(y.cpu() if isinstance(y, Tensor) else y)).to(torch.long).ravel()
    if t.numel() != n:
        raise InvalidParameterError(f"{name} has {t.numel()} labels for {n} embeddings")
    if int(t.min()) < 0:
        raise InvalidParameterError(f"{name} must hold class indices 0..C-1, got {int(t.min())}")
    c = n_classes if n_classes is not None else int(t.max()) + 1
    if int(t.max()) >= c:
        raise InvalidParameterError(f"{name} holds class {int(t.max())} but n_classes={c}")
    return t, c


def _check_all_classes(y: Tensor, n_classes: int) -> None:
    missing = sorted(set(range(n_classes)) - set(y.tolist()))
    if missing:
        raise InvalidParameterError(f"classes {missing} have no training example; give at least one per class")


def _zs(zs: ArrayLike | None, n: int, n_classes: int, name: str) -> Tensor | None:
    if zs is None:
        return None
    t = _x(zs, name)
    if t.shape != (n, n_classes):
        raise InvalidParameterError(f"{name} must have shape ({n}, {n_classes}), got {tuple(t.shape)}")
    return t


def _nll(logits: Tensor, y: Tensor) -> float:
    return float(F.cross_entropy(logits, y))


def _acc(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(1) == y).double().mean())


def _select(candidates: list[tuple[object, Tensor]], y_val: Tensor) -> object:
    """Pick the candidate with the best validation accuracy, ties broken by log-loss."""
    best = max(candidates, key=lambda c: (_acc(c[1], y_val), -_nll(c[1], y_val)))
    return best[0]


def _stratified_split(y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (train, val); every class keeps at least one training example."""
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = min(int(round(fraction * len(idx))), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


class FewShotClassifier:
    """A fitted few-shot classifier: ``predict_proba(X) -> (B, C)``, ``predict(X) -> (B,)``.

    Subclasses implement :meth:`logits`. ``zero_shot_logits`` is required by models fitted with a
    zero-shot prior and ignored by the others.
    """

    n_classes: int
    dim: int
    uses_zero_shot: bool = False

    def logits(self, X: ArrayLike, zero_shot_logits: ArrayLike | None = None) -> Tensor:
        raise NotImplementedError

    def predict_proba(self, X: ArrayLike, zero_shot_logits: ArrayLike | None = None) -> Tensor:
        """Class probabilities (B, C) of embeddings ``X`` (B, d)."""
        return torch.softmax(self.logits(X, zero_shot_logits), dim=1)

    def predict(self, X: ArrayLike, zero_shot_logits: ArrayLike | None = None) -> Tensor:
        """Predicted class indices (B,)."""
        return self.logits(X, zero_shot_logits).argmax(1)

    def _prior(self, zs: ArrayLike | None, n: int) -> Tensor | None:
        if self.uses_zero_shot and zs is None:
            raise InvalidParameterError(
                f"this {type(self).__name__} was fitted with a zero-shot prior: pass zero_shot_logits= for X too"
            )
        return _zs(zs, n, self.n_classes, "zero_shot_logits") if self.uses_zero_shot else None


# -------------------------------------------------------------------------------------- linear probe


@dataclass
class LinearProbe(FewShotClassifier):
    """Multinomial logistic regression ``X W + b``; ``lam`` is the chosen L2 strength."""

    weight: Tensor
    bias: Tensor
    lam: float
    val_losses: dict[float, float] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:  # type: ignore[override]
        return self.weight.shape[1]

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.weight.shape[0]

    def logits(self, X: ArrayLike, zero_shot_logits: ArrayLike | None = None) -> Tensor:
        return _x(X, dim=self.dim) @ self.weight + self.bias


def _fit_logreg(X: Tensor, y: Tensor, n_classes: int, lam: float, *, max_iter: int,
                init: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Minimise ``sum CE + lam/2 ||W||^2`` (sklearn's objective with C = 1/lam) by L-BFGS."""
    W = torch.zeros(X.shape[1], n_classes, dtype=X.dtype) if init is None else init[0].clone()
    b = torch.zeros(n_classes, dtype=X.dtype) if init is None else init[1].clone()
    W.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(X @ W + b, y, reduction="sum") + 0.5 * lam * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def linear_probe(X: ArrayLike, y: ArrayLike, *, X_val: ArrayLike | None = None, y_val: ArrayLike | None = None,
                 val_fraction: float = 0.25, lambdas: Sequence[float] = DEFAULT_LAMBDAS, max_iter: int = 500,
                 n_classes: int | None = None, seed: int = 0) -> LinearProbe:
    """Logistic-regression probe with the L2 strength chosen by validation log-loss.

    Parameters
    ----------
    X, y : (n, d) embeddings and (n,) class indices.
    X_val, y_val : optional validation set. Without it, ``val_fraction`` of each class is held out (classes
        keep one training example), lambda is chosen there, and the probe is refitted on all of ``X``.
    lambdas : L2 strengths to sweep (TITAN: 45 log-spaced values 1e-5..1e6, ``C = 1/lambda``).
    max_iter : L-BFGS iterations per fit.
    """
    Xt = _x(X)
    yt, c = _y(y, Xt.shape[0], n_classes)
    _check_all_classes(yt, c)
    if not lambdas:
        raise InvalidParameterError("lambdas is empty")
    refit = X_val is None
    if refit:
        tr, va = _stratified_split(yt, val_fraction, seed)
        Xtr, ytr, Xva, yva = Xt[tr], yt[tr], Xt[va], yt[va]
    else:
        Xtr, ytr = Xt, yt
        Xva = _x(X_val, "X_val", dim=Xt.shape[1])
        yva, _ = _y(y_val, Xva.shape[0], c, "y_val") if y_val is not None else (None, c)
        if yva is None:
            raise InvalidParameterError("X_val given without y_val")
    losses: dict[float, float] = {}
    if len(yva) == 0 or len(lambdas) == 1:
        best = float(lambdas[0] if len(lambdas) == 1 else 1.0)
        log.info("linear_probe: no validation examples; using lambda=%g", best)
    else:
        init = None
        for lam in sorted(lambdas, reverse=True):  # strong to weak regularisation, warm-started
            init = _fit_logreg(Xtr, ytr, c, lam, max_iter=max_iter, init=init)
            losses[float(lam)] = _nll(Xva @ init[0] + init[1], yva)
        best = min(losses, key=lambda k: (losses[k], -k))
    W, b = _fit_logreg(Xt if refit else Xtr, yt if refit else ytr, c, best, max_iter=max_iter)
    return LinearProbe(weight=W, bias=b, lam=best, val_losses=losses)


# ---------------------------------------------------------------------------------- SimpleShot / KNN


@dataclass
class SimpleShot(FewShotClassifier):
    """Nearest prototype after centering on the training mean and L2 normalisation (CL2N)."""

    center: Tensor
    prototypes: Tensor
    temperature: float

    @property
    def n_classes(self) -> int:  # type: ignore[override]
        return self.prototypes.shape[0]

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.prototypes.shape[1]

    def logits(self, X: ArrayLike, zero_shot_logits: ArrayLike | None = None) -> Tensor:
        z = F.normalize(_x(X, dim=self.dim) - self.center, dim=1)
        return self.temperature * z @ self.prototypes.T


def simpleshot(X: ArrayLike, y: ArrayLike, *, temperature: float = 10.0, n_classes: int | None = None) -> SimpleShot:
    """SimpleShot / prototype classifier: ``argmax_c cos(normalize(x - m), mu_c)``.

    ``temperature`` scales the cosine logits of ``predict_proba`` (ranking and AUROC do not depend on it).

    Examples
    --------
    >>> clf = simpleshot([[1.0, 0.0], [0.9, 0.2], [0.0, 1.0], [0.1, 0.8]], [0, 0, 1, 1])
    >>> clf.predict_proba([[0.8, 0.1], [0.2, 0.9]]).shape, clf.predict_proba([[0.8, 0.1]]).argmax().item()
    (torch.Size([2, 2]), 0)
    """
    Xt = _x(X)
    yt, c = _y(y, Xt.shape[0], n_classes)
    _check_all_classes(yt, c)
    center = Xt.mean(0)
    z = F.normalize(Xt - center, dim=1)
    protos = torch.zeros(c, Xt.shape[1], dtype=z.dtype).index_add_(0, yt, z)
    return SimpleShot(center=center, prototypes=F.normalize(protos, dim=1), temperature=float(temperature))


@dataclass
class KNN(FewShotClassifier):
    """Cosine k-nearest neighbours; probabilities are the neighbours' (optionally weighted) votes."""

    keys: Tensor
    labels: Tensor
    k: int
    n_classes: int  # type: ignore[misc]
    weighted: bool

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.keys.shape[1]

    def predict_proba(self, X: ArrayLike, zero_shot_logits: ArrayLike | None = None) -> Tensor:
        sims = F.normalize(_x(X, dim=self.dim), dim=1) @ self.keys.T
        top = sims.topk(self.k, dim=1)
        w = torch.exp(top.values) if self.weighted else torch.ones_like(top.values)
        votes = torch.zeros(sims.shape[0], self.n_classes, dtype=sims.dtype)
        votes.scatter_add_(1, self.labels[top.indices], w)
        return votes / votes.sum(1, keepdim=True)

    def logits(self, X: ArrayLike, zero_shot_logits: ArrayLike | None = None) -> Tensor:
        return torch.log(self.predict_proba(X).clamp_min(1e-12))


def knn(X: ArrayLike, y: ArrayLike, *, k: int = 5, weighted: bool = True, n_classes: int | None = None) -> KNN:
    """Cosine KNN (``k`` capped at n). ``weighted`` weighs votes by ``exp(cos)``, which breaks ties."""
    Xt = _x(X)
    yt, c = _y(y, Xt.shape[0], n_classes)
    if k < 1:
        raise InvalidParameterError(f"k must be >= 1, got {k}")
    return KNN(keys=F.normalize(Xt, dim=1), labels=yt, k=min(k, Xt.shape[0]), n_classes=c, weighted=weighted)


# ------------------------------------------------------------------------------------------------ GDA


@dataclass
class GDA(FewShotClassifier):
    """Linear discriminant ``x W + b`` from class means and a shrunk shared precision; ``alpha`` blends it
    with zero-shot logits: ``logits = zs + alpha * (x W + b)`` when fitted with a prior."""

    weight: Tensor
    bias: Tensor
    normalize: bool
    alpha: float | None
    uses_zero_shot: bool = False

    @property
    def n_classes(self) -> int:  # type: ignore[override]
        return self.weight.shape[1]

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.weight.shape[0]

    def gda_logits(self, X: ArrayLike) -> Tensor:
        x = _x(X, dim=self.dim)
        return (F.normalize(x, dim=1) if self.normalize else x) @ self.weight + self.bias

    def logits(self, X: ArrayLike, zero_shot_logits: ArrayLike | None = None) -> Tensor:
        g = self.gda_logits(X)
        zs = self._prior(zero_shot_logits, g.shape[0])
        return g if zs is None else zs + float(self.alpha) * g  # type: ignore[arg-type]


def _precision(Xc: Tensor, shrinkage: Literal["ks", "ledoit-wolf"] | float) -> Tensor:
    n, d = Xc.shape
    if shrinkage == "ks":  # GDA repo: P = D * pinv((n-1) S + tr(S) I), S the unbiased covariance
        S = Xc.T @ Xc / max(n - 1, 1)
        return d * torch.linalg.pinv((n - 1) * S + torch.trace(S) * torch.eye(d, dtype=Xc.dtype))
    S = Xc.T @ Xc / n
    mu = torch.trace(S) / d
    eye = torch.eye(d, dtype=Xc.dtype)
    if shrinkage == "ledoit-wolf":
        d2 = ((S - mu * eye) ** 2).sum()
        b2 = ((Xc**2).sum(1) ** 2).sum() / n**2 - (S**2).sum() / n
        delta = float(torch.clamp(b2 / d2, 0.0, 1.0)) if d2 > 0 else 1.0
    elif isinstance(shrinkage, (int, float)) and 0.0 <= float(shrinkage) <= 1.0:
        delta = float(shrinkage)
    else:
        raise InvalidParameterError(f"shrinkage must be 'ks', 'ledoit-wolf' or a float in [0, 1], got {shrinkage!r}")
    return torch.linalg.pinv((1 - delta) * S + delta * mu * eye)


def gda(X: ArrayLike, y: ArrayLike, *, X_val: ArrayLike | None = None, y_val: ArrayLike | None = None,
        zs_val: ArrayLike | None = None, alphas: Sequence[float] = GDA_ALPHAS,
        shrinkage: Literal["ks", "ledoit-wolf"] | float = "ks", normalize: bool = True,
        n_classes: int | None = None) -> GDA:
    """Training-free GDA (Wang et al., ICLR 2024; REFERENCE §6.1).

    Class means ``mu_k``, centred support ``Xc``, precision ``P`` by ``shrinkage`` (``"ks"``:
    ``D * pinv((n-1) S + tr(S) I)`` as the paper's code; ``"ledoit-wolf"``; or a fixed ``delta`` towards
    ``tr(S)/D * I``), then ``W = P mu^T`` and ``b_k = log(1/C) - mu_k P mu_k / 2``.

    Parameters
    ----------
    X, y : support embeddings (n, d) and labels (n,). ``normalize`` L2-normalises embeddings first
        (the joint space of the text classifier).
    X_val, y_val, zs_val : validation embeddings, labels and their zero-shot logits (n_val, C). With all
        three, ``alpha`` is chosen from ``alphas`` by validation accuracy (ties: log-loss) and the model
        predicts ``zs + alpha * (x W + b)`` (then ``predict_proba`` needs ``zero_shot_logits``).

    Returns
    -------
    GDA
        ``predict_proba(X (B, d)[, zero_shot_logits (B, C)]) -> (B, C)``.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.cat([torch.randn(4, 8, generator=g) + 3, torch.randn(4, 8, generator=g) - 3])  # 4 shots x 2
    >>> clf = gda(X, [0] * 4 + [1] * 4)
    >>> clf.predict_proba(torch.stack([torch.full((8,), 3.0), torch.full((8,), -3.0)])).argmax(1).tolist()
    [0, 1]
    """
    Xt = _x(X)
    yt, c = _y(y, Xt.shape[0], n_classes)
    _check_all_classes(yt, c)
    Z = F.normalize(Xt, dim=1) if normalize else Xt
    counts = torch.bincount(yt, minlength=c).to(Z.dtype)
    mu = torch.zeros(c, Z.shape[1], dtype=Z.dtype).index_add_(0, yt, Z) / counts[:, None]
    P = _precision(Z - mu[yt], shrinkage)
    W = P @ mu.T
    b = torch.full((c,), float(np.log(1.0 / c)), dtype=Z.dtype) - 0.5 * ((mu @ P) * mu).sum(1)
    model = GDA(weight=W, bias=b, normalize=normalize, alpha=None)
    if zs_val is None:
        return model
    if X_val is None or y_val is None:
        raise InvalidParameterError("zs_val needs X_val and y_val to choose alpha on")
    Xv = _x(X_val, "X_val", dim=Xt.shape[1])
    yv, _ = _y(y_val, Xv.shape[0], c, "y_val")
    zv = _zs(zs_val, Xv.shape[0], c, "zs_val")
    g = model.gda_logits(Xv)
    model.alpha = float(_select([(float(a), zv + a * g) for a in alphas], yv))  # type: ignore[operator]
    model.uses_zero_shot = True
    return model


# ---------------------------------------------------------------------------------------- Tip-Adapter


@dataclass
class TipAdapter(FewShotClassifier):
    """Cache model: ``logits = zs + alpha * exp(-beta (1 - x F^T)) L`` (``zs`` omitted without a prior)."""

    keys: Tensor
    values: Tensor
    alpha: float
    beta: float
    uses_zero_shot: bool = False

    @property
    def n_classes(self) -> int:  # type: ignore[override]
        return self.values.shape[1]

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.keys.shape[1]

    def cache_logits(self, X: ArrayLike, beta: float | None = None) -> Tensor:
        sims = F.normalize(_x(X, dim=self.dim), dim=1) @ self.keys.T
        return torch.exp(-(self.beta if beta is None else beta) * (1.0 - sims)) @ self.values

    def logits(self, X: ArrayLike, zero_shot_logits: ArrayLike | None = None) -> Tensor:
        cache = self.cache_logits(X)
        zs = self._prior(zero_shot_logits, cache.shape[0])
        return self.alpha * cache if zs is None else zs + self.alpha * cache


def tip_adapter(X: ArrayLike, y: ArrayLike, *, X_val: ArrayLike | None = None, y_val: ArrayLike | None = None,
                zs_val: ArrayLike | None = None, alpha: float = 1.0, beta: float = 1.0,
                alphas: Sequence[float] = TIP_ALPHAS, betas: Sequence[float] = TIP_BETAS,
                n_classes: int | None = None) -> TipAdapter:
    """Training-free Tip-Adapter (Zhang et al., ECCV 2022; REFERENCE §6.2).

    Keys are the normalised support embeddings, values their one-hot labels. With ``X_val``/``y_val``,
    ``alpha`` and ``beta`` are grid-searched on validation accuracy (ties: log-loss); otherwise the given
    ``alpha``/``beta`` (the paper's initial 1, 1) are used. With ``zs_val`` the model blends zero-shot
    logits, and ``predict_proba`` then needs ``zero_shot_logits``.
    """
    Xt = _x(X)
    yt, c = _y(y, Xt.shape[0], n_classes)
    _check_all_classes(yt, c)
    model = TipAdapter(keys=F.normalize(Xt, dim=1), values=F.one_hot(yt, c).to(Xt.dtype), alpha=float(alpha),
                       beta=float(beta), uses_zero_shot=zs_val is not None)
    if X_val is None and y_val is None:
        if zs_val is not None:
            raise InvalidParameterError("zs_val needs X_val and y_val")
        return model
    if X_val is None or y_val is None:
        raise InvalidParameterError("give both X_val and y_val")
    Xv = _x(X_val, "X_val", dim=Xt.shape[1])
    yv, _ = _y(y_val, Xv.shape[0], c, "y_val")
    zv = _zs(zs_val, Xv.shape[0], c, "zs_val")
    candidates = []
    for b in betas:
        cache = model.cache_logits(Xv, beta=b)
        for a in alphas:
            candidates.append(((float(a), float(b)), a * cache if zv is None else zv + a * cache))
    model.alpha, model.beta = _select(candidates, yv)  # type: ignore[misc]
    return model


# ------------------------------------------------------------------------------------------- metrics


def accuracy(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Accuracy of ``argmax`` of (B, C) scores (or of labels (B,))."""
    y = np.asarray(torch.as_tensor(y_true).cpu()).ravel()
    s = np.asarray(torch.as_tensor(y_score).detach().cpu())
    pred = s.argmax(1) if s.ndim == 2 else s
    return float((pred == y).mean())


def balanced_accuracy(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Mean per-class recall of ``argmax`` of (B, C) scores (or of labels (B,))."""
    y = np.asarray(torch.as_tensor(y_true).cpu()).ravel()
    s = np.asarray(torch.as_tensor(y_score).detach().cpu())
    pred = s.argmax(1) if s.ndim == 2 else s
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


_METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "auroc": auroc, "accuracy": accuracy, "balanced_accuracy": balanced_accuracy,
}


@dataclass(frozen=True)
class BootstrapCI:
    """A metric on the full data with its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    n_valid: int  # resamples the metric could be computed on (e.g. AUROC needs both classes)


def bootstrap_ci(y_true: ArrayLike, y_score: ArrayLike, metric: str | Callable[[ArrayLike, ArrayLike], float] = "auroc",
                 *, n: int = 1000, seed: int = 0, level: float = 0.95) -> BootstrapCI:
    """Percentile bootstrap CI of ``metric(y_true, y_score)`` over ``n`` resamples of the slides.

    ``metric`` is ``"auroc"``, ``"accuracy"``, ``"balanced_accuracy"`` or a callable. Resamples where the
    metric is undefined (one class only) are skipped and counted out of ``n_valid``.
    """
    fn = _METRICS.get(metric) if isinstance(metric, str) else metric
    if fn is None:
        raise InvalidParameterError(f"unknown metric {metric!r}; use one of {sorted(_METRICS)} or a callable")
    if n < 1 or not 0 < level < 1:
        raise InvalidParameterError("n must be >= 1 and level in (0, 1)")
    y = np.asarray(torch.as_tensor(y_true).cpu())
    s = np.asarray(torch.as_tensor(y_score).detach().cpu())
    if len(y) != len(s):
        raise InvalidParameterError(f"y_true has {len(y)} entries but y_score {len(s)}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        try:
            values.append(fn(y[idx], s[idx]))
        except (InvalidParameterError, ValueError, ZeroDivisionError):
            continue
    if not values:
        raise InvalidParameterError("the metric was undefined on every bootstrap resample")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return BootstrapCI(estimate=float(fn(y, s)), low=float(low), high=float(high), n_valid=len(values))
