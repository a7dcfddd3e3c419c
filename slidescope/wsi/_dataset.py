"""A torch ``IterableDataset`` that streams the tiles of a grid with several DataLoader workers."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ._grid import TileGrid
from ._prefetch import default_read_threads
from ._slide import Slide, open_slide
from ._stream import DEFAULT_BLOCK_SIZE, block_order, iter_tiles

__all__ = ["TileDataset"]


class TileDataset(IterableDataset):
    """Stream ``{"image": uint8 tensor (H, W, 3), "index": int}`` for every tile of ``grid``.

    Each DataLoader worker opens its own handle on the slide (handles are never shared across
    processes) and reads a disjoint, spatially compact share of the grid: blocks of neighbouring
    tiles are dealt to workers in turn, so each worker's tile cache stays useful. Memory per
    worker is bounded by one block plus the decoded-tile cache, whatever the slide size.

    Images stay ``uint8`` HWC: normalisation belongs to the encoder (on the device), and uint8 is
    4x less to copy than float.

    Parameters
    ----------
    slide : an open :class:`Slide` (only its path, backend and mpp are kept) or a path.
    grid : the :class:`TileGrid` to read.
    transform : optional callable applied to each uint8 (H, W, 3) numpy tile in the worker.
    block_size : read-level pixels per block side (see :func:`iter_tiles`).
    indices : stream only these tiles (e.g. the ones a resumed extraction still needs).
    read_threads : decode threads per reading process on the direct TIFF path (see :func:`iter_tiles`);
        default: the process's CPUs shared among the DataLoader workers, at most 4.
    """

    def __init__(
        self,
        slide: Slide | str,
        grid: TileGrid,
        *,
        transform: Callable[[np.ndarray], Any] | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        direct: bool = True,
        indices: np.ndarray | None = None,
        read_threads: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(slide, Slide):
            # the pixel size as resolved here (the file's, filled in or forced): workers reopen with the same
            self._open = (str(slide.path), slide.backend, slide.mpp if slide.has_mpp else None)
        else:
            self._open = (str(slide), "auto", None)
        self.grid = grid
        self.transform = transform
        self.block_size = block_size
        self.direct = direct
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.read_threads = read_threads
        self.batch_size: int | None = None  # set on the copy that loader() makes

    def __len__(self) -> int:
        return len(self.grid) if self.indices is None else len(self.indices)

    def _share(self, worker: int, workers: int) -> np.ndarray:
        blocks = block_order(self.grid, self.block_size)
        if self.indices is not None:
            wanted = np.zeros(len(self.grid), bool)
            wanted[self.indices] = True
            blocks = [b[wanted[b]] for b in blocks]
            blocks = [b for b in blocks if len(b)]
        mine = blocks[worker::workers]
        return np.concatenate(mine) if mine else np.zeros(0, np.int64)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        indices = self._share(worker, workers)
        if len(indices) == 0:
            return
        path, backend, mpp = self._open
        with open_slide(path, backend=backend, force_slide_mpp=mpp) as slide:
            threads = default_read_threads(workers) if self.read_threads is None else self.read_threads
            tiles = iter_tiles(
                slide,
                self.grid,
                indices=indices,
                block_size=self.block_size,
                direct=self.direct,
                threads=threads,
            )
            if self.batch_size is None:
                for index, tile in tiles:
                    image = self.transform(tile) if self.transform else torch.from_numpy(np.array(tile))
                    yield {"image": image, "index": index}
                return
            # batches are stacked here, in the worker, straight into a fresh tensor (in shared memory when
            # in a worker process): it crosses to the main process without a copy, and the main process
            # does no collation
            size, rows = self.grid.tile_size, int(self.batch_size)
            shared = info is not None

            def fresh() -> torch.Tensor:
                out = torch.empty((rows, size, size, 3), dtype=torch.uint8)
                return out.share_memory_() if shared else out

            batch = fresh()
            buf = batch.numpy()
            idx = np.empty(rows, np.int64)
            n = 0
            for index, tile in tiles:
                buf[n] = tile
                idx[n] = index
                n += 1
                if n == rows:
                    yield self._batch(batch, idx, n)
                    batch = fresh()
                    buf = batch.numpy()
                    n = 0
            if n:
                yield self._batch(batch, idx, n)

    def _batch(self, batch: torch.Tensor, idx: np.ndarray, n: int) -> dict[str, Any]:
        """The first ``n`` tiles of ``batch`` (a tensor the caller no longer writes to) as a batch."""
        buf = batch.numpy()
        images = batch[:n]
        if self.transform is not None:
            images = torch.stack([torch.as_tensor(self.transform(t)) for t in buf[:n]])
        out = {"image": images, "index": torch.from_numpy(idx[:n].copy())}
        # a grid whose tile QC is deferred (QCGrid, --qc flag) is measured here, on the tiles as read
        qc = self.grid.measure_batch(buf[:n]) if hasattr(self.grid, "measure_batch") else None
        return out if qc is None else {**out, "qc": qc}

    def loader(
        self, *, batch_size: int = 64, num_workers: int = 0, **kwargs: Any
    ) -> torch.utils.data.DataLoader:
        """A DataLoader yielding ``{"image": uint8 (B, H, W, 3), "index": int64 (B,)}`` batches.

        Batches are assembled inside the workers (``batch_size`` of this dataset, DataLoader
        ``batch_size=None``); each worker prefetches 4 batches.
        """
        extra: dict[str, Any] = {}
        if num_workers > 0:
            extra = {"prefetch_factor": 4, "persistent_workers": False}
        extra.update(kwargs)
        batched = copy.copy(self)
        batched.batch_size = int(batch_size)
        return torch.utils.data.DataLoader(batched, batch_size=None, num_workers=num_workers, **extra)

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)
