"""What every MIL aggregator is: one forward contract, one output type, shared building blocks.

The contract
------------
An aggregator is a pure :class:`torch.nn.Module` (no Lightning) that turns a padded batch of bags into
slide logits plus per-tile scores::

    out = aggregator(features, mask, labels=labels)

features : float tensor of shape (B, N, D)
    ``B`` bags padded to ``N`` tiles, ``D == aggregator.in_dim``.
mask : bool tensor of shape (B, N), optional
    True for a real tile, False for padding. ``None`` means every tile is real. Every bag needs at least
    one real tile. Padded positions never change the logits, nor the scores of real tiles: they are zeroed
    before any arithmetic, so padding may hold anything, NaN included.
labels : long tensor of shape (B,), optional
    Slide class indices in ``[0, num_classes)``. Only read in training mode, by models whose auxiliary loss
    needs the slide label (CLAM, DSMIL, DTFD-MIL, ACMIL, pl-maxpool). Inference never needs them.

:class:`AggregatorOutput` holds ``logits (B, C)``, ``scores (B, N)``, ``aux_loss`` and ``extra``.

Loss contract (what the trainer does)
-------------------------------------
The trainer computes its task loss (for single-label classification
``aggregator.task_loss(out.logits, labels, class_weight)``, cross-entropy unless the model's paper uses
another criterion, e.g. DSMIL's binary cross-entropy) and optimises::

    loss = aggregator.task_loss_weight * task_loss + out.aux_loss     # aux_loss None -> just the first term

After the backward pass and before each optimiser step it calls ``aggregator.clip_gradients_()``, where a
model applies its published gradient clipping (DTFD-MIL: each module's norm clipped at 5); the default
does nothing.

``aux_loss`` is a scalar that is **already weighted** by the model's own published weighting, so the
trainer needs no per-model knowledge. Examples: CLAM mixes slide and instance losses as
``0.7 * CE + 0.3 * L_inst``; it sets ``task_loss_weight = bag_weight = 0.7`` and returns
``aux_loss = 0.3 * L_inst``. Models without an extra term keep ``task_loss_weight = 1.0`` and return
``aux_loss = None``. ``aux_loss`` is returned only in training mode **and** when ``labels`` are given;
in eval mode it is always ``None``. The auxiliary terms use single-label cross-entropy on ``labels``.

Scores
------
``scores_kind == "attention"``: ``scores[b]`` is a distribution over the real tiles of bag ``b``
(non-negative, sums to 1). ``scores_kind == "instance"``: ``scores[b, i]`` is a per-tile probability in
[0, 1] (each model documents of what). Padded positions are exactly 0 in both cases (not NaN, so sums
and maxima over a row need no masking).

Eval mode is deterministic; training mode may use randomness (DTFD-MIL pseudo-bags, ACMIL masking,
dropout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ...errors import InvalidParameterError

__all__ = [
    "Aggregator",
    "AggregatorOutput",
    "GatedAttention",
    "embed_mlp",
    "masked_softmax",
    "masked_max",
    "masked_min",
    "bag_cross_entropy",
]


@dataclass
class AggregatorOutput:
    """What every aggregator returns.

    Attributes
    ----------
    logits : Tensor of shape (B, C)
        Slide-level class logits.
    scores : Tensor of shape (B, N)
        Per-tile scores for heatmaps (see ``Aggregator.scores_kind``); exactly 0 on padded tiles.
    aux_loss : Tensor of shape () or None
        The model's extra training term, already weighted; add it to
        ``aggregator.task_loss_weight * task_loss``. None in eval mode, without labels, or when the model
        has none.
    extra : dict of str to Tensor
        Model-specific intermediates (per-branch attention, instance logits...), documented per model.
    """

    logits: Tensor
    scores: Tensor
    aux_loss: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Aggregator(nn.Module):
    """Base class of every MIL aggregator (see the module docstring for the full contract).

    Subclasses implement :meth:`_forward`, which receives validated inputs with a mask that is never
    None, and set the class attributes below.

    Attributes
    ----------
    in_dim : int
        Length of one tile embedding ``D``.
    num_classes : int
        Number of slide classes ``C``.
    task_loss_weight : float
        Weight the trainer puts on its task loss (1.0 unless the published model mixes losses).
    scores_kind : {"attention", "instance"}
        What ``AggregatorOutput.scores`` holds.
    has_aux_loss : bool
        Whether training forwards with labels return an ``aux_loss``.
    registry_name : str
        The name it is registered under (set by :func:`register_aggregator`).
    """

    registry_name: ClassVar[str] = ""
    scores_kind: ClassVar[Literal["attention", "instance"]] = "attention"
    has_aux_loss: ClassVar[bool] = False

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        for key, value in (("in_dim", in_dim), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(f"{key} must be a positive int, got {value!r}")
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.task_loss_weight = 1.0

    def forward(
        self, features: Tensor, mask: Tensor | None = None, *, labels: Tensor | None = None
    ) -> AggregatorOutput:
        """Aggregate a padded batch of bags.

        Parameters
        ----------
        features : Tensor of shape (B, N, D), floating point
        mask : Tensor of shape (B, N), bool, optional
            True = real tile; None = all tiles real.
        labels : Tensor of shape (B,), long, optional
            Slide labels, used only in training for the auxiliary loss.

        Returns
        -------
        AggregatorOutput
        """
        mask = self._check_inputs(features, mask, labels)
        if not bool(mask.all()):  # padding may hold anything (even NaN): it must not reach any arithmetic
            features = features.masked_fill(~mask.unsqueeze(-1), 0.0)
        return self._forward(features, mask, labels if self.training else None)

    def _forward(self, features: Tensor, mask: Tensor, labels: Tensor | None) -> AggregatorOutput:
        raise NotImplementedError

    def task_loss(self, logits: Tensor, labels: Tensor, class_weight: Tensor | None = None) -> Tensor:
        """The slide-classification loss the trainer weights by ``task_loss_weight`` (cross-entropy).

        Parameters
        ----------
        logits : Tensor of shape (B, C)
        labels : Tensor of shape (B,), long
        class_weight : Tensor of shape (C,), optional
            Per-class weights, as ``torch.nn.functional.cross_entropy``'s ``weight``.

        Returns
        -------
        Tensor of shape ()
        """
        return nn.functional.cross_entropy(logits.float(), labels, weight=class_weight)

    def clip_gradients_(self) -> None:
        """Clip this model's gradients in place as its reference training does (default: no clipping).

        The trainer calls it after the backward pass, before every optimiser step.
        """

    def _check_inputs(self, features: Tensor, mask: Tensor | None, labels: Tensor | None) -> Tensor:
        name = type(self).__name__
        if not isinstance(features, Tensor) or features.ndim != 3:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise InvalidParameterError(
                f"{name} expects features of shape (B, N, D), got {shape}; add a batch axis with "
                "features.unsqueeze(0) for a single bag"
            )
        b, n, d = features.shape
        if d != self.in_dim:
            raise InvalidParameterError(
                f"{name} was built with in_dim={self.in_dim} but the features have D={d}; rebuild it with "
                f"create_aggregator(..., in_dim={d}) or use the features of the encoder it was trained on"
            )
        if n == 0 or b == 0:
            raise InvalidParameterError(f"{name} got an empty batch of shape {(b, n, d)}")
        if not features.is_floating_point():
            raise InvalidParameterError(f"{name} expects floating-point features, got {features.dtype}")
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=features.device)
        else:
            if mask.shape != (b, n):
                raise InvalidParameterError(f"mask must have shape {(b, n)} (B, N), got {tuple(mask.shape)}")
            if mask.dtype != torch.bool:
                raise InvalidParameterError(f"mask must be a bool tensor (True = real), not {mask.dtype}")
            if not bool(mask.any(dim=1).all()):
                raise InvalidParameterError(
                    "every bag needs at least one real tile (a mask row is all False); drop empty slides"
                )
        if labels is not None and self.training:
            if labels.shape != (b,) or labels.dtype != torch.long:
                raise InvalidParameterError(
                    f"labels must be a long tensor of shape ({b},), got {labels.dtype} {tuple(labels.shape)}"
                )
            if bool(((labels < 0) | (labels >= self.num_classes)).any()):
                raise InvalidParameterError(
                    f"labels must lie in [0, {self.num_classes}), got {labels.tolist()}"
                )
        return mask


# ----------------------------------------------------------------------------------------------------
# shared building blocks


def load_strict(module: nn.Module, state_dict: dict[str, Tensor], *, fix: str) -> None:
    """Strictly load a reference model's (renamed) ``state_dict``; a mismatch is a user error saying ``fix``."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise InvalidParameterError(f"{fix} ({err})") from err


