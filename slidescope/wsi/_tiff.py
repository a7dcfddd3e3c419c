"""Direct decoding of a tiled TIFF's own tiles: the fast path under the tile streamer.

For TIFF-based slides (SVS, generic tiled TIFF, OME-TIFF, QPTIFF, Philips TIFF...) a region can be
assembled from the file's tiles with tifffile's decoder (libjpeg-turbo through imagecodecs, the same
decoder OpenSlide uses), skipping the slide library's per-call overhead. :meth:`TiffTileSource.read` (one
region, e.g. ``read_tile``) keeps decoded tiles in a small LRU cache; a whole grid is read through
:mod:`._prefetch`, which plans the decodes so that each file tile is decoded once, in threads
(:meth:`TiffTileSource.decode` is thread-safe). Aperio's JPEG 2000 pages are left to the backend. On
CMU-1-Small-Region the pixels are identical to OpenSlide's and tiffslide's (tests/wsi/test_stream.py and
test_prefetch.py check equality there and on synthetic pyramids at several target mpp).

A level is served only when tifffile finds a page with exactly that level's dimensions, tiled,
contiguous 8-bit RGB, with one offset and byte count per tile and tiles within the decode budget.
Anything else (NDPI strips, MRXS, DICOM, odd photometrics, a page whose tile offsets are missing)
returns ``None`` from :meth:`TiffTileSource.open` or :meth:`TiffTileSource.has_level` and the caller
uses the slide's backend instead.

**The backend has the last word on damaged tiles.** imagecodecs hands libjpeg's warnings to no one:
a tile whose entropy-coded data is cut short or overwritten ("Corrupt JPEG data: premature end of
data segment", which OpenSlide treats as an error) decodes without complaint, the missing part filled
with flat grey. So every JPEG tile is checked for the two traces such damage leaves (choices named in
:func:`jpeg_damage`): a marker other than a restart marker inside the entropy-coded data or a stream
that does not end in EOI, and a last 8x8 block that is exactly the decoder's fill value (128, 128, 128).
A tile that fails a check, or whose decoder raises, is read through the slide's backend instead: if the
backend decodes it, its pixels are used (a false alarm costs one slower read, never a different
answer); if the backend fails too, :class:`~slidescope.errors.SlideReadError` names the tile and level.
Damage that leaves neither trace (a flipped bit inside the Huffman data) decodes to the same wrong
pixels through OpenSlide as here: the fast path never answers differently from the backend.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import SlideReadError
from ._backends import max_decode_bytes

log = logging.getLogger(__name__)

#: bytes of decoded tiles kept per open slide (per worker process)
DEFAULT_CACHE_BYTES = 96 * 2**20

#: TIFF compression codes decoded by libjpeg (JPEG)
_JPEG_CODES = (7,)
#: Aperio's JPEG 2000 (YCbCr, RGB): left to the backend, which converts Aperio's YCbCr codestreams (the
#: direct path took them for JPEG, found no JPEG markers and read every tile through the backend, one by one)
_APERIO_JP2K = (33003, 33005)
#: a marker inside entropy-coded data: 0xFF followed by anything but a stuffed 0x00, a restart
#: marker (0xD0-0xD7) or a fill byte (0xFF)
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
#: what libjpeg puts in the blocks it has no data for: all coefficients zero, i.e. mid-grey
_JPEG_FILL = 128
#: a last 8 x 8 RGB block of nothing but that fill, as bytes (compared faster than an array)
_JPEG_FILL_BLOCK = bytes([_JPEG_FILL]) * (8 * 8 * 3)
#: the whole factors libjpeg's scaled IDCT decodes at (1/2, 1/4, 1/8), with OpenCV's flag for each
_DCT_FLAGS = {2: "IMREAD_REDUCED_COLOR_2", 4: "IMREAD_REDUCED_COLOR_4", 8: "IMREAD_REDUCED_COLOR_8"}
#: an Adobe APP14 segment telling libjpeg the stream's colour transform (0: RGB, 1: YCbCr), put after SOI
#: so that the scaled decode reads the colour space tifffile gives the page (e.g. Aperio's RGB-coded tiles),
#: as imagecodecs is told it for the full decode
_ADOBE = {t: b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00" + bytes([t]) for t in (0, 1)}


def jpeg_damage(data: bytes, remembered: list[bytes] | None = None) -> str | None:
    """The trace of damage in one JPEG tile's bytes before decoding, or None when it looks whole.

    Checks (structure only, no decoding): the stream must start with SOI, reach a start-of-scan
    through well-formed marker segments, and its entropy-coded data must run without any marker
    but restart markers up to a final EOI (zero padding after EOI is allowed). A marker inside the
    data is exactly what makes libjpeg warn "premature end of data segment"; a missing EOI is a
    truncated tile. Progressive JPEG (several scans) is reported too: it is read by the backend.

    ``remembered``: a one-item list holding the header (SOI up to the end of the start-of-scan segment)
    of the last well-formed tile checked with it, updated here: the tiles of one level mostly share their
    header, so a tile that starts with it skips the walk through the marker segments (the checks after
    the header still run). The direct reader keeps one per level.
    """
    end = len(data.rstrip(b"\x00"))
    if end < 4 or data[:2] != b"\xff\xd8":
        return "no JPEG start-of-image marker"
    if data[end - 2 : end] != b"\xff\xd9":
        return "no end-of-image marker (truncated data)"
    header = remembered[0] if remembered else b""
    if header and end >= len(header) + 2 and data.startswith(header):
        i = len(header)
    else:
        i = _walk_header(data, end)
        if i < 0:
            return "malformed JPEG header"
        if remembered is not None:
            remembered[:] = [data[:i]]
    found = _MARKER.search(data, i, end)
    if found is not None and found.start() != end - 2:
        return (
            f"a JPEG marker 0x{data[found.start() + 1]:02x} inside the entropy-coded data "
            "(premature end of data segment)"
        )
    return None


def _walk_header(data: bytes, end: int) -> int:
    """Where the entropy-coded data starts (just past the start-of-scan segment), -1 when the marker
    segments before it are malformed."""
    i = 2
    while True:  # marker segments up to the start of scan
        if i + 4 > end or data[i] != 0xFF:
            return -1
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        i += 2 + length
        if marker == 0xDA:
            return i


#: what follows a refusal of a non-RGB image that may be a brightfield scan stored otherwise
_CONVERT_HINT = (
    "slidescope reads 8-bit RGB brightfield scans (H&E, IHC): SVS, NDPI, MRXS, SCN, BIF, DICOM, Philips TIFF, "
    "RGB OME-TIFF/QPTIFF, tiled TIFF. For a brightfield scan stored otherwise, convert it to 8-bit RGB first "
    "(e.g. `vips colourspace in.tif out.tif srgb` then `vips tiffsave out.tif rgb.tif --tile --pyramid "
    "--compression jpeg`, or QuPath's export as 8-bit RGB)."
)

#: the root element of a PerkinElmer (Akoya) Vectra/Polaris QPTIFF ImageDescription
_QPI_ROOT = "<PerkinElmer-QPI-ImageDescription"


def _xml_texts(xml: str, tag: str) -> list[str]:
    return [m.strip() for m in re.findall(rf"<{tag}>([^<]*)</{tag}>", xml)]


def _qpi_channels(tif) -> tuple[int, list[str]] | None:  # tif: tifffile.TiffFile
    """(channels, names) of a PerkinElmer QPTIFF stored one grey channel per page, else None.

    The channels are the leading pages of the first page's size, as tifffile's own QPI series reads them;
    their XML names the filter (``<Name>``, e.g. DAPI) or, in older files, ``<FilterColors>``/``<ScanProfile>``
    say the image is multispectral. An RGB (brightfield) QPTIFF has 3 samples per page: not refused."""
    first = tif.pages.first
    description = str(first.description or "")
    if _QPI_ROOT not in description or int(first.samplesperpixel) != 1:
        return None
    names: list[str] = []
    count = 0
    for page in tif.pages:
        if page.shape != first.shape:
            break
        count += 1
        names.extend(_xml_texts(str(page.description or ""), "Name")[:1])
    return count, names


def _ome_channels(tif) -> tuple[int, list[str]] | None:
    """(channels, names) of an OME-TIFF whose first image has several channels that are not one RGB channel."""
    if not getattr(tif, "is_ome", False):
        return None
    xml = str(tif.pages.first.description or "")
    image = re.search(r"<(?:\w+:)?Image[ >].*?</(?:\w+:)?Image>", xml, re.S)
    block = image.group(0) if image else xml
    channels = re.findall(r"<(?:\w+:)?Channel\b[^>]*>", block)
    spp = [int(v) for c in channels for v in re.findall(r'SamplesPerPixel="(\d+)"', c)]
    if len(channels) <= 1 or (len(channels) == 1 and spp == [3]):
        return None
    names = [n for c in channels for n in re.findall(r'Name="([^"]*)"', c)]
    return len(channels), names


def fluorescence_refusal(count: int, names: list[str], dtype: object) -> str:
    """The refusal of a multiplex/fluorescence image, after its name: one line, no conversion hint."""
    shown = f": {', '.join(names[:6])}{'...' if len(names) > 6 else ''}" if names else ""
    return (
        f"is a multiplex/fluorescence image ({count} channels{shown}; {dtype} samples): slidescope's encoders "
        f"are for brightfield H&E/IHC scans (8-bit RGB) and fluorescence/multiplex images are not read; analyse "
        f"it with a fluorescence pipeline, or scan the section in brightfield"
    )


def pixel_format_problem(path: Path) -> str | None:
    """Why a TIFF is not 8-bit RGB brightfield (the refusal, after the file name), or None (also for non-TIFFs).

    Read from the main image's first page (tifffile's first series) and its metadata, before any backend
    decodes it: OpenSlide converts 16-bit and grey pages to 8-bit RGB without a word, and tiffslide shows
    the first three channels of a multiplex image as RGB. Refused as **fluorescence/multiplex** (one line,
    no conversion hint): a PerkinElmer QPTIFF with one grey channel per page, an OME-TIFF whose image has
    several channels that are not one RGB channel, any image with more than one grey plane (channels or
    unnamed planes besides Y, X and samples), and contiguous samples beyond RGB plus alpha. Refused as
    not RGB: other samples than 8-bit unsigned integers, and single-sample (greyscale) pages. Palette
    (indexed colour) pages pass: both readers expand them to RGB.
    """
    try:
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            page = series.keyframe
            dtype = np.dtype(page.dtype) if page.dtype is not None else None
            spp = int(page.samplesperpixel)
            photometric = int(page.photometric)
            extra = tuple(int(v) for v in (page.extrasamples or ()))
            axes, shape = str(series.axes), tuple(series.shape)
            tagged = _qpi_channels(tif) or _ome_channels(tif)
    except Exception as err:  # noqa: BLE001 - not a TIFF (MRXS, DICOM...) or unreadable: the backends decide
        log.debug("no TIFF pixel format for %s: %s", path, err)
        return None
    if tagged is not None:
        return fluorescence_refusal(tagged[0], tagged[1], dtype)
    # planes besides the image's own (Y, X, S) axes: channels, or unnamed (Q) planes of a shaped TIFF
    channels = int(np.prod([n for a, n in zip(axes, shape, strict=False) if a not in "YXS"], dtype=np.int64))
    if photometric in (0, 1) and (spp <= 2 or channels > 1):  # MINISWHITE, MINISBLACK
        if channels > 1:
            return fluorescence_refusal(channels, [], dtype)
        return (
            f"is a greyscale image ({dtype} samples, {spp} sample(s) per pixel), not an RGB brightfield scan. "
            + _CONVERT_HINT
        )
    if spp > 3 + sum(1 for v in extra if v in (1, 2)):  # samples beyond RGB and its alpha
        return fluorescence_refusal(spp, [], dtype)
    if dtype is not None and dtype != np.uint8:
        kind = {"f": "floating-point", "u": "unsigned integer", "i": "signed integer"}.get(
            dtype.kind, dtype.kind
        )
        return (
            f"stores {dtype.itemsize * 8}-bit {kind} samples ({dtype}), not 8-bit RGB brightfield "
            f"pixels (it is not corrupt, but not a format slidescope reads). " + _CONVERT_HINT
        )
    return None


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
        self.is_jpeg = int(page.compression) in _JPEG_CODES
        #: the JPEG header of the last well-formed tile of this level (see :func:`jpeg_damage`)
        self.jpeg_header: list[bytes] = [b""]
        if self.is_jpeg:  # the JPEG colour spaces tifffile's own decode uses for this page
            from tifffile.tifffile import jpeg_decode_colorspace

            self.colorspace, self.outcolorspace = jpeg_decode_colorspace(
                page.photometric, page.planarconfig, page.extrasamples, page.is_jfif
            )[:2]
            # what :meth:`TiffTileSource.decode_scaled` puts before a tile's bytes after its SOI: the Adobe marker
            # naming the page's colour space (RGB, YCbCr), then the tables of an abbreviated stream without their
            # SOI and EOI (made once per level, not per tile)
            tables = bytes(self.jpegtables or b"")
            self.scaled_prefix = (
                b"\xff\xd8"
                + (_ADOBE[self.colorspace - 2] if self.colorspace in (2, 3) else b"")
                + (tables[2:-2] if tables.endswith(b"\xff\xd9") else b"")
            )

    def problem(self) -> str | None:
        """Why this level cannot be read directly (None when it can)."""
        n = self.ntx * self.nty
        if len(self.offsets) < n or len(self.counts) < n:
            return f"{len(self.offsets)} tile offsets and {len(self.counts)} byte counts for {n} tiles"
        if self.tw * self.th * 3 > max_decode_bytes():
            return f"{self.tw}x{self.th} px tiles exceed the decode budget"
        return None


class TiffTileSource:
    """Reads regions of a tiled TIFF pyramid by decoding its tiles directly."""

    def __init__(self, tif, levels: dict[int, _Level], cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        #: ``fallback(level, x, y, w, h)`` reads a level region through the slide's backend (RGB uint8,
        #: raising SlideReadError); set by :meth:`Slide.tile_source`. Without it a damaged tile raises.
        self.fallback: Callable[[int, int, int, int, int], np.ndarray] | None = None
        self._tif = tif
        self._fh = tif.filehandle
        self._lock = threading.Lock()
        #: a descriptor of our own for positioned reads from decode threads (None where os.pread is missing)
        self._fd: int | None = os.open(tif.filehandle.path, os.O_RDONLY) if hasattr(os, "pread") else None
        self._close_fd = weakref.finalize(self, os.close, self._fd) if self._fd is not None else None
        self._levels = levels
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_lock = threading.Lock()  # the LRU is shared by threads reading regions at once
        #: bytes of decoded tiles one reader may hold (this LRU cache, or a planned stream's tiles)
        self.cache_limit = cache_bytes
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
                    and (page.photometric == 2 or page.compression in _JPEG_CODES)
                    and int(page.compression) not in _APERIO_JP2K
                    and len(page.dataoffsets) > 0
                ):
                    level = _Level(page)
                    problem = level.problem()
                    if problem is not None:  # e.g. a forged page with fewer offsets than tiles
                        log.warning(
                            "%s: level %d is read through the backend: %s", Path(path).name, index, problem
                        )
                        break
                    levels[index] = level
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

    def level_size(self, level: int) -> tuple[int, int]:
        """(width, height) of the level in pixels."""
        lv = self._levels[level]
        return lv.width, lv.height

    def _tile(self, level: int, tx: int, ty: int) -> np.ndarray:
        """File tile (tx, ty) through the LRU cache. Safe from several threads: the cache is changed under a
        lock, the decode runs outside it (two threads missing the same tile at once both decode it, and
        get the same pixels)."""
        key = (level, tx, ty)
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        tile = self.decode(level, tx, ty)
        with self._cache_lock:
            if key not in self._cache:
                self._cache[key] = tile
                self._cache_bytes += tile.nbytes
            while self._cache_bytes > self.cache_limit and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
        return tile

    def _read_bytes(self, offset: int, count: int) -> bytes:
        """``count`` bytes of the file at ``offset``; safe from several threads (one positioned read each)."""
        if self._fd is not None:
            return os.pread(self._fd, count, offset)
        with self._lock:  # no pread (Windows): the shared handle, one thread at a time
            self._fh.seek(offset)
            return self._fh.read(count)

    def decode(
        self, level: int, tx: int, ty: int, *, rgbx: bool = False, out: np.ndarray | None = None
    ) -> np.ndarray:
        """File tile (tx, ty) of ``level`` decoded, ``(tile height, tile width, 3)`` uint8, uncached.

        ``rgbx``: a JPEG tile comes as ``(h, w, 4)``, the same RGB plus a padding byte (libjpeg-turbo's
        RGBX output, what Pillow holds an RGB image as: no conversion on the way to Pillow); other tiles
        still come as RGB. ``out``: a C-contiguous uint8 scratch array of ``(tile height, tile width, 3)``
        (``4`` with ``rgbx``) that a JPEG tile is decoded into, and the tile returned is then a view of it
        (other tiles ignore it): for a caller that reduces the tile and drops it before its next decode.
        Measured on 40x -> 20x with one decode thread: 0.81x the CPU per grid tile of a new array per file
        tile (median of 6 interleaved passes; likely as the reused array stays in the core's cache); with
        two threads no difference showed. Safe to call from several threads at once: the bytes are read with one
        positioned read and the decoder (libjpeg-turbo through imagecodecs) releases the GIL; a damaged
        tile's backend read is taken one thread at a time."""
        lv = self._levels[level]
        index = ty * lv.ntx + tx
        offset, count = int(lv.offsets[index]), int(lv.counts[index])
        if count == 0:  # sparse file: a missing tile is empty glass
            return np.full((lv.th, lv.tw, 3), 255, np.uint8)
        data = self._read_bytes(offset, count)
        damage = jpeg_damage(data, lv.jpeg_header) if lv.is_jpeg else None
        if damage is None:
            try:
                if lv.is_jpeg:  # what tifffile's decode calls, without its wrapper (3 us of 230 a tile)
                    import imagecodecs

                    decoded = imagecodecs.jpeg_decode(
                        data,
                        bitspersample=8,
                        tables=lv.jpegtables,
                        colorspace=lv.colorspace,
                        outcolorspace="RGBA" if rgbx else lv.outcolorspace,
                        shape=(lv.th, lv.tw),
                        out=out,
                    )
                else:
                    decoded = lv.decode(data, index, jpegtables=lv.jpegtables)[0]
            except Exception as err:  # noqa: BLE001 - imagecodecs raises codec-specific error types
                damage = f"the decoder failed ({type(err).__name__}: {err})"
            else:
                if decoded is None:
                    damage = "no pixel data"
                else:
                    tile = np.asarray(decoded).reshape(lv.th, lv.tw, -1)
                    tile = tile if rgbx and tile.shape[2] == 4 else tile[..., :3]
                    if not (lv.is_jpeg and tile[-8:, -8:, :3].tobytes() == _JPEG_FILL_BLOCK):
                        return tile
                    damage = "its last block is the JPEG decoder's grey fill for missing data"
        with self._lock:
            return self._from_backend(level, tx, ty, damage)

    def can_scale(self, level: int, k: int) -> bool:
        """Whether :meth:`decode_scaled` can decode the tiles of ``level`` at ``1 / k`` in the DCT domain: 8-bit
        3-sample JPEG in a colour space libjpeg is told (JFIF, RGB or YCbCr), tiles a multiple of ``k``."""
        lv = self._levels.get(level)
        return (
            lv is not None
            and lv.is_jpeg
            and k in _DCT_FLAGS
            and lv.tw % k == 0
            and lv.th % k == 0
            and int(lv.page.samplesperpixel) == 3
            and lv.colorspace in (None, 2, 3)
        )

    def decode_scaled(self, level: int, tx: int, ty: int, k: int) -> np.ndarray:
        """File tile (tx, ty) of ``level`` decoded at ``1 / k`` by libjpeg-turbo's scaled IDCT (through
        OpenCV's ``imdecode``, which releases the GIL): ``(th / k, tw / k, 3)`` uint8. Not the exact
        ``k x k`` mean of the full decode (:func:`._resize.block_mean`): the IDCT keeps the ``8 / k``
        lowest frequencies of each 8 x 8 block (bounds measured: README, tests/wsi/test_jpeg_dct.py).
        A tile that shows damage, or that the decoder refuses, is read as :meth:`decode` reads it and
        reduced exactly. Only for levels where :meth:`can_scale` holds."""
        import cv2

        lv = self._levels[level]
        index = ty * lv.ntx + tx
        offset, count = int(lv.offsets[index]), int(lv.counts[index])
        if count == 0:  # sparse file: a missing tile is empty glass
            return np.full((lv.th // k, lv.tw // k, 3), 255, np.uint8)
        data = self._read_bytes(offset, count)
        tile = None
        if jpeg_damage(data, lv.jpeg_header) is None:
            data = lv.scaled_prefix + data[2:]  # SOI, colour space, tables, then the tile's frame and scan
            flags = getattr(cv2, _DCT_FLAGS[k]) | cv2.IMREAD_IGNORE_ORIENTATION
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
            n = 8 // k
            if bgr is not None and bgr.shape == (lv.th // k, lv.tw // k, 3):
                tile = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                if tile[-n:, -n:].tobytes() == _JPEG_FILL_BLOCK[: n * n * 3]:  # the decoder's fill: damage
                    tile = None
        if tile is None:
            from ._resize import block_mean

            return block_mean(self.decode(level, tx, ty), k, k)
        return tile

    def _from_backend(self, level: int, tx: int, ty: int, damage: str) -> np.ndarray:
        """File tile (tx, ty) read through the slide's backend, which decides whether it is corrupt."""
        lv = self._levels[level]
        where = f"file tile ({tx}, {ty}) of level {level} (level px x={tx * lv.tw}, y={ty * lv.th})"
        if self.fallback is None:
            raise SlideReadError(f"{where} is damaged: {damage}")
        x0, y0 = tx * lv.tw, ty * lv.th
        w, h = min(lv.tw, lv.width - x0), min(lv.th, lv.height - y0)
        try:
            part = self.fallback(level, x0, y0, w, h)
        except SlideReadError as err:
            raise SlideReadError(
                f"{where} is damaged ({damage}) and the slide's backend cannot decode it either ({err})"
            ) from err
        log.debug("%s: %s: %s; using the backend's pixels", self.path.name, where, damage)
        tile = np.full((lv.th, lv.tw, 3), 255, np.uint8)
        tile[:h, :w] = part
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
        with self._cache_lock:
            self._cache.clear()
        if self._close_fd is not None:
            self._close_fd()
            self._fd = None
        self._tif.close()
