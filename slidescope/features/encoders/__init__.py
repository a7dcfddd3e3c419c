"""Patch encoders: a registry of published pathology models plus a weight-free H&E descriptor.

Public names load on first use: the registry and the configs need no torch (``slidescope run --dry-run``
checks an encoder name without it); building a model imports torch and the model's family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

_EXPORTS = {
    "Encoder": "._base",
    "EncoderConfig": "._config",
    "ImportRef": "._config",
    "IMAGENET_MEAN": "._config",
    "IMAGENET_STD": "._config",
    "WeightsError": "._weights",
    "create_encoder": "._registry",
    "get_encoder_config": "._registry",
    "list_encoders": "._registry",
    "register_encoder": "._registry",
    "resolve_device": "._registry",
    "read_state_dict": "._weights",
    "resolve_weights": "._weights",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from ._base import Encoder as Encoder
    from ._config import (
        IMAGENET_MEAN as IMAGENET_MEAN,
        IMAGENET_STD as IMAGENET_STD,
        EncoderConfig as EncoderConfig,
        ImportRef as ImportRef,
    )
    from ._registry import (
        create_encoder as create_encoder,
        get_encoder_config as get_encoder_config,
        list_encoders as list_encoders,
        register_encoder as register_encoder,
        resolve_device as resolve_device,
    )
    from ._weights import (
        WeightsError as WeightsError,
        read_state_dict as read_state_dict,
        resolve_weights as resolve_weights,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
