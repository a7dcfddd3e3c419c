"""The aggregator registry: name -> aggregator class. Registering builds nothing and imports nothing heavy."""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from ...errors import InvalidParameterError
from ._base import Aggregator

log = logging.getLogger(__name__)

__all__ = ["register_aggregator", "list_aggregators", "create_aggregator"]

_REGISTRY: dict[str, type[Aggregator]] = {}
# the built-in families; each module registers its classes when imported
_BUILTIN_MODULES = ("pooling", "abmil", "clam", "transmil", "dsmil", "dtfd", "acmil", "pl_maxpool")
# names that were registered once and now mean nothing: name -> what to use instead and why
_RETIRED: dict[str, str] = {
    "ins": "'ins' was renamed 'pl-maxpool': it is a partial-label max-pooling classifier inspired by INS, not "
    "INS (none of INS's prototypes, contrastive loss, momentum encoder, queue or teacher bag head). Use "
    "model='pl-maxpool' (same hyper-parameters) and do not report its results as INS",
}

A = TypeVar("A", bound=type[Aggregator])


def register_aggregator(name: str) -> Callable[[A], A]:
    """Class decorator that registers an :class:`Aggregator` subclass under ``name``.

    The class is built as ``cls(in_dim=..., num_classes=..., **kwargs)``; its keyword defaults are the
    published hyper-parameters. A second registration of the same name replaces the first (logged).

    Examples
    --------
    >>> @register_aggregator("my-mil")  # doctest: +SKIP
    ... class MyMIL(Aggregator): ...
    """

    def decorator(cls: A) -> A:
        if not (isinstance(cls, type) and issubclass(cls, Aggregator)):
            raise InvalidParameterError(
                f"register_aggregator({name!r}) expects an Aggregator subclass, got {cls!r}"
            )
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            log.warning("aggregator %r registered twice; the later one wins", name)
        _REGISTRY[name] = cls
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def _ensure_loaded() -> None:
    from ..._plugins import load_plugins

    for module in _BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    load_plugins("aggregators")  # then the `slidescope.aggregators` entry points


def list_aggregators() -> list[str]:
    """Names accepted by :func:`create_aggregator`, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def create_aggregator(name: str, *, in_dim: int, num_classes: int, **kwargs: Any) -> Aggregator:
    """Build a registered MIL aggregator with random weights.

    Parameters
    ----------
    name : str
        A name from :func:`list_aggregators` (``"abmil"``, ``"clam-sb"``, ``"transmil"``...).
    in_dim : int
        Length ``D`` of the tile embeddings it will receive as (B, N, D).
    num_classes : int
        Number of slide classes ``C``.
    **kwargs
        Model hyper-parameters; anything left out keeps the published default (see each class).
        ``None`` values are dropped, so defaults stay with the architecture.

    Returns
    -------
    Aggregator
        ``forward(features (B, N, D), mask (B, N) | None, *, labels (B,) | None) -> AggregatorOutput`` with
        ``logits`` (B, C), ``scores`` (B, N) per-tile scores for heatmaps (0 on padded tiles, where ``mask``
        is False) and ``aux_loss`` (the model's extra training term, or None).

    Raises
    ------
    InvalidParameterError
        Unknown name (the message lists the registered ones), a retired name (the message says what
        replaced it) or unknown hyper-parameter.

    Examples
    --------
    >>> import torch
    >>> import slidescope as ss
    >>> model = ss.create_aggregator("abmil", in_dim=1024, num_classes=2).eval()
    >>> x, mask = torch.randn(2, 100, 1024), torch.ones(2, 100, dtype=torch.bool)
    >>> mask[1, 60:] = False                                   # the second bag has 60 tiles
    >>> out = model(x, mask)
    >>> out.logits.shape, out.scores.shape                     # (B, C) slide logits, (B, N) tile scores
    (torch.Size([2, 2]), torch.Size([2, 100]))
    >>> bool((out.scores[1, 60:] == 0).all())                 # padding gets no attention
    True
    """
    names = list_aggregators()
    if name in _RETIRED and name not in _REGISTRY:
        raise InvalidParameterError(_RETIRED[name])
    if name not in _REGISTRY:
        raise InvalidParameterError(f"unknown aggregator {name!r}. Registered: {', '.join(names)}")
    cls = _REGISTRY[name]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    accepted = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name not in ("self", "in_dim", "num_classes") and p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise InvalidParameterError(
            f"aggregator {name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(accepted)}"
        )
    return cls(in_dim=in_dim, num_classes=num_classes, **kwargs)
