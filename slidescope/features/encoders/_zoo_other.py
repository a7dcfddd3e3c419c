"""More built-in patch encoders as data: other patch encoders (CTransPath-style Swin, CLIP-family, BEiT-3 ...). No torch, timm or
transformers is imported here (see ``_catalog``)."""

from __future__ import annotations

from ._config import EncoderConfig, ImportRef

__all__ = ["ZOO_OTHER"]

#: (config, builder) pairs, appended to ``_catalog.BUILTINS``
ZOO_OTHER: tuple[tuple[EncoderConfig, ImportRef], ...] = ()
