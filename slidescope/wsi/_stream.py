"""Reading the tiles of a grid, fast and in bounded memory.

Two paths, one result:

* **direct** - the slide is a tiled TIFF (SVS, generic TIFF, OME-TIFF...) and tifffile can reach
  the read level: tiles are assembled from the file's own decoded tiles (:mod:`._tiff`), planned in
  advance so that each file tile is decoded once, in a few threads (:mod:`._prefetch`). When the grid
  lines up with the file's tiles a tile is a view of one decoded file tile.
* **blocks** - any other format: tiles are grouped into blocks of about ``block_size`` px at the
  read level, read as regions of about ``READ_BLOCK`` px through the slide's backend, and the
  tiles are cut out of them. Small regions, because OpenSlide's cost per pixel grows with the
  region (on SVS: 870 tiles/s with 512 px regions, 760 with 1024, 490 with 2048).

Tiles whose read size differs from ``tile_size`` are resized once (:func:`._resize.resize_tile`): true
area averaging when shrinking, at any ratio (each output pixel is the area-weighted mean of the input
pixels its footprint covers, as OpenCV's ``INTER_AREA``; an exact block mean at whole ratios such as
448 -> 224), bilinear when enlarging. Parts of a tile outside the slide (``edge="pad"`` grids) are read
as white. Memory stays bounded by one block plus the decoded file tiles still awaited (at most the
source's ``cache_limit``, 96 MiB), whatever the slide size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import SlidescopeError, SlideReadError
from ._grid import TileGrid
from ._resize import resize_tile
from ._slide import Slide

__all__ = ["iter_tiles", "read_tile", "block_order", "DEFAULT_BLOCK_SIZE"]

#: side in read-level pixels of the blocks that tiles are grouped into (ordering, worker shares)
DEFAULT_BLOCK_SIZE = 2048
#: side of one backend read_region call on the block path
READ_BLOCK = 512


def _level_xy(grid: TileGrid, coords: np.ndarray) -> np.ndarray:
    """Top-left of tiles in read-level pixels, (N, 2) int64."""
    if grid.level == 0:
        return coords
    ds = np.asarray(grid.level_downsample)
    return np.floor(coords / ds + 1e-9).astype(np.int64)


def _resize(tile: np.ndarray, size: int) -> np.ndarray:
    return resize_tile(tile, size, size)


def _direct_error(slide: Slide, level: int, x: int, y: int, w: int, h: int, err: Exception) -> SlideReadError:
    """The error for a region the direct TIFF reader could not give: a damaged tile (SlideReadError) names the
    region and says the file is corrupt there; any other failure is the reader's own on an odd file, which
    fails this slide only. (Other slidescope errors are re-raised as they are by the callers.)"""
    where = f"the region at level {level} (x={x}, y={y}, {w}x{h} px)"
    if isinstance(err, SlideReadError):
        return SlideReadError(
            f"{slide.path.name}: cannot decode {where}: {err}. The file is corrupt there: re-export or re-scan "
            f"it, or exclude that region."
        )
    return SlideReadError(
        f"{slide.path.name}: the direct TIFF reader failed on {where} ({type(err).__name__}: {err}). The file's "
        f"structure is unusual or damaged: re-export it as a tiled pyramidal TIFF "
        f"(`vips tiffsave in out.tif --tile --pyramid`)."
    )


def _read_level(slide: Slide, level: int, x: int, y: int, w: int, h: int, direct: bool) -> np.ndarray:
    """(h, w, 3) at read-level pixel (x, y); white outside the slide."""
    lw, lh = slide.level_dimensions[level]
    if direct and x >= 0 and y >= 0 and x + w <= lw and y + h <= lh:
        try:
            return slide.tile_source().read(level, x, y, w, h)
        except SlideReadError as err:
            raise _direct_error(slide, level, x, y, w, h, err) from err
        except SlidescopeError:
            raise
        except Exception as err:  # noqa: BLE001 - the reader's own failure on an odd file fails this slide only
            raise _direct_error(slide, level, x, y, w, h, err) from err
    if level == 0:
        loc = (x, y)
    else:
        w0, h0 = slide.dimensions
        dsx, dsy = w0 / lw, h0 / lh
        loc = (int(np.ceil(x * dsx - 1e-9)), int(np.ceil(y * dsy - 1e-9)))
    return slide.read_region(loc, level, (w, h))


def block_order(grid: TileGrid, block_size: int = DEFAULT_BLOCK_SIZE) -> list[np.ndarray]:
    """Tile indices grouped into spatial blocks (row-major blocks, row-major inside)."""
    n = len(grid)
    if n == 0:
        return []
    lxy = _level_xy(grid, grid.coords)
    step_x = max(1, round(grid.stride[0] / grid.level_downsample[0]))
    step_y = max(1, round(grid.stride[1] / grid.level_downsample[1]))
    per_x = max(1, block_size // max(step_x, 1))
    per_y = max(1, block_size // max(step_y, 1))
    origin = lxy.min(axis=0)
    bx = (lxy[:, 0] - origin[0]) // (step_x * per_x)
    by = (lxy[:, 1] - origin[1]) // (step_y * per_y)
    order = np.lexsort((lxy[:, 0], lxy[:, 1], bx, by))
    keys = by[order] * (bx.max() + 1) + bx[order]
    cuts = np.flatnonzero(np.diff(keys)) + 1
    return np.split(order, cuts)


def iter_tiles(
    slide: Slide,
    grid: TileGrid,
    *,
    indices: np.ndarray | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    direct: bool = True,
    threads: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, tile)`` for the tiles of ``grid``, tile an RGB ``uint8 (tile_size, tile_size, 3)``.

    Tiles come in block order, not index order; ``index`` says which tile it is. ``indices``
    restricts the tiles read (e.g. one DataLoader worker's share). ``direct=False`` forces the
    backend path (for comparison and tests). ``threads``: decode threads on the direct TIFF path
    (:mod:`._prefetch`; default :func:`default_read_threads`: this process's CPUs, at most 4); the
    tiles and their order are the same for any number. A grid with ``downscale="jpeg-dct"`` is read so on
    the direct path only (``direct=False`` gives the exact ``"area"`` pixels, e.g. to compare).
    """
    use_direct = (
        bool(direct) and slide.tile_source() is not None and slide.tile_source().has_level(grid.level)
    )
    blocks = block_order(grid, block_size)
    if indices is not None:
        wanted = np.zeros(len(grid), bool)
        wanted[np.asarray(indices)] = True
        blocks = [b[wanted[b]] for b in blocks]
        blocks = [b for b in blocks if len(b)]
    rw, rh = grid.read_size
    size = grid.tile_size
    lxy_all = _level_xy(grid, grid.coords)
    if use_direct:
        yield from _direct(slide, grid, blocks, lxy_all, threads)
        return
    for block in blocks:
        lxy = lxy_all[block]
        # backend reads: OpenSlide's cost per pixel grows with the region size, so one block is read
        # as several regions of about READ_BLOCK px (measured best on SVS: 512)
        sub = (lxy - lxy.min(axis=0)) // READ_BLOCK
        keys = sub[:, 1] * (sub[:, 0].max() + 1) + sub[:, 0]
        for key in np.unique(keys):
            part = keys == key
            pxy = lxy[part]
            bx0, by0 = pxy.min(axis=0)
            bx1, by1 = pxy.max(axis=0) + (rw, rh)
            region = _read_level(slide, grid.level, int(bx0), int(by0), int(bx1 - bx0), int(by1 - by0), False)
            for i, (x, y) in zip(block[part], pxy, strict=True):
                ox, oy = int(x - bx0), int(y - by0)
                yield int(i), _resize(region[oy : oy + rh, ox : ox + rw], size)


