"""Checked reads and fast writes of chunk files: every chunk file present and its CRC32C checksum verified.

The store writes every array with zarr's ``crc32c`` codec (:func:`_checksummed`) and every chunk, even
one equal to the fill value (:data:`_EVERY_CHUNK`). :func:`_read` reads through zarr and adds the check
zarr lacks (a missing chunk file, which zarr reads as the fill value).

The fast paths handle the row-chunked arrays of a local store (the embeddings and their ``done``
markers) without zarr's codec pipeline: a chunk file (``<array>/c/<i>/0``, 1-D: ``<array>/c/<i>``) is
the raw little-endian rows, zero-padded to a full chunk, then the 4-byte CRC32C of all that, exactly as
zarr writes it. :func:`_read_rows` reads such an array straight into one output array, checksums
verified; :func:`_write_rows` writes one chunk file byte for byte as zarr would (to a temporary file
renamed into place, as zarr does), so plain zarr reads what it writes and the reverse. Any other layout
(a remote store, another codec, columns split over chunks) goes through zarr (``_chunk_files`` is None).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import StoreCorruptError, _store_fix


def _checksummed() -> list[Any]:
    from zarr.codecs import Crc32cCodec

    return [Crc32cCodec()]


#: zarr skips chunks equal to the fill value by default; every chunk is written here, so that a missing
#: chunk file always means damage (a partial copy or sync), never "zeros"
_EVERY_CHUNK = {"write_empty_chunks": True}


def _row_chunked_metadata(shape: tuple[int, ...], chunk_rows: int, dtype: Any):
    """zarr v3 metadata of a row-chunked, checksummed array as the store writes it: chunks of ``chunk_rows``
    whole rows, the ``bytes`` (little-endian) and ``crc32c`` codecs, fill value 0, no attributes. The same
    ``zarr.json`` as ``create_array(..., compressors=_checksummed(), fill_value=0)`` writes (tested), made
    without a store so that several nodes can be written in one ``create_hierarchy``."""
    from zarr.core.metadata import ArrayV3Metadata

    return ArrayV3Metadata.from_dict(
        {
            "zarr_format": 3,
            "node_type": "array",
            "shape": list(shape),
            "data_type": np.dtype(dtype).name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk_rows, *shape[1:]]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0,
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
            "attributes": {},
            "storage_transformers": [],
        }
    )


def _group_metadata(attributes: dict[str, Any]):
    from zarr.core.group import GroupMetadata

    return GroupMetadata(attributes=attributes)


def _corrupt(array, detail: str) -> StoreCorruptError:
    """The error for a damaged ``array``: names the store, the array and the fix."""
    full = str(array.store_path)
    inner = str(array.path)
    root = full[: -len(inner)].rstrip("/") if inner and full.endswith(inner) else full
    return StoreCorruptError(
        f"store {root}, array {inner!r}: {detail}. The store is damaged. {_store_fix(root)}."
    )


def _read(array, selection=slice(None)) -> np.ndarray:
    """Read ``array[selection]``, checksums verified; a whole-array read also checks that every chunk file
    exists (zarr reads a missing chunk as the fill value, silently), and reads the chunk files itself
    where it can (:func:`_read_rows`), else through zarr."""
    if isinstance(selection, slice) and selection == slice(None):
        fast = _read_rows(array)
        if fast is not None:
            return fast
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


@dataclass(frozen=True)
class _ChunkFiles:
    """Where the chunk files of a row-chunked array of a local store are, and how big they are."""

    array: Any
    folder: str
    meta: Any
    n: int  # rows in the array
    rows: int  # rows per chunk
    row_bytes: int
    dtype: np.dtype
    ndim: int

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.rows)

    def key(self, c: int) -> str:
        return str(self.meta.encode_chunk_key((c,) + (0,) * (self.ndim - 1)))

    def path(self, c: int) -> str:
        return os.path.join(self.folder, self.key(c))

    def span(self, c: int) -> tuple[int, int]:
        return c * self.rows, min(self.n, (c + 1) * self.rows)


def _chunk_files(array) -> _ChunkFiles | None:
    """The chunk files of ``array`` when it can be read and written file by file, else None.

    That is: a local store, a 1-D array or a 2-D row-chunked one (full rows per chunk), C order, fill value
    0, and exactly the codecs the store writes (little-endian bytes + CRC32C), no sharding nor compression."""
    try:
        from zarr.codecs import BytesCodec, Crc32cCodec
        from zarr.storage import LocalStore

        store = array.store
        meta = array.metadata
        if not isinstance(store, LocalStore) or getattr(meta, "zarr_format", None) != 3:
            return None
        if array.ndim not in (1, 2) or (array.ndim == 2 and tuple(array.chunks)[1] != array.shape[1]):
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
        endian = codecs[0].endian
        if (dtype.itemsize > 1 and (endian is None or str(endian.value) != "little")) or array.order != "C":
            return None
        if dtype.kind not in "biuf" or np.asarray(meta.fill_value).item() != 0:
            return None
        width = int(array.shape[1]) if array.ndim == 2 else 1
        return _ChunkFiles(
            array=array,
            folder=os.path.join(str(store.root), str(array.path)),
            meta=meta,
            n=int(array.shape[0]),
            rows=int(array.chunks[0]),
            row_bytes=width * dtype.itemsize,
            dtype=dtype,
            ndim=int(array.ndim),
        )
    except Exception:  # any other zarr layout (or zarr version): the generic path reads it
        return None


#: bytes read and checksummed at a time: small enough to stay in the CPU cache between the two (whole 2 MiB
#: chunks at once measured 12-15% slower on the project's machine)
_BLOCK = 1 << 18


def _read_chunk(files: _ChunkFiles, c: int, into: np.ndarray, *, missing_ok: bool = False) -> bool:
    """Read chunk ``c``'s rows into the uint8 buffer ``into`` (its rows' bytes) and check its CRC32C.

    Returns False for a missing file with ``missing_ok`` (``into`` untouched), else raises
    :class:`StoreCorruptError` for a missing, short, long or corrupt chunk file."""
    from crc32c import crc32c

    array = files.array
    chunk_bytes = files.rows * files.row_bytes
    try:
        fh = open(files.path(c), "rb", buffering=0)
    except FileNotFoundError:  # every chunk is written (even one equal to the fill value): it is lost
        if missing_ok:
            return False
        raise _corrupt(array, f"chunk file {files.key(c)} (chunk {c}) is missing") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size != chunk_bytes + 4:
            raise _corrupt(array, f"chunk {c} holds {size} bytes, expected {chunk_bytes + 4}")
        view = into.data
        got, crc = 0, 0
        while got < len(view):  # in blocks, each checksummed while it is still in the CPU cache
            k = fh.readinto(view[got : got + _BLOCK])
            if not k:
                raise _corrupt(array, f"chunk {c} is truncated")
            crc = crc32c(view[got : got + k], crc)
            got += k
        tail = fh.read()  # padding of an edge chunk, then the stored checksum
        while len(tail) < chunk_bytes - len(view) + 4:
            more = fh.read()
            if not more:
                raise _corrupt(array, f"chunk {c} is truncated")
            tail += more
        if len(tail) > 4:
            crc = crc32c(tail[:-4], crc)
        if np.uint32(crc).tobytes() != tail[-4:]:
            raise _corrupt(array, f"chunk {c}: stored and computed checksum do not match")
    return True


#: arrays smaller than this are read in the calling thread (starting threads costs more than they save)
_THREADED_BYTES = 8 << 20


def _read_threads(n_chunks: int, nbytes: int) -> int:
    """Threads for one whole-array read: as many as the tile readers use (:func:`slidescope.wsi.
    default_read_threads`: the process's CPUs, at most 4), at most one per chunk; one for an array under
    :data:`_THREADED_BYTES`. Both the ``readinto`` and the CRC32C (the ``crc32c`` package) release the GIL,
    so chunks are read in parallel: 50,000 x 1,024 float16 in 25-28 ms with 2 threads against 41-43 ms with
    one, on the project's 2-core machine."""
    if nbytes < _THREADED_BYTES:
        return 1
    from ...wsi import default_read_threads

    return max(1, min(default_read_threads(), n_chunks))


def _read_rows(array, *, missing_ok: bool = False) -> np.ndarray | None:
    """The whole row-chunked ``array`` (1-D or 2-D), read chunk file by chunk file straight into one array.

    Same checks as zarr's codec pipeline, with one copy less: each chunk file is read into its rows of
    the output (``readinto``), its CRC32C computed over exactly the bytes zarr checksummed (a padded edge
    chunk included) and compared with the stored one; a missing chunk file is an error (the store writes
    every chunk, even one equal to the fill value), or with ``missing_ok`` reads as zeros (the ``done``
    markers of chunks not written yet). The chunks are split into contiguous runs, one per thread
    (:func:`_read_threads`); the error of the first bad chunk (in chunk order) is the one raised. Returns
    None when the array's layout is not the one the store writes (see :func:`_chunk_files`); the caller
    then uses zarr.
    """
    files = _chunk_files(array)
    if files is None:
        return None
    out = np.empty(tuple(array.shape), files.dtype)
    if out.size == 0:
        return out
    flat = out.reshape(-1).view(np.uint8)

    def run(first: int, last: int) -> tuple[int, BaseException] | None:
        for c in range(first, last):
            start, stop = files.span(c)
            into = flat[start * files.row_bytes : stop * files.row_bytes]
            try:
                if not _read_chunk(files, c, into, missing_ok=missing_ok):
                    into[:] = 0
            except BaseException as err:  # handed to the caller, in chunk order
                return c, err
        return None

    n_chunks = files.n_chunks
    threads = _read_threads(n_chunks, flat.size)
    if threads == 1:
        failed = [run(0, n_chunks)]
    else:
        from concurrent.futures import ThreadPoolExecutor

        bounds = np.linspace(0, n_chunks, threads + 1).astype(int)
        with ThreadPoolExecutor(threads, thread_name_prefix="slidescope-store-read") as pool:
            failed = list(pool.map(run, bounds[:-1].tolist(), bounds[1:].tolist()))
    errors = sorted((f for f in failed if f is not None), key=lambda f: f[0])
    if errors:
        raise errors[0][1]
    return out


def _write_all(fh, view: memoryview, path: str) -> None:
    done = 0
    while done < len(view):
        k = fh.write(view[done:])
        if not k:
            raise OSError(f"writing {path} made no progress")
        done += k


def _write_rows(files: _ChunkFiles, c: int, values: np.ndarray) -> None:
    """Write chunk ``c`` (``values``: its rows, cast to the array's dtype) as zarr writes it.

    The bytes are the rows, zero padding to a full chunk (an edge chunk) and their CRC32C: byte for byte
    zarr's chunk file. It is written to ``<chunk>.<random>.partial`` and renamed into place (as zarr does),
    so a chunk file is never seen half-written; no fsync, like zarr and h5py."""
    from crc32c import crc32c

    start, stop = files.span(c)
    data = np.ascontiguousarray(values, dtype=files.dtype)  # zarr casts the same way
    if len(data) != stop - start or data.nbytes != (stop - start) * files.row_bytes:
        raise ValueError(f"chunk {c} takes {stop - start} rows, got an array of shape {values.shape}")
    raw = data.reshape(-1).view(np.uint8)
    pad = b"\0" * ((files.rows - (stop - start)) * files.row_bytes)
    path = files.path(c)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.partial"
    try:
        with open(tmp, "wb", buffering=0) as fh:
            # in blocks, each checksummed then written while it is still in the CPU cache: the rows are
            # read from memory once, not once for the checksum and again for the write
            crc = 0
            for at in range(0, raw.size, _BLOCK):
                block = raw[at : at + _BLOCK]
                crc = crc32c(block.data, crc)
                _write_all(fh, block.data, path)
            if pad:
                crc = crc32c(pad, crc)
                _write_all(fh, memoryview(pad), path)
            _write_all(fh, memoryview(np.uint32(crc).tobytes()), path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
