"""Zeiss CZI test files written with pylibCZIrw's own writer (Zeiss's libCZI).

pylibCZIrw writes layer-0 subblocks only. A pyramid layer is written as an ordinary subblock holding the
downsampled image and then marked as a pyramid subblock the way ZEN stores one: its directory entry (in
the file's subblock directory and in the subblock's own header) gets a logical X/Y ``Size`` of ``factor``
times its ``StoredSize`` (the CZI format's ``DimensionEntryDV``: dimension name, start, size, start
coordinate, stored size). libCZI then reports the subblock's zoom as 1/factor and serves it for zoomed
reads; the tests check that libCZI (and fastslide's own CZI reader) return the written layer's pixels.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

#: bytes from a directory entry's "DV" to its DimensionCount, and the size of one DimensionEntryDV
_DIM_COUNT_AT, _DIM_ENTRY = 28, 20


def _mark_pyramid(path: Path, stored_sizes: dict[tuple[int, int], int]) -> int:
    """Give the subblocks stored at (w, h) a logical size ``factor`` times larger; returns entries patched."""
    data = bytearray(path.read_bytes())
    patched, i = 0, 0
    while (i := data.find(b"DV", i)) >= 0:
        if i + _DIM_COUNT_AT + 4 > len(data):
            break
        count = struct.unpack_from("<i", data, i + _DIM_COUNT_AT)[0]
        entries = {}
        if 1 <= count <= 16:
            for k in range(count):
                at = i + _DIM_COUNT_AT + 4 + _DIM_ENTRY * k
                name = bytes(data[at : at + 4]).rstrip(b"\0")
                _start, size, _coord, stored = struct.unpack_from("<iifi", data, at + 4)
                entries[name] = (at, size, stored)
        key = (entries[b"X"][1], entries[b"Y"][1]) if b"X" in entries and b"Y" in entries else None
        if key in stored_sizes and entries[b"X"][2] == key[0]:
            for dim in (b"X", b"Y"):
                at, size, _stored = entries[dim]
                struct.pack_into("<i", data, at + 8, size * stored_sizes[key])
            patched += 1
        i += 2
    path.write_bytes(bytes(data))
    return patched


def box_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Area average over factor x factor blocks (the image's size must be a multiple of factor)."""
    h, w = image.shape[:2]
    blocks = image.reshape(h // factor, factor, w // factor, factor, 3).astype(np.float64)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def write_czi(
    path: Path,
    rgb: np.ndarray,
    mpp: float,
    factors: tuple[int, ...] = (),
    scenes: tuple[np.ndarray, ...] = (),
) -> list[np.ndarray]:
    """Write ``rgb`` as scene 0 of a CZI (Bgr24) with pyramid layers at ``factors``, and further scenes
    beside it; returns the pixels of each level of scene 0 (RGB)."""
    from pylibCZIrw import czi

    levels = [rgb] + [box_mean(rgb, f) for f in factors]
    with czi.create_czi(str(path), exist_ok=True) as writer:
        for level in levels:  # BGR in memory, as libCZI's Bgr24
            writer.write(np.ascontiguousarray(level[..., ::-1]), location=(0, 0), scene=0)
        x = rgb.shape[1] + 100
        for index, extra in enumerate(scenes, start=1):
            writer.write(np.ascontiguousarray(extra[..., ::-1]), location=(x, 50), scene=index)
            x += extra.shape[1] + 100
        writer.write_metadata(document_name=path.stem, scale_x=mpp * 1e-6, scale_y=mpp * 1e-6)
    if factors:
        sizes = {(lv.shape[1], lv.shape[0]): f for lv, f in zip(levels[1:], factors, strict=True)}
        assert _mark_pyramid(path, sizes) == 2 * len(factors)  # directory entry + subblock header each
    return levels
