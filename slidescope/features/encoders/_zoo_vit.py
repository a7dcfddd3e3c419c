"""More built-in patch encoders as data: ViT-family patch encoders (timm / transformers ViT and DINOv2 builds). No torch, timm or
transformers is imported here (see ``_catalog``)."""

from __future__ import annotations

from ._config import EncoderConfig, ImportRef

__all__ = ["ZOO_VIT"]

#: (config, builder) pairs, appended to ``_catalog.BUILTINS``
ZOO_VIT: tuple[tuple[EncoderConfig, ImportRef], ...] = ()
