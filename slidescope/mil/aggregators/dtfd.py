"""DTFD-MIL (Zhang et al., CVPR 2022): double-tier feature distillation over pseudo-bags."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ...errors import InvalidParameterError
from ._base import (
    Aggregator,
    AggregatorOutput,
    GatedAttention,
    bag_cross_entropy,
    load_strict,
    masked_softmax,
)
from ._registry import register_aggregator

__all__ = ["DTFD"]

Distill = Literal["AFS", "MaxS", "MaxMinS"]


@register_aggregator("dtfd")
class DTFD(Aggregator):
    """DTFD-MIL as hrzhang1123/DTFD-MIL (``Main_DTFD_MIL.py``), with its softmax-normalised tier-1 attention.

    Tier 1: the real tiles of a bag are split into ``num_groups`` pseudo-bags. With
    ``H = ReLU(W_e h)`` (no bias, width ``E``), gated attention ``a_i`` is softmax-normalised **inside each
    pseudo-bag**, ``f_g = sum_{i in g} a_i H_i`` and ``y_g = W_1 f_g`` is trained against the slide label.
    Instance probabilities are the grad-CAM of the tier-1 classifier, ``p_i = softmax(W_1 (a_i H_i))``
    (weight only, no bias, as the reference ``get_cam_1d``); the positive class is the last one.

    Distillation per pseudo-bag: ``"AFS"`` keeps ``f_g``; ``"MaxS"`` the ``instances_per_group`` tiles with
    the highest positive-class ``p_i``; ``"MaxMinS"`` those and the lowest ones. Tier 2 is gated-attention
    ABMIL over the distilled features and gives the slide logits.

    Parameters
    ----------
    in_dim, num_classes : int
        Tile embedding length ``D`` and number of classes ``C``.
    embed_dim : int
        ``E`` (512, ``--mDim``).
    attn_dim : int
        Hidden size of both gated attentions (128).
    num_groups : int
        Pseudo-bags per slide (4, ``--numGroup``).
    distill : {"AFS", "MaxS", "MaxMinS"}
        Tier-2 input ("AFS", ``--distill_type``'s default).
    instances_per_group : int
        Tiles per pseudo-bag for MaxS / MaxMinS (1, the reference's ``total_instance // numGroup`` = 4 // 4).
    dropout : float
        Dropout before both classifiers (0, ``--droprate`` and ``--droprate_2``).
    grad_clip : float or None
        Gradient-norm clipping applied by :meth:`clip_gradients_` to each of the reference's modules
        separately: the embedding, the tier-1 attention, the tier-1 classifier and tier 2 as a whole
        (5, ``--grad_clipping``); None disables it.

    Notes
    -----
    Training, as the reference: tier 1 is trained by the tier-1 loss only. The reference steps its tier-1
    optimiser before the tier-2 backward and discards the tier-2 gradients that reach tier 1; here the
    distilled features are detached before tier 2, which gives the same gradients (and, Adam being
    per-parameter, one Adam over both tiers equals the reference's two with equal settings). The trainer
    calls :meth:`clip_gradients_` before each optimiser step. Loss contract: ``task_loss_weight = 1`` (the
    trainer's cross-entropy on the slide logits is the tier-2 loss) and, with labels in training,
    ``aux_loss`` = the tier-1 cross-entropy averaged over the non-empty pseudo-bags of each slide, then
    over slides.

    Pseudo-bag split: the reference shuffles the tiles and cuts the shuffled list into ``num_groups``
    contiguous chunks (``numpy.array_split``: the first ``N mod G`` chunks one tile longer). Training does
    the same with a fresh torch permutation; **eval mode uses a fixed permutation (seed 0) per bag size,
    so inference is deterministic** (the reference re-draws the split at test time). A split can be given
    with ``forward(..., groups=...)``; :meth:`groups_from_permutation` turns the reference's shuffled index
    list into it. Groups left empty (bags with fewer tiles than ``num_groups``) are skipped.

    Deviations: the reference trains one slide per step (clipping applies to that slide's gradient; in
    batches it applies to the batch mean), with Adam (lr 1e-4, weight decay 1e-4, lr x0.2 at epoch 100 of
    200); slidescope's trainer uses its own optimiser. ``--numLayer_Res`` residual blocks (0 by default)
    and ``--num_MeanInference`` test-time averaging (1) are not offered. Weights saved by the reference load
    with :meth:`load_reference_state_dict`.

    ``scores`` (attention kind): each tile's weight in the slide feature. For AFS that is
    ``a_i * alpha_{g(i)}`` (tier-1 attention within the pseudo-bag times the tier-2 attention of its
    pseudo-bag); for MaxS/MaxMinS the tier-2 attention of the selected tiles (0 elsewhere). Both sum to 1.
    ``extra``: ``"instance_probs"`` (B, N, C) tier-1 CAM probabilities, ``"tier1_logits"`` (B, G, C),
    ``"groups"`` (B, N) pseudo-bag index (-1 on padding).
    """

    has_aux_loss = True

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        embed_dim: int = 512,
        attn_dim: int = 128,
        num_groups: int = 4,
        distill: Distill = "AFS",
        instances_per_group: int = 1,
        dropout: float = 0.0,
        grad_clip: float | None = 5.0,
    ) -> None:
        super().__init__(in_dim, num_classes)
        if distill not in ("AFS", "MaxS", "MaxMinS"):
            raise InvalidParameterError(f"distill must be 'AFS', 'MaxS' or 'MaxMinS', got {distill!r}")
        if num_groups < 1 or instances_per_group < 1:
            raise InvalidParameterError("num_groups and instances_per_group must be >= 1")
        if grad_clip is not None and not grad_clip > 0:
            raise InvalidParameterError(f"grad_clip must be > 0 or None, got {grad_clip!r}")
        self.num_groups, self.distill, self.instances_per_group = num_groups, distill, instances_per_group
        self.grad_clip = grad_clip
        self.dim_reduction = nn.Sequential(nn.Linear(in_dim, embed_dim, bias=False), nn.ReLU())
        self.tier1_attention = GatedAttention(embed_dim, attn_dim, 1)
        self.tier1_classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embed_dim, num_classes))
        self.tier2_attention = GatedAttention(embed_dim, attn_dim, 1)
        self.tier2_classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embed_dim, num_classes))

    @staticmethod
    def groups_from_permutation(permutation: Sequence[int] | Tensor, num_groups: int) -> Tensor:
        """The reference's split: ``numpy.array_split(permutation, num_groups)``, as a pseudo-bag index per tile.

        Parameters
        ----------
        permutation : sequence of int or Tensor of shape (N,)
            The shuffled tile indices (``feat_index`` after ``random.shuffle`` in ``Main_DTFD_MIL.py``).
        num_groups : int

        Returns
        -------
        Tensor of shape (N,), long
            ``groups[permutation[j]]`` = the chunk position ``j`` falls in; pass ``groups[None]`` (or a stack
            of them, -1 on padding) as ``forward(..., groups=...)``.
        """
        perm = torch.as_tensor(permutation, dtype=torch.long)
        n = perm.numel()
        if n == 0 or not torch.equal(perm.sort().values, torch.arange(n)):
            raise InvalidParameterError("permutation must hold each of 0..N-1 exactly once")
        groups = torch.empty(n, dtype=torch.long)
        groups[perm] = _chunk_of(torch.arange(n), torch.tensor(n), num_groups)
        return groups

    def _groups(self, mask: Tensor) -> Tensor:
        """(B, N) bool -> (B, N) long pseudo-bag index of each real tile (-1 on padding)."""
        n_real = mask.sum(1, keepdim=True)  # (B, 1)
        if self.training:  # a fresh random permutation of the real tiles: position = rank of a random key
            keys = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, 2.0)
            position = keys.argsort(1).argsort(1)  # padded tiles rank last
        else:  # a fixed permutation per bag size (seed 0): deterministic and blind to padding
            rank = mask.long().cumsum(1) - 1  # rank of each real tile among the real ones
            position = torch.zeros_like(rank)
            for b in range(mask.shape[0]):
                perm = torch.randperm(int(n_real[b]), generator=torch.Generator().manual_seed(0))
                position[b, mask[b]] = perm.argsort().to(mask.device)[rank[b, mask[b]]]
        return torch.where(mask, _chunk_of(position, n_real, self.num_groups), -1)

    def _check_groups(self, groups: Tensor, mask: Tensor) -> Tensor:
        if not isinstance(groups, Tensor) or groups.shape != mask.shape or groups.dtype != torch.long:
            got = (groups.dtype, tuple(groups.shape)) if isinstance(groups, Tensor) else type(groups).__name__
            raise InvalidParameterError(
                f"groups must be a long tensor of shape {tuple(mask.shape)} (B, N), got {got}; build one with "
                "DTFD.groups_from_permutation"
            )
        real = groups[mask]
        if bool(((real < 0) | (real >= self.num_groups)).any()):
            raise InvalidParameterError(f"groups of real tiles must lie in [0, {self.num_groups})")
        return groups.masked_fill(~mask, -1)

    def forward(
        self,
        features: Tensor,
        mask: Tensor | None = None,
        *,
        labels: Tensor | None = None,
        groups: Tensor | None = None,
    ) -> AggregatorOutput:
        """Aggregate a padded batch of bags (see :meth:`Aggregator.forward`).

        Parameters
        ----------
        features, mask, labels
            As :meth:`Aggregator.forward`.
        groups : Tensor of shape (B, N), long, optional
            The pseudo-bag of each real tile, in ``[0, num_groups)`` (ignored on padding). None: a random
            split in training, a fixed one in eval mode.
        """
        if groups is None:
            return super().forward(features, mask, labels=labels)
        mask = self._check_inputs(features, mask, labels)
        groups = self._check_groups(groups.to(mask.device), mask)
        if not bool(mask.all()):
            features = features.masked_fill(~mask.unsqueeze(-1), 0.0)
        return self._forward(features, mask, labels if self.training else None, groups)

    def clip_gradients_(self) -> None:
        """Clip the gradient norm of each reference module separately at ``grad_clip`` (as the reference)."""
        if self.grad_clip is None:
            return
        tier2 = [*self.tier2_attention.parameters(), *self.tier2_classifier.parameters()]
        for params in (
            self.dim_reduction.parameters(),
            self.tier1_attention.parameters(),
            self.tier1_classifier.parameters(),
            tier2,
        ):
            params = [p for p in params if p.grad is not None]
            if params:
                nn.utils.clip_grad_norm_(params, self.grad_clip)

    def load_reference_state_dict(self, state_dict: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Load a checkpoint saved by hrzhang1123/DTFD-MIL (``best_model.pth``).

        Parameters
        ----------
        state_dict : mapping
            The reference's saved dict: ``{"dim_reduction": ..., "attention": ..., "classifier": ...,
            "att_classifier": ...}``, each a module state dict (``module.`` prefixes are accepted).

        Raises
        ------
        InvalidParameterError
            Missing parts or keys, or shapes that do not fit this model (build it with the reference's
            ``in_chn``, ``--mDim`` and ``--num_cls``; ``--numLayer_Res`` must be 0).
        """
        rename = {
            "attention_V.0.": "attention_a.0.",
            "attention_U.0.": "attention_b.0.",
            "attention_weights.": "attention_c.",
            "fc.": "1.",
            "fc1.": "0.",
        }
        parts = {
            "dim_reduction": "dim_reduction.",
            "attention": "tier1_attention.",
            "classifier": "tier1_classifier.",
            "att_classifier": "",
        }
        missing = sorted(set(parts) - set(state_dict))
        if missing:
            raise InvalidParameterError(f"not a DTFD-MIL checkpoint: no {', '.join(missing)} in it")
        mapped = {}
        for part, prefix in parts.items():
            for key, value in state_dict[part].items():
                key = key.removeprefix("module.")
                if part == "att_classifier":
                    head, _, key = key.partition(".")
                    prefix = {"attention": "tier2_attention.", "classifier": "tier2_classifier."}.get(
                        head, head + "."
                    )
                for old, new in rename.items():
                    if key.startswith(old):
                        key = new + key.removeprefix(old)
                        break
                mapped[prefix + key] = torch.as_tensor(value)
        load_strict(
            self,
            mapped,
            fix=(
                f"this DTFD-MIL checkpoint does not fit DTFD(in_dim={self.in_dim}, num_classes={self.num_classes}, "
                f"embed_dim=...); build it with the reference's in_chn, --mDim and --num_cls"
            ),
        )

    def _forward(
        self, features: Tensor, mask: Tensor, labels: Tensor | None, groups: Tensor | None = None
    ) -> AggregatorOutput:
        b, n, _ = features.shape
        g = self.num_groups
        h = self.dim_reduction(features)  # (B, N, E)
        raw = self.tier1_attention(h).squeeze(-1)  # (B, N)
        if groups is None:
            groups = self._groups(mask)
        member = groups.unsqueeze(1) == torch.arange(g, device=h.device)[None, :, None]  # (B, G, N)
        # (B, G, N): softmax within each pseudo-bag
        attn = masked_softmax(raw.unsqueeze(1).expand(b, g, n), member)
        pseudo = attn @ h  # (B, G, E)
        group_valid = member.any(-1)  # (B, G)
        tier1_logits = self.tier1_classifier(pseudo)  # (B, G, C)

        # tier-1 CAM: softmax(W_1 (a_i H_i)); a tile belongs to one group, so its attention is the column sum
        a_tile = attn.sum(1)  # (B, N)
        weight = self.tier1_classifier[1].weight  # (C, E)
        probs = torch.softmax(a_tile.unsqueeze(-1) * (h @ weight.t()), dim=-1)  # (B, N, C)

        if self.distill == "AFS":
            tokens, token_mask = pseudo, group_valid
        else:
            k = min(self.instances_per_group, n)
            pos = probs[..., -1].unsqueeze(1).expand(b, g, n)
            picks = [pos.masked_fill(~member, float("-inf")).topk(k, dim=-1).indices]
            if self.distill == "MaxMinS":
                picks.append((-pos).masked_fill(~member, float("-inf")).topk(k, dim=-1).indices)
            idx = torch.cat(picks, dim=-1).reshape(b, -1)  # (B, G * k')
            token_mask = member.reshape(b, g, n).gather(2, idx.view(b, g, -1)).reshape(b, -1)
            tokens = h.gather(1, idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))

        # the reference trains tier 1 with the tier-1 loss only: no tier-2 gradient reaches it
        tokens = tokens.detach()
        alpha = masked_softmax(self.tier2_attention(tokens).squeeze(-1), token_mask)  # (B, T)
        logits = self.tier2_classifier((alpha.unsqueeze(1) @ tokens).squeeze(1))  # (B, C)

        if self.distill == "AFS":
            scores = a_tile * alpha.gather(1, groups.clamp_min(0)) * mask
        else:
            scores = alpha.new_zeros(b, n).scatter_add(1, idx, alpha * token_mask)

        aux = None
        if labels is not None:
            aux = bag_cross_entropy(tier1_logits, labels, group_valid)
        return AggregatorOutput(
            logits=logits,
            scores=scores,
            aux_loss=aux,
            extra={
                "instance_probs": probs.masked_fill(~mask.unsqueeze(-1), 0.0),
                "tier1_logits": tier1_logits,
                "groups": groups,
            },
        )


def _chunk_of(position: Tensor, n: Tensor, num_groups: int) -> Tensor:
    """Chunk index of ``position`` in ``numpy.array_split(range(n), num_groups)`` (first ``n % G`` longer)."""
    size, extra = n // num_groups, n % num_groups  # chunk length, number of chunks one longer
    cut = extra * (size + 1)  # positions before ``cut`` lie in the longer chunks
    return torch.where(position < cut, position // (size + 1), extra + (position - cut) // size.clamp_min(1))
