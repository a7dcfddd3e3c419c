"""CLAM-SB and CLAM-MB (Lu et al., Nature BME 2021): attention MIL with instance-level clustering.

Structure follows the original CLAM "small" configuration (``[D, 512, 256]``, dropout 0.25, k_sample 8,
bag_weight 0.7, cross-entropy instance loss; the MIL-Lab port uses attention dim 384).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...errors import InvalidParameterError
from ._base import Aggregator, AggregatorOutput, GatedAttention, embed_mlp, masked_softmax
from ._registry import register_aggregator
from .abmil import _clean_clam_keys, _load_reference

__all__ = ["CLAMSB", "CLAMMB"]


class _CLAM(Aggregator):
    """Shared body of CLAM-SB / CLAM-MB; subclasses set the number of attention branches and the head.

    Parameters
    ----------
    in_dim, num_classes : int
        Tile embedding length ``D`` and number of classes ``C``.
    embed_dim : int
        Width of ``H = ReLU(Linear(D, E))`` (512).
    attn_dim : int
        Gated-attention hidden size (256, CLAM "small").
    dropout : float
        After the embedding and inside the attention branches (0.25).
    k_sample : int
        Instances taken from each end of the attention ranking for the clustering loss (8).
    bag_weight : float
        Slide-loss share of the total: ``loss = bag_weight * CE + (1 - bag_weight) * L_inst`` (0.7).
    subtyping : bool
        Also push the top-k instances of the *other* classes' branches to "absent" (CLAM's mutually exclusive
        subtyping mode).

    Notes
    -----
    Loss contract: ``task_loss_weight = bag_weight`` and ``aux_loss = (1 - bag_weight) * L_inst``, so the
    trainer's ``task_loss_weight * CE + aux_loss`` is exactly CLAM's total loss.

    ``L_inst`` (training with labels only): for each class ``c`` with its binary instance classifier ``g_c``,
    if ``c`` is the slide label, the ``k`` highest-attention tiles are targets 1 and the ``k`` lowest
    targets 0;
    otherwise, only when ``subtyping``, the ``k`` highest are targets 0. Cross-entropy (CLAM's default
    ``inst_loss``; the smooth top-1 SVM option is not provided), summed over classes and divided by ``C``
    when subtyping, averaged over bags. ``k = min(k_sample, n_real // 2)`` so that tiny bags never label
    one tile both ways (the original assumes ``N >= k_sample``); bags with ``k = 0`` are skipped.

    Reference: mahmoodlab/CLAM ``models/model_clam.py`` (commit 53e2409), ``CLAM_SB``/``CLAM_MB`` with
    ``gate=True, size_arg="small"``, ``instance_loss_fn=CrossEntropyLoss()`` and the ``bag_weight``
    mixing of its ``train_loop_clam``. With the same weights, logits, attention and the instance loss
    (``instance_eval=True``) equal the reference's to <= 1e-6 in float32 (tests/mil/test_parity_clam.py).
    Deviations: the ``k`` cap above; the ranking uses the raw attention logits where CLAM ranks their
    softmax (the same order); several bags per batch average their instance losses (CLAM trains one bag
    per step); CLAM's attention branches drop a fixed 0.25 whenever its ``dropout`` is non-zero, here they
    use ``dropout`` (equal at CLAM's ``--drop_out 0.25``, our default); the smooth top-1 SVM instance
    loss (CLAM's ``--inst_loss svm``, from the external ``topk`` package) is not provided.
    """

    has_aux_loss = True
    num_branches_is_classes: ClassVar[bool] = False
    #: CLAM parameter-name prefixes -> ours (``attention_net.3`` is CLAM's Attn_Net_Gated)
    REFERENCE_KEYS: ClassVar[dict[str, str]] = {
        "attention_net.0.": "embed.0.",
        "attention_net.3.": "attention.",
    }

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        embed_dim: int = 512,
        attn_dim: int = 256,
        dropout: float = 0.25,
        k_sample: int = 8,
        bag_weight: float = 0.7,
        subtyping: bool = False,
    ) -> None:
        super().__init__(in_dim, num_classes)
        if not 0.0 <= bag_weight <= 1.0:
            raise InvalidParameterError(f"bag_weight must lie in [0, 1], got {bag_weight}")
        if k_sample < 1:
            raise InvalidParameterError(f"k_sample must be >= 1, got {k_sample}")
        branches = num_classes if self.num_branches_is_classes else 1
        self.embed = embed_mlp(in_dim, embed_dim, dropout)
        self.attention = GatedAttention(embed_dim, attn_dim, branches, dropout)
        self.instance_classifiers = nn.ModuleList(nn.Linear(embed_dim, 2) for _ in range(num_classes))
        self.k_sample = k_sample
        self.bag_weight = bag_weight
        self.subtyping = subtyping
        self.task_loss_weight = bag_weight
        self._build_head(embed_dim)

    def load_reference_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load a ``state_dict`` of CLAM's ``CLAM_SB`` / ``CLAM_MB`` (gated attention, any size) strictly.

        ``attention_net.0`` -> ``embed.0``, ``attention_net.3.attention_{a,b,c}`` -> ``attention.*``;
        ``classifiers`` -> ``classifier`` for CLAM-SB (CLAM-MB's per-class ``classifiers.c`` and both
        models' ``instance_classifiers`` keep their names). As CLAM's own ``eval_utils.initiate_model``
        does, keys containing ``instance_loss_fn`` (the SVM loss's buffer) are dropped and ``.module``
        (from ``nn.DataParallel``, as in CLAM's shipped ``heatmaps/demo/ckpts/s_0_checkpoint.pt``) is removed.

        Parameters
        ----------
        state_dict : mapping of str to Tensor
            The reference model's ``state_dict()`` or a CLAM checkpoint ``s_<fold>_checkpoint.pt``.
        """
        _load_reference(self, _clean_clam_keys(state_dict), self.REFERENCE_KEYS)

    def _build_head(self, embed_dim: int) -> None:
        raise NotImplementedError

    def _head(self, z: Tensor) -> Tensor:
        """(B, K, E) attention-pooled features -> (B, C) logits."""
        raise NotImplementedError

    def _forward(self, features: Tensor, mask: Tensor, labels: Tensor | None) -> AggregatorOutput:
        h = self.embed(features)  # (B, N, E)
        raw = self.attention(h).transpose(1, 2)  # (B, K, N)
        attn = masked_softmax(raw, mask.unsqueeze(1))  # (B, K, N)
        z = attn @ h  # (B, K, E)
        logits = self._head(z)  # (B, C)
        if attn.shape[1] == 1:
            scores = attn[:, 0]
        else:  # CLAM's heatmaps show the branch of the predicted class
            pred = logits.argmax(-1)
            scores = attn.gather(1, pred[:, None, None].expand(-1, 1, attn.shape[2])).squeeze(1)
        aux = None
        if labels is not None:
            aux = (1.0 - self.bag_weight) * self._instance_loss(h, raw, mask, labels)
        return AggregatorOutput(logits=logits, scores=scores, aux_loss=aux, extra={"attention": attn})

    def _instance_loss(self, h: Tensor, raw: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
        per_bag = []
        for b in range(h.shape[0]):
            valid = mask[b].nonzero().squeeze(1)
            k = min(self.k_sample, valid.numel() // 2)
            if k == 0:
                continue
            hb, ab = h[b, valid], raw[b][:, valid]  # (n, E), (K, n)
            total = h.new_zeros(())
            for c, classifier in enumerate(self.instance_classifiers):
                branch = ab[c] if ab.shape[0] > 1 else ab[0]
                if c == int(labels[b]):
                    top = branch.topk(k).indices
                    bottom = (-branch).topk(k).indices
                    x = hb[torch.cat([top, bottom])]
                    target = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(h.device)
                elif self.subtyping:
                    x = hb[branch.topk(k).indices]
                    target = torch.zeros(k, dtype=torch.long, device=h.device)
                else:
                    continue
                total = total + F.cross_entropy(classifier(x), target)
            if self.subtyping:
                total = total / self.num_classes
            per_bag.append(total)
        if not per_bag:
            return h.new_zeros(())
        return torch.stack(per_bag).mean()


@register_aggregator("clam-sb")
class CLAMSB(_CLAM):
    """CLAM single-branch: one gated-attention branch, ``logits = Linear(E, C)(softmax(A) H)``.

    Parameters and instance loss: see :class:`_CLAM` (``embed_dim=512, attn_dim=256, dropout=0.25,
    k_sample=8, bag_weight=0.7, subtyping=False``).

    Notes
    -----
    ``scores`` (attention kind): the attention of the single branch. ``extra["attention"]``: (B, 1, N).
    """

    REFERENCE_KEYS: ClassVar[dict[str, str]] = {**_CLAM.REFERENCE_KEYS, "classifiers.": "classifier."}

    def _build_head(self, embed_dim: int) -> None:
        self.classifier = nn.Linear(embed_dim, self.num_classes)

    def _head(self, z: Tensor) -> Tensor:
        return self.classifier(z[:, 0])


@register_aggregator("clam-mb")
class CLAMMB(_CLAM):
    """CLAM multi-branch: one attention branch per class, ``logit_c = w_c^T softmax(A_c) H + b_c``.

    Parameters and instance loss: see :class:`_CLAM`; the instance loss of class ``c`` ranks tiles by
    ``A_c``.

    Notes
    -----
    ``scores`` (attention kind): the branch of the predicted class (as in CLAM's heatmaps).
    ``extra["attention"]``: (B, C, N), every branch.
    """

    num_branches_is_classes = True

    def _build_head(self, embed_dim: int) -> None:
        # C separate Linear(E, 1) bag classifiers
        self.classifiers = nn.ModuleList(nn.Linear(embed_dim, 1) for _ in range(self.num_classes))

    def _head(self, z: Tensor) -> Tensor:
        return torch.cat([clf(z[:, c]) for c, clf in enumerate(self.classifiers)], dim=-1)
