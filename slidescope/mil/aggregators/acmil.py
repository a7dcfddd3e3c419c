"""ACMIL (Zhang et al., ECCV 2024): attention-challenging MIL, gated-attention variant ``ACMIL_GA``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

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
        ``K``, top-attention tiles eligible for masking per branch (10).
    mask_drop : float
        Share of those ``K`` tiles masked (0.6).
    dropout : float
        Dropout before each classifier (0).

    ``n_token``, ``n_masked_patch`` and ``mask_drop`` default to the ACMIL settings of the reference README
    (``--n_token 5 --n_masked_patch 10 --mask_drop 0.6``; the script's own defaults, 1 / 0 / 0.6, are its
    ABMIL baseline).

    Notes
    -----
    Reference: dazhangyu123/ACMIL, ``ACMIL_GA`` (``architecture/transformer.py``) and the loss of
    ``train_one_epoch`` in ``Step3_WSI_classification_ACMIL.py``. Loss contract: ``task_loss_weight = 1``
    (the trainer's CE on the slide logits is ACMIL's ``CE(slide)``); with labels in training and
    ``n_token > 1``, ``aux_loss = mean_m CE(sub_logit_m, label) + L_div`` with
    ``L_div = mean_{m < m'} cos(softmax(A_m), softmax(A_m'))`` over the real tiles. With ``n_token = 1``
    the reference adds no branch loss and no diversity term, so ``aux_loss`` is None (``has_aux_loss``
    is False): the branch classifier is then unused, as in the reference (under DDP, train it with
    ``strategy="ddp_find_unused_parameters_true"``).
    Deviations: the reference trains one slide per step with AdamW (lr 1e-4 on a cosine schedule, weight
    decay 1e-5); masked logits are excluded from the softmax rather than set to -1e9 (same result).
    Weights trained with the reference load with :meth:`load_reference_state_dict`.

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
        self.has_aux_loss = n_token > 1  # the reference has no branch or diversity loss with one token

    def load_reference_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load the weights of a dazhangyu123/ACMIL ``ACMIL_GA`` (its ``model.state_dict()``).

        Parameters
        ----------
        state_dict : mapping of str to Tensor
            Keys ``dimreduction.fc1.weight``, ``attention.attention_{V,U}.0.*``, ``attention.attention_weights.*``,
            ``classifier.{m}.fc.*``, ``Slide_classifier.fc.*`` (a ``module.`` prefix is accepted).

        Raises
        ------
        InvalidParameterError
            Keys or shapes that do not fit this model (build it with the reference's ``D_feat``,
            ``D_inner``, ``n_class`` and ``n_token``).
        """
        rename = (
            ("dimreduction.fc1.", "dim_reduction.0."),
            ("attention.attention_V.0.", "attention.attention_a.0."),
            ("attention.attention_U.0.", "attention.attention_b.0."),
            ("attention.attention_weights.", "attention.attention_c."),
            ("Slide_classifier.fc.", "slide_classifier.1."),
        )
        mapped = {}
        for key, value in state_dict.items():
            key = key.removeprefix("module.")
            for old, new in rename:
                if key.startswith(old):
                    key = new + key.removeprefix(old)
                    break
            else:
                if key.startswith("classifier."):  # classifier.{m}.fc.* -> classifiers.{m}.1.*
                    _, m, rest = key.split(".", 2)
                    key = f"classifiers.{m}.1." + rest.removeprefix("fc.")
            mapped[key] = torch.as_tensor(value)
        load_strict(
            self,
            mapped,
            fix=(
                f"these are not the weights of an ACMIL_GA that fits ACMIL(in_dim={self.in_dim}, "
                f"num_classes={self.num_classes}, n_token={self.n_token}); build it with the reference's D_feat, "
                f"D_inner (embed_dim), n_class and n_token"
            ),
        )

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
        if labels is not None and self.n_token > 1:
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
