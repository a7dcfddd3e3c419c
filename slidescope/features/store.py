"""The embedding store: one Zarr v3 group per slide, safe to reuse, resume and share.

Layout of ``<root>/<slide key>.zarr`` (schema 2)::

    zarr.json               attrs: format = "slidescope.slide-store" (the marker: the folder is ours),
                            schema_version, slide{name, path, fingerprint, size, reader, backend, mpp,
                            mpp_source, dimensions}, package_version, created, updated
    tilings/<tiling key>/   one sub-group per tiling, side by side (e.g. 224 px and 512 px encoders);
                            attrs: tiling{grid parameters, effective mpp...}, slide{reader, backend, mpp,
                            mpp_source}, n_tiles, created, updated. The key is
                            ``<tile size>px_<mpp>mpp_<8 hex digits of the tiling's SHA-256>``.
        coords              (N, 2) int64   level-0 top-left (x, y) of every tile
        tissue_fraction     (N,)   float32
        features/<encoder>/ attrs: encoder config, weights_digest, precision, dtype, chunk_rows, complete,
                                   n_tiles, embed_dim, timings
            embeddings      (N, D) float16 (float32 on request), chunks of ``chunk_rows`` tiles
            done            (n_chunks,) uint8, one marker chunk per embeddings chunk, written after it
        slide_embeddings/<model>  (D,) or (K, D) slide-level vectors, attrs say which model made them
        scores/<name>       (N,) or (N, K) per-tile scores (attention, probabilities, similarities)

A schema-1 store (slidescope before the tilings; one tiling at the top level, no marker) is still read
as it is; extraction rewrites it in schema 2 (its embeddings are recomputed).

Trust rules:

* Every chunk carries a CRC32C checksum (zarr's ``crc32c`` codec) and every chunk is written, even one
  equal to the fill value. A read checks that every chunk file exists (zarr alone would read a missing
  one as zeros) and its checksum holds; a missing or corrupt chunk raises :class:`StoreCorruptError`.
* Metadata is validated on open and before embeddings are handed out: the marker and schema, dtype
  and shape of every array against the recorded cache key (``coords`` rows == ``embeddings`` rows ==
  ``n_tiles``, width == the encoder's ``embed_dim``), the checksum codec present; unreadable metadata
  (a truncated ``zarr.json``) is a :class:`StoreCorruptError`, never a traceback.
* An encoder's embeddings are *complete* only when every ``done`` marker is set and the group's
  ``complete`` attribute is written, last. Readers refuse incomplete embeddings. Extraction reuses
  complete embeddings only after reading them back whole (checksums and chunks verified); damaged ones
  are recomputed.
* A cached result is reused only if the schema version, slide fingerprint, reader, tiling
  parameters, encoder config, weights digest, precision, dtype and package version all match;
  otherwise it is recomputed (the mismatch is logged), never mixed. Extraction re-fingerprints the
  slide before marking embeddings complete; a slide replaced meanwhile fails with
  :class:`SlideMismatchError` and is redone by the next run. :meth:`SlideStore.check_slide` lets a
  consumer that has the slide (heatmaps, the batch run) refuse a store made from another file.
* Ownership: slidescope deletes only inside a folder whose marker says it is a slidescope store (or a
  schema-1 store). Any other path where a store should go (an OME-Zarr, a file, a non-empty folder) is
  refused with :class:`ForeignPathError`; a store of a newer schema with :class:`NewerStoreError`.
* A run killed at any moment resumes from the last chunk whose marker was written: a marker is
  written only after its chunk, so a half-written chunk is simply redone.
* Two runs on the same folder: a slide is claimed with an exclusive lock file
  (``<key>.zarr.lock``); its content is written to a temporary file first and then hard-linked into
  place, so the lock never exists empty (a full disk fails the claim with :class:`DiskFullError` and
  leaves nothing behind). A claim whose process is gone (same host), or an empty/unreadable claim older
  than :data:`CLAIM_GRACE_S` seconds (left by an older slidescope), is stale and taken over.

Where stores live: a local folder, or any fsspec URL (``s3://bucket/stores``, ``gs://...``,
``memory://...``; ``file://`` is a local folder). Zarr reads and writes remote stores through fsspec;
credentials and endpoints come from fsspec's configuration, e.g. the usual AWS variables plus
``FSSPEC_S3_ENDPOINT_URL=http://host:port`` for an S3-compatible server. On object stores the claim is
an exclusive create of the lock object (``If-None-Match: *`` on S3, written in one request); a claim
left by a dead process on another host has to be deleted by hand (the error names it).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import numpy as np

from .._location import Location, as_location, exists, is_url, location_name
from .._location import join as _join
from ..errors import InvalidParameterError, SlidescopeError

log = logging.getLogger(__name__)

__all__ = [
    "SCHEMA_VERSION",
    "STORE_FORMAT",
    "StoreError",
    "StoreCorruptError",
    "IncompleteStoreError",
    "SlideClaimedError",
    "ForeignPathError",
    "NewerStoreError",
    "SlideMismatchError",
    "DiskFullError",
    "SlideStore",
    "open_store",
    "slide_fingerprint",
    "store_path",
    "tiling_key",
    "claim",
    "as_location",
    "is_remote",
    "location_name",
]

#: 2: one sub-group per tiling (``tilings/<key>``) and the ownership marker; 1: one tiling at the top level
SCHEMA_VERSION = 2
#: the marker in a store's root attrs (``format``) that says slidescope wrote the folder
STORE_FORMAT = "slidescope.slide-store"
DEFAULT_CHUNK_ROWS = 1024
#: an empty or unreadable claim file older than this (seconds) is stale: its writer failed mid-write
CLAIM_GRACE_S = 60.0


class StoreError(SlidescopeError):
    """The embedding store cannot be used as asked."""


class StoreCorruptError(StoreError):
    """A chunk is missing or failed its checksum, or the metadata cannot be parsed or is inconsistent."""


class IncompleteStoreError(StoreError):
    """Embeddings were asked for that are not completely written."""


class SlideClaimedError(StoreError):
    """Another live process is writing this slide's store."""


