"""Renamed keywords and attributes keep working for one release, with a :class:`DeprecationWarning`.

>>> @renamed_kwargs(old_name="new_name")
... def f(*, new_name=None):
...     return new_name
>>> import warnings
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     f(old_name=0.5)
0.5
>>> print(caught[0].message)
f(old_name=...) is deprecated and will be removed in the next release: use f(new_name=...).

The names in use, old and new, are listed in docs/GLOSSARY.md.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import InvalidParameterError

__all__ = ["renamed_kwargs", "renamed_attribute", "warn_renamed"]

F = TypeVar("F", bound=Callable[..., Any])


def warn_renamed(owner: str, old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``owner(old=...)`` is now ``owner(new=...)``."""
    warnings.warn(
        f"{owner}({old}=...) is deprecated and will be removed in the next release: use {owner}({new}=...).",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def renamed_kwargs(**renames: str) -> Callable[[F], F]:
    """Decorator: accept each old keyword (``old="new"``) as its new name, with a DeprecationWarning.

    Giving both spellings is an :class:`~slidescope.errors.InvalidParameterError`. The wrapped function's
    signature (``inspect.signature``) is the new one.
    """

    def decorate(func: F) -> F:
        owner = func.__qualname__.removesuffix(".__init__")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise InvalidParameterError(
                            f"{owner}() got both {old}= and {new}=: {old} is the old "
                            f"name of {new}; give {new} only."
                        )
                    warn_renamed(owner, old, new)
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def renamed_attribute(old: str, new: str) -> property:
    """A read/write property ``old`` that forwards to ``new`` with a DeprecationWarning (for classes)."""

    def _warn(obj: object) -> None:
        warnings.warn(
            f"{type(obj).__name__}.{old} is deprecated and will be removed in the next release: "
            f"use {type(obj).__name__}.{new}.",
            DeprecationWarning,
            stacklevel=3,
        )

    def fget(obj: object) -> Any:
        _warn(obj)
        return getattr(obj, new)

    def fset(obj: object, value: Any) -> None:
        _warn(obj)
        setattr(obj, new, value)

    return property(fget, fset, doc=f"Deprecated: the old name of ``{new}``.")
