"""Grid tiles from a tiled TIFF's own tiles, each file tile decoded once, several decoded at a time.

The tile streamer knows every tile it will read before it starts, so which file tiles each grid tile
needs, and how many grid tiles need each file tile, is known in advance (the *plan*). Two things follow:

* **decode once**: a decoded file tile is kept exactly until the last grid tile that needs it has been
  cut, then dropped. An LRU cache cannot know that: with 2048 px blocks in row-major order, the file
  tiles on the seam between two rows of blocks were evicted before the next row reached them, and 9 %
  of the file tiles of a 224 px grid over 256 px JPEG tiles were decoded twice. Memory is the file
  tiles still awaited (about one row of file tiles across the slide: 30 MB for a 40,000 px wide slide of
  256 px tiles) and never more than ``budget`` bytes: past it the least recently used tile still awaited is
  dropped and decoded again when needed (a slide wider than ~340,000 px of 256 px tiles at 96 MiB).
* **threads**: libjpeg-turbo (through imagecodecs) and the resize (OpenCV, Pillow) release the GIL, so each grid tile
  (its file tiles' decode, the cut and the resize) is made in a small thread pool, a bounded window of
  tiles ahead of the consumer, and handed out in order. Two threads that need the same file tile share
  one decode (the second waits for the first).

The pixels are those of the one-thread path (:meth:`TiffTileSource.read` + :func:`resize_tile`),
tested equal, which are OpenSlide's.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ._resize import block_mean
from ._tiff import TiffTileSource

__all__ = ["default_read_threads", "stream_tiles"]

#: most decode threads one reader starts; more gave nothing on 256 px JPEG tiles, where the consumer's
#: share of the work (ordering, handing tiles over) becomes the limit
MAX_READ_THREADS = 4
#: grid tiles in flight per thread, and per hand-over to a thread
_AHEAD_PER_THREAD = 32
_GROUP = 16

Key = tuple[int, int, int]


def default_read_threads(processes: int = 1) -> int:
    """Decode threads per reading process: the CPUs this process may use shared among ``processes``
    reader processes, at most :data:`MAX_READ_THREADS`, at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_READ_THREADS, cpus // max(1, int(processes))))


