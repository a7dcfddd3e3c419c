"""Patch encoders: a registry of published pathology models plus a weight-free H&E descriptor."""

from ._base import IMAGENET_MEAN, IMAGENET_STD, Encoder, EncoderConfig
from ._registry import create_encoder, get_encoder_config, list_encoders, register_encoder, resolve_device
from ._weights import WeightsError, read_state_dict, resolve_weights

__all__ = [
    "Encoder",
    "EncoderConfig",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WeightsError",
    "create_encoder",
    "get_encoder_config",
    "list_encoders",
    "read_state_dict",
    "register_encoder",
    "resolve_device",
    "resolve_weights",
]
