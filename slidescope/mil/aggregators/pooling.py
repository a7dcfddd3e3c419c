"""Parameter-light baselines: mean pooling of embedded tiles and max pooling of instance logits."""

from __future__ import annotations

from torch import Tensor, nn

from ._base import Aggregator, AggregatorOutput, embed_mlp, masked_max
from ._registry import register_aggregator

__all__ = ["MeanPool", "MaxPool"]


@register_aggregator("mean")
class MeanPool(Aggregator):
    """Mean pooling: ``logits = W mean_i ReLU(W_e h_i)``.

    Parameters
    ----------
    in_dim, num_classes : int
        Tile embedding length ``D`` and number of classes ``C``.
    embed_dim : int
        Width ``E`` of the patch-embedding layer (0 pools the raw features, a linear probe on the mean).
    dropout : float
        Dropout after the embedding.

    Notes
    -----
    ``scores`` (attention kind) are uniform, ``1 / n_real`` on every real tile: its weight in the mean.
    """

    def __init__(self, in_dim: int, num_classes: int, *, embed_dim: int = 512, dropout: float = 0.25) -> None:
        super().__init__(in_dim, num_classes)
        self.embed = embed_mlp(in_dim, embed_dim, dropout) if embed_dim > 0 else nn.Identity()
        self.classifier = nn.Linear(embed_dim if embed_dim > 0 else in_dim, num_classes)

    def _forward(self, features: Tensor, mask: Tensor, labels: Tensor | None) -> AggregatorOutput:
        h = self.embed(features)  # (B, N, E)
        weights = mask.to(h.dtype) / mask.sum(1, keepdim=True).to(h.dtype)  # (B, N)
        z = (weights.unsqueeze(-1) * h).sum(1)  # (B, E); padded rows weigh exactly 0
        return AggregatorOutput(logits=self.classifier(z), scores=weights)


@register_aggregator("max")
class MaxPool(Aggregator):
    """Instance-level max pooling (mi-Net style): ``logits_c = max_i g(h_i)_c``.

    An instance classifier ``g = Linear(D, E) -> ReLU -> Dropout -> Linear(E, C)`` scores every tile and the
    slide logit of each class is the largest real-tile logit of that class.

    Parameters
    ----------
    in_dim, num_classes : int
    embed_dim : int
        Hidden width ``E`` of the instance classifier.
    dropout : float

    Notes
    -----
    ``scores`` (instance kind): per tile, ``softmax(g(h_i))`` at the slide's predicted class.
    ``extra["instance_logits"]``: (B, N, C), padded rows 0.
    """

    scores_kind = "instance"

    def __init__(self, in_dim: int, num_classes: int, *, embed_dim: int = 512, dropout: float = 0.25) -> None:
        super().__init__(in_dim, num_classes)
        self.instance_classifier = nn.Sequential(
            embed_mlp(in_dim, embed_dim, dropout), nn.Linear(embed_dim, num_classes)
        )

    def _forward(self, features: Tensor, mask: Tensor, labels: Tensor | None) -> AggregatorOutput:
        inst = self.instance_classifier(features)  # (B, N, C)
        logits = masked_max(inst, mask.unsqueeze(-1), dim=1)  # (B, C)
        pred = logits.argmax(-1)  # (B,)
        probs = inst.softmax(-1).gather(-1, pred[:, None, None].expand(-1, inst.shape[1], 1)).squeeze(-1)
        return AggregatorOutput(
            logits=logits,
            scores=probs.masked_fill(~mask, 0.0),
            extra={"instance_logits": inst.masked_fill(~mask.unsqueeze(-1), 0.0)},
        )
