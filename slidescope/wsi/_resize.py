"""Resizing tiles: true area averaging when shrinking, at any ratio.

Shrinking ``n`` input pixels to ``m`` output pixels, output pixel ``i`` covers the input interval
``[i * n / m, (i + 1) * n / m)`` and is the mean of the input over that interval, each input pixel
weighted by the length of its overlap (per axis; in 2-D the weight of an input pixel is the area of its
overlap with the output pixel's footprint, divided by the footprint's area). This is what OpenCV's
``INTER_AREA`` computes when shrinking (``tests/golden/area_resize.npz`` checks it against OpenCV).

PIL's ``BOX`` filter is *not* this at non-integer ratios: it weights every input pixel whose *centre*
falls in the footprint equally, so at 257 -> 256 px most output pixels are one input pixel copied and
a few are the plain mean of two (at 257 -> 256, up to 127 grey levels from area averaging on CMU-1's
tissue tiles, 6 on average). At integer ratios (448 -> 224) ``BOX`` is a block mean too (off by at most 1
grey level, rounding between its two passes); that case uses :func:`block_mean`, the exact block mean in one
pass (so tilings read at integer ratios keep their cache key and stored embeddings): OpenCV's ``INTER_AREA``
at 2 x 2 (the common 40x -> 20x), Pillow's ``reduce`` at other whole factors. Both compute the rounded mean
``(sum + n // 2) // n`` of each block at 2 x 2, pixel for pixel (tests/wsi/test_edges_resize.py), and
OpenCV does it in SIMD, 4-9x faster; at other factors OpenCV rounds some ties down where Pillow rounds up
(1 grey level), so those stay Pillow's.

Non-integer ratios are computed as two banded matrix products (one per axis) in float32, in blocks of
output rows so that each product only touches the input rows it needs, then rounded to the nearest
integer. Enlarging (no axis shrinks) stays bilinear.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["area_weights", "block_mean", "resize_tile"]

#: output rows per block of the banded products (measured fastest for 224-512 px tiles)
_BLOCK = 16
#: most multiply-adds per matrix product: OpenBLAS (numpy's BLAS) runs a product of more than 65,536 x 4 in
#: several threads of its own, which spin; from the reader's decode threads that oversubscribed the cores
#: (measured on 443 -> 224 px reads, unsplit: 4.7 and 5.6 CPU ms per tile with 1 and 2 decode threads; split:
#: 3.1 and 3.3-3.6). Products are split to stay under it.
_ONE_THREAD_MACS = 65_536 * 4


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """The ``(n_out, n_in)`` float64 matrix of area-averaging weights along one axis (rows sum to 1).

    ``W[i, j]`` is the length of the overlap of input pixel ``[j, j + 1)`` with output pixel ``i``'s
    footprint ``[i * s, (i + 1) * s)``, ``s = n_in / n_out``, divided by ``s``.
    """
    s = n_in / n_out
    a = np.arange(n_out, dtype=np.float64)[:, None] * s
    j = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(a + s, j + 1) - np.maximum(a, j), 0.0, None)
    return overlap / s


@functools.lru_cache(maxsize=64)
def _bands(n_in: int, n_out: int) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """``(r0, r1, j0, j1, W[r0:r1, j0:j1])`` for each block of output rows: the non-zero band of the weights."""
    w = area_weights(n_in, n_out).astype(np.float32)
    bands = []
    for r0 in range(0, n_out, _BLOCK):
        r1 = min(r0 + _BLOCK, n_out)
        cols = np.flatnonzero(w[r0:r1].any(axis=0))
        j0, j1 = int(cols[0]), int(cols[-1]) + 1
        bands.append((r0, r1, j0, j1, np.ascontiguousarray(w[r0:r1, j0:j1])))
    return tuple(bands)


def _area_axis0(x: np.ndarray, n_out: int) -> np.ndarray:
    """Area-average the rows of the 2-D float32 ``x`` (n_in, k) down to ``(n_out, k)``."""
    out = np.empty((n_out, x.shape[1]), np.float32)
    for r0, r1, j0, j1, w in _bands(x.shape[0], n_out):
        step = max(1, _ONE_THREAD_MACS // w.size)  # columns per product
        for k0 in range(0, x.shape[1], step):
            np.matmul(w, x[j0:j1, k0 : k0 + step], out=out[r0:r1, k0 : k0 + step])
    return out


@functools.lru_cache(maxsize=64)
def _spread_bands(n_in: int, n_out: int, c: int) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """:func:`_bands` with each band's weights spread over ``c`` interleaved channels: ``kron(W.T, I_c)``,
    ``(j1 - j0) * c`` rows by ``(r1 - r0) * c`` columns."""
    eye = np.eye(c, dtype=np.float32)
    return tuple((r0, r1, j0, j1, np.kron(w.T, eye)) for r0, r1, j0, j1, w in _bands(n_in, n_out))


def _area_axis1(x: np.ndarray, n_out: int, c: int) -> np.ndarray:
    """Area-average the pixels along the rows of the 2-D float32 ``x`` (k, n_in * c), ``c`` channels
    interleaved, down to ``(k, n_out * c)``. The products with the spread weights need no transpose of the
    pixels (that strided copy was 60 % of a 443 -> 224 px resize)."""
    out = np.empty((x.shape[0], n_out * c), np.float32)
    for r0, r1, j0, j1, w in _spread_bands(x.shape[1] // c, n_out, c):
        step = max(1, _ONE_THREAD_MACS // w.size)  # rows per product
        for k0 in range(0, x.shape[0], step):
            np.matmul(x[k0 : k0 + step, j0 * c : j1 * c], w, out=out[k0 : k0 + step, r0 * c : r1 * c])
    return out


def _area_resize(tile: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-averaged ``(height, width, c)`` uint8 of the ``(h, w, c)`` uint8 ``tile``, any ratio."""
    h, w, c = tile.shape
    rows = _area_axis0(tile.reshape(h, w * c).astype(np.float32), height)  # (height, w*c)
    out = _area_axis1(rows, width, c).reshape(height, width, c)
    return np.rint(out).astype(np.uint8)  # weights sum to 1: the values stay within 0..255


