"""Writing a synthetic slide as an Aperio-SVS-style pyramidal TIFF (JPEG tiles, YCbCr 4:2:0).

Level 0 is rendered in chunks of one tile row by up to 2048 pixels, on a small thread pool that also
JPEG-encodes the tiles, and streamed to :class:`tifffile.TiffWriter`; the lower levels are 4x box
downsamples accumulated while level 0 streams (the 4x-reduced level lives in memory, or in a temporary
file next to the output when it would exceed 512 MiB). Then come the thumbnail, label and macro images
that OpenSlide and tiffslide list as associated images.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile

from ..errors import InvalidParameterError
from ._noise import scalar_key
from ._render import Renderer

_CHUNK_WIDTH = 2048  # level-0 pixels per render chunk (rounded to whole tiles)
_LEVEL_FACTOR = 4  # downsample between pyramid levels
_AUTO_MIN_SIDE = 1000  # n_levels=None: add levels while the smallest side is above this
_THUMB_MAX_SIDE = 768
_MEMMAP_THRESHOLD = 512 * 2**20  # bytes of the 4x-reduced level above which it goes to a temp file
_MAX_WORKERS = 4

_SOFTWARE = "slidescope synthetic"
_HEADER = "Aperio Image Library v12.0.15 (slidescope synthetic H&E)"


@dataclass(frozen=True)
class PyramidSpec:
    """How to write the slide: level sizes, tiling and what the TIFF says about it."""

    dims: list[tuple[int, int]]  # (width, height) of every level, level 0 first
    tile: int
    quality: int  # JPEG quality of the tiles
    mpp: float
    seed: int
    has_tumour: bool
    background: tuple[int, int, int]
    mask_mpp: float


def level_dims(width: int, height: int, n_levels: int | None) -> list[tuple[int, int]]:
    """(width, height) of every pyramid level, each 4x smaller; ``None``: while the smallest side > 1000."""
    dims = [(width, height)]
    if n_levels is None:
        while min(dims[-1]) > _AUTO_MIN_SIDE:
            w, h = dims[-1]
            dims.append((-(-w // _LEVEL_FACTOR), -(-h // _LEVEL_FACTOR)))
        return dims
    for _ in range(n_levels - 1):
        w, h = dims[-1]
        if w == 1 and h == 1:
            raise InvalidParameterError(
                f"n_levels={n_levels} is too many for a {width} x {height} slide: level {len(dims) - 1} is "
                f"already 1 x 1 px. Use at most {len(dims)} levels, or n_levels=None for the default."
            )
        dims.append((-(-w // _LEVEL_FACTOR), -(-h // _LEVEL_FACTOR)))
    return dims


def write_pyramid(path: Path, renderer: Renderer, spec: PyramidSpec) -> None:
    """Render the slide with ``renderer`` and write every level and associated image to ``path``."""
    width, height = spec.dims[0]
    tile = spec.tile
    n_ty, n_tx = -(-height // tile), -(-width // tile)
    k = _LEVEL_FACTOR
    # The 4x-reduced image, filled while level 0 streams (padded to whole level-0 tiles). It is level 1
    # of the pyramid, and the source of the thumbnail even for a one-level slide. In memory, or in a
    # temporary file beside the output when large.
    shape1 = (n_ty * tile // k, n_tx * tile // k, 3)
    with contextlib.ExitStack() as stack:
        if math.prod(shape1) > _MEMMAP_THRESHOLD:
            tmpfile = stack.enter_context(
                tempfile.TemporaryFile(dir=path.parent, prefix=".synthetic-", suffix=".raw")
            )
            level1: np.ndarray = np.memmap(tmpfile, dtype=np.uint8, mode="w+", shape=shape1)
        else:
            level1 = np.empty(shape1, np.uint8)
        _write_levels(path, renderer, spec, level1)


def _write_levels(path: Path, renderer: Renderer, spec: PyramidSpec, level1: np.ndarray) -> None:
    """The TIFF pages in order: level 0, thumbnail, lower levels, label, macro."""
    width, height = spec.dims[0]
    tile, quality, mpp = spec.tile, spec.quality, spec.mpp
    workers = max(1, min(_MAX_WORKERS, os.cpu_count() or 1))
    bigtiff = width * height * 3 > 2**31
    extra = (
        f"|Synthetic Seed = {spec.seed}|Synthetic Tumour = {int(spec.has_tumour)}"
        f"|Synthetic Mask MPP = {spec.mask_mpp!r}"
    )
    common: dict[str, Any] = {
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "metadata": None,
        "software": _SOFTWARE,
        "resolutionunit": "CENTIMETER",
    }
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw, ThreadPoolExecutor(workers) as ex:
        tw.write(
            data=_level0_tiles(ex, renderer, spec, level1, workers),
            shape=(height, width, 3),
            dtype=np.uint8,
            tile=(tile, tile),
            description=_aperio_description(width, height, tile, quality, mpp, extra),
            resolution=(1e4 / mpp, 1e4 / mpp),
            **common,
        )
        reduced, thumb = _reduce(level1, spec.dims)
        tw.write(
            thumb,
            description=_aperio_description(
                width, height, tile, quality, mpp, level_dims=(thumb.shape[1], thumb.shape[0])
            ),
            rowsperstrip=16,
            **{**common, "compressionargs": {"level": 90}},
            resolution=(1e4 / mpp * thumb.shape[1] / width,) * 2,
        )
        for img, dims_l in zip(reduced, spec.dims[1:], strict=False):
            ds = width / dims_l[0]
            tw.write(
                data=_level_tiles(ex, img, dims_l, tile, quality, workers),
                shape=(dims_l[1], dims_l[0], 3),
                dtype=np.uint8,
                tile=(tile, tile),
                description=_aperio_description(width, height, tile, quality, mpp, level_dims=dims_l),
                resolution=(1e4 / (mpp * ds),) * 2,
                **common,
            )
        _write_label_and_macro(tw, spec, thumb)


def _level0_tiles(
    executor: ThreadPoolExecutor, renderer: Renderer, spec: PyramidSpec, level1: np.ndarray, workers: int
) -> Iterator[bytes]:
    """Level-0 JPEG tiles in TIFF order, rendered in chunks; fills ``level1`` with their 4x reductions."""
    width, height = spec.dims[0]
    tile, quality = spec.tile, spec.quality
    n_ty, n_tx = -(-height // tile), -(-width // tile)
    group = max(1, _CHUNK_WIDTH // tile)
    k = _LEVEL_FACTOR
    glass_cache: dict[tuple[int, int, int, int], tuple[list[bytes], np.ndarray]] = {}

    def chunk_task(ty: int, tx0: int, ntiles: int) -> tuple[list[bytes], np.ndarray]:
        y0, x0, w = ty * tile, tx0 * tile, ntiles * tile
        glass = renderer.is_glass(y0, x0, tile, w)
        if glass:  # empty glass repeats with the grain texture: encode each phase once
            hit = glass_cache.get(renderer.glass_key(y0, x0, tile, w))
            if hit is not None:
                return hit
        img = renderer.render(y0, x0, tile, w)
        result = (
            [_encode(img[:, t * tile : (t + 1) * tile], quality) for t in range(ntiles)],
            _downsample(img),
        )
        if glass:
            glass_cache[renderer.glass_key(y0, x0, tile, w)] = result
        return result

    tasks = [(ty, tx0, min(group, n_tx - tx0)) for ty in range(n_ty) for tx0 in range(0, n_tx, group)]
    results = _ordered_map(executor, chunk_task, tasks, window=2 * workers)
    for (ty, tx0, _), (tiles, small) in zip(tasks, results, strict=True):
        r0, c0 = ty * tile // k, tx0 * tile // k
        level1[r0 : r0 + small.shape[0], c0 : c0 + small.shape[1]] = small
        yield from tiles


def _level_tiles(
    executor: ThreadPoolExecutor,
    img: np.ndarray,
    dims_l: tuple[int, int],
    tile: int,
    quality: int,
    workers: int,
) -> Iterator[bytes]:
    """JPEG tiles of a lower level held in ``img`` (edge-padded to whole tiles), in TIFF order."""
    wl, hl = dims_l
    ny, nx = -(-hl // tile), -(-wl // tile)

    def one(ty: int, tx: int) -> bytes:
        t = img[ty * tile : (ty + 1) * tile, tx * tile : (tx + 1) * tile]
        if t.shape[0] < tile or t.shape[1] < tile:
            t = np.pad(t, ((0, tile - t.shape[0]), (0, tile - t.shape[1]), (0, 0)), mode="edge")
        return _encode(t, quality)

    tasks = [(ty, tx) for ty in range(ny) for tx in range(nx)]
    yield from _ordered_map(executor, one, tasks, window=8 * workers)


def _reduce(level1: np.ndarray, dims: list[tuple[int, int]]) -> tuple[list[np.ndarray], np.ndarray]:
    """The images of levels 1, 2... (from the 4x-reduced ``level1``) and the thumbnail.

    Reduces further than the last level when needed, so the thumbnail comes from an image at most 4x
    its size.
    """
    width, height = dims[0]
    k = _LEVEL_FACTOR
    reduced = [level1]
    reduced_dims = [(-(-width // k), -(-height // k))]
    while len(reduced) < len(dims) - 1 or max(reduced_dims[-1]) > 4 * _THUMB_MAX_SIDE:
        reduced.append(_downsample(reduced[-1]))
        w_l, h_l = reduced_dims[-1]
        reduced_dims.append((-(-w_l // k), -(-h_l // k)))
    src_w, src_h = reduced_dims[-1]
    thumb_src = np.ascontiguousarray(reduced[-1][:src_h, :src_w])
    return reduced, _thumbnail(thumb_src)


def _write_label_and_macro(tw: tifffile.TiffWriter, spec: PyramidSpec, thumb: np.ndarray) -> None:
    """The label (LZW) and macro (JPEG) pages, flagged as associated images by their subfile types."""
    label = _label_image(spec.seed, spec.has_tumour)
    tw.write(
        label,
        description=f"{_HEADER}\r\nlabel {label.shape[1]}x{label.shape[0]}",
        photometric="rgb",
        compression="lzw",
        metadata=None,
        software=_SOFTWARE,
        subfiletype=1,
        rowsperstrip=64,
    )
    macro = _macro_image(thumb, label, spec.background)
    tw.write(
        macro,
        description=f"{_HEADER}\r\nmacro {macro.shape[1]}x{macro.shape[0]}",
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": 90},
        metadata=None,
        software=_SOFTWARE,
        subfiletype=9,
        rowsperstrip=16,
    )


# --------------------------------------------------------------------------------------------------
# Pieces


def _encode(tile: np.ndarray, quality: int) -> bytes:
    """One JPEG tile, YCbCr 4:2:0 like Aperio's."""
    return bytes(
        imagecodecs.jpeg8_encode(
            np.ascontiguousarray(tile),
            level=quality,
            colorspace="RGB",
            outcolorspace="YCBCR",
            subsampling=(2, 2),
        )
    )


