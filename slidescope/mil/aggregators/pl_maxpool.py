"""Partial-label max pooling: an instance classifier trained on candidate label sets, pooled by its maximum.

A simplification inspired by INS (Qu et al., IEEE TCSVT; arXiv 2307.02249), **not INS**: it keeps INS's
partial-label view of MIL (a tile of a negative slide can only be negative, a tile of a positive slide may be
either) and its max-pooling inference rule, and leaves out everything else of the method (see the class).
It was registered as ``"ins"`` before; that name now raises an error that points here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import InvalidParameterError
from ._base import Aggregator, AggregatorOutput, embed_mlp, masked_max, masked_min
from ._registry import register_aggregator

__all__ = ["PartialLabelMaxPool"]


@register_aggregator("pl-maxpool")
class PartialLabelMaxPool(Aggregator):
    """Partial-label max pooling: an instance classifier on frozen features + a max-pooling rule (not INS).

    ``o_i = g(h_i)`` with ``g = Linear(D, E) -> ReLU -> Dropout -> Linear(E, C)``, ``p_i = softmax(o_i)``.
    Class 0 is the negative (background) class every tile may belong to; a slide of class ``y`` gives its
    tiles the candidate set ``{0, y}`` (``{0}`` for a negative slide), INS's candidate sets for ``C = 2``.

    Slide logits (the paper's max-pooling inference rule): ``log s`` with ``s_y = max_i p_{i,y}`` for
    ``y >= 1`` and ``s_0 = min_i p_{i,0}``. For ``C = 2``, ``softmax(logits) = [1 - max_i p_i, max_i p_i]``
    exactly, i.e. the slide is as positive as its most positive tile.

    Parameters
    ----------
    in_dim, num_classes : int
        Tile embedding length ``D`` and number of classes ``C`` (class 0 = negative).
    embed_dim : int
        Hidden width ``E`` of the instance classifier (512).
    dropout : float
        (0.25).
    bag_weight : float
        Weight of the trainer's slide loss relative to the instance loss (0.5, as INS's ``--wl``).

    Notes
    -----
    Loss contract: ``task_loss_weight = bag_weight``; with labels in training ``aux_loss`` is the
    partial-label instance loss ``-sum_c conf_{i,c} log p_{i,c}`` averaged over each slide's real tiles,
    then over slides. Tiles of negative slides have ``conf = [1, 0, ...]``; tiles of a class-``y`` slide
    have ``conf = normalize(stopgrad(p_i) * candidates)``, the classifier's own disambiguation of its
    candidate set (PRODEN-style).

    What it is not: INS (Qu et al.) trains an image encoder end to end and disambiguates candidate labels
    with PiCO machinery: a projection head, a momentum key encoder, a queue of 8192 keys, class prototypes,
    a supervised-contrastive loss, per-tile confidences kept as an exponential moving average across
    epochs, and a separate attention "teacher" bag head. None of that is here: a momentum encoder over
    images is out of scope for cached embeddings, and per-tile state across epochs does not fit a
    stateless module. Results of this model must not be reported as INS. The max-pooling rule above is
    the one the paper also uses at inference. There is no public reference implementation of this
    simplification, hence no golden-file parity test. The generalisation to ``C > 2`` (candidates
    ``{0, y}``) assumes a negative/normal class 0 and does not suit pure subtyping tasks.

    ``scores`` (instance kind): ``1 - p_{i,0}``, the probability that a tile is not negative (the positive
    probability when ``C = 2``). ``extra["instance_probs"]``: (B, N, C), 0 on padding.
    """

    scores_kind = "instance"
    has_aux_loss = True

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        embed_dim: int = 512,
        dropout: float = 0.25,
        bag_weight: float = 0.5,
    ) -> None:
        super().__init__(in_dim, num_classes)
        if num_classes < 2:
            raise InvalidParameterError("pl-maxpool needs num_classes >= 2 (class 0 is the negative class)")
        self.instance_classifier = nn.Sequential(
            embed_mlp(in_dim, embed_dim, dropout), nn.Linear(embed_dim, num_classes)
        )
        self.bag_weight = bag_weight
        self.task_loss_weight = bag_weight

    def _forward(self, features: Tensor, mask: Tensor, labels: Tensor | None) -> AggregatorOutput:
        logp = torch.log_softmax(self.instance_classifier(features), dim=-1)  # (B, N, C)
        m = mask.unsqueeze(-1)
        neg = masked_min(logp[..., :1], m, dim=1)  # (B, 1): log min_i p_{i,0}
        pos = masked_max(logp[..., 1:], m, dim=1)  # (B, C-1): log max_i p_{i,c}
        logits = torch.cat([neg, pos], dim=-1)
        probs = logp.exp().masked_fill(~m, 0.0)
        aux = None
        if labels is not None:
            candidates = torch.zeros_like(logp[:1, :1]).expand_as(logp).clone()  # (B, N, C)
            candidates[..., 0] = 1.0
            candidates.scatter_(-1, labels[:, None, None].expand(-1, logp.shape[1], 1), 1.0)
            conf = probs.detach() * candidates
            conf = conf / conf.sum(-1, keepdim=True).clamp_min(1e-12)
            per_tile = -(conf * logp).sum(-1) * mask  # (B, N)
            aux = (per_tile.sum(1) / mask.sum(1)).mean()
        return AggregatorOutput(
            logits=logits,
            scores=(1.0 - probs[..., 0]) * mask,
            aux_loss=aux,
            extra={"instance_probs": probs},
        )