def embed_mlp(in_dim: int, embed_dim: int, dropout: float, *, bias: bool = True) -> nn.Sequential:
    """The usual patch-embedding layer ``Linear(in_dim, embed_dim) -> ReLU -> Dropout``."""
    return nn.Sequential(nn.Linear(in_dim, embed_dim, bias=bias), nn.ReLU(), nn.Dropout(dropout))


class GatedAttention(nn.Module):
    """Attention logits ``w_k^T (tanh(V h) * sigmoid(U h))`` for ``num_branches`` branches (Ilse et al.).

    Parameters
    ----------
    in_dim : int
        Length of an input token ``E``.
    hidden_dim : int
        Attention hidden size ``D_a``.
    num_branches : int
        Number of attention branches ``K`` (1 for ABMIL, C for CLAM-MB, n_token for ACMIL).
    dropout : float
        Dropout after the tanh and sigmoid branches (CLAM / MIL-Lab style; 0 in DTFD-MIL and ACMIL).
    gated : bool
        False drops the sigmoid gate (plain tanh attention).
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, num_branches: int = 1, dropout: float = 0.0, *, gated: bool = True
    ) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = (
            nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Sigmoid(), nn.Dropout(dropout)) if gated else None
        )
        self.attention_c = nn.Linear(hidden_dim, num_branches)

    def forward(self, h: Tensor) -> Tensor:
        """Raw attention logits.

        Parameters
        ----------
        h : Tensor of shape (..., N, E)

        Returns
        -------
        Tensor of shape (..., N, K)
        """
        a = self.attention_a(h)
        if self.attention_b is not None:
            a = a * self.attention_b(h)
        return self.attention_c(a)


def masked_softmax(logits: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over the positions where ``mask`` is True; exactly 0 elsewhere.

    Rows with no True position come out all-zero (not NaN), and gradients stay finite.

    Parameters
    ----------
    logits : Tensor of any shape
    mask : bool Tensor broadcastable to ``logits``
    dim : int
        Axis to normalise over.
    """
    mask = mask.expand_as(logits)
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(filled, dim=dim).masked_fill(~mask, 0.0)


def masked_max(values: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Maximum over the True positions of ``mask`` along ``dim`` (padding ignored)."""
    return values.masked_fill(~mask.expand_as(values), float("-inf")).amax(dim=dim)


def masked_min(values: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Minimum over the True positions of ``mask`` along ``dim`` (padding ignored)."""
    return values.masked_fill(~mask.expand_as(values), float("inf")).amin(dim=dim)


def bag_cross_entropy(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """Cross-entropy of several predictions per bag, averaged within each bag then over bags.

    Parameters
    ----------
    logits : Tensor of shape (B, K, C)
        ``K`` predictions per bag (pseudo-bags, branches, instances...).
    labels : Tensor of shape (B,), long
        The target of every prediction of bag ``b``.
    valid : bool Tensor of shape (B, K)
        Which predictions count.

    Returns
    -------
    Tensor of shape ()
    """
    b, k, c = logits.shape
    target = labels[:, None].expand(b, k)
    loss = nn.functional.cross_entropy(logits.reshape(b * k, c), target.reshape(-1), reduction="none")
    loss = loss.view(b, k) * valid
    return (loss.sum(1) / valid.sum(1).clamp_min(1)).mean()
