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
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..._location import Location, exists, location_name
from ..._location import join as _join
from ._errors import StoreCorruptError, StoreError, _store_fix
from ._fastread import _group_metadata
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


def _local_folder(group) -> str | None:
    """The folder of ``group`` when it is a zarr v3 group of a local store, else None."""
    from zarr.storage import LocalStore

    if isinstance(group.store, LocalStore) and getattr(group.metadata, "zarr_format", None) == 3:
        return os.path.join(str(group.store.root), group.path)
    return None


def _child(group, name: str):
    """``group[name]`` (a zarr Array or Group; KeyError when there is none).

    In a local zarr v3 store the child's ``zarr.json`` is read here and parsed with zarr's own metadata
    classes into the same node zarr's ``group[name]`` builds (its ``_read_metadata_v3``: ``json.loads``,
    then the array or group metadata by ``node_type``). It skips two thread hand-offs per node (zarr's
    event loop, then its file-reading thread), which on a busy 2-core machine cost ~0.5-1 ms each time:
    opening a store and its embeddings reaches ~10 nodes. Anything else goes through zarr."""
    folder = _local_folder(group)
    if folder is None:
        return group[name]
    from zarr.core.group import GroupMetadata
    from zarr.core.metadata import ArrayV3Metadata

    try:
        with open(os.path.join(folder, name, "zarr.json"), "rb") as fh:
            doc = json.loads(fh.read())
    except (FileNotFoundError, NotADirectoryError):
        raise KeyError(name) from None
    kind = doc.get("node_type") if isinstance(doc, dict) else None
    if kind == "array":
        return _built(group, name, ArrayV3Metadata.from_dict(doc))
    if kind == "group":
        return _built(group, name, GroupMetadata.from_dict(doc))
    raise ValueError(f"its zarr.json has node_type {kind!r}, not 'array' or 'group'")


def _built(group, name: str, metadata):
    """The zarr node ``name`` of ``group`` with ``metadata`` (zarr's own ``_build_node``, made public)."""
    from zarr import Array, Group
    from zarr.core.array import AsyncArray
    from zarr.core.group import AsyncGroup, GroupMetadata
    from zarr.storage import StorePath

    where = StorePath(group.store, f"{group.path}/{name}".lstrip("/"))
    if isinstance(metadata, GroupMetadata):
        return Group(AsyncGroup(metadata, store_path=where))
    return Array(AsyncArray(metadata, store_path=where))


def _has(group, name: str) -> bool:
    """``name in group``, for a local zarr v3 store by the child's ``zarr.json`` (see :func:`_child`)."""
    folder = _local_folder(group)
    if folder is None:
        return name in group
    return os.path.isfile(os.path.join(folder, name, "zarr.json"))


def _writable_folder(group) -> str | None:
    """:func:`_local_folder` of a store open for writing, else None."""
    folder = _local_folder(group)
    return None if folder is None or group.store.read_only else folder


def _write_metadata(folder: str, metadata) -> None:
    """Write a node's metadata documents (``zarr.json``) into ``folder`` as zarr's ``save_metadata`` makes
    them (its ``to_buffer_dict``), each to a temporary file renamed into place (as zarr's local store does)."""
    from zarr.core.buffer import default_buffer_prototype

    os.makedirs(folder, exist_ok=True)
    for key, buffer in metadata.to_buffer_dict(default_buffer_prototype()).items():
        path = os.path.join(folder, key)
        tmp = f"{path}.{uuid.uuid4().hex}.partial"
        try:
            with open(tmp, "wb") as fh:
                fh.write(buffer.to_bytes())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def _update_attributes(group, new: dict[str, Any]) -> None:
    """``group.update_attributes(new)``: one metadata write. In a writable local store it is written here
    (:func:`_write_metadata`; the same bytes, without zarr's two thread hand-offs, see :func:`_child`)."""
    folder = _writable_folder(group)
    if folder is None:
        group.update_attributes(new)
        return
    group.metadata.attributes.update(new)  # what zarr's update_attributes does before it saves
    _write_metadata(folder, group.metadata)


def _create_children(parent, nodes: dict[str, Any]) -> dict[str, Any]:
    """``dict(parent.create_hierarchy(nodes))`` (name -> zarr node): metadata made by hand (see
    :mod:`._fastread`) written in a writable local store here, deepest first, so that a group's own
    ``zarr.json`` comes after its children's (a run killed in between leaves a group without its metadata:
    missing, so damaged, never half-valid); elsewhere by zarr's ``create_hierarchy``."""
    folder = _writable_folder(parent)
    if folder is None:
        return dict(parent.create_hierarchy(nodes))
    for name in sorted(nodes, key=lambda n: -n.count("/")):
        _write_metadata(os.path.join(folder, name), nodes[name])
    return {name: _built(parent, name, meta) for name, meta in nodes.items()}


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
            node = _child(group, name)
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
            if _writable_folder(parent) is None:
                group = parent.require_group(name)
            elif _has(parent, name):
                group = _child(parent, name)
                if not isinstance(group, _zarr().Group):  # zarr's require_group refuses it too
                    raise TypeError(f"{name} is an array, not a group")
            else:
                group = _create_children(parent, {name: _group_metadata({})})[name]
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
        _update_attributes(self._group, {"updated": _now()})
        if self._root is not self._group:
            _update_attributes(self._root, {"updated": _now()})
