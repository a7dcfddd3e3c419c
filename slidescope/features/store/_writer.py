"""Writing one encoder's embeddings chunk by chunk: :class:`EmbeddingWriter`.

Each chunk of ``chunk_rows`` tiles is written whole, then its ``done`` marker (in that order: a run killed
at any moment resumes from the last chunk whose marker was written); the ``complete`` attribute comes last.
In a local store both are written as chunk files directly (:func:`._fastread._write_rows`, byte for byte
what zarr writes; an encoder's embeddings are written 2-2.5x faster than through zarr's codec pipeline);
elsewhere through zarr.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._location import exists
from ..._location import join as _join
from ._errors import StoreCorruptError, StoreError
from ._fastread import _EVERY_CHUNK, _chunk_files, _read, _read_chunk, _read_rows, _write_rows
from ._keys import _jsonify, _now
from ._layout import _update_attributes

if TYPE_CHECKING:  # pragma: no cover
    from ._store import SlideStore

log = logging.getLogger("slidescope.features.store")


class EmbeddingWriter:
    """Chunk-wise writer for one encoder's embeddings; tiles may arrive in any order."""

    def __init__(self, store: SlideStore, group, arrays: tuple[Any, Any] | None = None) -> None:
        """``arrays``: the group's ``(embeddings, done)`` arrays when the caller has them (else read)."""
        self.store = store
        self._group = group
        embeddings, done = arrays if arrays is not None else (group["embeddings"], group["done"])
        self.array = embeddings.with_config(_EVERY_CHUNK)
        self.done_array = done.with_config(_EVERY_CHUNK)
        self.chunk_rows = int(group.attrs["chunk_rows"])
        self.n = int(group.attrs["n_tiles"])
        # the chunk files of a local store, written and checked without zarr's codec pipeline (None: zarr)
        self._files = _chunk_files(self.array)
        self._done_files = _chunk_files(self.done_array)
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
            fast = _read_rows(self.done_array, missing_ok=True)
            out = (_read(self.done_array, slice(0, None)) if fast is None else fast).astype(bool)
        except StoreCorruptError:
            out = np.zeros(self.done_array.shape[0], bool)
            for i in range(len(out)):
                with contextlib.suppress(StoreCorruptError):
                    out[i] = bool(_read(self.done_array, slice(i, i + 1))[0])
        if verify and self.n:
            for c in np.flatnonzero(out):
                key = f"{self.array.path}/{self.array.metadata.encode_chunk_key((int(c), 0))}"
                try:
                    if self._files is not None:
                        start, stop = self._files.span(int(c))
                        into = np.empty(((stop - start) * self._files.row_bytes,), np.uint8)
                        ok = _read_chunk(self._files, int(c), into, missing_ok=True)
                    else:
                        ok = exists(_join(self.store.path, key))
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
        if self._files is not None:
            _write_rows(self._files, chunk, rows)
        else:
            self.array[start : start + len(rows)] = rows
        if self._done_files is not None:
            _write_rows(self._done_files, chunk, np.ones(1, np.uint8))
        else:
            self.done_array[chunk : chunk + 1] = np.ones(1, np.uint8)

    def finish(self, **attrs: Any) -> None:
        if self._buffers:
            raise StoreError(f"{self.store.name}: {len(self._buffers)} chunks are still partly filled")
        if not self.done_chunks(verify=False).all() and self.n:
            raise StoreError(f"{self.store.name}: not every chunk was written; run the extraction again")
        _update_attributes(self._group, {**_jsonify(attrs), "complete": True, "finished": _now()})
        self.store._touch()


class BackgroundWriter:
    """Writes an :class:`EmbeddingWriter`'s chunks in background threads, so encoding never waits for disk.

    ``put((chunk, rows))`` queues a full chunk (``rows`` must not change afterwards: extraction hands over
    each chunk's own buffer); ``close()`` waits for every chunk and re-raises the first error (which a later
    ``put`` raises too). In a local store ``threads`` chunks are written at once (default 2): the CRC32C and
    the file write release the GIL, and two threads write a slide's embeddings about as fast as h5py writes
    them without checksums (``benchmarks/bench_extract.py --store-only``); each chunk is still written before
    its own ``done`` marker, and chunks are independent, so their order does not matter to a resumed run.
    Elsewhere (through zarr) one thread.
    """

    def __init__(self, writer: EmbeddingWriter, threads: int = 2, queued: int = 16) -> None:
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=queued)
        self.error: BaseException | None = None
        count = max(1, int(threads)) if writer._files is not None else 1
        self._threads = [
            threading.Thread(target=self._run, daemon=True, name=f"slidescope-store-writer-{i}")
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.writer.write_chunk(*item)
                except BaseException as err:  # noqa: BLE001 - handed to the caller by put() and close()
                    self.error = err

    def put(self, item: tuple[int, np.ndarray]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def close(self) -> None:
        for _ in self._threads:
            self.queue.put(None)
        for thread in self._threads:
            thread.join()
        if self.error is not None:
            raise self.error
