"""What the few-shot methods of :mod:`slidescope.vlm.fewshot` share.

* the hyperparameter grids and defaults of the references (TITAN's lambdas, mrflogs/ICLR24's GDA alphas,
  gaopengcuhk/Tip-Adapter's search grid);
* the checks of their inputs (embeddings, labels, zero-shot logits) and the selection rule of the tuning
  (first best accuracy in grid order; log-loss breaks ties on leave-one-out), a stratified split;
* :class:`FewShotClassifier`, the base of every fitted classifier;
* the two solvers: scikit-learn's logistic-regression objective by L-BFGS (one fold or many at once, and the
  lambda paths of the probe's tuning), GDA's shrunk shared covariance.

The public names are re-exported by :mod:`slidescope.vlm.fewshot`, where they are documented for users.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InvalidParameterError

ArrayLike = Tensor | np.ndarray | Sequence[float]
DEFAULT_LAMBDAS = tuple(float(v) for v in np.logspace(-5, 6, 45))  # TITAN's linear-probe grid (C = 1/lambda)
# mrflogs/ICLR24 @560fe21, main_few_shots.py `run`: the alpha grid, and 0.1 the value it keeps when no grid
# value beats accuracy 0 (our default when there is nothing to tune on).
GDA_ALPHAS = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
GDA_DEFAULT_ALPHA = 0.1
# Ours, for GDA's leave-one-out tuning (the reference only tunes on a validation set): 10 values per decade over
# the span of the reference grid, chosen by leave-one-out log-loss. On the hard cohort (bench_fewshot_tuning.py)
# the 7-value grid chosen by leave-one-out accuracy lost 3.7 points to validation tuning at 4 shots; this rule
# stays within 1 point at every shot count.
LOO_STEPS_PER_DECADE = 10
# Ours, for the linear probe without a validation set: at most this many stratified folds of the support.
PROBE_CV_FOLDS = 5
PROBE_CV_REPEATS = 3
PATH_MAX_ITER = 100  # L-BFGS iterations of the fits that only rank lambdas (see _probe_path)
PATH_TOLERANCE_GRAD = 1e-6  # and their gradient tolerance
# gaopengcuhk/Tip-Adapter @d0e2d6f, configs/imagenet.yaml: search_scale [beta, alpha], search_step, init values
# (other datasets' configs use wider scales, e.g. [12, 5] for Caltech101; pass search_scale= to match one).
TIP_SEARCH_SCALE = (7.0, 3.0)
TIP_SEARCH_STEP = (200, 20)
TIP_INIT_BETA = 1.0
TIP_INIT_ALPHA = 1.17
Tuning = Literal["validation", "leave-one-out", "cross-validation", "default", "fixed", "none"]


def tip_adapter_grid(
    search_scale: Sequence[float] = TIP_SEARCH_SCALE,
    search_step: Sequence[int] = TIP_SEARCH_STEP,
) -> tuple[list[float], list[float]]:
    """Tip-Adapter's search grid ``(betas, alphas)``: ``0.1 + i (scale - 0.1) / step`` for ``i < step``.

    As ``search_hp`` in gaopengcuhk/Tip-Adapter's ``utils.py`` (``search_scale``/``search_step`` are
    ``[beta, alpha]``; ImageNet's config by default: betas 0.1..6.97 in 200 steps, alphas 0.1..2.86 in 20).
    """
    if len(search_scale) != 2 or len(search_step) != 2 or min(search_step) < 1:
        raise InvalidParameterError(
            "search_scale and search_step are [beta, alpha] pairs; steps must be >= 1"
        )
    return [
        [i * (float(sc) - 0.1) / int(st) + 0.1 for i in range(int(st))]  # type: ignore[return-value]
        for sc, st in zip(search_scale, search_step, strict=True)
    ]


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
        raise InvalidParameterError(
            f"classes {missing} have no training example; give at least one per class"
        )


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


def _select(candidates: list[tuple[object, Tensor]], y_val: Tensor, *, loss_ties: bool = False) -> object:
    """The first candidate (in grid order) with the best accuracy, as the references' strict ``acc > best``.

    ``loss_ties`` breaks accuracy ties by the lower log-loss instead (used for leave-one-out, where a few
    support slides give coarse, often tied accuracies; the references only tune on a validation set).
    """
    if loss_ties:
        return max(candidates, key=lambda c: (_acc(c[1], y_val), -_nll(c[1], y_val)))[0]
    accs = [_acc(logits, y_val) for _, logits in candidates]
    return candidates[int(np.argmax(accs))][0]


def _min_shots(y: Tensor, n_classes: int) -> int:
    return int(torch.bincount(y, minlength=n_classes).min())


def _stratified_folds(y: Tensor, n_folds: int, seed: int) -> Tensor:
    """The fold (0..n_folds-1) of each example: each class shuffled, then dealt round-robin, so every fold
    holds about ``1/n_folds`` of every class (``n_folds`` <= the smallest class: no fold lacks a class's
    training examples)."""
    gen = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(y), dtype=torch.long)
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        fold[idx[torch.randperm(len(idx), generator=gen)]] = torch.arange(len(idx)) % n_folds
    return fold


def _log_grid(lo: float, hi: float, per_decade: int) -> list[float]:
    """``per_decade`` log-spaced values per decade from ``lo`` to ``hi`` (both included)."""
    if not 0 < lo <= hi:
        raise InvalidParameterError(f"a log grid needs 0 < lo <= hi, got {lo}, {hi}")
    n = max(int(round(np.log10(hi / lo) * per_decade)), 0) + 1
    return [float(v) for v in np.logspace(np.log10(lo), np.log10(hi), n)]


class FewShotClassifier:
    """A fitted few-shot classifier: ``predict_proba(X) -> (B, C)``, ``predict(X) -> (B,)``.

    Subclasses implement :meth:`logits`. ``zero_shot_logits`` is required by models fitted with a
    zero-shot prior and ignored by the others.
    """

    n_classes: int
    dim: int
    uses_zero_shot: bool = False
    tuning: Tuning = "none"
    hyperparameters: dict[str, float]  # the chosen values (empty when there are none)

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


# ------------------------------------------------------------------------------------------ solvers


def _fit_logreg(
    X: Tensor,
    y: Tensor,
    n_classes: int,
    lam: float,
    *,
    max_iter: int,
    init: tuple[Tensor, Tensor] | None = None,
    tolerance_grad: float = 1e-10,
) -> tuple[Tensor, Tensor]:
    """Minimise scikit-learn's ``LogisticRegression(C=1/lam)`` objective by L-BFGS; returns (d, C), (C,).

    ``sum_i CE_i + lam/2 ||W||^2`` (summed over samples, intercept unpenalised). Binary: one logit
    ``x w + b`` (column 0 fixed at 0), so the penalty is on ``w`` alone; a two-column softmax would split ``w``
    into ``+-w/2`` and halve the penalty. Multiclass: the full multinomial ``W`` (C columns), as scikit-learn.
    """
    W, b = _fit_logreg_folds(
        X,
        y,
        n_classes,
        lam,
        torch.ones(1, X.shape[0], dtype=torch.bool),
        max_iter=max_iter,
        init=None if init is None else (init[0][None], init[1][None]),
        tolerance_grad=tolerance_grad,
    )
    return W[0], b[0]


def _fit_logreg_folds(
    X: Tensor,
    y: Tensor,
    n_classes: int,
    lam: float,
    train: Tensor,
    *,
    max_iter: int,
    init: tuple[Tensor, Tensor] | None = None,
    tolerance_grad: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """:func:`_fit_logreg` on the rows ``train[f]`` of ``X`` for every fold ``f`` at once: ``train`` (F, n) bool;
    returns (F, d, C), (F, C).

    The folds' objectives share no parameter, so their sum is minimised by each fold's own minimiser: one
    L-BFGS run on the sum replaces F runs (the per-run overhead dominates on a few slides). Used to rank
    lambdas in cross-validation; the chosen probe is refitted with :func:`_fit_logreg`.
    """
    cols = 1 if n_classes == 2 else n_classes
    f = train.shape[0]
    W = torch.zeros(f, X.shape[1], cols, dtype=X.dtype) if init is None else init[0][:, :, -cols:].clone()
    b = torch.zeros(f, cols, dtype=X.dtype) if init is None else init[1][:, -cols:].clone()
    W.requires_grad_(True)
    b.requires_grad_(True)
    weight = train.to(X.dtype)
    opt = torch.optim.LBFGS(
        [W, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tolerance_grad,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def full(W: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        if cols == n_classes:
            return W, b
        return torch.cat([torch.zeros_like(W), W], 2), torch.cat([torch.zeros_like(b), b], 1)

    def closure() -> Tensor:
        opt.zero_grad()
        Wf, bf = full(W, b)
        logits = torch.einsum("nd,fdc->fnc", X, Wf) + bf[:, None, :]
        ce = F.cross_entropy(logits.reshape(-1, n_classes), y.repeat(f), reduction="none")
        loss = (ce * weight.reshape(-1)).sum() + 0.5 * lam * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return full(W.detach(), b.detach())


def _cv_path(
    X: Tensor, y: Tensor, held_out: Tensor, c: int, lambdas: Sequence[float], max_iter: int
) -> dict[float, float]:
    """Mean held-out log-loss at each lambda over the folds ``held_out`` (F, n) (every slide held out once per
    repeat), fitted strong to weak, warm-started, all folds in one run (as :func:`_probe_path`)."""
    losses, init = {}, None
    for lam in sorted(lambdas, reverse=True):
        init = _fit_logreg_folds(
            X,
            y,
            c,
            lam,
            ~held_out,
            max_iter=min(max_iter, PATH_MAX_ITER),
            init=init,
            tolerance_grad=PATH_TOLERANCE_GRAD,
        )
        logits = torch.einsum("nd,fdc->fnc", X, init[0]) + init[1][:, None, :]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(len(held_out)), reduction="none")
        losses[float(lam)] = float((ce * held_out.reshape(-1).to(ce.dtype)).sum() / held_out.sum())
    return losses


def _probe_path(
    Xtr: Tensor, ytr: Tensor, Xva: Tensor, yva: Tensor, c: int, lambdas: Sequence[float], max_iter: int
) -> dict[float, float]:
    """Mean validation log-loss of the probe at each lambda, fitted strong to weak, warm-started.

    These fits only rank lambdas, so they stop after ``min(max_iter, PATH_MAX_ITER)`` L-BFGS iterations or
    at a gradient of ``PATH_TOLERANCE_GRAD`` (the weakly regularised, near-separable fits are the slow ones;
    on the hard cohort's 128-d embeddings the held-out losses agree to 4 decimals and a path is ~30x faster);
    the chosen probe is refitted to ``max_iter`` and a gradient of 1e-10.
    """
    losses, init = {}, None
    for lam in sorted(lambdas, reverse=True):
        init = _fit_logreg(
            Xtr,
            ytr,
            c,
            lam,
            max_iter=min(max_iter, PATH_MAX_ITER),
            init=init,
            tolerance_grad=PATH_TOLERANCE_GRAD,
        )
        losses[float(lam)] = _nll(Xva @ init[0] + init[1], yva)
    return losses


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
        raise InvalidParameterError(
            f"shrinkage must be 'ks', 'ledoit-wolf' or a float in [0, 1], got {shrinkage!r}"
        )
    return torch.linalg.pinv((1 - delta) * S + delta * mu * eye)


def _gda_fit(
    Z: Tensor, y: Tensor, c: int, shrinkage: Literal["ks", "ledoit-wolf"] | float
) -> tuple[Tensor, Tensor]:
    """(W (d, C), b (C,)) of GDA on (already normalised) embeddings ``Z``."""
    counts = torch.bincount(y, minlength=c).to(Z.dtype)
    mu = torch.zeros(c, Z.shape[1], dtype=Z.dtype).index_add_(0, y, Z) / counts[:, None]
    P = _precision(Z - mu[y], shrinkage)
    W = P @ mu.T
    b = torch.full((c,), float(np.log(1.0 / c)), dtype=Z.dtype) - 0.5 * ((mu @ P) * mu).sum(1)
    return W, b