def _direct(
    slide: Slide, grid: TileGrid, blocks: list[np.ndarray], lxy_all: np.ndarray, threads: int | None
) -> Iterator[tuple[int, np.ndarray]]:
    """The direct TIFF path: every tile of the blocks, in order, through :func:`._prefetch.stream_tiles`."""
    from ._prefetch import default_read_threads, stream_tiles

    order = np.concatenate(blocks) if blocks else np.zeros(0, np.int64)
    xy = lxy_all[order]
    rw, rh = grid.read_size
    size = grid.tile_size
    n = 0
    tiles = stream_tiles(
        slide.tile_source(),
        grid.level,
        xy,
        (rw, rh),
        None if (rw, rh) == (size, size) else (lambda tile: _resize(tile, size)),
        threads=default_read_threads() if threads is None else int(threads),
        # whole shrink factors are _resize.block_mean, which the file tiles can take before assembly
        reduce=(rw // size, rh // size)
        if rw > size and rh > size and rw % size == 0 and rh % size == 0
        else None,
        dct=grid.downscale == "jpeg-dct",
    )
    try:
        for tile in tiles:
            yield int(order[n]), tile
            n += 1
    except SlideReadError as err:
        x, y = (int(v) for v in xy[min(n, len(xy) - 1)])
        raise _direct_error(slide, grid.level, x, y, rw, rh, err) from err
    except SlidescopeError:
        raise
    except Exception as err:  # noqa: BLE001 - the reader's own failure on an odd file fails this slide only
        x, y = (int(v) for v in xy[min(n, len(xy) - 1)])
        raise _direct_error(slide, grid.level, x, y, rw, rh, err) from err
    finally:
        tiles.close()


def read_tile(slide: Slide, grid: TileGrid, index: int, *, direct: bool = True) -> np.ndarray:
    """One tile of ``grid`` as RGB ``uint8 (tile_size, tile_size, 3)``."""
    if not -len(grid) <= index < len(grid):
        raise IndexError(f"tile {index} is not in this grid of {len(grid)} tiles")
    ((x, y),) = _level_xy(grid, grid.coords[[index]])
    use_direct = (
        bool(direct) and slide.tile_source() is not None and slide.tile_source().has_level(grid.level)
    )
    if use_direct and grid.downscale == "jpeg-dct":  # the file tiles decoded at 1/k, as iter_tiles does
        ((_, tile),) = _direct(slide, grid, [np.zeros(1, np.int64)], np.array([[x, y]], np.int64), 1)
        return np.array(tile)
    rw, rh = grid.read_size
    tile = _read_level(slide, grid.level, int(x), int(y), rw, rh, use_direct)
    return np.array(_resize(tile, grid.tile_size))
