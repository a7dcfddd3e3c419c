"""Raw patch export: the tiles of a grid as image files (or one tar) with an index CSV.

The tiles are read by :func:`~slidescope.wsi.iter_tiles`, the path the encoders' data loader takes, so a
saved patch is the tile an encoder sees (before its own normalisation): ``tile_size`` px at the grid's
effective mpp. PNG keeps the pixels exactly; JPEG is smaller and lossy.
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidParameterError

if TYPE_CHECKING:
    from ._grid import TileGrid
    from ._slide import Slide

__all__ = ["save_patches", "PATCH_FORMATS", "INDEX_COLUMNS"]

#: ``format`` values of :func:`save_patches`: image files, or one tar of PNG files
PATCH_FORMATS = ("png", "jpeg", "tar")

#: the columns of the index CSV
INDEX_COLUMNS = ("file", "x", "y", "size_level0", "mpp", "tissue_fraction")


def save_patches(
    slide: Slide,
    grid: TileGrid,
    out: str | os.PathLike[str],
    *,
    format: str = "png",
    quality: int = 90,
) -> Path:
    """Write every tile of ``grid`` to ``out`` and an index ``out/<slide>.patches.csv``; returns its path.

    Parameters
    ----------
    slide, grid : the open slide and its tiles (:func:`~slidescope.wsi.make_tile_grid`).
    out : a local folder, created if needed.
    format : {"png", "jpeg", "tar"}
        ``png`` / ``jpeg``: ``out/<slide>_<index>_x<x>_y<y>.png`` (or ``.jpg``); ``tar``:
        ``out/<slide>.patches.tar`` holding the PNG files under the same names.
    quality : JPEG quality, 1-100.

    The index has one row per tile, in grid order: ``file`` (name in the folder or the tar), ``x``, ``y``
    (level-0 top-left), ``size_level0`` (level-0 px the tile covers), ``mpp`` (the tile's µm/px) and
    ``tissue_fraction``.
    """
    from PIL import Image

    from ._stream import iter_tiles

    if format not in PATCH_FORMATS:
        raise InvalidParameterError(f"patch format must be one of {', '.join(PATCH_FORMATS)}, got {format!r}")
    if not 1 <= int(quality) <= 100:
        raise InvalidParameterError(f"JPEG quality must be between 1 and 100, got {quality!r}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    stem = slide.path.name.split(".")[0]
    suffix = "jpg" if format == "jpeg" else "png"
    names = [f"{stem}_{i:06d}_x{x}_y{y}.{suffix}" for i, (x, y) in enumerate(grid.coords.tolist())]
    tar_path = folder / f"{stem}.patches.tar"
    tar = tarfile.open(tar_path.with_name(tar_path.name + ".partial"), "w") if format == "tar" else None
    try:
        for i, tile in iter_tiles(slide, grid):
            image = Image.fromarray(tile)
            if tar is None:
                if format == "jpeg":
                    image.save(folder / names[i], quality=int(quality))
                else:
                    image.save(folder / names[i])
                continue
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            info = tarfile.TarInfo(names[i])
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    finally:
        if tar is not None:
            tar.close()
    if tar is not None:
        os.replace(tar_path.with_name(tar_path.name + ".partial"), tar_path)
    index = folder / f"{stem}.patches.csv"
    mpp = (grid.effective_mpp[0] + grid.effective_mpp[1]) / 2
    with open(index, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(INDEX_COLUMNS)
        for name, (x, y), frac in zip(
            names, grid.coords.tolist(), grid.tissue_fraction.tolist(), strict=True
        ):
            w.writerow([name, x, y, grid.extent[0], f"{mpp:.6g}", f"{frac:.4f}"])
    return index
