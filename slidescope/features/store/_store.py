"""One slide's store, :class:`SlideStore`: opened through one of its tilings, validated, read and written.

:func:`open_store` opens one for reading; :meth:`SlideStore.create_or_open` for writing (see the package
docstring, :mod:`slidescope.features.store`, for the layout and the trust rules).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from ..._location import Location, as_location, exists, is_url, location_name
from ..._location import join as _join
from ...errors import InvalidParameterError
from ._errors import (
    ForeignPathError,
    IncompleteStoreError,
    NewerStoreError,
    SlideMismatchError,
    StoreError,
    _disk_full,
    _no_space,
)
from ._fastread import _EVERY_CHUNK, _checksummed, _group_metadata, _read, _row_chunked_metadata
from ._keys import CacheKey, _jsonify, _now, _package_version, slide_fingerprint, tiling_key
from . import _layout
from ._layout import SCHEMA_VERSION, STORE_FORMAT, _Layout, _ownership, _has_content, _remove_tree, _zarr
from ._qc import read_qc, write_qc
from ._writer import EmbeddingWriter

log = logging.getLogger("slidescope.features.store")

DEFAULT_CHUNK_ROWS = 1024


#: the slide attributes that belong to a tiling (they decide the pixels of its tiles)
_TILING_SLIDE_KEYS = ("reader", "backend", "mpp", "mpp_source")


class SlideStore(_Layout):
    """One slide's store, seen through one of its tilings.

    Use :func:`open_store` to read, :meth:`create_or_open` to write. ``path`` is the store folder (or
    URL); ``tiling_key`` the tiling sub-group this object reads and writes (None for a schema-1 store)."""

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        mode: str = "r",
        encoder: str | None = None,
        scores: str | None = None,
        tiling: str | None = None,
        slide_embedding: str | None = None,
    ) -> SlideStore:
        """Open a store, validated (see :mod:`slidescope.features.store`), through the tiling that holds what is asked.

        ``tiling`` names the tiling sub-group; else the one holding ``encoder``'s embeddings (complete
        ones first), the scores named ``scores`` or the slide embedding named ``slide_embedding``; among
        several, the most recently written."""
        p = as_location(path)
        root, attrs = cls._open_root(p, mode)
        kind = _ownership(attrs)
        if kind == "foreign":
            raise StoreError(
                f"{p} is not a slidescope store (its zarr.json has no slidescope marker). Give the "
                f"folder of stores that `slidescope extract` wrote."
            )
        if kind == "newer":
            raise NewerStoreError(
                f"{p} was written by a newer slidescope (store schema {attrs.get('schema_version')}; "
                f"this one reads up to {SCHEMA_VERSION}). Upgrade slidescope to read it."
            )
        with cls(p, root)._guard("the store's tilings"):
            if kind == "legacy":
                store = cls(p, root)
            else:
                key, group = cls._pick(
                    p, root, encoder=encoder, scores=scores, tiling=tiling, slide_embedding=slide_embedding
                )
                store = cls(p, group, root=root, key=key)
            store._check_tiling()
        return store

    @classmethod
    def _pick(
        cls,
        p: Location,
        root,
        *,
        encoder: str | None,
        scores: str | None,
        tiling: str | None,
        slide_embedding: str | None,
    ) -> tuple[str, Any]:
        """The key and group of the tiling to read (see :meth:`open`)."""
        probe = cls(p, root)
        tilings = probe._node(root, "tilings", kind="group") if _layout._has(root, "tilings") else None
        groups: dict[str, Any] = {}
        if tilings is not None:
            try:
                groups = dict(tilings.groups())
            except Exception as err:  # a tiling's zarr.json cannot be parsed
                raise probe._damaged(
                    f"a tiling's metadata cannot be read ({type(err).__name__}: {err})"
                ) from err
        keys = sorted(groups)
        if tilings is None or not keys:
            raise StoreError(
                f"{p} holds no tiles yet (an extraction stopped at its start). Run `slidescope "
                f"extract` on the slide again."
            )
        if tiling is not None:
            if tiling not in keys:
                raise StoreError(f"{p} has no tiling {tiling!r} (has: {', '.join(keys)})")
            return tiling, groups[tiling]
        if len(keys) == 1:  # the only one (ranking it would read its groups for nothing)
            return keys[0], groups[keys[0]]

        def rank(key: str) -> tuple[int, str]:
            g = groups[key]
            holds, complete = True, True
            if encoder is not None:
                feats = g.get("features")
                holds = feats is not None and encoder in feats
                complete = holds and bool(feats[encoder].attrs.get("complete"))
            if scores is not None:
                sc = g.get("scores")
                holds = holds and sc is not None and scores in sc
            if slide_embedding is not None:
                se = g.get("slide_embeddings")
                holds = holds and se is not None and slide_embedding in se
            return (2 * holds + complete, str(g.attrs.get("updated", "")))

        best = max(keys, key=rank)
        if len(keys) > 1:
            log.debug("%s: reading tiling %s of %s", location_name(p), best, keys)
        return best, groups[best]

    def _check_tiling(self) -> None:
        """Validate the tiling's arrays against its attributes (tile count, dtypes, checksum codec)."""
        n = self._group.attrs.get("n_tiles")
        if not isinstance(n, int) or n < 0:
            raise self._damaged(f"the tile count (n_tiles = {n!r}) is missing or invalid")
        coords = self._node(self._group, "coords")
        self._expect(coords, (n, 2), "int64", f"{n} tiles")
        tissue = self._node(self._group, "tissue_fraction")
        self._expect(tissue, (n,), "float32", f"{n} tiles")
        if _layout._has(self._group, "pad_fraction"):  # absent from stores made before the edge policy
            self._expect(self._node(self._group, "pad_fraction"), (n,), "float32", f"{n} tiles")

    @classmethod
    def create_or_open(
        cls,
        path: str | os.PathLike[str],
        *,
        slide_attrs: dict[str, Any],
        tiling: dict[str, Any],
        coords: np.ndarray,
        tissue_fraction: np.ndarray,
        pad_fraction: np.ndarray | None = None,
        qc: dict[str, np.ndarray] | None = None,
        qc_thresholds: dict[str, float] | None = None,
    ) -> SlideStore:
        """Open the store's sub-group of this tiling for writing, creating what is missing.

        ``pad_fraction`` (N,): the part of each tile outside the slide (``TileGrid.pad_fraction``); None: 0.
        ``qc``: per-tile QC measures (name -> (N,)), written into ``qc/`` (replacing those there); None: kept;
        ``qc_thresholds``: the QC thresholds set instead of the defaults, recorded with them.

        Other tilings in the store are kept. The whole store starts afresh only when it was made from
        another slide file (fingerprint) or is a schema-1 store; a tiling whose coordinates differ or whose
        arrays are damaged is rebuilt.

        Raises
        ------
        ForeignPathError
            Something slidescope did not write is at ``path`` (never deleted).
        NewerStoreError
            The store was written by a newer slidescope (never deleted).
        StoreCorruptError
            The store's root metadata cannot be read, so it cannot be told to be ours (never deleted).
        DiskFullError
            No space left to write it.
        """
        path = as_location(path)
        try:
            arrays = {"coords": coords, "tissue_fraction": tissue_fraction, "pad_fraction": pad_fraction}
            store = cls._create_or_open(path, slide_attrs, tiling, arrays)
            if qc:
                write_qc(store, qc, qc_thresholds)
            return store
        except OSError as err:
            if _no_space(err):
                raise _disk_full(path, err) from err
            raise

    @classmethod
    def _create_or_open(cls, path: Location, slide_attrs, tiling, arrays: dict[str, Any]) -> SlideStore:
        coords = arrays["coords"]
        slide_attrs = _jsonify(slide_attrs)
        root = cls._root_for_writing(path, slide_attrs)
        tiling_slide = {k: slide_attrs.get(k) for k in _TILING_SLIDE_KEYS}
        key = tiling_key(tiling, {k: slide_attrs.get(k) for k in ("reader", "mpp")})
        probe = cls(path, root, root=root)
        tilings = probe._container(root, "tilings")
        where = _join(path, f"tilings/{key}")
        if exists(where):
            try:
                with probe._guard(f"tiling {key}"):
                    store = cls(path, tilings[key], root=root, key=key)
                    store._check_tiling()
                    if store.attrs.get("tiling") == _jsonify(tiling) and np.array_equal(store.coords, coords):
                        store._touch()
                        return store
                reason = "tile coordinates differ"
            except (StoreError, KeyError) as err:
                reason = str(err)
            log.warning("%s: rebuilding tiling %s (%s)", location_name(path), key, reason)
            _remove_tree(where)  # inside a store marked ours
        group = cls._new_tiling(tilings, key, _jsonify(tiling), tiling_slide, arrays)
        store = cls(path, group, root=root, key=key)
        store._touch()
        return store

    @classmethod
    def _root_for_writing(cls, path: Location, slide_attrs: dict[str, Any]):
        """The store's root group: the existing one if it is ours and made from this slide, else a new one
        (a schema-1 store, or one made from another slide file, is deleted first; anything else is refused)."""
        root = None
        if exists(_join(path, "zarr.json")):
            group, attrs = cls._open_root(path, "r+")
            kind = _ownership(attrs)
            if kind == "foreign":
                raise ForeignPathError(
                    f"{path} is a Zarr folder that slidescope did not write (no slidescope marker in its zarr.json, "
                    f"e.g. an OME-Zarr conversion of the slide); slidescope never deletes it. Move it elsewhere, or "
                    f"write the stores into another folder (another --out / --stores)."
                )
            if kind == "newer":
                raise NewerStoreError(
                    f"{path} was written by a newer slidescope (store schema {attrs.get('schema_version')}, this one "
                    f"writes {SCHEMA_VERSION}); it is left as it is. Upgrade slidescope, or write the stores into "
                    f"another folder (another --out / --stores)."
                )
            if kind == "legacy":
                log.warning(
                    "%s: a schema-1 store (older slidescope); re-extracting it in schema %d",
                    location_name(path),
                    SCHEMA_VERSION,
                )
                _remove_tree(path)
            elif attrs.get("slide", {}).get("fingerprint") != slide_attrs.get("fingerprint"):
                log.warning(
                    "%s: made from another slide file (fingerprint %s, now %s); starting the store afresh",
                    location_name(path),
                    attrs.get("slide", {}).get("fingerprint"),
                    slide_attrs.get("fingerprint"),
                )
                _remove_tree(path)
            else:
                root = group
        elif _has_content(path):
            raise ForeignPathError(
                f"{path} exists but is not a slidescope store (no zarr.json); slidescope never deletes what it did "
                f"not write. Move it elsewhere, or write the stores into another folder (another --out / --stores)."
            )
        if root is None:  # the marker is in the group's first metadata: the folder is never ours-but-unmarked
            root = _zarr().create_group(
                str(path),
                overwrite=True,
                attributes={
                    "format": STORE_FORMAT,
                    "schema_version": SCHEMA_VERSION,
                    "slide": slide_attrs,
                    "package_version": _package_version(),
                    "created": _now(),
                    "updated": _now(),
                },
            )
        return root

    @staticmethod
    def _new_tiling(tilings, key: str, tiling: dict[str, Any], tiling_slide: dict[str, Any], arrays):
        """Create the sub-group ``key`` of ``tilings`` holding the tile coordinates, tissue and pad fractions."""
        n = len(arrays["coords"])
        if arrays.get("pad_fraction") is None:
            arrays = {**arrays, "pad_fraction": np.zeros(n, np.float32)}
        group = tilings.create_group(
            key,
            attributes={
                "tiling": tiling,
                "slide": tiling_slide,
                "n_tiles": int(n),
                "created": _now(),
                "updated": _now(),
            },
        )
        for name, width, dtype in (
            ("coords", (2,), "int64"),
            ("tissue_fraction", (), "float32"),
            ("pad_fraction", (), "float32"),
        ):
            array = group.create_array(
                name,
                shape=(n, *width),
                chunks=(max(n, 1), *width),
                dtype=dtype,
                compressors=_checksummed(),
                fill_value=0,
                config=_EVERY_CHUNK,
            )
            if n:
                array[:] = arrays[name]
        group.require_group("features")
        return group

    # -- reading ----------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        """The store's attributes as one dict: ``schema_version``, ``slide`` (the tiling's reader and pixel
        size included), ``tiling``, ``n_tiles``, ``tiling_key``, ``package_version``, ``created``, ``updated``."""
        root = dict(self._root.attrs)
        if self.tiling_key is None:
            return root
        t = dict(self._group.attrs)
        return {
            **root,
            "slide": {**root.get("slide", {}), **t.get("slide", {})},
            "tiling": t.get("tiling"),
            "n_tiles": t.get("n_tiles"),
            "tiling_key": self.tiling_key,
            "updated": t.get("updated"),
        }

    def tilings(self) -> list[str]:
        """The tiling sub-groups in this store (schema 1: none)."""
        if self.tiling_key is None:
            return []
        with self._guard("the store's tilings"):
            return sorted(k for k, _ in self._root["tilings"].groups())

    @property
    def coords(self) -> np.ndarray:
        """(N, 2) int64 level-0 top-left (x, y)."""
        return _read(self._node(self._group, "coords")).astype(np.int64, copy=False)

    @property
    def tissue_fraction(self) -> np.ndarray:
        return _read(self._node(self._group, "tissue_fraction"))

    @property
    def pad_fraction(self) -> np.ndarray:
        """(N,) float32 part of each tile outside the slide (``edge="pad"``); zeros where the store has none."""
        made_before_edges = self.tiling_key is None or not _layout._has(self._group, "pad_fraction")
        if made_before_edges:  # a store made before the edge policy
            return np.zeros(self.n_tiles, np.float32)
        return _read(self._node(self._group, "pad_fraction"))

    def qc(self) -> dict[str, np.ndarray]:
        """The per-tile QC measures (name -> (N,) float32; :func:`slidescope.wsi.tile_qc`); {} when none."""
        return read_qc(self)

    @property
    def n_tiles(self) -> int:
        return int(self._group.attrs.get("n_tiles", 0))

    @property
    def tile_extent(self) -> tuple[int, int]:
        """Level-0 (w, h) of one tile."""
        ext = self.attrs["tiling"]["extent"]
        return int(ext[0]), int(ext[1])

    def _features(self):
        return self._node(self._group, "features", kind="group")

    def encoders(self, *, complete_only: bool = True) -> list[str]:
        names = []
        feats = self._features()
        try:
            groups = sorted(feats.groups())
        except Exception as err:  # an encoder group's zarr.json cannot be parsed
            raise self._damaged(
                f"an encoder's metadata cannot be read ({type(err).__name__}: {err})"
            ) from err
        for name, group in groups:
            if not complete_only or group.attrs.get("complete"):
                names.append(name)
        return names

    def encoder_attrs(self, encoder: str) -> dict[str, Any]:
        return dict(self._feature_group(encoder).attrs)

    def _feature_group(self, encoder: str):
        feats = self._features()
        with self._guard(f"the {encoder!r} embeddings"):
            present = _layout._has(feats, encoder)
        if not present:
            have = ", ".join(self.encoders(complete_only=False)) or "none"
            raise StoreError(
                f"{self.name} has no embeddings for encoder {encoder!r} (has: {have}). Run "
                f"`slidescope extract --encoder {encoder}` on this slide."
            )
        return self._node(feats, encoder, kind="group")

    def _embedding_arrays(self, encoder: str, group, attrs: dict[str, Any]):
        """The validated ``(embeddings, done)`` arrays of ``encoder`` (metadata against the cache key)."""
        n = self.n_tiles
        dim, dtype, rows = attrs.get("embed_dim"), attrs.get("dtype"), attrs.get("chunk_rows")
        width = (attrs.get("encoder") or {}).get("embed_dim")
        if (
            not isinstance(dim, int)
            or not isinstance(rows, int)
            or rows < 1
            or dtype not in ("float16", "float32")
        ):
            raise self._damaged(
                f"the {encoder!r} attributes are invalid (embed_dim {dim!r}, chunk_rows {rows!r}, "
                f"dtype {dtype!r})"
            )
        if width is not None and width != dim:
            raise self._damaged(
                f"the {encoder!r} embeddings are said {dim}-d, but the encoder makes {width}-d"
            )
        if attrs.get("n_tiles", n) != n:
            raise self._damaged(
                f"the {encoder!r} embeddings are for {attrs.get('n_tiles')} tiles, the tiling has {n}"
            )
        emb = self._node(group, "embeddings")
        self._expect(emb, (n, dim), dtype, f"{n} tiles in coords, {dim}-d {dtype} {encoder!r} embeddings")
        if tuple(emb.chunks) != (rows, dim):
            raise self._damaged(f"array {emb.path!r} has chunks {tuple(emb.chunks)}, expected {(rows, dim)}")
        done = self._node(group, "done")
        self._expect(done, (max(1, -(-n // rows)),), "uint8", f"one marker per chunk of {rows} tiles")
        return emb, done

    def embeddings(self, encoder: str, *, as_: str = "numpy", lazy: bool = False):
        """The (N, D) embeddings of ``encoder``: numpy (default), ``as_="torch"``, or the lazy zarr array.

        Validated first (dtype, shape, width, rows == ``coords`` rows, every chunk marker set); every chunk
        file must exist and pass its checksum (:class:`StoreCorruptError` otherwise)."""
        if as_ not in ("numpy", "torch"):
            raise InvalidParameterError(f"as_ must be 'numpy' or 'torch', got {as_!r}")
        group = self._feature_group(encoder)
        attrs = dict(group.attrs)
        if not attrs.get("complete"):
            raise IncompleteStoreError(
                f"{self.name}: the {encoder!r} embeddings are incomplete (an extraction was interrupted or is "
                f"running). Run `slidescope extract` again: it resumes where it stopped."
            )
        array, done = self._embedding_arrays(encoder, group, attrs)
        if self.n_tiles and not _read(done).all():
            raise self._damaged(
                f"the {encoder!r} embeddings are marked complete but a chunk marker is not set"
            )
        if lazy:
            return array
        data = _read(array)  # the chunk files read directly where the layout allows
        if as_ == "torch":
            import torch

            return torch.from_numpy(data)
        return data

    def verify(self, encoder: str) -> None:
        """Read everything ``encoder``'s results depend on (coords, tissue fractions, embeddings) and check it.

        Raises
        ------
        StoreCorruptError
            A chunk is missing or fails its checksum, or the metadata is inconsistent.
        IncompleteStoreError
            The embeddings are not complete.
        StoreError
            No embeddings of ``encoder``.
        """
        self.coords
        self.tissue_fraction
        self.embeddings(encoder)

    def check_slide(self, slide: str | os.PathLike[str]) -> None:
        """Refuse a store that was not made from the file ``slide`` (its sampled-content fingerprint).

        Slides given as URLs are not checked (their fingerprint would need the whole download), nor stores
        imported from an h5 file without their slide (their fingerprint is "unverified").

        Raises
        ------
        SlideMismatchError
            The store belongs to another slide, or the slide changed since it was extracted.
        """
        if is_url(slide):
            return
        local = as_location(slide)
        recorded = self.attrs.get("slide", {})
        if str(recorded.get("fingerprint", "")).startswith("unverified"):
            log.warning(
                "%s was imported without its slide: it cannot be checked against %s", self.name, local
            )
            return
        now = slide_fingerprint(local)
        if recorded.get("fingerprint") != now:
            raise SlideMismatchError(
                f"{self.name} was extracted from {recorded.get('name', '?')!r} (fingerprint {recorded.get('fingerprint')}), "
                f"not from {local} (fingerprint {now}): it belongs to another slide, or the slide changed since. Run "
                f"`slidescope extract {local} --stores <stores folder>` to extract this slide."
            )

    # -- writing embeddings -----------------------------------------------------------------------
    def prepare_embeddings(
        self, key: CacheKey, *, embed_dim: int, chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> EmbeddingWriter:
        """Open (resume) or create the embeddings of ``key.encoder['name']``; returns a writer.

        Complete embeddings are verified (read back whole) before they are reused; damaged ones, or ones
        made with another cache key, are recomputed."""
        name = key.encoder["name"]
        feats = self._container(self._group, "features")
        wanted = _jsonify(key.as_attrs())
        where = _join(self.path, f"{self._group.path}/features/{name}".lstrip("/"))
        if exists(where):
            reason = None
            try:
                group = self._node(feats, name, kind="group")
                attrs = dict(group.attrs)
                have = {k: attrs.get(k) for k in wanted}
                if have != wanted or attrs.get("embed_dim") != embed_dim:
                    changed = [k for k in wanted if have.get(k) != wanted[k]] or ["embed_dim"]
                    reason = f"they were made with other {changed}"
                elif attrs.get("complete"):
                    self.verify(name)
                else:
                    self._embedding_arrays(name, group, attrs)
            except StoreError as err:
                reason = f"they are damaged ({err})"
            if reason is not None:
                log.warning("%s: recomputing the %s embeddings: %s", self.name, name, reason)
                _remove_tree(where)  # inside a store marked ours
        if not exists(where):
            # the group and its two arrays in one step (_create_children: the arrays first, the group last);
            # the attributes come with the group's first metadata: "complete" is never missing.
            # A run killed in between leaves arrays without their group: damaged, so recomputed (above).
            n = self.n_tiles
            made = _layout._create_children(
                feats,
                {
                    name: _group_metadata(
                        {
                            **wanted,
                            "embed_dim": int(embed_dim),
                            "chunk_rows": int(chunk_rows),
                            "n_tiles": int(n),
                            "complete": False,
                            "created": _now(),
                        }
                    ),
                    f"{name}/embeddings": _row_chunked_metadata((n, embed_dim), chunk_rows, key.dtype),
                    f"{name}/done": _row_chunked_metadata((max(1, -(-n // chunk_rows)),), 1, "uint8"),
                },
            )
            group, emb, done = made[name], made[f"{name}/embeddings"], made[f"{name}/done"]
            return EmbeddingWriter(self, group, (emb, done))  # no second read of what was just made
        return EmbeddingWriter(self, feats[name])

    # -- scores and slide embeddings -----------------------------------------------------------------
    def write_scores(self, name: str, scores: np.ndarray, *, attrs: dict[str, Any] | None = None) -> None:
        """Per-tile scores (N,) or (N, K) under ``scores/<name>`` (replacing any previous ones)."""
        scores = np.asarray(scores)
        if scores.shape[0] != self.n_tiles:
            raise InvalidParameterError(f"{len(scores)} scores for {self.n_tiles} tiles in {self.name}")
        group = self._container(self._group, "scores")
        self._remove_child(group, name)
        arr = group.create_array(
            name,
            shape=scores.shape,
            chunks=scores.shape if scores.size else None,
            dtype=scores.dtype,
            compressors=_checksummed(),
            fill_value=0,
            config=_EVERY_CHUNK,
        )
        if scores.size:
            arr[...] = scores
        arr.update_attributes({**(attrs or {}), "written": _now()})  # one metadata write, not one per key

    def scores(self, name: str | None = None):
        with self._guard("the scores"):
            group = self._group.get("scores")
            if name is None:
                return sorted(k for k, _ in group.arrays()) if group is not None else []
            present = group is not None and name in group
        if not present:
            raise StoreError(f"{self.name} has no scores named {name!r}")
        array = self._node(group, name)
        if not array.shape or array.shape[0] != self.n_tiles:
            raise self._damaged(
                f"scores {name!r} have shape {tuple(array.shape)}, the tiling has {self.n_tiles} tiles"
            )
        return _read(array)

    def write_slide_embedding(
        self, name: str, vector: np.ndarray, *, attrs: dict[str, Any] | None = None
    ) -> None:
        vector = np.asarray(vector, dtype=np.float32)
        group = self._container(self._group, "slide_embeddings")
        self._remove_child(group, name)
        arr = group.create_array(
            name,
            shape=vector.shape,
            dtype="float32",
            compressors=_checksummed(),
            fill_value=0,
            config=_EVERY_CHUNK,
        )
        arr[...] = vector
        arr.update_attributes({**(attrs or {}), "written": _now()})  # one metadata write, not one per key

    def slide_embedding(self, name: str) -> np.ndarray:
        with self._guard("the slide embeddings"):
            group = self._group.get("slide_embeddings")
            present = group is not None and name in group
        if not present:
            raise StoreError(f"{self.name} has no slide embedding named {name!r}")
        return _read(self._node(group, name))

    def __repr__(self) -> str:
        return (
            f"SlideStore({str(self.path)!r}, tiling={self.tiling_key!r}, tiles={self.n_tiles}, "
            f"encoders={self.encoders(complete_only=False)})"
        )


def open_store(
    path: str | os.PathLike[str],
    *,
    encoder: str | None = None,
    scores: str | None = None,
    tiling: str | None = None,
    slide_embedding: str | None = None,
) -> SlideStore:
    """Open a slide's embedding store (``<slide>.zarr``) for reading, validated (see :mod:`slidescope.features.store`).

    Parameters
    ----------
    path : str or os.PathLike
        The store, e.g. ``stores/<slide>.zarr`` (``store_path(root, slide)`` gives it): a local folder or an
        fsspec URL (``s3://bucket/stores/<slide>.zarr``).
    encoder, scores, tiling, slide_embedding : str, optional
        Which tiling to read when the store holds several (e.g. a 224 px and a 512 px encoder): the one named
        ``tiling``, else the one with ``encoder``'s embeddings (complete ones first), the scores named
        ``scores`` or the slide embedding named ``slide_embedding``; among several, the most recently written.

    Returns
    -------
    SlideStore
        ``coords`` (N, 2) int64 level-0 top-left (x, y); ``tissue_fraction`` (N,); ``tile_extent`` (w, h) in
        level-0 px; ``encoders()`` with complete embeddings; ``embeddings(encoder)`` (N, D) (float16 unless
        extracted as float32; ``as_="torch"`` for a tensor); ``scores(name)`` per-tile scores (N,) or (N, K);
        ``slide_embedding(name)``; ``attrs`` (slide fingerprint, tiling, schema and package versions).

    Raises
    ------
    StoreError
        Not a slidescope store (:class:`NewerStoreError`: a newer schema than this slidescope reads).
    IncompleteStoreError
        From ``embeddings()``, when an extraction was interrupted: run it again, it resumes.
    StoreCorruptError
        A chunk file is missing or failed its checksum, or the metadata cannot be read or is inconsistent
        (dtype, shape, width, row counts); the message names the store and array and says to extract again.

    Examples
    --------
    >>> import tempfile
    >>> import slidescope as ss
    >>> slide = ss.open_slide("sample_data/sample_slide.tiff")
    >>> res = ss.extract_features(slide, ss.make_tile_grid(slide, tile_size=224, mpp=0.5), "he-descriptor",
    ...                           store=tempfile.mkdtemp(), num_workers=0, progress=False)
    >>> store = ss.open_store(res.store)
    >>> store.encoders(), store.n_tiles, store.tile_extent
    (['he-descriptor'], 93, (224, 224))
    >>> store.embeddings("he-descriptor").shape, store.coords.shape          # (N, D), (N, 2)
    ((93, 98), (93, 2))
    """
    return SlideStore.open(
        path, encoder=encoder, scores=scores, tiling=tiling, slide_embedding=slide_embedding
    )
