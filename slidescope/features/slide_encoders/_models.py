"""The slide encoders slidescope builds itself: mean pooling, FEATHER (MIL-Lab ABMIL), MADELEINE, CHIEF.

Each module has the state-dict keys and shapes of its publisher's model, so the published checkpoint loads
strictly; ``tests/golden/trident_slide_layouts.json`` holds those layouts and outputs recorded by running
the publishers' code through TRIDENT's ``forward`` (see its script), and the tests compare.

=============  ==============================================================================================
mean           the mean of the tile embeddings (TRIDENT's ``mean-*`` baselines).
FEATHER        MIL-Lab ``ABMIL`` base (Shao et al. 2025): ``patch_embed`` Linear(D, 512) + ReLU, gated
               attention (``attention_a`` tanh, ``attention_b`` sigmoid, 384 hidden, ``attention_c`` -> 1),
               softmax over the tiles, attention-weighted sum of the embedded tiles: 512-d.
MADELEINE      (Jaume et al. 2024) ``pre_attn``: three Linear + LayerNorm + GELU blocks to 512 x heads, split
               per head (channel ``e * heads + h``), one gated ABMIL per head (512 hidden), weighted sums
               concatenated (``(e, h)`` flattened) and projected to 512 (``projector``); ``token_projector`` is a
               training-only head, loaded but unused.
CHIEF          (Wang et al. 2024) ``attention_net``: Linear(768, 512) + ReLU, gated attention (256 hidden);
               the slide embedding is the attention-weighted mean of the *input* tile embeddings (768-d,
               ``WSI_feature``); the classifier, instance classifiers, ``att_head``, ``text_to_vision`` and the
               organ text embeddings are loaded but take no part in it.
MOOZY          see :mod:`slidescope.features.slide_encoders._moozy`.
=============  ==============================================================================================

Dropout layers are kept where the publishers have them (indices of the keys depend on them); the models
run in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import SlideEncoder
from ._config import SlideEncoderConfig

__all__ = [
    "MeanSlideEncoder",
    "FeatherSlideEncoder",
    "MadeleineSlideEncoder",
    "ChiefSlideEncoder",
    "GatedAttention",
    "build",
]


class GatedAttention(nn.Module):
    """Gated attention scores (Ilse et al. 2018): ``attention_c(tanh(a(x)) * sigmoid(b(x)))``, (N, 1).

    The key layout of CLAM's ``Attn_Net_Gated`` (``attention_a.0``, ``attention_b.0``, ``attention_c``),
    which MIL-Lab, MADELEINE and CHIEF all use.
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.25) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.attention_c = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.attention_c(self.attention_a(x) * self.attention_b(x))


def _pool(scores: Tensor, values: Tensor) -> Tensor:
    """Softmax of ``scores`` (N, 1) over the tiles, then the weighted sum of ``values`` (N, C) -> (C,)."""
    return (F.softmax(scores, dim=0) * values).sum(0)


class MeanSlideEncoder(SlideEncoder):
    """The mean of the tile embeddings (no weights)."""

    def forward(
        self, features: Tensor, coords: Tensor | None = None, patch_size: int | None = None
    ) -> Tensor:
        return features.float().mean(0)


class FeatherSlideEncoder(SlideEncoder):
    """FEATHER: MIL-Lab's ABMIL (base config) without its classification head; see the module docstring.

    Parameters
    ----------
    config : SlideEncoderConfig
        ``patch_dim`` is the input width; options ``embed_dim`` (512), ``attn_dim`` (384), ``dropout``.
    """

    def __init__(self, config: SlideEncoderConfig) -> None:
        super().__init__(config)
        o = config.options
        dim, width = int(config.patch_dim or 0), int(o.get("embed_dim", 512))
        self.patch_embed = nn.Sequential(nn.Linear(dim, width), nn.ReLU())
        self.global_attn = GatedAttention(width, int(o.get("attn_dim", 384)), float(o.get("dropout", 0.25)))

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        # the hub file is MIL-Lab's ABMILModel (a transformers wrapper): every key under "model."
        return {k.removeprefix("model."): v for k, v in state.items()}

    def forward(
        self, features: Tensor, coords: Tensor | None = None, patch_size: int | None = None
    ) -> Tensor:
        h = self.patch_embed(features)
        return _pool(self.global_attn(h), h)