def stream_tiles(
    source: TiffTileSource,
    level: int,
    xy: np.ndarray,
    size: tuple[int, int],
    finish: Callable[[np.ndarray], np.ndarray] | None,
    *,
    threads: int = 1,
    budget: int | None = None,
    reduce: tuple[int, int] | None = None,
    dct: bool = False,
) -> Generator[np.ndarray, None, None]:
    """Yield ``finish(region)`` for each read-level top-left in ``xy`` (in order), region ``(h, w, 3)``.

    Parts of a region outside the level are white (``edge="pad"`` grids). ``finish`` (the resize) runs
    in the decode threads.

    ``reduce=(kx, ky)``: ``finish`` is :func:`~._resize.block_mean` (an exact block mean, whole factors).
    A region inside the level whose origin is a multiple of the factors (and the file tiles too) is then
    made from file tiles each reduced once, in the decode threads, right after decoding: the same blocks,
    so the same pixels as reducing the assembled region (each output pixel is the rounded mean of the same
    ``kx x ky`` input pixels), at a quarter of the copying for 448 -> 224. Other regions take the full path.

    ``dct``: those file tiles are instead decoded at ``1 / k`` by libjpeg's scaled IDCT
    (:meth:`TiffTileSource.decode_scaled`; ``kx == ky`` in 2, 4, 8, where :meth:`~TiffTileSource.can_scale`
    holds, else as without it): not the exact block mean (``downscale="jpeg-dct"`` of
    :func:`~slidescope.wsi.make_tile_grid`).
    """
    plan = _Plan(source, level, xy, size, reduce, dct)
    n = len(plan.xy)
    threads = max(1, int(threads)) if n > 1 else 1
    pool = (
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="slidescope-read") if threads > 1 else None
    )

    def submit(fn: Callable, *args) -> Future:
        if pool is not None:
            return pool.submit(fn, *args)
        future: Future = Future()  # one thread: run it now
        try:
            future.set_result(fn(*args))
        except BaseException as err:
            future.set_exception(err)
        return future

    # The threads decode file tiles, in groups, in the order grid tiles first need them; this thread cuts
    # the regions out of them (numpy copies) and hands each region to the threads for ``finish`` (the
    # resize; skipped when None), then yields the results in order.
    held = _Held(plan, submit, source.cache_limit if budget is None else int(budget))
    groups: deque[list[tuple[int, list[tuple[Future, int]]]]] = deque()
    finished: deque[Future | np.ndarray] = deque()
    ahead = max(2, _AHEAD_PER_THREAD * threads // _GROUP)
    nxt = 0
    try:
        while nxt < n or groups:
            while nxt < n and len(groups) < ahead:  # plan and submit the decodes of the next groups
                stop = min(n, nxt + _GROUP)
                groups.append(held.group(nxt, stop))
                nxt = stop
            for i, refs in groups.popleft():
                try:
                    cut = plan.region(i, refs)
                except Exception:
                    while finished:  # the tiles before this one first, then its error
                        done = finished.popleft()
                        yield done.result() if isinstance(done, Future) else done
                    raise
                finished.append(cut if finish is None or plan.reduced[i] else submit(finish, cut))
                while len(finished) > _AHEAD_PER_THREAD * threads:
                    done = finished.popleft()
                    yield done.result() if isinstance(done, Future) else done
        while finished:
            done = finished.popleft()
            yield done.result() if isinstance(done, Future) else done
    finally:  # also when the consumer stops early: no thread may touch the file after the slide closes
        for done in finished:
            if isinstance(done, Future):
                done.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class _Plan:
    """Which file tiles each region needs, how often each is needed, and how to decode and cut them."""

    def __init__(
        self,
        source: TiffTileSource,
        level: int,
        xy: np.ndarray,
        size: tuple[int, int],
        reduce: tuple[int, int] | None,
        dct: bool = False,
    ) -> None:
        self.source, self.level = source, level
        self.w, self.h = size
        self.tw, self.th = source.tile_shape(level)
        self.lw, self.lh = source.level_size(level)
        w, h, tw, th, lw, lh = self.w, self.h, self.tw, self.th, self.lw, self.lh
        self.xy = xy = np.asarray(xy, dtype=np.int64).reshape(-1, 2)
        # the file tiles each region touches, inside the level (empty ranges for a region wholly outside)
        self.tx0, self.ty0 = np.maximum(xy[:, 0], 0) // tw, np.maximum(xy[:, 1], 0) // th
        self.tx1 = (np.minimum(xy[:, 0] + w, lw) - 1) // tw
        self.ty1 = (np.minimum(xy[:, 1] + h, lh) - 1) // th
        apart = (xy[:, 0] >= lw) | (xy[:, 1] >= lh) | (xy[:, 0] + w <= 0) | (xy[:, 1] + h <= 0)
        self.tx1[apart] = self.tx0[apart] - 1  # no file tile for a region that misses the level
        self.inside = (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] + w <= lw) & (xy[:, 1] + h <= lh)
        self.kx, self.ky = reduce or (1, 1)
        self.reduced = np.zeros(len(xy), bool)
        if (
            reduce is not None
            and tw % self.kx == 0
            and th % self.ky == 0
            and w % self.kx == 0
            and h % self.ky == 0
        ):
            self.reduced = self.inside & (xy[:, 0] % self.kx == 0) & (xy[:, 1] % self.ky == 0)
        # a key is (tx, ty, 1) for a file tile reduced by (kx, ky), (tx, ty, 0) for one at full size
        self.keys_of = [
            [(tx, ty, r) for ty in range(b, d + 1) for tx in range(a, c + 1)]
            for a, b, c, d, r in zip(
                self.tx0.tolist(),
                self.ty0.tolist(),
                self.tx1.tolist(),
                self.ty1.tolist(),
                self.reduced.astype(int).tolist(),
                strict=True,
            )
        ]
        self.uses: dict[Key, int] = {}
        # per decode thread: the array a file tile to reduce is decoded into (only the reduced tile is kept);
        # RGBX for Pillow's reduce (no conversion on the way in), RGB for OpenCV's 2 x 2 (no copy on the way out)
        #: reduced file tiles decoded at 1 / k by libjpeg's scaled IDCT instead of the exact block mean
        self.dct = bool(dct) and self.kx == self.ky and source.can_scale(level, self.kx)
        self._scratch = threading.local()
        self._rgbx = (self.kx, self.ky) != (2, 2)
        self._scratch_shape = (self.th, self.tw, 4 if self._rgbx else 3)
        self._pieces: dict[tuple[bool, int, int], list] = {}
        for keys in self.keys_of:
            for key in keys:
                self.uses[key] = self.uses.get(key, 0) + 1

    def decode(self, keys: list[Key]) -> list[np.ndarray | Exception]:
        """The file tiles of ``keys``; a tile that fails is its exception, raised where a region needs it."""
        out: list[np.ndarray | Exception] = []
        for key in keys:
            try:
                out.append(self._decode_one(key))
            except Exception as err:  # noqa: BLE001 - re-raised, in order, by the region that needs it
                out.append(err)
        return out

    def _decode_one(self, key: Key) -> np.ndarray:
        tx, ty, r = key
        if not r:
            return self.source.decode(self.level, tx, ty)
        if self.dct:
            return self.source.decode_scaled(self.level, tx, ty, self.kx)
        scratch = getattr(self._scratch, "tile", None)
        if scratch is None:
            scratch = self._scratch.tile = np.empty(self._scratch_shape, np.uint8)
        tile = self.source.decode(self.level, tx, ty, rgbx=self._rgbx, out=scratch)
        return block_mean(tile, self.kx, self.ky, rgbx=tile.shape[2] == 4)

    def region(self, i: int, decoded: list[tuple[Future, int]]) -> np.ndarray:
        """Region ``i`` cut out of its decoded file tiles (reduced regions at the reduced scale)."""
        r = bool(self.reduced[i])
        fx, fy = (self.kx, self.ky) if r else (1, 1)
        x, y, rw, rh = int(self.xy[i, 0]) // fx, int(self.xy[i, 1]) // fy, self.w // fx, self.h // fy
        sw, sh = self.tw // fx, self.th // fy
        a, b = int(self.tx0[i]), int(self.ty0[i])
        inside = bool(self.inside[i])
        ox, oy = x - a * sw, y - b * sh  # the region's origin in its first file tile (negative: outside)
        if inside and len(decoded) == 1:  # inside one file tile: a view of it
            return _tile_of(decoded[0])[oy : oy + rh, ox : ox + rw]
        # a region inside the level is cut the same way as every other at the same offset in its first file
        # tile (a regular grid has a handful of offsets): its slices are made once
        pieces = self._pieces.get((r, ox, oy)) if inside else None
        if pieces is None:
            pieces = _pieces(ox, oy, rw, rh, sw, sh, self.lw // fx - a * sw, self.lh // fy - b * sh)
            if inside:
                self._pieces[(r, ox, oy)] = pieces
        # outside the level the region is white
        out = np.empty((rh, rw, 3), np.uint8) if inside else np.full((rh, rw, 3), 255, np.uint8)
        for k, dst, src in pieces:
            out[dst] = _tile_of(decoded[k])[src]
        return out


def _pieces(
    x: int, y: int, rw: int, rh: int, sw: int, sh: int, bw: int, bh: int
) -> list[tuple[int, tuple[slice, slice], tuple[slice, slice]]]:
    """How to cut a ``rw x rh`` region at ``(x, y)`` from ``sw x sh`` tiles laid out from the origin (the
    part inside ``[0, bw) x [0, bh)``): per tile touched, row by row, its index in that order, the
    region's slices and the tile's."""
    pieces: list[tuple[int, tuple[slice, slice], tuple[slice, slice]]] = []
    if x >= bw or y >= bh or x + rw <= 0 or y + rh <= 0:  # misses the level: no file tile
        return pieces
    k = 0
    for ty in range(max(y, 0) // sh, (min(y + rh, bh) - 1) // sh + 1):
        sy0, sy1 = max(y, ty * sh), min(y + rh, (ty + 1) * sh, bh)
        for tx in range(max(x, 0) // sw, (min(x + rw, bw) - 1) // sw + 1):
            sx0, sx1 = max(x, tx * sw), min(x + rw, (tx + 1) * sw, bw)
            dst = (slice(sy0 - y, sy1 - y), slice(sx0 - x, sx1 - x))
            pieces.append(
                (k, dst, (slice(sy0 - ty * sh, sy1 - ty * sh), slice(sx0 - tx * sw, sx1 - tx * sw)))
            )
            k += 1
    return pieces


def _tile_of(ref: tuple[Future, int]) -> np.ndarray:
    got = ref[0].result()[ref[1]]
    if isinstance(got, Exception):
        raise got
    return got


class _Held:
    """Decoded file tiles still awaited by a later region, oldest first: each submitted for decoding once,
    in the order regions first need it, and held until its last planned use; past ``budget`` bytes the
    oldest is dropped and decoded again when next needed."""

    def __init__(self, plan: _Plan, submit: Callable[..., Future], budget: int) -> None:
        self.plan, self.submit, self.budget = plan, submit, budget
        self.nbytes = plan.tw * plan.th * 3
        self.uses = dict(plan.uses)
        self.held: OrderedDict[Key, tuple[Future, int]] = OrderedDict()

    def group(self, start: int, stop: int) -> list[tuple[int, list[tuple[Future, int]]]]:
        """Regions ``start..stop``, each with references to its file tiles, their decodes submitted."""
        held, keys_of = self.held, self.plan.keys_of
        new = list(dict.fromkeys(key for i in range(start, stop) for key in keys_of[i] if key not in held))
        if new:
            chunk = self.submit(self.plan.decode, new)
            for pos, key in enumerate(new):
                held[key] = (chunk, pos)
        group = []
        for i in range(start, stop):
            refs = []
            for key in keys_of[i]:
                ref = held.get(key)
                if ref is None:  # dropped over budget: decoded again
                    ref = held[key] = (self.submit(self.plan.decode, [key]), 0)
                refs.append(ref)
                self.uses[key] -= 1
                if self.uses[key] == 0:
                    del held[key]
            group.append((i, refs))
        while len(held) * self.nbytes > self.budget and len(held) > 1:
            held.popitem(last=False)
        return group
