"""The encoder registry: names -> (config, builder). Registering never downloads or imports heavy code."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

from ...errors import InvalidParameterError
from ._base import Encoder, EncoderConfig
from ._weights import file_digest, load_into, read_state_dict, resolve_weights

log = logging.getLogger(__name__)

__all__ = ["register_encoder", "list_encoders", "get_encoder_config", "create_encoder", "resolve_device"]

Builder = Callable[[EncoderConfig], Encoder]
_REGISTRY: dict[str, tuple[EncoderConfig, Builder]] = {}


def register_encoder(config: EncoderConfig, builder: Builder) -> None:
    """Add an encoder. ``builder(config)`` returns the architecture with random weights."""
    if config.name in _REGISTRY:
        log.warning("encoder %r registered twice; the later one wins", config.name)
    _REGISTRY[config.name] = (config, builder)


def _ensure_loaded() -> None:
    from ..._plugins import load_plugins
    from . import presets  # noqa: F401  (registers the built-in encoders)

    load_plugins("encoders")  # then the `slidescope.encoders` entry points (a plugin may override a name)


def list_encoders(*, weight_free: bool | None = None) -> list[str]:
    """Registered encoder names (``timm:<name>`` also works for any timm model)."""
    _ensure_loaded()
    return sorted(n for n, (c, _) in _REGISTRY.items() if weight_free is None or c.weight_free == weight_free)


def _timm_entry(name: str) -> tuple[EncoderConfig, Builder]:
    from .timm_models import timm_entry

    return timm_entry(name)


def _entry(name: str) -> tuple[EncoderConfig, Builder]:
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("timm:"):
        return _timm_entry(name[len("timm:") :])
    raise InvalidParameterError(
        f"unknown encoder {name!r}. Registered: {', '.join(list_encoders())}; or any timm model as 'timm:<name>'."
    )


def get_encoder_config(name: str) -> EncoderConfig:
    """The :class:`EncoderConfig` of a registered encoder (or ``timm:<name>``)."""
    return _entry(name)[0]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def create_encoder(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    precision: str | None = None,
    pretrained: bool = True,
    strict: bool = True,
) -> Encoder:
    """Build a patch encoder with its weights, in eval mode, on ``device``.

    Parameters
    ----------
    name : str
        A name from :func:`list_encoders` (``"uni"``, ``"virchow2"``, ``"he-descriptor"``...), or
        ``"timm:<model name>"``.
    weights : str or os.PathLike, optional
        A local weights file or folder; ``None`` fetches them from the Hugging Face hub (with your token
        and cache). Weight-free encoders ignore it.
    device : str or torch.device, default "auto"
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:1"``...
    precision : {"fp32", "fp16", "bf16"}, optional
        Compute precision; default the model's recommended precision on a GPU and fp32 on CPU. Recorded
        on the encoder as ``encoder.precision`` (and ``encoder.autocast_dtype``).
    pretrained : bool, default True
        False builds the architecture with random weights (tests, benchmarks).
    strict : bool, default True
        Refuse weights whose keys do not match the architecture exactly.

    Returns
    -------
    Encoder
        An ``nn.Module``: ``forward(uint8 (B, H, W, 3)) -> float (B, embed_dim)`` (resizing and
        normalisation happen inside, on the device). ``encoder.config`` holds the contract (``embed_dim``,
        ``tile_size``, ``mpp``, mean/std, licence); ``encoder.weights_digest`` the sha256 of the weights file.

    Raises
    ------
    InvalidParameterError
        Unknown name (the message lists the registered ones) or precision.
    WeightsError
        Weights missing, gated or not matching the architecture; the message names the model, its licence
        page and the ``weights=`` way out.

    Examples
    --------
    >>> import slidescope as ss, torch
    >>> enc = ss.create_encoder("he-descriptor", device="cpu")        # weight-free, offline
    >>> enc.config.embed_dim, enc.config.tile_size, enc.config.mpp
    (98, 224, 0.5)
    >>> enc(torch.zeros(2, 224, 224, 3, dtype=torch.uint8)).shape      # uint8 (B, H, W, 3) -> (B, D)
    torch.Size([2, 98])
    >>> uni = ss.create_encoder("uni", weights="/models/uni/pytorch_model.bin")   # doctest: +SKIP
    """
    config, builder = _entry(name)
    dev = resolve_device(device)
    if precision is None:
        precision = config.precision if dev.type == "cuda" else "fp32"
    if precision not in _DTYPES:
        raise InvalidParameterError(f"precision must be one of {sorted(_DTYPES)}, got {precision!r}")
    # find the weights first: a missing or gated file fails fast, before a large model is built
    path = resolve_weights(config, weights) if pretrained and not config.weight_free else None
    encoder = builder(config)
    digest = None
    if config.weight_free:
        digest = "weight-free"
    elif path is not None:
        state = read_state_dict(path)
        state = encoder.convert_state_dict(state) if hasattr(encoder, "convert_state_dict") else state
        load_into(encoder.checkpoint_module(), state, name=config.name, strict=strict)
        digest = file_digest(path)
    encoder.weights_digest = digest
    encoder.precision = precision
    encoder.autocast_dtype = _DTYPES[precision]
    return encoder.eval().to(dev)
