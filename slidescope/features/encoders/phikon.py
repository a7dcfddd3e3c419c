"""Phikon-v2 (Owkin): a DINOv2 ViT-L/16 in Hugging Face ``transformers``' ``Dinov2Model`` layout.

The published ``owkin/phikon-v2/model.safetensors`` is a ``Dinov2Model`` state dict with no prefix
(``embeddings.cls_token``, ``encoder.layer.0.attention.attention.query.weight``, ...), saved by a
transformers 4.x release. transformers 5 renamed the attention projections
(``attention.attention.query`` -> ``attention.q_proj``, ``attention.output.dense`` -> ``attention.o_proj``)
and converts them when loading through ``from_pretrained``; :meth:`DinoV2Encoder.convert_state_dict`
does the same renaming in whichever direction the installed transformers needs, and also strips a
``dinov2.`` prefix (files saved from a ``Dinov2ForImageClassification``).

Weights: ``create_encoder("phikon-v2", weights=...)`` takes the ``model.safetensors`` file, or a local
folder in the Hugging Face layout (``config.json`` + ``model.safetensors``, e.g. a
``huggingface-cli download owkin/phikon-v2`` snapshot); in a folder the file ``model.safetensors`` is
used and ``config.json`` is not read: the architecture always comes from the registered config, and a
checkpoint of another shape is refused.
"""

from __future__ import annotations

import torch
from torch import nn

from ._base import Encoder, EncoderConfig
from ._catalog import PHIKON_V2

__all__ = ["DinoV2Encoder", "PHIKON_V2"]

#: transformers 4.x (published files) -> transformers 5 parameter names inside each Dinov2 layer
_LEGACY_TO_CURRENT = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)


class DinoV2Encoder(Encoder):
    """A transformers ``Dinov2Model`` returning the CLS token of ``last_hidden_state`` (after the final
    LayerNorm): ``uint8 (B, H, W, 3)`` -> ``(B, hidden_size)``.

    ``config.kwargs`` are ``Dinov2Config`` keyword arguments.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        from transformers import Dinov2Config, Dinov2Model

        self.model = Dinov2Model(Dinov2Config(**config.kwargs))

    def checkpoint_module(self) -> nn.Module:
        return self.model

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Published ``Dinov2Model`` keys (any transformers version, optional ``dinov2.`` prefix) ->
        this module's keys."""
        if state and all(k.startswith("dinov2.") for k in state):
            state = {k[len("dinov2.") :]: v for k, v in state.items()}
        own = self.model.state_dict().keys()
        uses_current = any(".attention.q_proj." in k for k in own)
        pairs = _LEGACY_TO_CURRENT if uses_current else tuple((b, a) for a, b in _LEGACY_TO_CURRENT)
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            for old, new in pairs:
                if old in key:
                    key = key.replace(old, new)
                    break
            out[key] = value
        return out

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, 224, 224)`` -> ``(B, hidden_size)`` CLS embedding."""
        return self.model(pixel_values=x).last_hidden_state[:, 0]


def build_dinov2(config: EncoderConfig) -> DinoV2Encoder:
    """Random-init ``Dinov2Model`` for ``config`` (no download)."""
    return DinoV2Encoder(config)