class _MadeleineEmbedder(nn.Module):
    """MADELEINE's ``ABMILEmbedder`` (the ``wsi_embedders`` keys)."""

    def __init__(self, dim: int, hidden: int, heads: int, attn_hidden: int) -> None:
        super().__init__()
        self.heads = heads
        blocks: list[nn.Module] = []
        for i, (a, b) in enumerate([(dim, hidden), (hidden, hidden), (hidden, hidden * heads)]):
            blocks += [nn.Linear(a, b), nn.LayerNorm(b), nn.GELU(), nn.Dropout(0.1)]
        self.pre_attn = nn.Sequential(*blocks)
        self.attn = nn.ModuleList(GatedAttention(hidden, attn_hidden) for _ in range(heads))

    def forward(self, features: Tensor) -> Tensor:
        e = self.pre_attn(features)  # (N, hidden * heads), channel c * heads + h is (c, head h)
        e = e.reshape(e.shape[0], -1, self.heads)  # (N, hidden, heads)
        pooled = [_pool(att(e[:, :, h]), e[:, :, h]) for h, att in enumerate(self.attn)]
        return torch.stack(pooled, dim=-1).reshape(-1)  # (hidden, heads) flattened: c * heads + h


class MadeleineSlideEncoder(SlideEncoder):
    """MADELEINE's H&E slide encoder (``encode_he``); see the module docstring.

    Options ``hidden`` (512, ``wsi_encoder_hidden_dim``), ``heads`` (4), ``attn_hidden`` (512, fixed in the
    publisher's code), ``token_dim`` (128).
    """

    def __init__(self, config: SlideEncoderConfig) -> None:
        super().__init__(config)
        o = config.options
        hidden, heads = int(o.get("hidden", 512)), int(o.get("heads", 4))
        attn_hidden = int(o.get("attn_hidden", 512))
        self.wsi_embedders = _MadeleineEmbedder(int(config.patch_dim or 0), hidden, heads, attn_hidden)
        self.token_projector = nn.Linear(attn_hidden * heads, int(o.get("token_dim", 128)))
        self.projector = nn.Linear(attn_hidden * heads, attn_hidden)

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        # MADELEINE's own loader strips a DataParallel "module." prefix the same way
        return {k.removeprefix("module."): v for k, v in state.items()}

    def forward(
        self, features: Tensor, coords: Tensor | None = None, patch_size: int | None = None
    ) -> Tensor:
        return self.projector(self.wsi_embedders(features))


class _AttHead(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, 1)


class ChiefSlideEncoder(SlideEncoder):
    """CHIEF's slide aggregator (``WSI_feature``); see the module docstring.

    Options ``hidden`` (512), ``attn_hidden`` (256), ``n_classes`` (2), ``organs`` (19), ``text_dim`` (768).
    """

    def __init__(self, config: SlideEncoderConfig) -> None:
        super().__init__(config)
        o = config.options
        dim = int(config.patch_dim or 0)
        hidden, attn_hidden = int(o.get("hidden", 512)), int(o.get("attn_hidden", 256))
        n_classes, text_dim = int(o.get("n_classes", 2)), int(o.get("text_dim", 768))
        self.attention_net = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(0.25), GatedAttention(hidden, attn_hidden)
        )
        self.classifiers = nn.Linear(hidden, n_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(n_classes))
        self.att_head = _AttHead(hidden, attn_hidden)
        self.text_to_vision = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU(), nn.Dropout(0.25))
        self.register_buffer("organ_embedding", torch.zeros(int(o.get("organs", 19)), text_dim))

    def forward(
        self, features: Tensor, coords: Tensor | None = None, patch_size: int | None = None
    ) -> Tensor:
        scores = self.attention_net(features)  # (N, 1): the Sequential ends in the gated attention
        return _pool(scores, features)


def _moozy() -> type[SlideEncoder]:
    from ._moozy import MoozySlideEncoder

    return MoozySlideEncoder


_FAMILIES: dict[str, type[SlideEncoder]] = {
    "mean": MeanSlideEncoder,
    "abmil-mil-lab": FeatherSlideEncoder,
    "madeleine": MadeleineSlideEncoder,
    "chief": ChiefSlideEncoder,
}


def build(config: SlideEncoderConfig) -> SlideEncoder:
    """The architecture of ``config.family`` at ``config``'s sizes, with random weights."""
    cls = _moozy() if config.family == "moozy" else _FAMILIES[config.family]
    return cls(config)
