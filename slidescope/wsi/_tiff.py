"""Direct decoding of a tiled TIFF's own tiles: the fast path under the tile streamer.

For TIFF-based slides (SVS, generic tiled TIFF, OME-TIFF, QPTIFF, Philips TIFF...) a region can be
assembled from the file's tiles with tifffile's decoder (libjpeg-turbo through imagecodecs, the same
decoder OpenSlide uses), skipping the slide library's per-call overhead. Decoded tiles are kept in a
small LRU cache, so when a tile grid does not line up with the file's tiles each file tile is still
decoded about once. On CMU-1-Small-Region the pixels are identical to OpenSlide's
(tests/wsi/test_tiles.py checks equality on every supported test slide).

A level is served only when tifffile finds a page with exactly that level's dimensions, tiled,
contiguous 8-bit RGB. Anything else (NDPI strips, MRXS, DICOM, odd photometrics) returns ``None``
from :meth:`TiffTileSource.open` or :meth:`TiffTileSource.has_level` and the caller uses the slide's
backend instead.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import SlideReadError

log = logging.getLogger(__name__)

#: bytes of decoded tiles kept per open slide (per worker process)
DEFAULT_CACHE_BYTES = 96 * 2**20


class _Level:
    def __init__(self, page) -> None:  # tifffile.TiffPage
        self.page = page
        self.width = int(page.imagewidth)
        self.height = int(page.imagelength)
        self.tw = int(page.tilewidth)
        self.th = int(page.tilelength)
        self.ntx = -(-self.width // self.tw)
        self.nty = -(-self.height // self.th)
        self.offsets = page.dataoffsets
        self.counts = page.databytecounts
        self.decode = page.decode
        self.jpegtables = page.jpegtables


class TiffTileSource:
    """Reads regions of a tiled TIFF pyramid by decoding its tiles directly."""

    def __init__(self, tif, levels: dict[int, _Level], cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._tif = tif
        self._fh = tif.filehandle
        self._levels = levels
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = cache_bytes
        self.path = Path(tif.filehandle.path)

    @classmethod
    def open(cls, path: Path, level_dimensions: tuple[tuple[int, int], ...]) -> TiffTileSource | None:
        """Map the slide's levels to tifffile pages; None if the file is not a usable tiled TIFF."""
        try:
            import tifffile

            tif = tifffile.TiffFile(str(path))
        except Exception as err:  # not a TIFF (MRXS, DICOM...) or unreadable: no fast path
            log.debug("no direct TIFF access for %s: %s", path, err)
            return None
        pages: list = []
        try:
            for series in tif.series:
                for lvl in series.levels:
                    pages.append(lvl.keyframe)
        except Exception as err:  # malformed series metadata: stay on the backend
            log.debug("tifffile could not list the levels of %s: %s", path, err)
        levels: dict[int, _Level] = {}
        for index, (w, h) in enumerate(level_dimensions):
            for page in pages:
                if (
                    int(page.imagewidth) == w
                    and int(page.imagelength) == h
                    and page.is_tiled
                    and page.bitspersample == 8
                    and page.samplesperpixel == 3
                    and page.planarconfig == 1  # contiguous
                    and int(page.imagedepth) == 1
                    and page.photometric in (2, 6)  # RGB, YCbCr (JPEG decodes to RGB)
                    and (page.photometric == 2 or page.compression in (7, 33003, 33005))
                    and len(page.dataoffsets) > 0
                ):
                    levels[index] = _Level(page)
                    break
        if not levels:
            tif.close()
            return None
        return cls(tif, levels)

    def has_level(self, level: int) -> bool:
        return level in self._levels

    def tile_shape(self, level: int) -> tuple[int, int]:
        """(tile width, tile height) of the file's own tiles at this level."""
        lv = self._levels[level]
        return lv.tw, lv.th

    def _tile(self, level: int, tx: int, ty: int) -> np.ndarray:
        key = (level, tx, ty)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        lv = self._levels[level]
        index = ty * lv.ntx + tx
        offset, count = int(lv.offsets[index]), int(lv.counts[index])
        if count == 0:  # sparse file: a missing tile is empty glass
            tile = np.full((lv.th, lv.tw, 3), 255, np.uint8)
        else:
            self._fh.seek(offset)
            data = self._fh.read(count)
            try:
                decoded = lv.decode(data, index, jpegtables=lv.jpegtables)[0]
            except Exception as err:  # imagecodecs raises codec-specific error types
                raise SlideReadError(
                    f"file tile ({tx}, {ty}) of level {level} does not decode ({type(err).__name__}: {err})"
                ) from err
            if decoded is None:
                raise SlideReadError(f"file tile ({tx}, {ty}) of level {level} is empty or truncated")
            tile = np.asarray(decoded).reshape(lv.th, lv.tw, -1)[..., :3]
        self._cache[key] = tile
        self._cache_bytes += tile.nbytes
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes
        return tile

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB ``(h, w, 3)`` at level pixel coordinates; must lie inside the level."""
        lv = self._levels[level]
        if x < 0 or y < 0 or x + w > lv.width or y + h > lv.height:
            raise ValueError("region outside the level")  # internal contract; Slide clips first
        tx0, ty0 = x // lv.tw, y // lv.th
        tx1, ty1 = (x + w - 1) // lv.tw, (y + h - 1) // lv.th
        if tx0 == tx1 and ty0 == ty1:  # inside one file tile: a view, no copy
            tile = self._tile(level, tx0, ty0)
            ox, oy = x - tx0 * lv.tw, y - ty0 * lv.th
            return tile[oy : oy + h, ox : ox + w]
        out = np.empty((h, w, 3), np.uint8)
        for ty in range(ty0, ty1 + 1):
            sy0 = max(y, ty * lv.th)
            sy1 = min(y + h, (ty + 1) * lv.th)
            for tx in range(tx0, tx1 + 1):
                sx0 = max(x, tx * lv.tw)
                sx1 = min(x + w, (tx + 1) * lv.tw)
                tile = self._tile(level, tx, ty)
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[
                    sy0 - ty * lv.th : sy1 - ty * lv.th, sx0 - tx * lv.tw : sx1 - tx * lv.tw
                ]
        return out

    def close(self) -> None:
        self._cache.clear()
        self._tif.close()
