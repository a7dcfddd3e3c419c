"""The embedding store: one Zarr v3 group per slide, safe to reuse, resume and share.

Layout of ``<root>/<slide key>.zarr``::

    zarr.json               attrs: schema_version, slide{name, path, fingerprint, size, reader, backend,
                            mpp, mpp_source, dimensions}, tiling{grid parameters, effective mpp...},
                            package_version, created, updated
    coords                  (N, 2) int64   level-0 top-left (x, y) of every tile
    tissue_fraction         (N,)   float32
    features/<encoder>/     attrs: encoder config, weights_digest, precision, dtype, chunk_rows, complete,
                                   n_tiles, embed_dim, timings
        embeddings          (N, D) float16 (float32 on request), chunks of ``chunk_rows`` tiles
        done                (n_chunks,) uint8, one marker chunk per embeddings chunk, written after it
    slide_embeddings/<model>  (D,) or (K, D) slide-level vectors, attrs say which model made them
    scores/<name>           (N,) or (N, K) per-tile scores (attention, probabilities, similarities)

Trust rules:

* Every chunk carries a CRC32C checksum (zarr's ``crc32c`` codec); a corrupt chunk raises
  :class:`StoreCorruptError` on read.
* An encoder's embeddings are *complete* only when every ``done`` marker is set and the group's
  ``complete`` attribute is written, last. Readers refuse incomplete embeddings.
* A cached result is reused only if the schema version, slide fingerprint, reader, tiling
  parameters, encoder config, weights digest, precision, dtype and package version all match;
  otherwise it is recomputed (the mismatch is logged), never mixed.
* A run killed at any moment resumes from the last chunk whose marker was written: a marker is
  written only after its chunk, so a half-written chunk is simply redone.
* Two runs on the same folder: a slide is claimed with an exclusive lock file
  (``<key>.zarr.lock``, created with O_EXCL); a claim whose process is gone (same host) is stale
  and taken over.

Where stores live: a local folder, or any fsspec URL (``s3://bucket/stores``, ``gs://...``,
``memory://...``; ``file://`` is a local folder). Zarr reads and writes remote stores through fsspec;
credentials and endpoints come from fsspec's configuration, e.g. the usual AWS variables plus
``FSSPEC_S3_ENDPOINT_URL=http://host:port`` for an S3-compatible server. On object stores the claim is
an exclusive create of the lock object (``If-None-Match: *`` on S3); a claim left by a dead process on
another host has to be deleted by hand (the error names it).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidParameterError, SlidescopeError

log = logging.getLogger(__name__)

__all__ = [
    "SCHEMA_VERSION",
    "StoreError",
    "StoreCorruptError",
    "IncompleteStoreError",
    "SlideClaimedError",
    "SlideStore",
    "open_store",
    "slide_fingerprint",
    "store_path",
    "claim",
    "as_location",
    "is_remote",
    "location_name",
]

SCHEMA_VERSION = 1
DEFAULT_CHUNK_ROWS = 1024


class StoreError(SlidescopeError):
    """The embedding store cannot be used as asked."""


class StoreCorruptError(StoreError):
    """A chunk failed its checksum or the metadata cannot be parsed."""


class IncompleteStoreError(StoreError):
    """Embeddings were asked for that are not completely written."""


class SlideClaimedError(StoreError):
    """Another live process is writing this slide's store."""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _package_version() -> str:
    from .. import __version__

    return __version__


def slide_fingerprint(path: str | os.PathLike[str], *, samples: int = 8, sample_bytes: int = 1 << 16) -> str:
    """``"<size>:<sha256 of sampled bytes>"``: first and last MiB plus ``samples`` evenly spaced blocks.

    Cheap for multi-GB slides, and changes when the file is replaced, truncated or re-exported."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256()
    h.update(str(size).encode())
    with open(p, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            for k in range(1, samples + 1):
                fh.seek(int(size * k / (samples + 1)))
                h.update(fh.read(sample_bytes))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return f"{size}:{h.hexdigest()[:32]}"


def slide_key(path: str | os.PathLike[str]) -> str:
    """The store name of a slide: its file name without the slide extension(s)."""
    name = Path(path).name
    for ext in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


#: a store's location: a local folder, or the URL of a folder on an fsspec file system
Location = Path | str


def as_location(path: str | os.PathLike[str]) -> Location:
    """``path`` as a store location: a :class:`~pathlib.Path`, or a normalised URL string for remote ones.

    ``file://`` URLs become local paths; ``s3://``, ``gs://``, ``memory://``... stay URLs."""
    if isinstance(path, Path):
        return path
    text = os.fspath(path)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    if "://" in text:
        return text.rstrip("/")
    return Path(text).expanduser()


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for an fsspec URL other than ``file://``."""
    return isinstance(as_location(path), str)


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)  # (file system, path inside it)


