"""The slide-encoder registry: names -> (config, builder), built-ins registered on first use, then the
``slidescope.slide_encoders`` entry points. Listing and reading configs load no torch."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._plugins import Once
from ...errors import InvalidParameterError
from ..encoders._config import ImportRef
from ._config import SlideEncoderConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ._base import SlideEncoder

log = logging.getLogger(__name__)

__all__ = [
    "register_slide_encoder",
    "list_slide_encoders",
    "get_slide_encoder_config",
    "create_slide_encoder",
]

Builder = Callable[..., "SlideEncoder"]
_REGISTRY: dict[str, tuple[SlideEncoderConfig, Builder | ImportRef]] = {}


def register_slide_encoder(config: SlideEncoderConfig, builder: Builder | ImportRef | str) -> None:
    """Add a slide encoder under ``config.name`` (a name registered again is replaced, with a warning).

    ``builder(config)`` returns the architecture with random weights (a :class:`SlideEncoder`); slidescope then
    loads the weights file into it (:meth:`SlideEncoder.adapt_state_dict` renames the published keys). For a
    config with ``requires_remote_code``, ``builder(config, weights=, trust_remote_code=, device=)`` returns the
    loaded model itself. ``builder`` may be given as where it lives (``"my_lab.models:build"``), imported when
    the model is first built, so registering imports no torch.
    """
    if config.name in _REGISTRY:
        log.warning("slide encoder %r registered twice; the later one wins", config.name)
    _REGISTRY[config.name] = (config, ImportRef(builder) if isinstance(builder, str) else builder)


def _register_builtins() -> None:
    from ._catalog import BUILTINS

    for config, builder in BUILTINS:
        if config.name not in _REGISTRY:  # a plugin registered before the first listing wins
            register_slide_encoder(config, builder)


_BUILTINS_ONCE = Once()


def _ensure_loaded() -> None:
    from ..._plugins import load_plugins

    _BUILTINS_ONCE(_register_builtins)
    load_plugins("slide_encoders")


def list_slide_encoders() -> list[str]:
    """Registered slide-encoder names (built-in and plugins'), sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def _entry(name: str) -> tuple[SlideEncoderConfig, Builder | ImportRef]:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise InvalidParameterError(
            f"unknown slide encoder {name!r}. Registered: {', '.join(sorted(_REGISTRY))} "
            f"(`slidescope encoders` lists them with their patch encoder and tiling)."
        )
    return _REGISTRY[name]


def get_slide_encoder_config(name: str) -> SlideEncoderConfig:
    """The :class:`SlideEncoderConfig` of a registered slide encoder."""
    return _entry(name)[0]


def _weights_hint(cfg: SlideEncoderConfig) -> str:
    gate = (
        f" The repository is gated: accept its terms on {cfg.weights_url} and log in (`hf auth login` or HF_TOKEN)."
        if cfg.gated
        else ""
    )
    return f" Licence: {cfg.license} ({cfg.license_url or cfg.weights_url}).{gate}"


def _resolve_weights(cfg: SlideEncoderConfig, weights: str | os.PathLike[str] | None, token: Any) -> Path:
    from ..encoders import WeightsError

    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir() and cfg.weights_file:
            path = path / cfg.weights_file
        if not path.is_file():
            raise WeightsError(
                f"slide encoder {cfg.name!r}: no weights file at {path}. Pass the {cfg.weights_file or 'weights'} "
                f"file (or the folder holding it) from {cfg.weights_url}.{_weights_hint(cfg)}"
            )
        return path
    if cfg.hub_id is None or cfg.weights_file is None:
        raise WeightsError(
            f"slide encoder {cfg.name!r} has no copy on the Hugging Face hub: download "
            f"{cfg.weights_file or 'its weights'} from {cfg.weights_url} and pass weights=PATH "
            f"(CLI --weights PATH).{_weights_hint(cfg)}"
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(cfg.hub_id, cfg.weights_file, token=token))
    except Exception as err:  # offline, gated (401/403), missing file: one actionable message
        first = str(err).splitlines()[0] if str(err) else ""
        raise WeightsError(
            f"could not get {cfg.weights_file} of slide encoder {cfg.name!r} from {cfg.hub_id} "
            f"({type(err).__name__}: {first}). Or download it once (`hf download {cfg.hub_id} "
            f"{cfg.weights_file} --local-dir DIR`) and pass weights=DIR.{_weights_hint(cfg)}"
        ) from err


def create_slide_encoder(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    pretrained: bool = True,
    trust_remote_code: bool = False,
    token: str | bool | None = None,
) -> SlideEncoder:
    """Build a registered slide encoder with its weights, in eval mode.

    Parameters
    ----------
    name : str
        A name from :func:`list_slide_encoders` (``"feather-uni2"``, ``"madeleine"``, ``"mean"``...).
    weights : path, optional
        The weights file, or a folder holding ``config.weights_file`` (PRISM, TITAN: a copy of the hub
        repository). ``None`` downloads it from the hub with your token and cache (gated repositories: accept
        their terms first); CHIEF has no hub copy and needs it.
    device : str or torch.device
        Where the model runs.
    pretrained : bool
        False builds the architecture with random weights (tests); PRISM and TITAN always load.
    trust_remote_code : bool
        PRISM and TITAN are built by their publishers' code: opt in (see
        :func:`~slidescope.vlm.published.load_published_model`).
    token : optional
        Hugging Face token (default: the logged-in one).

    Returns
    -------
    SlideEncoder
        ``embed(features (N, D), coords (N, 2), patch_size) -> (E,)``; ``config`` holds the contract.

    Raises
    ------
    InvalidParameterError
        Unknown name.
    WeightsError
        Weights missing, gated, unreachable or not matching the architecture (mismatched keys are named).
    """
    import torch

    from ..encoders._weights import file_digest, load_into, read_state_dict

    cfg, builder = _entry(name)
    build = builder.load() if isinstance(builder, ImportRef) else builder
    if cfg.requires_remote_code:
        return build(cfg, weights=weights, trust_remote_code=trust_remote_code, device=device)
    model = build(cfg)
    if pretrained and not cfg.weight_free:
        path = _resolve_weights(cfg, weights, token)
        state = model.adapt_state_dict(read_state_dict(path))
        load_into(model, state, name=cfg.name, strict=True)
        model.weights_digest = file_digest(path)
    return model.to(torch.device(device)).eval()