class ForeignPathError(StoreError):
    """A store should go where something slidescope did not write lies (it is never deleted)."""


class NewerStoreError(StoreError):
    """The store was written by a newer slidescope (a higher schema version); it is never deleted."""


class SlideMismatchError(StoreError):
    """The store was made from another slide file (or the slide changed while it was processed)."""


class DiskFullError(StoreError):
    """No space left on the device where a store or its claim is written."""


def _store_fix(path: Location) -> str:
    """The advice for a damaged store (the extraction rebuilds the damaged part)."""
    parent = location_name(path)
    return (
        f"Run `slidescope extract` on the slide {parent[: -len('.zarr')] if parent.endswith('.zarr') else parent!r} "
        f"again with the same --out: it re-extracts the damaged part (a partial copy or sync, or an edited file "
        f"does this)"
    )


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
    """The store name of a slide: its file name without the slide extension(s).

    A DICOM-WSI series is one slide in a folder of ``.dcm`` files (one per level): it is named after that
    folder, whether the folder or one of its ``.dcm`` files is given (OpenSlide opens the series through
    any of them), so ``extract``, ``run`` and ``score`` all find the same store."""
    from ..wsi._inputs import dicom_series_name

    series = dicom_series_name(path)
    if series is not None:
        return series
    name = Path(path).name
    for ext in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for an fsspec URL other than ``file://`` (the same test as :func:`slidescope._location.is_url`)."""
    return is_url(path)


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)  # (file system, path inside it)


