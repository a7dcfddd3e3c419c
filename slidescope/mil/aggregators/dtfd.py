"""DTFD-MIL (Zhang et al., CVPR 2022): double-tier feature distillation over pseudo-bags."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ...errors import InvalidParameterError
from ._base import Aggregator, AggregatorOutput, GatedAttention, bag_cross_entropy, masked_softmax
from ._registry import register_aggregator

__all__ = ["DTFD"]

Distill = Literal["AFS", "MaxS", "MaxMinS"]


@register_aggregator("dtfd")
class DTFD(Aggregator):
    """DTFD-MIL with the original softmax-normalised tier-1 attention.

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
        ``E`` (512).
    attn_dim : int
        Hidden size of both gated attentions (128).
    num_groups : int
        Pseudo-bags per slide (8, MIL-Lab; the original also uses 4).
    distill : {"AFS", "MaxS", "MaxMinS"}
        Tier-2 input ("AFS", the original's default and best reported).
    instances_per_group : int
        Tiles per pseudo-bag for MaxS / MaxMinS (the original's ``total_instance // numGroup``, i.e. 1).
    dropout : float
        Dropout before both classifiers (0, as the original).

    Notes
    -----
    Pseudo-bag split: tiles are dealt round-robin over the groups by their rank among the bag's real tiles,
    so group sizes differ by at most one. In training the ranks come from a fresh random permutation
    (the original's random split); **in eval mode the order of the tiles is used, so inference is
    deterministic** (the original re-draws the split at test time too). Groups left empty (bags with fewer
    tiles than ``num_groups``) are skipped.

    Loss contract: ``task_loss_weight = 1`` and, with labels in training, ``aux_loss`` = the tier-1
    cross-entropy averaged over the non-empty pseudo-bags of each slide, then over slides. This equals
    the original ``L_tier1 + L_tier2`` (its two optimisers both receive tier-2 gradients through the
    undetached distilled features); MIL-Lab's 0.7/0.3 mix is not used.

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
        num_groups: int = 8,
        distill: Distill = "AFS",
        instances_per_group: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dim, num_classes)
        if distill not in ("AFS", "MaxS", "MaxMinS"):
            raise InvalidParameterError(f"distill must be 'AFS', 'MaxS' or 'MaxMinS', got {distill!r}")
        if num_groups < 1 or instances_per_group < 1:
            raise InvalidParameterError("num_groups and instances_per_group must be >= 1")
        self.num_groups, self.distill, self.instances_per_group = num_groups, distill, instances_per_group
        self.dim_reduction = nn.Sequential(nn.Linear(in_dim, embed_dim, bias=False), nn.ReLU())
        self.tier1_attention = GatedAttention(embed_dim, attn_dim, 1)
        self.tier1_classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embed_dim, num_classes))
        self.tier2_attention = GatedAttention(embed_dim, attn_dim, 1)
        self.tier2_classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embed_dim, num_classes))

    def _groups(self, mask: Tensor) -> Tensor:
        """(B, N) bool -> (B, N) long pseudo-bag index of each real tile (-1 on padding)."""
        if self.training:
            keys = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, 2.0)
            rank = keys.argsort(1).argsort(1)  # padded tiles rank last
        else:
            rank = mask.long().cumsum(1) - 1
        return torch.where(mask, rank % self.num_groups, -1)

    def _forward(self, features: Tensor, mask: Tensor, labels: Tensor | None) -> AggregatorOutput:
        b, n, _ = features.shape
        g = self.num_groups
        h = self.dim_reduction(features)  # (B, N, E)
        raw = self.tier1_attention(h).squeeze(-1)  # (B, N)
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