def _downsample(img: np.ndarray) -> np.ndarray:
    """4 x 4 box mean of an (h, w, 3) uint8 image (edge-padded to multiples of 4), rounded."""
    h, w = img.shape[:2]
    ph, pw = (-h) % _LEVEL_FACTOR, (-w) % _LEVEL_FACTOR
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge")
    k = _LEVEL_FACTOR
    rows = img[0::k].astype(np.uint16)
    for r in range(1, k):
        rows += img[r::k]
    quads = rows.reshape(rows.shape[0], rows.shape[1] // k, k, 3)
    acc = quads[:, :, 0] + quads[:, :, 1]
    for c in range(2, k):
        acc += quads[:, :, c]
    acc += (k * k) // 2
    acc //= k * k
    return acc.astype(np.uint8)


def _ordered_map(executor: ThreadPoolExecutor, fn: Any, items: list[Any], window: int) -> Iterator[Any]:
    """``executor.map`` with at most ``window`` tasks in flight (bounded memory)."""
    pending: deque[Future[Any]] = deque()
    it = iter(items)
    for item in it:
        pending.append(executor.submit(fn, *item))
        if len(pending) >= window:
            break
    while pending:
        yield pending.popleft().result()
        for item in it:
            pending.append(executor.submit(fn, *item))
            break


def _aperio_description(
    width: int,
    height: int,
    tile: int,
    quality: int,
    mpp: float,
    extra: str = "",
    level_dims: tuple[int, int] | None = None,
) -> str:
    mag = 10.0 / mpp
    geometry = f"{width}x{height} [0,0 {width}x{height}] ({tile}x{tile})"
    if level_dims is not None:
        geometry += f" -> {level_dims[0]}x{level_dims[1]}"
    return (
        f"{_HEADER}\r\n{geometry} JPEG/RGB Q={quality}|AppMag = {mag:g}|MPP = {mpp!r}"
        f"|ScanScope ID = SLIDESCOPE-SYNTH{extra}"
    )


def _label_image(seed: int, has_tumour: bool, size: int = 400) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (250, 250, 248))
    draw = ImageDraw.Draw(img)
    lines = ["slidescope", "synthetic H&E", f"seed {seed}", "tumour" if has_tumour else "no tumour"]
    for k, text in enumerate(lines):
        draw.text((24, 24 + 28 * k), text, fill=(20, 20, 20))
    bits = np.unpackbits(np.frombuffer(scalar_key(seed, 0x1ABE1).tobytes(), np.uint8))
    x = 24
    for bit in bits:
        wdt = 3 if bit else 1
        draw.rectangle([x, 220, x + wdt - 1, 360], fill=(0, 0, 0))
        x += wdt + 2
    return np.asarray(img)


def _macro_image(thumb: np.ndarray, label: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image

    mh, mw = 431, 1280
    glass = Image.new("RGB", (mw, mh), tuple(int(0.93 * v) for v in background))
    lab = Image.fromarray(label).resize((mh - 40, mh - 40), Image.Resampling.BILINEAR)
    glass.paste(lab, (20, 20))
    area_w, area_h = mw - mh - 40, mh - 40
    th, tw = thumb.shape[:2]
    scale = min(area_w / tw, area_h / th)
    t = Image.fromarray(thumb).resize(
        (max(1, round(tw * scale)), max(1, round(th * scale))), Image.Resampling.LANCZOS
    )
    glass.paste(t, (mh + 20 + (area_w - t.width) // 2, 20 + (area_h - t.height) // 2))
    return np.asarray(glass)


def _thumbnail(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    scale = min(1.0, _THUMB_MAX_SIDE / max(h, w))
    if scale >= 1.0:
        return np.ascontiguousarray(img)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(size, Image.Resampling.LANCZOS))