def _exists(loc: Location) -> bool:
    return exists(loc)


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
    """The claim's content; ``{}`` when empty, unreadable or not a JSON object."""
    try:
        data = json.loads(read() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _claimed(path: Location, lock: Location, other: dict[str, Any]) -> SlideClaimedError:
    return SlideClaimedError(
        f"{location_name(path)} is being written by another run (host {other.get('host', '?')}, pid "
        f"{other.get('pid', '?')}, since {other.get('since', '?')}). Wait for it, or delete {lock} if that "
        f"run is dead."
    )


def _disk_full(path: Location, err: OSError) -> DiskFullError:
    return DiskFullError(
        f"no space left on the device to write {path} ({err}). Free some space (or write the "
        f"stores elsewhere with another --stores) and run again: nothing of this slide was claimed."
    )


def _write_claim_file(lock: Path, payload: bytes) -> bool:
    """Create ``lock`` holding ``payload``, atomically; False if it exists already.

    The content goes to a temporary file in the same folder first, which is then hard-linked to the lock
    name (``link`` fails if the name exists: as exclusive as ``O_EXCL``), so a lock file never exists
    empty or half-written, whatever happens while writing (a full disk, a kill). File systems without
    hard links fall back to ``O_EXCL`` + write, removing the lock again when the write fails."""
    # host and pid in the name: a later claim removes the leftovers of a writer killed between the two steps
    tmp = lock.with_name(f".{lock.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, lock)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
        # no hard links here: exclusive create, and never leave an empty lock behind
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            raise
        os.close(fd)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _remove_dead_writers_tmp(lock: Path, host: str) -> None:
    """Remove the temporary claim files of writers on this host that died (kill -9) before cleaning up."""
    for tmp in lock.parent.glob(f".{glob_escape(lock.name)}.*.tmp"):
        parts = tmp.name[len(lock.name) + 2 : -len(".tmp")].rsplit(".", 2)  # host (may hold dots), pid, uuid
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _stale(other: dict[str, Any], host: str, age_s: float | None) -> str | None:
    """Why a claim held by ``other`` is stale (None: it is live)."""
    if not other:  # empty or unreadable: its writer failed while writing it (e.g. a full disk)
        if age_s is not None and age_s > CLAIM_GRACE_S:
            return f"it is empty or unreadable and {age_s:.0f} s old"
        return None
    if other.get("host") == host and isinstance(other.get("pid"), int) and not _pid_alive(other["pid"]):
        return f"pid {other['pid']} is gone"
    return None


@contextlib.contextmanager
def claim(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive claim on a slide store while writing it (see module docstring).

    Raises
    ------
    SlideClaimedError
        Another live process holds it.
    DiskFullError
        The claim cannot be written for lack of space (nothing is left behind: the next run can claim it).
    """
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
            if _write_claim_file(lock, json.dumps(me).encode()):
                break
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _disk_full(lock, err) from err
            raise
        other = _read_claim(lock.read_text)
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:  # released meanwhile: try again
            continue
        why = _stale(other, me["host"], age)
        if why is not None:
            log.warning("%s: taking over a stale claim (%s)", path.name, why)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        raise _claimed(path, lock, other)
    else:  # pragma: no cover - two takeovers in a row lost the race
        raise SlideClaimedError(f"could not claim {path.name}; another run keeps taking it")
    _remove_dead_writers_tmp(lock, me["host"])
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
            # the lock object is written in one request, so it is never half-written: no age rule here
            why = _stale(other, me["host"], None)
            if why is not None:
                log.warning("%s: taking over a stale claim (%s)", location_name(url), why)
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


#: zarr skips chunks equal to the fill value by default; every chunk is written here, so that a missing
#: chunk file always means damage (a partial copy or sync), never "zeros"
_EVERY_CHUNK = {"write_empty_chunks": True}


def _corrupt(array, detail: str) -> StoreCorruptError:
    """The error for a damaged ``array``: names the store, the array and the fix."""
    full = str(array.store_path)
    inner = str(array.path)
    root = full[: -len(inner)].rstrip("/") if inner and full.endswith(inner) else full
    return StoreCorruptError(
        f"store {root}, array {inner!r}: {detail}. The store is damaged. {_store_fix(root)}."
    )


def _read(array, selection=slice(None)) -> np.ndarray:
    """Read ``array[selection]`` through zarr, checksums verified; a whole-array read also checks that
    every chunk file exists (zarr reads a missing chunk as the fill value, silently)."""
    if isinstance(selection, slice) and selection == slice(None):
        missing = array.nchunks - array.nchunks_initialized
        if missing:
            raise _corrupt(array, f"{missing} of {array.nchunks} chunk files are missing")
    try:
        return np.asarray(array[selection])
    except ValueError as err:  # zarr's codecs: a checksum mismatch, a chunk of the wrong size...
        detail = (
            "a chunk failed its checksum" if "checksum" in str(err).lower() else "a chunk cannot be decoded"
        )
        raise _corrupt(array, f"{detail} ({err})") from err


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
        if (
            len(codecs) != 2
            or not isinstance(codecs[0], BytesCodec)
            or not isinstance(codecs[1], Crc32cCodec)
        ):
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
    chunk included) and compared with the stored one; a missing chunk file is an error (this module
    writes every chunk, even one equal to the fill value). About 2x zarr's generic read on a warm cache (one sequential pass;
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

    def one(c: int) -> None:
        start, stop = c * rows, min(n, (c + 1) * rows)
        path = folder / meta.encode_chunk_key((c, 0))
        try:
            fh = open(path, "rb", buffering=0)
        except FileNotFoundError:  # every chunk is written (even one equal to the fill value): it is lost
            raise _corrupt(
                array, f"chunk file {meta.encode_chunk_key((c, 0))} (chunk {c}) is missing"
            ) from None
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


def tiling_key(tiling: dict[str, Any], slide: dict[str, Any] | None = None) -> str:
    """The name of a tiling's sub-group: ``<tile size>px_<mpp>mpp_<8 hex digits>``.

    The digits are the start of the SHA-256 of the tiling parameters and the slide's reader and pixel
    size (all that decides which pixels a tile holds), so two tilings that differ in anything get two
    sub-groups side by side, and the same tiling always finds its own."""
    t = _jsonify(tiling)
    payload = json.dumps({"tiling": t, "slide": _jsonify(slide or {})}, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
    size, mpp = t.get("tile_size"), t.get("mpp")
    size_text = f"{size}px" if isinstance(size, int) else "tile"
    mpp_text = f"{mpp:g}mpp" if isinstance(mpp, int | float) else "native"
    return f"{size_text}_{mpp_text}_{digest}"


#: the slide attributes that belong to a tiling (they decide the pixels of its tiles)
_TILING_SLIDE_KEYS = ("reader", "backend", "mpp", "mpp_source")


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


def _no_space(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


class SlideStore:
    """One slide's store, seen through one of its tilings.

    Use :func:`open_store` to read, :meth:`create_or_open` to write. ``path`` is the store folder (or
    URL); ``tiling_key`` the tiling sub-group this object reads and writes (None for a schema-1 store)."""

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
        if _exists(where):
            _remove_tree(where)

    # -- opening ----------------------------------------------------------------------------------
    @staticmethod
    def _open_root(p: Location, mode: str):
        if not _exists(_join(p, "zarr.json")):
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
        """Open a store, validated (see the module docstring), through the tiling that holds what is asked.

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
                key = cls._pick(
                    p, root, encoder=encoder, scores=scores, tiling=tiling, slide_embedding=slide_embedding
                )
                store = cls(p, root["tilings"][key], root=root, key=key)
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
    ) -> str:
        probe = cls(p, root)
        tilings = probe._node(root, "tilings", kind="group") if "tilings" in root else None
        keys = []
        if tilings is not None:
            try:
                keys = sorted(k for k, _ in tilings.groups())
            except Exception as err:  # a tiling's zarr.json cannot be parsed
                raise probe._damaged(
                    f"a tiling's metadata cannot be read ({type(err).__name__}: {err})"
                ) from err
        if not keys:
            raise StoreError(
                f"{p} holds no tiles yet (an extraction stopped at its start). Run `slidescope "
                f"extract` on the slide again."
            )
        if tiling is not None:
            if tiling not in keys:
                raise StoreError(f"{p} has no tiling {tiling!r} (has: {', '.join(keys)})")
            return tiling

        def rank(key: str) -> tuple[int, str]:
            g = tilings[key]
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
        return best

    def _check_tiling(self) -> None:
        """Validate the tiling's arrays against its attributes (tile count, dtypes, checksum codec)."""
        n = self._group.attrs.get("n_tiles")
        if not isinstance(n, int) or n < 0:
            raise self._damaged(f"the tile count (n_tiles = {n!r}) is missing or invalid")
        coords = self._node(self._group, "coords")
        self._expect(coords, (n, 2), "int64", f"{n} tiles")
        tissue = self._node(self._group, "tissue_fraction")
        self._expect(tissue, (n,), "float32", f"{n} tiles")

    @classmethod
    def create_or_open(
        cls,
        path: str | os.PathLike[str],
        *,
        slide_attrs: dict[str, Any],
        tiling: dict[str, Any],
        coords: np.ndarray,
        tissue_fraction: np.ndarray,
    ) -> SlideStore:
        """Open the store's sub-group of this tiling for writing, creating what is missing.

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
            return cls._create_or_open(path, slide_attrs, tiling, coords, tissue_fraction)
        except OSError as err:
            if _no_space(err):
                raise _disk_full(path, err) from err
            raise

    @classmethod
    def _create_or_open(cls, path: Location, slide_attrs, tiling, coords, tissue_fraction) -> SlideStore:
        zarr = _zarr()
        slide_attrs = _jsonify(slide_attrs)
        root = None
        if _exists(_join(path, "zarr.json")):
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
            root = zarr.create_group(
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
        tiling_slide = {k: slide_attrs.get(k) for k in _TILING_SLIDE_KEYS}
        key = tiling_key(tiling, {k: slide_attrs.get(k) for k in ("reader", "mpp")})
        probe = cls(path, root, root=root)
        tilings = probe._container(root, "tilings")
        where = _join(path, f"tilings/{key}")
        if _exists(where):
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
        n = len(coords)
        group = tilings.create_group(
            key,
            attributes={
                "tiling": _jsonify(tiling),
                "slide": tiling_slide,
                "n_tiles": int(n),
                "created": _now(),
                "updated": _now(),
            },
        )
        c = group.create_array(
            "coords",
            shape=(n, 2),
            chunks=(max(n, 1), 2),
            dtype="int64",
            compressors=_checksummed(),
            fill_value=0,
            config=_EVERY_CHUNK,
        )
        t = group.create_array(
            "tissue_fraction",
            shape=(n,),
            chunks=(max(n, 1),),
            dtype="float32",
            compressors=_checksummed(),
            fill_value=0,
            config=_EVERY_CHUNK,
        )
        if n:
            c[:] = coords
            t[:] = tissue_fraction
        group.require_group("features")
        store = cls(path, group, root=root, key=key)
        store._touch()
        return store

    def _touch(self) -> None:
        self._group.attrs.update({"updated": _now()})
        if self._root is not self._group:
            self._root.attrs.update({"updated": _now()})

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
            present = encoder in feats
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
        data = _read_rows(array)
        if data is None:
            data = _read(array)
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
        if _exists(where):
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
        if not _exists(where):
            # the attributes come with the group's first metadata: "complete" is never missing
            group = feats.create_group(
                name,
                attributes={
                    **wanted,
                    "embed_dim": int(embed_dim),
                    "chunk_rows": int(chunk_rows),
                    "n_tiles": int(self.n_tiles),
                    "complete": False,
                    "created": _now(),
                },
            )
            n = self.n_tiles
            n_chunks = max(1, -(-n // chunk_rows))
            group.create_array(
                "embeddings",
                shape=(n, embed_dim),
                chunks=(chunk_rows, embed_dim),
                dtype=key.dtype,
                compressors=_checksummed(),
                fill_value=0,
                config=_EVERY_CHUNK,
            )
            group.create_array(
                "done",
                shape=(n_chunks,),
                chunks=(1,),
                dtype="uint8",
                compressors=_checksummed(),
                fill_value=0,
                config=_EVERY_CHUNK,
            )
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
        arr.attrs.update({**(attrs or {}), "written": _now()})

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
        arr.attrs.update({**(attrs or {}), "written": _now()})

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


class EmbeddingWriter:
    """Chunk-wise writer for one encoder's embeddings; tiles may arrive in any order."""

    def __init__(self, store: SlideStore, group) -> None:
        self.store = store
        self._group = group
        self.array = group["embeddings"].with_config(_EVERY_CHUNK)
        self.done_array = group["done"].with_config(_EVERY_CHUNK)
        self.chunk_rows = int(group.attrs["chunk_rows"])
        self.n = int(group.attrs["n_tiles"])
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def complete(self) -> bool:
        return bool(self._group.attrs.get("complete"))

    def done_chunks(self, *, verify: bool = True) -> np.ndarray:
        """Boolean (n_chunks,): chunks whose marker is written (a corrupt marker counts as not done).

        With ``verify``, a chunk counts as done only if its embeddings chunk file also exists and passes its
        checksum (a partial copy of a half-done store is resumed correctly, not read as zeros)."""
        # a marker chunk not written yet reads as 0 (not done): exactly its meaning, so zarr reads them
        try:
            out = _read(self.done_array, slice(0, None)).astype(bool)
        except StoreCorruptError:
            out = np.zeros(self.done_array.shape[0], bool)
            for i in range(len(out)):
                with contextlib.suppress(StoreCorruptError):
                    out[i] = bool(_read(self.done_array, slice(i, i + 1))[0])
        if verify and self.n:
            for c in np.flatnonzero(out):
                key = f"{self.array.path}/{self.array.metadata.encode_chunk_key((int(c), 0))}"
                try:
                    ok = _exists(_join(self.store.path, key))
                    if ok:
                        _read(self.array, slice(int(c) * self.chunk_rows, int(c) * self.chunk_rows + 1))
                except StoreCorruptError:
                    ok = False
                if not ok:
                    log.warning(
                        "%s: embeddings chunk %s is missing or damaged; recomputing it",
                        self.store.name,
                        int(c),
                    )
                    out[c] = False
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
        width = int(self.array.shape[1])
        if values.ndim != 2 or values.shape[0] != len(indices) or values.shape[1] != width:
            # zarr would silently keep the first `width` columns of a wider row: refuse instead
            raise StoreError(
                f"{self.store.name}: embeddings of shape {tuple(values.shape)} for {len(indices)} tiles do "
                f"not fit this store's ({self.n}, {width}) array; the encoder's output size differs "
                "from its config's embed_dim: fix the encoder config"
            )
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
        if rows.shape != (self._chunk_len(chunk), int(self.array.shape[1])):
            raise StoreError(
                f"{self.store.name}: chunk {chunk} has shape {tuple(rows.shape)}, expected "
                f"({self._chunk_len(chunk)}, {int(self.array.shape[1])}); nothing was written"
            )
        self.array[start : start + len(rows)] = rows
        self.done_array[chunk : chunk + 1] = np.ones(1, np.uint8)

    def finish(self, **attrs: Any) -> None:
        if self._buffers:
            raise StoreError(f"{self.store.name}: {len(self._buffers)} chunks are still partly filled")
        if not self.done_chunks(verify=False).all() and self.n:
            raise StoreError(f"{self.store.name}: not every chunk was written; run the extraction again")
        self._group.attrs.update({**_jsonify(attrs), "complete": True, "finished": _now()})
        self.store._touch()


def _jsonify(value: Any) -> Any:
    """Round-trip through JSON so comparisons with stored attrs are like for like (tuples -> lists)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def open_store(
    path: str | os.PathLike[str],
    *,
    encoder: str | None = None,
    scores: str | None = None,
    tiling: str | None = None,
    slide_embedding: str | None = None,
) -> SlideStore:
    """Open a slide's embedding store (``<slide>.zarr``) for reading, validated (see the module docstring).

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
    (['he-descriptor'], 94, (224, 224))
    >>> store.embeddings("he-descriptor").shape, store.coords.shape          # (N, D), (N, 2)
    ((94, 98), (94, 2))
    """
    return SlideStore.open(
        path, encoder=encoder, scores=scores, tiling=tiling, slide_embedding=slide_embedding
    )
