"""Builders of damaged and hostile slide files, shared by the reader-fault tests and the bad-input table.

Each returns a file written in the test's own temporary folder; nothing here is a stored fixture."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SLIDE = REPO / "sample_data" / "sample_slide.tiff"  # 4096x3072 JPEG-tiled pyramid, 2 levels, 0.5 µm/px


def tile_bytes_location(path: Path, page: int, tx: int, ty: int) -> tuple[int, int]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pg = tif.pages[page]
        ntx = -(-pg.imagewidth // pg.tilewidth)
        k = ty * ntx + tx
        return int(pg.dataoffsets[k]), int(pg.databytecounts[k])


def corrupt_tile(path: Path, tx: int, ty: int, how: str) -> None:
    """Damage level-0 file tile (tx, ty) in place, keeping every offset and byte count.

    ``eoi``: an end-of-image marker in the middle of the entropy-coded data (what a torn write or
    bad sector leaves). ``zeros``: a run of zero bytes over the second half of the data (a hole from
    a partial copy). Both make libjpeg stop with "premature end of data segment"."""
    offset, count = tile_bytes_location(path, 0, tx, ty)
    data = bytearray(path.read_bytes())
    tile = bytes(data[offset : offset + count])
    sos = tile.find(b"\xff\xda")
    assert sos > 0
    mid = offset + sos + (count - sos) // 2
    if how == "eoi":
        data[mid : mid + 2] = b"\xff\xd9"
    else:
        data[mid : offset + count - 2] = bytes(offset + count - 2 - mid)
    path.write_bytes(bytes(data))


def forged_bomb(path: Path, width: int, height: int) -> Path:
    """A single-strip deflate TIFF of 64x64 zeros whose header then declares ``width`` x ``height``."""
    import tifffile

    tifffile.imwrite(
        path,
        np.zeros((64, 64, 3), np.uint8),
        photometric="rgb",
        compression="zlib",
        rowsperstrip=64,
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        for code, value in ((256, width), (257, height), (278, height)):
            tag = tags[code]
            fmt = "<H" if tag.dtype == 3 else "<I"
            data[tag.valueoffset : tag.valueoffset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
    return path


def forged_offsets(path: Path, keep: int) -> Path:
    """The sample slide with its level-0 TileOffsets/TileByteCounts cut to ``keep`` entries."""
    import tifffile

    shutil.copy(SAMPLE_SLIDE, path)
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        for code in (324, 325):
            tag = tif.pages[0].tags[code]
            data[tag.offset + 4 : tag.offset + 8] = struct.pack("<I", keep)
    path.write_bytes(bytes(data))
    return path


def write_tiff(path: Path, data: np.ndarray, **kw) -> Path:
    """A tiled TIFF of ``data`` at 0.5 µm/px (resolution tags), extra tifffile keywords passed on."""
    import tifffile

    tifffile.imwrite(
        path, data, tile=(256, 256), resolution=(20000, 20000), resolutionunit="CENTIMETER", **kw
    )
    return path
