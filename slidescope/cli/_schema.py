"""Command-line options built from the option schema (:mod:`slidescope.options`), so a flag, its default
and its ``--help`` text are written once, on the schema's field."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import typer
import typer.core

from ..options import OptionInfo, one_of, option_info, parse_batch_size

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["schema_options", "help_text", "fill_choices", "SchemaGroup", "batch_size_option"]

#: the Python type typer parses each kind of option into
_TYPES: dict[str, Any] = {
    "str": str,
    "path": str,
    "batch": str,  # "auto" or a number: parsed by batch_size_option()
    "int": int,
    "float": float,
    "bool": bool,
    "paths": list[str],
}


def _shown(value: Any) -> str | None:
    if value is None or value is dataclasses.MISSING or value == ():
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


#: the raw help texts whose ``{choices}`` a registry fills in when a help is shown -> their schema info
_PENDING: dict[str, OptionInfo] = {}


def help_text(info: OptionInfo, schema_default: Any, cli_default: Any) -> str:
    """The option's help: the schema's text, and its default when ``--help`` would not show it (the
    command-line default is None: resolved later, or taken from a config file).

    Choices held by a registry (``--backend``: the slide readers, plugins included) stay ``{choices}`` here
    and are filled in by :func:`fill_choices` when a command's ``--help`` is asked for, so building the
    commands (every ``slidescope`` start) imports no reader and no numpy."""
    if "{choices}" in info.help and callable(info.choices):
        raw = _help_text(info, schema_default, cli_default, fill=False)
        _PENDING[raw] = info
        return raw
    return _help_text(info, schema_default, cli_default)


def fill_choices(command: Any) -> Any:
    """Write the registry's choices into the ``{choices}`` of a click ``command``'s option help texts."""
    for param in command.params:
        info = _PENDING.get(getattr(param, "help", None) or "")
        if info is not None:
            param.help = param.help.replace("{choices}", one_of(info.allowed() or ()))
    return command


class SchemaGroup(typer.core.TyperGroup):
    """The ``slidescope`` group: a command's ``--help`` gets its registry choices filled in first."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None and any(a in ctx.help_option_names for a in rest):
            fill_choices(command)
        return name, command, rest


def _help_text(info: OptionInfo, schema_default: Any, cli_default: Any, *, fill: bool = True) -> str:
    text = info.text() if fill else info.help
    if cli_default is None:
        shown = info.default_text if info.default_text is not None else _shown(schema_default)
        if shown is not None:
            text += f" (default: {shown})"
    return text if text.endswith(".") else text + "."


def _parameter(cls: type, name: str, cli_default: Any, help_override: str | None) -> inspect.Parameter:
    info = option_info(cls, name)
    schema_default = cls.__dataclass_fields__[name].default  # type: ignore[attr-defined]
    kind = _TYPES[info.kind]
    annotation = kind if cli_default is not None else kind | None
    decls = [info.flag] if info.flag else [f"--{name.replace('_', '-')}"]
    help_ = help_override if help_override is not None else help_text(info, schema_default, cli_default)
    default = typer.Option(cli_default, *decls, help=help_)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def schema_options(
    cls: type,
    names: Sequence[str],
    *,
    from_schema: bool = True,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable[[F], F]:
    """Give a typer command the options ``names`` of the schema dataclass ``cls``.

    The command function takes them through ``**options``. Its arguments come first in ``--help``, then
    these options, then its own options.

    Parameters
    ----------
    cls : a dataclass of :mod:`slidescope.options` (or one that extends them, e.g. ``RunConfig``).
    names : the fields to offer, in ``--help`` order.
    from_schema : the options default to the schema's defaults (shown by ``--help``); False: to None
        (``slidescope run``, where a None option leaves the config file's value, or the schema default).
    overrides : per field, a command's own ``default`` and/or ``help`` (e.g. ``tile``'s ``mpp=0.5``).
    """
    overrides = overrides or {}

    def wrap(fn: F) -> F:
        own = list(inspect.signature(fn, eval_str=True).parameters.values())
        arguments = [p for p in own if isinstance(p.default, typer.models.ArgumentInfo)]
        rest = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in own
            if p not in arguments and p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        added = []
        for name in names:
            extra = overrides.get(name, {})
            default = cls.__dataclass_fields__[name].default if from_schema else None  # type: ignore[attr-defined]
            default = extra.get("default", None if default is dataclasses.MISSING else default)
            added.append(_parameter(cls, name, default, extra.get("help")))
        params = [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in arguments] + added + rest
        fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return fn

    return wrap


def batch_size_option(value: str | None) -> int | str | None:
    """``--batch-size``: ``auto`` or a whole number (a usage error otherwise)."""
    try:
        return parse_batch_size(value)
    except ValueError:
        raise typer.BadParameter(f"--batch-size must be a whole number or 'auto', got {value!r}") from None
