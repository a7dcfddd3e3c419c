"""DSMIL (Li, Li & Eliceiri, CVPR 2021): dual-stream MIL, the original binli123/dsmil-wsi aggregator."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...errors import InvalidParameterError
from ._base import Aggregator, AggregatorOutput, load_strict, masked_max, masked_softmax
from ._registry import register_aggregator

__all__ = ["DSMIL"]


@register_aggregator("dsmil")
class DSMIL(Aggregator):
    """Dual-stream MIL as in binli123/dsmil-wsi (``dsmil.py``, built and trained as ``train_tcga.py``).

    On the tile embeddings ``h_i`` themselves (the original aggregator has no embedding layer):

    - instance stream (``FCLayer``): ``c_i = W_i h_i + b_i`` (B, N, C); the critical tile of class ``c`` is
      ``m_c = argmax_i c_{i,c}`` over the real tiles;
    - bag stream (``BClassifier``): queries ``q_i = tanh(W_2 relu(W_1 h_i))`` (width ``attn_dim`` = 128;
      ``nonlinear=False``: ``q_i = W_1 h_i``), ``A_{i,c} = softmax_i(q_i . q_{m_c} / sqrt(attn_dim))`` over
      the real tiles, values ``v_i = h_i`` (``passing_v=True``: ``relu(W_v dropout(h_i))``), bag embedding
      ``b_c = sum_i A_{i,c} v_i`` and bag logits ``s = Conv1d(C, C, kernel=D)(b)`` (the repository's ``fcc``);
    - output: ``logits = s``, the bag stream, as the repository's test code scores slides
      (``sigmoid(bag_prediction)``; its ``--average`` flag, off by default, would add ``sigmoid(max_i c_i)``).

    Parameters
    ----------
    in_dim, num_classes : int
        Tile embedding length ``D`` and number of classes ``C``.
    attn_dim : int
        Query width (128, fixed in the repository).
    nonlinear : bool
        Two-layer query network (True, ``--non_linearity 1`` in ``train_tcga.py``).
    passing_v : bool
        Value network ``Dropout -> Linear(D, D) -> ReLU`` instead of the identity (False, the default).
    dropout_v : float
        Dropout of the value network (0, ``--dropout_node``; only used with ``passing_v``).

    Notes
    -----
    Loss: the original ``0.5 * BCE(s, y) + 0.5 * BCE(max_i c_i, y)`` with one-hot ``y`` (binary
    cross-entropy with logits on each class). :meth:`task_loss` is the bag term's BCE, ``task_loss_weight``
    is 0.5 and, with labels in training, ``aux_loss = 0.5 * BCE(max_i c_i, y)``. The trainer's class weights
    weight each slide's BCE by the weight of its class (the repository has none). Validation loss in the
    trainer is the bag term only.

    Deviations from the repository: its ``--dropout_patch`` (tile dropout, 0 by default) and orthogonal
    initialisation are not reproduced (the trainer owns data and initialisation); the repository
    optimises Adam (lr 1e-4, betas (0.5, 0.9), weight decay 1e-3, cosine schedule) one slide at a time,
    slidescope's trainer uses its own optimiser and batches of slides. The trainer's probabilities are
    ``softmax(logits)``; the repository's per-class ``sigmoid(logits)`` is in ``extra["bag_probs"]`` (same
    argmax). Weights trained with the repository load with :meth:`load_reference_state_dict`.

    ``scores`` (attention kind): ``A[:, pred]``, the attention of the predicted class.
    ``extra``: ``"attention"`` (B, C, N), ``"instance_logits"`` (B, N, C) (0 on padding), ``"bag_logits"``,
    ``"max_instance_logits"`` and ``"bag_probs"`` (B, C).
    """

    has_aux_loss = True

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        attn_dim: int = 128,
        nonlinear: bool = True,
        passing_v: bool = False,
        dropout_v: float = 0.0,
    ) -> None:
        super().__init__(in_dim, num_classes)
        if attn_dim < 1 or not 0.0 <= dropout_v < 1.0:
            raise InvalidParameterError(
                f"need attn_dim >= 1 and 0 <= dropout_v < 1, got {attn_dim}, {dropout_v}"
            )
        self.attn_dim = attn_dim
        self.instance_classifier = nn.Linear(in_dim, num_classes)
        self.q: nn.Module = (
            nn.Sequential(nn.Linear(in_dim, attn_dim), nn.ReLU(), nn.Linear(attn_dim, attn_dim), nn.Tanh())
            if nonlinear
            else nn.Linear(in_dim, attn_dim)
        )
        self.v: nn.Module = (
            nn.Sequential(nn.Dropout(dropout_v), nn.Linear(in_dim, in_dim), nn.ReLU())
            if passing_v
            else nn.Identity()
        )
        self.fcc = nn.Conv1d(num_classes, num_classes, kernel_size=in_dim)
        self.task_loss_weight = 0.5  # the repository's 0.5 * bag + 0.5 * max-instance split

    def _forward(self, features: Tensor, mask: Tensor, labels: Tensor | None) -> AggregatorOutput:
        inst = self.instance_classifier(features)  # (B, N, C)
        # (B, C): the critical tile of each class, among the real tiles
        crit = inst.masked_fill(~mask.unsqueeze(-1), float("-inf")).argmax(1)
        h_crit = features.gather(1, crit.unsqueeze(-1).expand(-1, -1, features.shape[-1]))  # (B, C, D)
        q, q_crit = self.q(features), self.q(h_crit)  # (B, N, dq), (B, C, dq)
        sim = (q_crit @ q.transpose(1, 2)) / math.sqrt(self.attn_dim)  # (B, C, N)
        attn = masked_softmax(sim, mask.unsqueeze(1))  # (B, C, N)
        bag = attn @ self.v(features)  # (B, C, D)
        bag_logits = self.fcc(bag).squeeze(-1)  # (B, C)
        max_inst = masked_max(inst, mask.unsqueeze(-1), dim=1)  # (B, C)
        pred = bag_logits.argmax(-1)
        scores = attn.gather(1, pred[:, None, None].expand(-1, 1, attn.shape[2])).squeeze(1)
        aux = None
        if labels is not None:
            aux = 0.5 * self._bce(max_inst, labels, None)
        return AggregatorOutput(
            logits=bag_logits,
            scores=scores,
            aux_loss=aux,
            extra={
                "attention": attn,
                "instance_logits": inst.masked_fill(~mask.unsqueeze(-1), 0.0),
                "bag_logits": bag_logits,
                "max_instance_logits": max_inst,
                "bag_probs": torch.sigmoid(bag_logits),
            },
        )

    def _bce(self, logits: Tensor, labels: Tensor, class_weight: Tensor | None) -> Tensor:
        """Mean over slides and classes of BCE-with-logits against one-hot labels (slide-weighted)."""
        target = F.one_hot(labels, self.num_classes).to(logits.dtype)
        per_slide = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").mean(
            1
        )
        if class_weight is None:
            return per_slide.mean()
        w = class_weight.to(per_slide)[labels]
        return (w * per_slide).sum() / w.sum()

    def task_loss(self, logits: Tensor, labels: Tensor, class_weight: Tensor | None = None) -> Tensor:
        """The bag stream's loss: BCE-with-logits against one-hot labels (the repository's criterion).

        Parameters
        ----------
        logits : Tensor of shape (B, C)
        labels : Tensor of shape (B,), long
        class_weight : Tensor of shape (C,), optional
            Weights each slide's loss by the weight of its class (normalised by their sum).
        """
        return self._bce(logits, labels, class_weight)

    def load_reference_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load the weights of a binli123/dsmil-wsi ``MILNet`` (``FCLayer`` + ``BClassifier``).

        Parameters
        ----------
        state_dict : mapping of str to Tensor
            ``milnet.state_dict()`` of the repository (keys ``i_classifier.fc.0.*``, ``b_classifier.*``;
            a ``module.`` prefix from DataParallel is accepted).

        Raises
        ------
        InvalidParameterError
            Missing or unexpected keys, or shapes that do not fit this model (rebuild it with the
            repository's ``feats_size``, ``num_classes``, ``nonlinear`` and ``passing_v``).
        """
        mapped = {}
        for key, value in state_dict.items():
            key = key.removeprefix("module.")
            if key.startswith("i_classifier.fc.0."):
                key = "instance_classifier." + key.removeprefix("i_classifier.fc.0.")
            elif key.startswith("b_classifier."):
                key = key.removeprefix("b_classifier.")
            mapped[key] = torch.as_tensor(value)
        load_strict(
            self,
            mapped,
            fix=(
                f"these are not the weights of a dsmil-wsi MILNet that fits DSMIL(in_dim={self.in_dim}, "
                f"num_classes={self.num_classes}); build it with the repository's feats_size, num_classes, "
                f"nonlinear and passing_v"
            ),
        )