def _join(loc: Location, name: str) -> Location:
    return loc / name if isinstance(loc, Path) else f"{loc}/{name}"


def location_name(loc: str | os.PathLike[str]) -> str:
    """The last component of a path or URL (``.../CMU-1.zarr`` -> ``CMU-1.zarr``)."""
    loc = as_location(loc)
    return loc.name if isinstance(loc, Path) else loc.rsplit("/", 1)[-1]


def _exists(loc: Location) -> bool:
    if isinstance(loc, Path):
        return loc.exists()
    fs, inner = _fs(loc)
    return bool(fs.exists(inner))


def _remove_tree(loc: Location) -> None:
    if isinstance(loc, Path):
        shutil.rmtree(loc)
    else:
        fs, inner = _fs(loc)
        fs.rm(inner, recursive=True)


def store_path(root: str | os.PathLike[str], slide: str | os.PathLike[str]) -> Location:
    """Where the store of ``slide`` lives under ``root`` (a folder or an fsspec URL)."""
    return _join(as_location(root), f"{slide_key(slide)}.zarr")


# -- claiming -------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_claim(read) -> dict[str, Any]:
    try:
        return json.loads(read() or "{}")
    except (OSError, ValueError):
        return {}


def _claimed(path: Location, lock: Location, other: dict[str, Any]) -> SlideClaimedError:
    return SlideClaimedError(
        f"{location_name(path)} is being written by another run (host {other.get('host', '?')}, pid "
        f"{other.get('pid', '?')}, since {other.get('since', '?')}). Wait for it, or delete {lock} if that "
        f"run is dead."
    )


