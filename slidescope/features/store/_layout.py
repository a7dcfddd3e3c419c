"""The store's layout on disk: the schema and ownership marker, and checked access to its groups and arrays.

:class:`_Layout` is the base of :class:`~slidescope.features.store.SlideStore`: every group and array it
reaches goes through :meth:`_Layout._node` (missing or unreadable metadata, a missing checksum codec and
a wrong shape or dtype are a :class:`StoreCorruptError` naming the store and what to do), and it deletes
only inside a store marked as ours (see :func:`_ownership`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..._location import Location, exists, location_name
from ..._location import join as _join
from ._errors import StoreCorruptError, StoreError, _store_fix
from ._keys import _now

log = logging.getLogger("slidescope.features.store")


#: 2: one sub-group per tiling (``tilings/<key>``) and the ownership marker; 1: one tiling at the top level
SCHEMA_VERSION = 2
#: the marker in a store's root attrs (``format``) that says slidescope wrote the folder
STORE_FORMAT = "slidescope.slide-store"


def _zarr():
    import zarr

    return zarr


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)  # (file system, path inside it)


def _remove_tree(loc: Location) -> None:
    if isinstance(loc, Path):
        shutil.rmtree(loc)
    else:
        fs, inner = _fs(loc)
        fs.rm(inner, recursive=True)


def _ownership(attrs: dict[str, Any]) -> str:
    """``"ours"``, ``"legacy"`` (schema 1), ``"newer"`` (a higher schema) or ``"foreign"``."""
    if attrs.get("format") == STORE_FORMAT:
        version = attrs.get("schema_version")
        if isinstance(version, int) and version > SCHEMA_VERSION:
            return "newer"
        return "ours"
    if attrs.get("schema_version") == 1 and isinstance(attrs.get("slide"), dict) and "tiling" in attrs:
        return "legacy"  # written by slidescope before the marker existed
    return "foreign"


def _has_content(loc: Location) -> bool:
    """Whether anything is at ``loc`` (an empty folder counts as nothing)."""
    if isinstance(loc, Path):
        if not loc.exists() and not loc.is_symlink():
            return False
        return not loc.is_dir() or loc.is_symlink() or any(loc.iterdir())
    fs, inner = _fs(loc)
    if not fs.exists(inner):
        return False
    try:
        return bool(fs.ls(inner))
    except FileNotFoundError:
        return False


class _Layout:
    """A store's root group and one of its groups (a tiling's, or the root of a schema-1 store), with checked
    access to what they hold."""

    def __init__(self, path: Location, group, *, root=None, key: str | None = None) -> None:
        self.path = path  # a Path, or a URL string for a store on an fsspec file system
        self._group = group  # the tiling's group (schema 1: the root)
        self._root = group if root is None else root
        self.tiling_key = key

    @property
    def name(self) -> str:
        """The store's folder name, ``<slide key>.zarr``."""
        return location_name(self.path)

    def _damaged(self, detail: str) -> StoreCorruptError:
        return StoreCorruptError(
            f"store {self.path}: {detail}. The store is damaged. {_store_fix(self.path)}."
        )

    def _node(self, group, name: str, *, kind: str = "array"):
        """``group[name]``, checked: missing or unreadable metadata is a :class:`StoreCorruptError`."""
        zarr = _zarr()
        where = f"{group.path}/{name}".lstrip("/")
        try:
            node = group[name]
        except KeyError:
            raise self._damaged(f"{kind} {where!r} is missing") from None
        except Exception as err:  # malformed JSON metadata and friends: zarr raises several types
            raise self._damaged(
                f"the metadata of {where!r} cannot be read ({type(err).__name__}: {err})"
            ) from err
        wanted = zarr.Array if kind == "array" else zarr.Group
        if not isinstance(node, wanted):
            raise self._damaged(f"{where!r} is not a zarr {kind}")
        if kind == "array":
            from zarr.codecs import Crc32cCodec

            codecs = getattr(node.metadata, "codecs", ())
            if not any(isinstance(c, Crc32cCodec) for c in codecs):
                raise self._damaged(f"array {where!r} has no checksum codec (its metadata was edited)")
        return node

    def _expect(self, array, shape: tuple[int, ...], dtype: str, why: str) -> None:
        if tuple(array.shape) != tuple(shape) or str(np.dtype(array.dtype)) != dtype:
            raise self._damaged(
                f"array {array.path!r} is {tuple(array.shape)} {np.dtype(array.dtype)}, expected "
                f"{tuple(shape)} {dtype} ({why})"
            )

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn zarr's errors on damaged metadata (unparseable or invalid ``zarr.json``) into a
        :class:`StoreCorruptError` naming ``what``."""
        try:
            yield
        except StoreError:
            raise
        except (
            ValueError,
            TypeError,
            Warning,
        ) as err:  # JSONDecodeError, zarr's metadata errors (ValueErrors)
            raise self._damaged(
                f"the metadata of {what} cannot be read ({type(err).__name__}: {err})"
            ) from err

    def _container(self, parent, name: str):
        """The plain sub-group ``name`` of ``parent`` (``tilings``, ``features``), created if missing.

        These groups carry no attributes of ours, so when their own ``zarr.json`` is damaged it is simply
        written again: nothing below them is lost."""
        try:
            group = parent.require_group(name)
            dict(group.attrs)
            return group
        except (ValueError, TypeError, Warning) as err:
            loc = _join(self.path, f"{parent.path}/{name}/zarr.json".lstrip("/"))
            log.warning("%s: rewriting the damaged metadata of %s (%s)", self.name, name, err)
            text = json.dumps({"attributes": {}, "zarr_format": 3, "node_type": "group"})
            if isinstance(loc, Path):
                loc.write_text(text)
            else:
                fs, inner = _fs(loc)
                fs.pipe(inner, text.encode())
            return parent[name]

    def _remove_child(self, group, name: str) -> None:
        """Delete ``group/name`` (ours: inside a marked store) by path, whatever state its metadata is in."""
        where = _join(self.path, f"{group.path}/{name}".lstrip("/"))
        if exists(where):
            _remove_tree(where)

    @staticmethod
    def _open_root(p: Location, mode: str):
        if not exists(_join(p, "zarr.json")):
            raise StoreError(f"{p} is not a slidescope store (no zarr.json). Extract features into it first.")
        try:
            group = _zarr().open_group(str(p), mode=mode)
            attrs = dict(group.attrs)
        except Exception as err:  # malformed JSON metadata and friends: zarr raises several types
            raise StoreCorruptError(
                f"store {p}: its metadata (zarr.json) cannot be read ({type(err).__name__}: {err}). slidescope cannot "
                f"tell whether it wrote this folder, so it never replaces it: if it is a slidescope store, delete "
                f"{p} and run `slidescope extract` on the slide again."
            ) from err
        return group, attrs

    def _touch(self) -> None:
        self._group.update_attributes({"updated": _now()})
        if self._root is not self._group:
            self._root.update_attributes({"updated": _now()})
