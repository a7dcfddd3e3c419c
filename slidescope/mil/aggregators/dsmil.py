"""DSMIL (Li, Li & Eliceiri, CVPR 2021): dual-stream MIL with a critical-instance attention."""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

from ._base import Aggregator, AggregatorOutput, embed_mlp, masked_max, masked_softmax
from ._registry import register_aggregator

__all__ = ["DSMIL"]


@register_aggregator("dsmil")
class DSMIL(Aggregator):
    """Dual-stream MIL.

    With ``H = Dropout(ReLU(W_e h))`` (width ``E``):

    - instance stream: ``c_i = W_i H_i`` (B, N, C); the critical tile of class ``c`` is
      ``m_c = argmax_i c_{i,c}`` over the real tiles;
    - bag stream: ``q_i = phi_q(H_i)``, ``A_{i,c} = softmax_i(q_i . q_{m_c} / sqrt(d_q))`` over the real
      tiles,
      ``v_i = Linear(Dropout(H_i))``, ``b_c = LayerNorm(sum_i A_{i,c} v_i)``, bag score
      ``s = Conv1d(C, C, kernel=E)(b)``;
    - output: ``logits = 0.5 * (s + max_i c_i)`` (the reference's combination, MIL-Lab).

    Parameters
    ----------
    in_dim, num_classes : int
        Tile embedding length ``D`` and number of classes ``C``.
    embed_dim : int
        ``E`` (512).
    attn_dim : int
        Query width ``d_q`` (384 as MIL-Lab; the original uses 128).
    dropout : float
        After the embedding (0.25).
    dropout_v : float
        Before the value projection (0).
    nonlinear_q : bool
        Original query network ``Linear(E, d_q) -> ReLU -> Linear(d_q, d_q) -> Tanh`` instead of MIL-Lab's
        single ``Linear(E, d_q)``.
    instance_loss_weight : float
        Weight of the max-instance cross-entropy returned as ``aux_loss`` (0.5, the original's
        ``0.5 * bag + 0.5 * max-instance`` split; 0 disables it, as the MIL-Lab port).

    Notes
    -----
    Loss contract: ``task_loss_weight = 1``; with labels in training,
    ``aux_loss = instance_loss_weight * CE(max_i c_i, label)``. The trainer's task loss applies to the
    combined ``logits`` (as MIL-Lab); the auxiliary term keeps the instance stream (which picks the
    critical tile) directly supervised, as the original's max-instance loss does. The original uses
    sigmoid/BCE (multi-label); here, as everywhere in slidescope, single-label cross-entropy.

    ``scores`` (attention kind): ``A[:, :, pred]``, the attention of the predicted class.
    ``extra``: ``"attention"`` (B, C, N), ``"instance_logits"`` (B, N, C) (0 on padding),
    ``"bag_logits"`` and ``"max_instance_logits"`` (B, C).
    """

    has_aux_loss = True

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        embed_dim: int = 512,
        attn_dim: int = 384,
        dropout: float = 0.25,
        dropout_v: float = 0.0,
        nonlinear_q: bool = False,
        instance_loss_weight: float = 0.5,
    ) -> None:
        super().__init__(in_dim, num_classes)
        self.embed = embed_mlp(in_dim, embed_dim, dropout)
        self.instance_classifier = nn.Linear(embed_dim, num_classes)
        self.q: nn.Module = (
            nn.Sequential(nn.Linear(embed_dim, attn_dim), nn.ReLU(), nn.Linear(attn_dim, attn_dim), nn.Tanh())
            if nonlinear_q
            else nn.Linear(embed_dim, attn_dim)
        )
        self.v = nn.Sequential(nn.Dropout(dropout_v), nn.Linear(embed_dim, embed_dim))
        self.norm = nn.LayerNorm(embed_dim)
        self.bag_classifier = nn.Conv1d(num_classes, num_classes, kernel_size=embed_dim)
        self.instance_loss_weight = instance_loss_weight
        self.attn_dim = attn_dim

    def _forward(self, features: Tensor, mask: Tensor, labels: Tensor | None) -> AggregatorOutput:
        h = self.embed(features)  # (B, N, E)
        inst = self.instance_classifier(h)  # (B, N, C)
        # (B, C): the critical tile of each class, among the real tiles
        crit = inst.masked_fill(~mask.unsqueeze(-1), float("-inf")).argmax(1)
        h_crit = h.gather(1, crit.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, C, E)
        q, q_crit = self.q(h), self.q(h_crit)  # (B, N, dq), (B, C, dq)
        sim = (q_crit @ q.transpose(1, 2)) / math.sqrt(self.attn_dim)  # (B, C, N)
        attn = masked_softmax(sim, mask.unsqueeze(1))  # (B, C, N)
        bag = self.norm(attn @ self.v(h))  # (B, C, E)
        bag_logits = self.bag_classifier(bag).squeeze(-1)  # (B, C)
        max_inst = masked_max(inst, mask.unsqueeze(-1), dim=1)  # (B, C)
        logits = 0.5 * (bag_logits + max_inst)
        pred = logits.argmax(-1)
        scores = attn.gather(1, pred[:, None, None].expand(-1, 1, attn.shape[2])).squeeze(1)
        aux = None
        if labels is not None and self.instance_loss_weight > 0:
            aux = self.instance_loss_weight * F.cross_entropy(max_inst, labels)
        return AggregatorOutput(
            logits=logits,
            scores=scores,
            aux_loss=aux,
            extra={
                "attention": attn,
                "instance_logits": inst.masked_fill(~mask.unsqueeze(-1), 0.0),
                "bag_logits": bag_logits,
                "max_instance_logits": max_inst,
            },
        )