@contextlib.contextmanager
def claim(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive claim on a slide store while writing it (see module docstring)."""
    path = as_location(path)
    if isinstance(path, str):
        with _claim_remote(path):
            yield
        return
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": _now()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _read_claim(lock.read_text)
            same_host = other.get("host") == me["host"]
            if same_host and isinstance(other.get("pid"), int) and not _pid_alive(other["pid"]):
                log.warning("%s: taking over a stale claim of pid %s (the process is gone)", path.name, other["pid"])
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            raise _claimed(path, lock, other) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:  # pragma: no cover - two takeovers in a row lost the race
        raise SlideClaimedError(f"could not claim {path.name}; another run keeps taking it")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


@contextlib.contextmanager
def _claim_remote(url: str) -> Iterator[None]:
    """The claim on an object store: exclusive create of ``<store>.lock`` (same rules as locally)."""
    fs, inner = _fs(url)
    lock = inner + ".lock"
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": _now()}
    payload = json.dumps(me).encode()
    for _ in range(2):
        try:
            with fs.open(lock, "xb") as fh:  # S3: a conditional put (If-None-Match: *)
                fh.write(payload)
            break
        except FileExistsError:
            def read() -> str:
                with fs.open(lock, "rb") as fh:
                    return fh.read().decode()

            other = _read_claim(read)
            if other.get("host") == me["host"] and isinstance(other.get("pid"), int) and not _pid_alive(other["pid"]):
                log.warning("%s: taking over a stale claim of pid %s (the process is gone)", location_name(url),
                            other["pid"])
                with contextlib.suppress(FileNotFoundError):
                    fs.rm(lock)
                continue
            raise _claimed(url, f"{url}.lock", other) from None
    else:  # pragma: no cover - two takeovers in a row lost the race
        raise SlideClaimedError(f"could not claim {location_name(url)}; another run keeps taking it")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(lock)


# -- the store --------------------------------------------------------------------------------------


def _zarr():
    import zarr

    return zarr


def _checksummed() -> list[Any]:
    from zarr.codecs import Crc32cCodec

    return [Crc32cCodec()]


def _read(array, selection=slice(None)) -> np.ndarray:
    try:
        return np.asarray(array[selection])
    except ValueError as err:
        if "checksum" in str(err).lower():
            raise StoreCorruptError(
                f"{array.store_path}: a chunk failed its checksum ({err}). The store is corrupt: delete it "
                f"and extract again (slidescope recomputes what is missing)."
            ) from err
        raise


def _corrupt(array, detail: str) -> StoreCorruptError:
    return StoreCorruptError(
        f"{array.store_path}: a chunk failed its checksum ({detail}). The store is corrupt: delete it "
        f"and extract again (slidescope recomputes what is missing)."
    )


def _local_chunk_layout(array) -> tuple[Path, Any] | None:
    """``(array folder, metadata)`` when ``array`` can be read chunk file by chunk file, else None.

    That is: a local store, a 2-D row-chunked array (full rows per chunk), C order, and exactly the codecs
    this module writes (little-endian bytes + CRC32C), no sharding nor compression."""
    try:
        from zarr.codecs import BytesCodec, Crc32cCodec
        from zarr.storage import LocalStore

        store = array.store
        meta = array.metadata
        if not isinstance(store, LocalStore) or getattr(meta, "zarr_format", None) != 3 or array.ndim != 2:
            return None
        codecs = tuple(meta.codecs)
        if len(codecs) != 2 or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[1], Crc32cCodec):
            return None
        dtype = np.dtype(array.dtype)
        if dtype.byteorder == ">" or (dtype.byteorder == "=" and not np.little_endian):
            return None
        if (dtype.itemsize > 1 and str(codecs[0].endian.value) != "little") or array.order != "C":
            return None
        if tuple(array.chunks)[1] != array.shape[1]:
            return None
        return Path(store.root) / array.path, meta
    except Exception:  # any other zarr layout (or zarr version): the generic path reads it
        return None


def _read_rows(array) -> np.ndarray | None:
    """The whole row-chunked 2-D ``array``, read chunk file by chunk file straight into one array.

    Same checks as zarr's codec pipeline, with one copy less: each chunk file is read into its rows of
    the output (``readinto``), its CRC32C computed over exactly the bytes zarr checksummed (a padded edge
    chunk included) and compared with the stored one; a missing chunk file is the fill value (zarr does
    not write chunks that equal it). About 2x zarr's generic read on a warm cache (one sequential pass;
    reading chunks in threads measured no faster: the copy and the CRC are memory-bound). Returns None
    when the array's layout is not the one this module writes (see :func:`_local_chunk_layout`); the
    caller then uses zarr.
    """
    layout = _local_chunk_layout(array)
    if layout is None:
        return None
    import google_crc32c

    folder, meta = layout
    n, d = array.shape
    dtype = np.dtype(array.dtype)
    rows = int(array.chunks[0])
    out = np.empty((n, d), dtype)
    if out.size == 0:
        return out
    flat = out.reshape(-1).view(np.uint8)
    row_bytes = d * dtype.itemsize
    chunk_bytes = rows * row_bytes
    fill = meta.fill_value

    def one(c: int) -> None:
        start, stop = c * rows, min(n, (c + 1) * rows)
        path = folder / meta.encode_chunk_key((c, 0))
        try:
            fh = open(path, "rb", buffering=0)
        except FileNotFoundError:
            out[start:stop] = fill
            return
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if size != chunk_bytes + 4:
                raise _corrupt(array, f"chunk {c} holds {size} bytes, expected {chunk_bytes + 4}")
            view = memoryview(flat)[start * row_bytes : stop * row_bytes]
            got = 0
            while got < len(view):
                k = fh.readinto(view[got:])
                if not k:
                    raise _corrupt(array, f"chunk {c} is truncated")
                got += k
            rows_bytes = flat[start * row_bytes : stop * row_bytes].view()
            rows_bytes.flags.writeable = False  # google_crc32c takes read-only buffers only
            crc = google_crc32c.value(rows_bytes)
            tail = fh.read()  # padding of an edge chunk, then the stored checksum
            while len(tail) < chunk_bytes - len(view) + 4:
                more = fh.read()
                if not more:
                    raise _corrupt(array, f"chunk {c} is truncated")
                tail += more
            if len(tail) > 4:
                crc = google_crc32c.extend(crc, tail[:-4])
            stored = tail[-4:]
            if np.uint32(crc).tobytes() != stored:
                raise _corrupt(array, f"chunk {c}: stored and computed checksum do not match")

    for c in range(-(-n // rows)):
        one(c)
    return out


@dataclass(frozen=True)
class CacheKey:
    """What must match for stored embeddings to be reused."""

    encoder: dict[str, Any]
    weights_digest: str | None
    precision: str
    dtype: str
    package_version: str

    def as_attrs(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder,
            "weights_digest": self.weights_digest,
            "precision": self.precision,
            "dtype": self.dtype,
            "package_version": self.package_version,
        }


class SlideStore:
    """One slide's Zarr group. Use :func:`open_store` to read, :meth:`create_or_open` to write."""

    def __init__(self, path: Location, group) -> None:
        self.path = path  # a Path, or a URL string for a store on an fsspec file system
        self._group = group

    @property
    def name(self) -> str:
        """The store's folder name, ``<slide key>.zarr``."""
        return location_name(self.path)

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, mode: str = "r") -> SlideStore:
        p = as_location(path)
        if not _exists(_join(p, "zarr.json")):
            raise StoreError(f"{p} is not a slidescope store (no zarr.json). Extract features into it first.")
        try:
            group = _zarr().open_group(str(p), mode=mode)
            attrs = dict(group.attrs)
        except Exception as err:  # malformed JSON metadata and friends: zarr raises several types
            raise StoreCorruptError(f"{p}: the store metadata cannot be read ({err}). Delete it and extract again.") from err
        version = attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{p} has store schema {version!r}; this slidescope reads schema {SCHEMA_VERSION}. Re-extract into a "
                f"new folder (or upgrade slidescope if the store is newer)."
            )
        return cls(p, group)

    @classmethod
    def create_or_open(cls, path: str | os.PathLike[str], *, slide_attrs: dict[str, Any], tiling: dict[str, Any],
                       coords: np.ndarray, tissue_fraction: np.ndarray) -> SlideStore:
        """Open the store for writing if it describes the same slide and tiling, else start it afresh."""
        path = as_location(path)
        if _exists(_join(path, "zarr.json")):
            try:
                store = cls.open(path, mode="r+")
                reason = store._mismatch(slide_attrs, tiling)
                if reason is None:
                    if len(store.coords) == len(coords) and np.array_equal(store.coords, coords):
                        return store
                    reason = "tile coordinates differ"
                log.info("%s: starting the store afresh (%s)", location_name(path), reason)
            except StoreError as err:
                log.warning("%s: unusable store, starting afresh (%s)", location_name(path), err)
            _remove_tree(path)
        zarr = _zarr()
        group = zarr.open_group(str(path), mode="w")
        n = len(coords)
        c = group.create_array("coords", shape=(n, 2), chunks=(max(n, 1), 2), dtype="int64",
                               compressors=_checksummed(), fill_value=0)
        t = group.create_array("tissue_fraction", shape=(n,), chunks=(max(n, 1),), dtype="float32",
                               compressors=_checksummed(), fill_value=0)
        if n:
            c[:] = coords
            t[:] = tissue_fraction
        group.require_group("features")
        group.attrs.update({
            "schema_version": SCHEMA_VERSION,
            "slide": slide_attrs,
            "tiling": tiling,
            "n_tiles": int(n),
            "package_version": _package_version(),
            "created": _now(),
            "updated": _now(),
        })
        return cls(path, group)

    def _mismatch(self, slide_attrs: dict[str, Any], tiling: dict[str, Any]) -> str | None:
        attrs = self.attrs
        old = attrs.get("slide", {})
        for key in ("fingerprint", "reader", "mpp"):
            if old.get(key) != _jsonify(slide_attrs.get(key)):
                return f"slide {key} changed: {old.get(key)!r} -> {slide_attrs.get(key)!r}"
        if attrs.get("tiling") != _jsonify(tiling):
            return "tiling parameters changed"
        return None

    # -- reading ----------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._group.attrs)

    @property
    def coords(self) -> np.ndarray:
        """(N, 2) int64 level-0 top-left (x, y)."""
        return _read(self._group["coords"]).astype(np.int64, copy=False)

    @property
    def tissue_fraction(self) -> np.ndarray:
        return _read(self._group["tissue_fraction"])

    @property
    def n_tiles(self) -> int:
        return int(self._group.attrs.get("n_tiles", 0))

    @property
    def tile_extent(self) -> tuple[int, int]:
        """Level-0 (w, h) of one tile."""
        ext = self.attrs["tiling"]["extent"]
        return int(ext[0]), int(ext[1])

    def encoders(self, *, complete_only: bool = True) -> list[str]:
        names = []
        feats = self._group["features"]
        for name in sorted(k for k, _ in feats.groups()):
            if not complete_only or feats[name].attrs.get("complete"):
                names.append(name)
        return names

    def encoder_attrs(self, encoder: str) -> dict[str, Any]:
        return dict(self._feature_group(encoder).attrs)

    def _feature_group(self, encoder: str):
        feats = self._group["features"]
        if encoder not in feats:
            have = ", ".join(self.encoders(complete_only=False)) or "none"
            raise StoreError(f"{self.name} has no embeddings for encoder {encoder!r} (has: {have}). Run "
                             f"`slidescope extract --encoder {encoder}` on this slide.")
        return feats[encoder]

    def embeddings(self, encoder: str, *, as_: str = "numpy", lazy: bool = False):
        """The (N, D) embeddings of ``encoder``: numpy (default), ``as_="torch"``, or the lazy zarr array."""
        group = self._feature_group(encoder)
        if not group.attrs.get("complete"):
            raise IncompleteStoreError(
                f"{self.name}: the {encoder!r} embeddings are incomplete (an extraction was interrupted or is "
                f"running). Run `slidescope extract` again: it resumes where it stopped."
            )
        array = group["embeddings"]
        if lazy:
            return array
        data = _read_rows(array)
        if data is None:
            data = _read(array)
        if as_ == "torch":
            import torch

            return torch.from_numpy(data)
        if as_ != "numpy":
            raise InvalidParameterError(f"as_ must be 'numpy' or 'torch', got {as_!r}")
        return data

    # -- writing embeddings -----------------------------------------------------------------------
    def prepare_embeddings(self, key: CacheKey, *, embed_dim: int, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> EmbeddingWriter:
        """Open (resume) or create the embeddings of ``key.encoder['name']``; returns a writer."""
        name = key.encoder["name"]
        feats = self._group.require_group("features")
        wanted = _jsonify(key.as_attrs())
        if name in feats:
            group = feats[name]
            have = {k: group.attrs.get(k) for k in wanted}
            same = have == wanted and group.attrs.get("embed_dim") == embed_dim
            if not same:
                changed = [k for k in wanted if have.get(k) != wanted[k]] or ["embed_dim"]
                log.info("%s: %s embeddings were made with other %s; recomputing", self.name, name, changed)
                del feats[name]
        if name not in feats:
            group = feats.create_group(name)
            n = self.n_tiles
            n_chunks = max(1, -(-n // chunk_rows))
            group.create_array("embeddings", shape=(n, embed_dim), chunks=(chunk_rows, embed_dim), dtype=key.dtype,
                               compressors=_checksummed(), fill_value=0)
            group.create_array("done", shape=(n_chunks,), chunks=(1,), dtype="uint8", compressors=_checksummed(),
                               fill_value=0)
            group.attrs.update({**wanted, "embed_dim": int(embed_dim), "chunk_rows": int(chunk_rows),
                                "n_tiles": int(n), "complete": False, "created": _now()})
        return EmbeddingWriter(self, feats[name])

    # -- scores and slide embeddings -----------------------------------------------------------------
    def write_scores(self, name: str, scores: np.ndarray, *, attrs: dict[str, Any] | None = None) -> None:
        """Per-tile scores (N,) or (N, K) under ``scores/<name>`` (replacing any previous ones)."""
        scores = np.asarray(scores)
        if scores.shape[0] != self.n_tiles:
            raise InvalidParameterError(f"{len(scores)} scores for {self.n_tiles} tiles in {self.name}")
        group = self._group.require_group("scores")
        if name in group:
            del group[name]
        arr = group.create_array(name, shape=scores.shape, chunks=scores.shape if scores.size else None,
                                 dtype=scores.dtype, compressors=_checksummed(), fill_value=0)
        if scores.size:
            arr[...] = scores
        arr.attrs.update({**(attrs or {}), "written": _now()})

    def scores(self, name: str | None = None):
        group = self._group.get("scores")
        if name is None:
            return sorted(k for k, _ in group.arrays()) if group is not None else []
        if group is None or name not in group:
            raise StoreError(f"{self.name} has no scores named {name!r}")
        return _read(group[name])

    def write_slide_embedding(self, name: str, vector: np.ndarray, *, attrs: dict[str, Any] | None = None) -> None:
        vector = np.asarray(vector, dtype=np.float32)
        group = self._group.require_group("slide_embeddings")
        if name in group:
            del group[name]
        arr = group.create_array(name, shape=vector.shape, dtype="float32", compressors=_checksummed(), fill_value=0)
        arr[...] = vector
        arr.attrs.update({**(attrs or {}), "written": _now()})

    def slide_embedding(self, name: str) -> np.ndarray:
        group = self._group.get("slide_embeddings")
        if group is None or name not in group:
            raise StoreError(f"{self.name} has no slide embedding named {name!r}")
        return _read(group[name])

    def __repr__(self) -> str:
        return f"SlideStore({str(self.path)!r}, tiles={self.n_tiles}, encoders={self.encoders(complete_only=False)})"


class EmbeddingWriter:
    """Chunk-wise writer for one encoder's embeddings; tiles may arrive in any order."""

    def __init__(self, store: SlideStore, group) -> None:
        self.store = store
        self._group = group
        self.array = group["embeddings"]
        self.done_array = group["done"]
        self.chunk_rows = int(group.attrs["chunk_rows"])
        self.n = int(group.attrs["n_tiles"])
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def complete(self) -> bool:
        return bool(self._group.attrs.get("complete"))

    def done_chunks(self) -> np.ndarray:
        """Boolean (n_chunks,): chunks whose marker is written (a corrupt marker counts as not done)."""
        try:
            return _read(self.done_array).astype(bool)
        except StoreCorruptError:
            out = np.zeros(self.done_array.shape[0], bool)
            for i in range(len(out)):
                with contextlib.suppress(StoreCorruptError):
                    out[i] = bool(_read(self.done_array, slice(i, i + 1))[0])
            return out

    def pending_indices(self) -> np.ndarray:
        """Tile indices whose chunk is not done yet."""
        done = self.done_chunks()
        idx = np.arange(self.n)
        return idx[~done[idx // self.chunk_rows]] if self.n else idx

    def _chunk_len(self, chunk: int) -> int:
        return min(self.chunk_rows, self.n - chunk * self.chunk_rows)

    def add(self, indices: np.ndarray, values: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Buffer embeddings; return the chunks that became full as (chunk index, rows)."""
        full = []
        chunks = indices // self.chunk_rows
        for chunk in np.unique(chunks):
            sel = chunks == chunk
            c = int(chunk)
            if c not in self._buffers:
                size = self._chunk_len(c)
                self._buffers[c] = (np.zeros((size, values.shape[1]), self.array.dtype), np.zeros(size, bool))
            buf, seen = self._buffers[c]
            rows = indices[sel] - c * self.chunk_rows
            buf[rows] = values[sel]
            seen[rows] = True
            if seen.all():
                full.append((c, buf))
                del self._buffers[c]
        return full

    def write_chunk(self, chunk: int, rows: np.ndarray) -> None:
        """Write one chunk, then its marker (in that order: see the module docstring)."""
        start = chunk * self.chunk_rows
        self.array[start : start + len(rows)] = rows
        self.done_array[chunk : chunk + 1] = np.ones(1, np.uint8)

    def finish(self, **attrs: Any) -> None:
        if self._buffers:
            raise StoreError(f"{self.store.name}: {len(self._buffers)} chunks are still partly filled")
        if not self.done_chunks().all() and self.n:
            raise StoreError(f"{self.store.name}: not every chunk was written; run the extraction again")
        self._group.attrs.update({**_jsonify(attrs), "complete": True, "finished": _now()})
        self.store._group.attrs.update({"updated": _now()})


def _jsonify(value: Any) -> Any:
    """Round-trip through JSON so comparisons with stored attrs are like for like (tuples -> lists)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def open_store(path: str | os.PathLike[str]) -> SlideStore:
    """Open a slide's embedding store (``<slide>.zarr``) for reading.

    Parameters
    ----------
    path : str or os.PathLike
        The store, e.g. ``stores/<slide>.zarr`` (``store_path(root, slide)`` gives it): a local folder or an
        fsspec URL (``s3://bucket/stores/<slide>.zarr``).

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
        Not a slidescope store, or a newer schema than this slidescope reads.
    IncompleteStoreError
        From ``embeddings()``, when an extraction was interrupted: run it again, it resumes.
    StoreCorruptError
        A chunk failed its checksum.

    Examples
    --------
    >>> import tempfile
    >>> import slidescope as ss
    >>> slide = ss.open_slide("sample_data/sample_slide.tiff")
    >>> res = ss.extract_features(slide, ss.make_tile_grid(slide, tile_size=224, mpp=0.5), "he-descriptor",
    ...                           store=tempfile.mkdtemp(), num_workers=0, progress=False)
    >>> store = ss.open_store(res.store)
    >>> store.encoders(), store.n_tiles, store.tile_extent
    (['he-descriptor'], 94, (224, 224))
    >>> store.embeddings("he-descriptor").shape, store.coords.shape          # (N, D), (N, 2)
    ((94, 98), (94, 2))
    """
    return SlideStore.open(path)
