"""ACMIL (Zhang et al., ECCV 2024): attention-challenging MIL, gated-attention variant ``ACMIL_GA``."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...errors import InvalidParameterError
from ._base import Aggregator, AggregatorOutput, GatedAttention, bag_cross_entropy, masked_softmax
from ._registry import register_aggregator

__all__ = ["ACMIL"]


@register_aggregator("acmil")
class ACMIL(Aggregator):
    """ACMIL with multi-branch gated attention and stochastic top-K instance masking (STKIM).

    ``x = ReLU(W h)`` (no bias, width ``D_inner``); gated attention gives ``M = n_token`` branches
    ``A (B, M, N)``. In training, for every branch, ``mask_drop`` of its ``n_masked_patch`` highest-attention
    real tiles (chosen at random, ``floor(K * mask_drop)`` of them) get their logits masked out. Then
    ``sub_logit_m = Classifier_m(softmax(A_m) x)`` and the slide prediction is
    ``Slide_classifier(mean_m softmax(A_m) x)``.

    Parameters
    ----------
    in_dim, num_classes : int
        Tile embedding length ``D`` and number of classes ``C``.
    embed_dim : int
        ``D_inner`` (256, the repository's config for supervised natural-image features; 128 for SSL ones).
    attn_dim : int
        Gated-attention hidden size (128).
    n_token : int
        Attention branches ``M`` (5).
    n_masked_patch : int
        ``K``, top-attention tiles eligible for masking per branch (10; pass it explicitly, the released
        script passes ``n_token`` by mistake).
    mask_drop : float
        Share of those ``K`` tiles masked (0.6).
    dropout : float
        Dropout before each classifier (0).

    Notes
    -----
    Loss contract: ``task_loss_weight = 1`` (the trainer's CE on the slide logits is ACMIL's ``CE(slide)``);
    with labels in training ``aux_loss = mean_m CE(sub_logit_m, label) + L_div`` with
    ``L_div = mean_{m < m'} cos(softmax(A_m), softmax(A_m'))`` over the real tiles (0 when ``n_token = 1``).

    STKIM never picks padded tiles: with ``n`` real tiles a bag uses ``K = min(n_masked_patch, n)``.

    ``scores`` (attention kind): ``mean_m softmax(A_m)``, the slide attention. ``extra``:
    ``"branch_attention"`` (B, M, N), ``"branch_logits"`` (B, M, C).
    """

    has_aux_loss = True

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        embed_dim: int = 256,
        attn_dim: int = 128,
        n_token: int = 5,
        n_masked_patch: int = 10,
        mask_drop: float = 0.6,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dim, num_classes)
        if n_token < 1 or n_masked_patch < 0 or not 0.0 <= mask_drop <= 1.0:
            raise InvalidParameterError("need n_token >= 1, n_masked_patch >= 0 and 0 <= mask_drop <= 1")
        self.n_token, self.n_masked_patch, self.mask_drop = n_token, n_masked_patch, mask_drop
        self.dim_reduction = nn.Sequential(nn.Linear(in_dim, embed_dim, bias=False), nn.ReLU())
        self.attention = GatedAttention(embed_dim, attn_dim, n_token)
        self.classifiers = nn.ModuleList(
            nn.Sequential(nn.Dropout(dropout), nn.Linear(embed_dim, num_classes)) for _ in range(n_token)
        )
        self.slide_classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embed_dim, num_classes))

    def _stkim(self, raw: Tensor, mask: Tensor) -> Tensor:
        """(B, M, N) logits -> (B, M, N) bool, True where a tile is dropped for that branch."""
        b, m, n = raw.shape
        k = min(self.n_masked_patch, n)
        per_bag = mask.sum(1).clamp(max=k)  # (B,) eligible tiles per bag
        n_drop = torch.floor(per_bag.double() * self.mask_drop).long()  # (B,)
        top = raw.detach().masked_fill(~mask.unsqueeze(1), float("-inf")).topk(k, dim=-1).indices  # (B, M, K)
        # random order of the eligible top positions; ineligible ones (padding) sort last
        keys = torch.rand(b, m, k, device=raw.device)
        keys = keys.masked_fill(torch.arange(k, device=raw.device) >= per_bag[:, None, None], 2.0)
        order = keys.argsort(-1)
        chosen = (torch.arange(k, device=raw.device) < n_drop[:, None, None]).expand(b, m, k)  # first n_drop
        drop = torch.zeros(b, m, n, dtype=torch.bool, device=raw.device)
        return drop.scatter(-1, top.gather(-1, order), chosen)

    def _forward(self, features: Tensor, mask: Tensor, labels: Tensor | None) -> AggregatorOutput:
        x = self.dim_reduction(features)  # (B, N, E)
        raw = self.attention(x).transpose(1, 2)  # (B, M, N)
        keep = mask.unsqueeze(1).expand_as(raw)
        if self.training and self.n_masked_patch > 0 and self.mask_drop > 0:
            keep = keep & ~self._stkim(raw, mask)
        attn = masked_softmax(raw, keep)  # (B, M, N)
        branch_feats = attn @ x  # (B, M, E)
        branch_logits = torch.stack([clf(branch_feats[:, i]) for i, clf in enumerate(self.classifiers)], 1)
        bag_attn = attn.mean(1)  # (B, N)
        logits = self.slide_classifier((bag_attn.unsqueeze(1) @ x).squeeze(1))
        aux = None
        if labels is not None:
            valid = torch.ones(branch_logits.shape[:2], dtype=torch.bool, device=x.device)
            aux = bag_cross_entropy(branch_logits, labels, valid) + self._diversity(attn)
        return AggregatorOutput(
            logits=logits,
            scores=bag_attn,
            aux_loss=aux,
            extra={"branch_attention": attn, "branch_logits": branch_logits},
        )

    def _diversity(self, attn: Tensor) -> Tensor:
        """Mean pairwise cosine similarity between branch attentions, averaged over bags."""
        m = attn.shape[1]
        if m < 2:
            return attn.new_zeros(())
        unit = F.normalize(attn, dim=-1)
        cos = unit @ unit.transpose(1, 2)  # (B, M, M)
        i, j = torch.triu_indices(m, m, offset=1, device=attn.device)
        return cos[:, i, j].mean()
