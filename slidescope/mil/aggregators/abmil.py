"""ABMIL: gated attention MIL (Ilse, Tomczak & Welling, ICML 2018), CLAM-style defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from torch import Tensor, nn

from ._base import Aggregator, AggregatorOutput, GatedAttention, embed_mlp, load_strict, masked_softmax
from ._registry import register_aggregator

__all__ = ["ABMIL"]


def _rename_keys(state_dict: Mapping[str, Tensor], prefixes: Mapping[str, str]) -> dict[str, Tensor]:
    """Rename reference parameter names to ours: the first matching prefix in ``prefixes`` is replaced."""
    out = {}
    for key, value in state_dict.items():
        for old, new in prefixes.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def _clean_clam_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """What CLAM's ``eval_utils.initiate_model`` does to a checkpoint: drop ``instance_loss_fn`` buffers and
    the ``.module`` of ``nn.DataParallel`` wrappers (CLAM's shipped demo checkpoint has both)."""
    return {k.replace(".module", ""): v for k, v in state_dict.items() if "instance_loss_fn" not in k}


def _load_reference(module: nn.Module, state_dict: Mapping[str, Tensor], prefixes: Mapping[str, str]) -> None:
    """Strictly load a reference ``state_dict`` into ``module`` after renaming; a mismatch is a user error."""
    load_strict(
        module,
        _rename_keys(state_dict, prefixes),
        fix=(
            f"{type(module).__name__} cannot load this reference state_dict; build it with the reference's sizes "
            "(in_dim, num_classes, embed_dim/attn_dim...) and pass the reference model's own state_dict() (strip a "
            "'model.' prefix of Lightning checkpoints)"
        ),
    )


@register_aggregator("abmil")
class ABMIL(Aggregator):
    """Gated-attention MIL.

    ``H = Dropout(ReLU(W_e h))``, ``a = softmax_i(w^T (tanh(V H_i) * sigmoid(U H_i)))`` over the real tiles,
    ``z = sum_i a_i H_i``, ``logits = W_c z``.

    The attention pooling is Ilse et al.'s gated attention (their eq. 9); the layers around it, their
    sizes and the dropout placement are those of CLAM's ``CLAM_SB`` bag path (mahmoodlab/CLAM
    ``models/model_clam.py``, commit 53e2409: ``Linear -> ReLU -> Dropout -> Attn_Net_Gated``, a
    ``Linear(E, C)`` classifier), which is the reference this class is checked against: with the same
    weights, logits and attention equal CLAM_SB's (``instance_eval=False``) to <= 1e-6 in float32
    (tests/mil/test_parity_abmil.py). One difference: CLAM's attention branches drop a fixed 0.25 whenever
    its dropout is on, here they use ``dropout`` (the same at the default 0.25). Ilse et al.'s own code
    (AMLab-Amsterdam/AttentionDeepMIL, commit eb0434b) is a LeNet on MNIST bags with a single sigmoid
    output and no dropout; it is not what this class reproduces.

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

    #: CLAM_SB parameter-name prefixes -> ours (``attention_net.3`` is CLAM's Attn_Net_Gated)
    REFERENCE_KEYS: ClassVar[dict[str, str]] = {
        "attention_net.0.": "embed.0.",
        "attention_net.3.": "attention.",
        "classifiers.": "classifier.",
    }

    def load_reference_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load the bag path of a CLAM ``CLAM_SB`` ``state_dict`` (mahmoodlab/CLAM, gated, any size).

        ``attention_net.0`` -> ``embed.0``, ``attention_net.3.attention_{a,b,c}`` -> ``attention.*``,
        ``classifiers`` -> ``classifier``; CLAM's ``instance_classifiers`` are not part of ABMIL and are
        ignored (load them into :class:`~slidescope.mil.aggregators.clam.CLAMSB` instead). Like CLAM's own
        loader, ``instance_loss_fn`` keys are dropped and ``.module`` removed. Strict otherwise.

        Parameters
        ----------
        state_dict : mapping of str to Tensor
            The reference model's ``state_dict()``.
        """
        clean = _clean_clam_keys(state_dict)
        bag_path = {k: v for k, v in clean.items() if not k.startswith("instance_classifiers.")}
        _load_reference(self, bag_path, self.REFERENCE_KEYS)

    def _forward(self, features: Tensor, mask: Tensor, labels: Tensor | None) -> AggregatorOutput:
        h = self.embed(features)  # (B, N, E)
        raw = self.attention(h).squeeze(-1)  # (B, N)
        a = masked_softmax(raw, mask)
        z = (a.unsqueeze(1) @ h).squeeze(1)  # (B, E)
        return AggregatorOutput(
            logits=self.classifier(z), scores=a, extra={"attention_logits": raw.masked_fill(~mask, 0.0)}
        )
