"""Decoding JPEG tiles at 1/2 (libjpeg's DCT-domain scaling) against the full decode + exact 2 x 2 mean. Measured.

For each file tile of level 0 (up to ``--tiles`` spread over the level), in the same process, one thread:

* **exact** (``downscale="area"``, the default): the full decode (imagecodecs, libjpeg-turbo, the colour space
  tifffile gives) and the rounded mean of each 2 x 2 block (OpenCV's ``INTER_AREA``, :func:`block_mean`);
* **jpeg-dct** (``downscale="jpeg-dct"``): :meth:`TiffTileSource.decode_scaled`, libjpeg-turbo decoding the
  tile at half size from its DCT coefficients through OpenCV's ``imdecode`` (the TIFF's JPEG tables spliced
  in, its colour space told by an Adobe marker, e.g. RGB-coded Aperio tiles);
* **Pillow draft**: the same scaled decode through Pillow's ``draft`` (the route tried in an earlier
  release, which its per-tile overhead made no faster).

Printed per slide: ms per tile of each, and the pixel difference of jpeg-dct against the exact half (max,
99.9th percentile, mean, grey levels). The default slides are CMU-1-Small-Region (real Aperio, RGB-coded
JPEG tiles of 240 px) and bench_wsi.py's synthetic 12k x 9k 40x slide (JFIF JPEG tiles of 256 px).

    uv run --locked python benchmarks/bench_jpeg_dct.py [--tiles 300] [SLIDE ...]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: libjpeg's colour space (tifffile's ``jpeg_decode_colorspace``) -> Pillow's name for it
_JPEG_MODE = {None: "", 2: "RGB", 3: "YCbCr"}


def dct_half(data: bytes, tables: bytes | None, colorspace: int | None, size: tuple[int, int]) -> np.ndarray:
    """The tile decoded at half size by libjpeg-turbo's scaled IDCT (through Pillow), RGB uint8."""
    from PIL import Image, ImageFile

    stream = bytes(tables[:-2]) + bytes(data[2:]) if tables else bytes(data)  # tables, then the tile's scan
    im = Image.open(io.BytesIO(stream))
    im.draft("RGB", (size[0] // 2, size[1] // 2))
    decoder, extent, offset, args = im.tile[0]
    im.tile = [ImageFile._Tile(decoder, extent, offset, (args[0], _JPEG_MODE[colorspace]))]
    return np.asarray(im)


def exact_half(source, tx: int, ty: int) -> np.ndarray:
    from slidescope.wsi._resize import block_mean

    return block_mean(source.decode(0, tx, ty), 2, 2)


def measure(path: Path, tiles: int) -> dict[str, float]:
    from slidescope.wsi import open_slide

    with open_slide(path) as slide:
        source = slide.tile_source()
        level = source._levels[0]
        if not source.can_scale(0, 2) or level.colorspace not in _JPEG_MODE:
            raise SystemExit(f"{path.name}: level 0 is not JPEG in a colour space this check handles")
        size = (level.tw, level.th)
        step = max(1, len(level.offsets) // tiles)
        t_exact = t_dct = t_pil = 0.0
        exact_half(source, 0, 0), source.decode_scaled(0, 0, 0, 2)  # imports (OpenCV) before the timing
        worst, p999, means = 0.0, 0.0, []
        for index in range(0, len(level.offsets), step):
            ty, tx = divmod(index, level.ntx)
            data = source._read_bytes(int(level.offsets[index]), int(level.counts[index]))
            t = time.perf_counter()
            exact = exact_half(source, tx, ty)
            t_exact += time.perf_counter() - t
            t = time.perf_counter()
            half = source.decode_scaled(0, tx, ty, 2)
            t_dct += time.perf_counter() - t
            t = time.perf_counter()
            dct_half(data, level.jpegtables, level.colorspace, size)
            t_pil += time.perf_counter() - t
            diff = np.abs(half.astype(np.int16) - exact.astype(np.int16))
            worst, p999 = max(worst, float(diff.max())), max(p999, float(np.percentile(diff, 99.9)))
            means.append(float(diff.mean()))
        n = len(means)
    return {
        "tiles": n,
        "exact_ms": 1e3 * t_exact / n,
        "dct_ms": 1e3 * t_dct / n,
        "pil_ms": 1e3 * t_pil / n,
        "max": worst,
        "p99.9": p999,
        "mean": float(np.mean(means)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slides", nargs="*", type=Path)
    ap.add_argument("--tiles", type=int, default=300)
    args = ap.parse_args()
    slides = list(args.slides)
    if not slides:
        from bench_tissue import cmu
        from bench_wsi import synthetic

        slides = [p for p in (cmu(), synthetic(12000, 9000, 0.25)) if p is not None]
    print(
        "| slide | tiles | exact: decode + 2x2 mean, ms | jpeg-dct, ms | exact / jpeg-dct | Pillow draft, ms "
        "| jpeg-dct vs exact: max, p99.9, mean |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for path in slides:
        r = measure(path, args.tiles)
        print(
            f"| {path.name} | {r['tiles']} | {r['exact_ms']:.3f} | {r['dct_ms']:.3f} | "
            f"{r['exact_ms'] / r['dct_ms']:.2f}x | {r['pil_ms']:.3f} | {r['max']:.0f}, {r['p99.9']:.1f}, "
            f"{r['mean']:.3f} |"
        )


if __name__ == "__main__":
    main()
