"""Coordinates another tool produced, as a tile grid: ``extract --coords`` (:func:`coords_grid`).

Accepted files (level-0 top-left corners in every case):

* a TRIDENT or CLAM h5 file with a ``coords`` dataset (TRIDENT's ``patches/<slide>_patches.h5``, a feature
  file of either toolkit, or one :func:`~slidescope.features.export_h5` wrote); the footprint is read from
  its attributes as their readers read it (:func:`~slidescope.features.h5.h5_extent`);
* a CSV with ``x`` and ``y`` columns and, optionally, ``size_level0`` (level-0 px per tile, one value; the
  index of ``slidescope tile --save-patches`` is such a file).

Where the file does not give the footprint (a CLAM feature file, a CSV without ``size_level0``), a tile
covers ``tile_size`` px at ``mpp`` as in :func:`~slidescope.wsi.make_tile_grid`. The tiles are handed to
the encoder at ``tile_size`` px, whatever size the other tool used. The grid records the file's name,
format and SHA-256 (``coords_file``, ``coords_format``, ``coords_sha256``), which so become part of the
store's tiling key: other coordinates never reuse these embeddings.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidParameterError

if TYPE_CHECKING:
    from ..wsi import Slide, TileGrid

log = logging.getLogger(__name__)

__all__ = ["coords_grid", "coords_file_for"]


def coords_file_for(coords: str | os.PathLike[str], slide: str | os.PathLike[str]) -> Path:
    """The coordinates file of ``slide``: ``coords`` itself when it is a file; in a folder, the first of
    ``<stem>.h5``, ``<stem>_patches.h5``, ``patches/<stem>_patches.h5`` (TRIDENT's layout),
    ``<stem>.patches.csv``, ``<stem>.csv``, where ``<stem>`` is the slide's name before its first dot."""
    where = Path(coords)
    if where.is_file():
        return where
    if not where.is_dir():
        raise InvalidParameterError(
            f"--coords {where} does not exist (a coordinates file or a folder of them)"
        )
    stem = Path(slide).name.split(".")[0]
    names = [
        f"{stem}.h5",
        f"{stem}_patches.h5",
        f"patches/{stem}_patches.h5",
        f"{stem}.patches.csv",
        f"{stem}.csv",
    ]
    for name in names:
        if (where / name).is_file():
            return where / name
    raise InvalidParameterError(
        f"no coordinates for {Path(slide).name} in {where} (looked for {', '.join(names)})"
    )


def coords_grid(
    path: str | os.PathLike[str], slide: Slide, *, tile_size: int, mpp: float, mask=None
) -> TileGrid:
    """The tile grid of ``slide`` at the coordinates in ``path`` (see the module docstring).

    Raises
    ------
    InvalidParameterError
        A file that is neither a TRIDENT/CLAM h5 nor a CSV with ``x``, ``y``; coordinates outside the slide.
    """
    from ..wsi.coords import grid_from_coords
    from .h5 import h5_extent, read_h5_coords

    path = Path(path)
    what = f"--coords {path.name}"
    if path.suffix.lower() in (".h5", ".hdf5"):
        coords, attrs, _ = read_h5_coords(path)
        fmt = "trident" if "target_magnification" in attrs else "clam" if "patch_level" in attrs else "h5"
        extent = h5_extent(attrs, list(slide.level_downsamples), what=what)
    elif path.suffix.lower() == ".csv":
        coords, extent = _read_csv(path)
        fmt = "csv"
    else:
        raise InvalidParameterError(f"{what}: coordinates are read from .h5 (TRIDENT/CLAM) or .csv files")
    source = "file"
    if extent is None:
        extent, source = max(1, round(tile_size * mpp / float(np.mean(slide.mpp)))), "tile_size and mpp"
    grid = grid_from_coords(
        slide,
        coords,
        extent=extent,
        tile_size=tile_size,
        mask=mask,
        extra={
            "coords_file": path.name,
            "coords_format": fmt,
            "coords_sha256": _sha256(path),
            "coords_footprint_from": source,
        },
    )
    if len(grid) and abs(grid.mpp / mpp - 1) > 0.1:
        log.warning(
            "%s: the tiles of %s cover %d level-0 px, %.3g µm/px at %d px, not the %.3g µm/px asked",
            slide.path.name,
            path.name,
            extent,
            grid.mpp,
            tile_size,
            mpp,
        )
    return grid


def _read_csv(path: Path) -> tuple[np.ndarray, int | None]:
    """``(coords, size_level0 or None)`` of a coordinates CSV."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if "x" not in fields or "y" not in fields:
            raise InvalidParameterError(
                f"{path} needs 'x' and 'y' columns (level-0 top-left px); it has: {', '.join(fields) or 'none'}"
            )
        rows = [{k.strip().lower(): v for k, v in row.items() if k} for row in reader]
    try:
        coords = np.array([[float(r["x"]), float(r["y"])] for r in rows], np.float64).reshape(-1, 2)
        sizes = {float(r["size_level0"]) for r in rows if r.get("size_level0")}
    except (TypeError, ValueError) as err:
        raise InvalidParameterError(f"{path}: a coordinate or size is not a number ({err})") from err
    if not np.allclose(coords, np.round(coords)) or any(s != round(s) or s <= 0 for s in sizes):
        raise InvalidParameterError(f"{path}: coordinates and size_level0 must be whole level-0 pixels")
    if len(sizes) > 1:
        raise InvalidParameterError(
            f"{path}: size_level0 differs between rows ({sorted(sizes)[:3]}...); one grid has one size"
        )
    return np.round(coords).astype(np.int64), (int(sizes.pop()) if sizes else None)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
