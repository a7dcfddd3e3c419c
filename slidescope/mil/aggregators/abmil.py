"""ABMIL: gated attention MIL (Ilse, Tomczak & Welling, ICML 2018), CLAM-style defaults."""

from __future__ import annotations

from torch import Tensor, nn

from ._base import Aggregator, AggregatorOutput, GatedAttention, embed_mlp, masked_softmax
from ._registry import register_aggregator

__all__ = ["ABMIL"]


@register_aggregator("abmil")
class ABMIL(Aggregator):
    """Gated-attention MIL.

    ``H = Dropout(ReLU(W_e h))``, ``a = softmax_i(w^T (tanh(V H_i) * sigmoid(U H_i)))`` over the real tiles,
    ``z = sum_i a_i H_i``, ``logits = W_c z``.

    Parameters
    ----------
    in_dim, num_classes : int
        Tile embedding length ``D`` and number of classes ``C``.
    embed_dim : int
        ``E``, width of the patch embedding (512).
    attn_dim : int
        ``D_a``, attention hidden size (256, CLAM "small"; MIL-Lab uses 384).
    dropout : float
        Dropout after the embedding and inside the attention branches (0.25).
    gated : bool
        Gated attention (True) or plain tanh attention.

    Notes
    -----
    ``scores`` (attention kind): the attention ``a``. ``extra["attention_logits"]``: raw logits (B, N).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        embed_dim: int = 512,
        attn_dim: int = 256,
        dropout: float = 0.25,
        gated: bool = True,
    ) -> None:
        super().__init__(in_dim, num_classes)
        self.embed = embed_mlp(in_dim, embed_dim, dropout)
        self.attention = GatedAttention(embed_dim, attn_dim, 1, dropout, gated=gated)
        self.classifier = nn.Linear(embed_dim, num_classes)

    def _forward(self, features: Tensor, mask: Tensor, labels: Tensor | None) -> AggregatorOutput:
        h = self.embed(features)  # (B, N, E)
        raw = self.attention(h).squeeze(-1)  # (B, N)
        a = masked_softmax(raw, mask)
        z = (a.unsqueeze(1) @ h).squeeze(1)  # (B, E)
        return AggregatorOutput(
            logits=self.classifier(z), scores=a, extra={"attention_logits": raw.masked_fill(~mask, 0.0)}
        )
