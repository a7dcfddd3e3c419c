"""Command-line locations: every path option is typed as a string and parsed here, once.

Embedding stores (``--stores`` a folder of stores, ``--store`` one ``<slide>.zarr``, and the positional
STORES of the commands that take several) and slides may be local paths or fsspec URLs
(:func:`slidescope._location.as_location`). Every other path (results, CSVs, images, run folders, models,
prompts, manifests) must be local: a URL there is refused with a slidescope error, never turned into a
local folder named ``s3:``.

Renamed options keep their old spelling for one release as a hidden option that still works and prints a
deprecation warning (:func:`renamed`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from .._location import Location, as_location, require_local
from ..errors import InvalidParameterError

STORES_HELP = (
    "Folder of slide stores (<slide>.zarr inside); a local path or an fsspec URL (s3://bucket/stores)."
)
STORE_HELP = "One slide store (<slide>.zarr); a local path or an fsspec URL. Repeat for several."


def location(value: str | None) -> Location | None:
    """A store or slide location: a :class:`~pathlib.Path`, or a URL string (None stays None)."""
    return None if value is None else as_location(value)


def local(value: str | None, option: str) -> Path | None:
    """A path that must be local (None stays None); a URL is refused naming ``option``."""
    return None if value is None else require_local(value, option)


def renamed(new: str | None, old: str | None, *, new_name: str, old_name: str) -> str | None:
    """The value of a renamed option: ``new``, or the old spelling's value with a deprecation warning.

    Raises
    ------
    InvalidParameterError
        Both spellings were given.
    """
    if old is None:
        return new
    if new is not None:
        raise InvalidParameterError(f"give {new_name} only ({old_name} is its old, deprecated name)")
    typer.secho(
        f"warning: {old_name} is deprecated and goes in the next release; use {new_name}",
        fg=typer.colors.YELLOW,
        err=True,
    )
    return old


def stores_folder(new: str | None, old: str | None, what: str = "the slides' stores") -> Location:
    """The required ``--stores`` folder of a manifest-driven command (``--store`` is its old name).

    Raises
    ------
    InvalidParameterError
        Neither spelling given.
    """
    store = location(renamed(new, old, new_name="--stores", old_name="--store"))
    if store is None:
        raise InvalidParameterError(f"give --stores: the folder with {what}")
    return store


def store_list(
    positional: list[str] | None, stores: list[str] | None, store: list[str] | None
) -> list[Location]:
    """The stores of a command that takes several: positional STORES, ``--stores`` folders and ``--store``
    stores, in that order; at least one.

    Raises
    ------
    InvalidParameterError
        None given.
    """
    items = [*(positional or []), *(store or []), *(stores or [])]
    if not items:
        raise InvalidParameterError("give the stores: STORES..., --stores FOLDER or --store SLIDE.zarr")
    return [as_location(s) for s in items]