def block_mean(tile: np.ndarray, kx: int, ky: int, *, rgbx: bool = False) -> np.ndarray:
    """The rounded mean of each ``kx x ky`` block of the uint8 ``tile``, ``(h // ky, w // kx[, c])``.

    ``tile`` is ``(h, w)`` grey or ``(h, w, c)``; ``h`` and ``w`` are multiples of the factors. ``rgbx``:
    ``tile`` is ``(h, w, 4)`` RGBX (libjpeg-turbo's RGBX output, taken by Pillow as it is) and the result is
    RGB, the padding byte dropped; otherwise every channel is kept. 2 x 2 is
    OpenCV's ``INTER_AREA`` (same pixels as Pillow's ``reduce``, in SIMD; outputs of up to 256 x 256 px
    run in the calling thread, larger ones in OpenCV's own thread pool), other factors Pillow's ``reduce``.
    """
    h, w = tile.shape[:2]
    rgbx = rgbx and tile.ndim == 3 and tile.shape[2] == 4
    if (kx, ky) == (2, 2):
        import cv2

        out = cv2.resize(tile, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(out[..., :3]) if rgbx else out
    from PIL import Image

    if rgbx:
        img = Image.frombuffer("RGBX", (w, h), np.ascontiguousarray(tile), "raw", "RGBX", 0, 1).reduce(
            (kx, ky)
        )
        return np.frombuffer(img.tobytes("raw", "RGB"), np.uint8).reshape(img.height, img.width, 3)
    return np.asarray(Image.fromarray(np.ascontiguousarray(tile)).reduce((kx, ky)))


def resize_tile(tile: np.ndarray, width: int, height: int | None = None) -> np.ndarray:
    """``tile`` (h, w, 3) uint8 resized to ``(height, width, 3)``: area averaging when shrinking.

    Unchanged when the size already matches; :func:`block_mean` (the exact rounded block mean) when both
    axes shrink by whole factors; the banded area average (:func:`area_weights`) when any axis shrinks by another
    ratio; PIL bilinear when no axis shrinks.
    """
    height = width if height is None else height
    h, w = tile.shape[:2]
    if (h, w) == (height, width):
        return tile
    from PIL import Image

    if h >= height and w >= width and h % height == 0 and w % width == 0:
        return block_mean(tile, w // width, h // height)
    if h > height or w > width:
        flat = tile.ndim == 2
        out = _area_resize(tile[:, :, None] if flat else tile, width, height)
        return out[:, :, 0] if flat else out
    img = Image.fromarray(np.ascontiguousarray(tile))
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR))
