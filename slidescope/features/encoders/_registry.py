"""The encoder registry: names -> (config, builder). Registering never downloads or imports heavy code.

Importing this module, listing the encoders and reading their configs load no torch (the built-in configs
are data in ``_catalog``, their builders :class:`LazyBuilder` references); :func:`create_encoder` imports
torch and the model's family module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..._plugins import Once
from ...errors import InvalidParameterError
from ._config import EncoderConfig, ImportRef

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ._base import Encoder

log = logging.getLogger(__name__)

__all__ = [
    "register_encoder",
    "list_encoders",
    "get_encoder_config",
    "create_encoder",
    "resolve_device",
    "LazyBuilder",
]

Builder = Callable[[EncoderConfig], "Encoder"]
_REGISTRY: dict[str, tuple[EncoderConfig, Builder]] = {}


class LazyBuilder:
    """A builder named by where it lives (``"package.module:function"``), imported on the first call.

    What :func:`register_encoder` makes of a builder given as a string: the config is registered now, the
    module (and torch with it) is imported only when the model is built.
    """

    def __init__(self, ref: ImportRef | str) -> None:
        self.ref = ref if isinstance(ref, ImportRef) else ImportRef(ref)

    def __call__(self, config: EncoderConfig) -> Encoder:
        builder: Builder = self.ref.load()
        return builder(config)

    def __repr__(self) -> str:
        return f"LazyBuilder({self.ref.path!r})"


def register_encoder(config: EncoderConfig, builder: Builder | ImportRef | str) -> None:
    """Add an encoder. ``builder(config)`` returns the architecture with random weights.

    ``builder`` may be a callable, or where one lives (``"my_lab.models:build"`` or an :class:`ImportRef`),
    imported when the encoder is first built: a plugin that registers this way keeps ``slidescope --help``,
    ``run --dry-run`` and config checks free of its model code.
    """
    if config.name in _REGISTRY:
        log.warning("encoder %r registered twice; the later one wins", config.name)
    _REGISTRY[config.name] = (
        config,
        LazyBuilder(builder) if isinstance(builder, ImportRef | str) else builder,
    )


def _register_builtins() -> None:
    from ._catalog import BUILTINS

    for config, builder in BUILTINS:
        register_encoder(config, builder)


_BUILTINS_ONCE = Once()


def _ensure_loaded() -> None:
    from ..._plugins import load_plugins

    _BUILTINS_ONCE(_register_builtins)
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
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


#: the compute precisions and their torch dtypes (names of ``torch`` attributes: torch loads when used)
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


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
    import torch

    from ._weights import file_digest, load_into, read_state_dict, resolve_weights

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
    encoder.autocast_dtype = getattr(torch, _DTYPES[precision])
    return encoder.eval().to(dev)
