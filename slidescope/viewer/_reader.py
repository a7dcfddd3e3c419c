"""The napari reader: a slide as a lazy multiscale RGB image in micrometres.

Every pyramid level becomes a dask array chunked to the file's own tiles; a chunk is read only when
napari slices it, through the slide's direct TIFF tile decoder where the file allows it (exact level
coordinates, no slide-library overhead) and through :meth:`slidescope.wsi.Slide.read_region`
otherwise, so OpenSlide, tiffslide and the direct path all work and level 0 is never read whole.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingMppError, SlideReadError, SlidescopeError

log = logging.getLogger(__name__)

__all__ = [
    "SLIDE_PATTERNS",
    "SlideLevel",
    "get_reader",
    "read_slide",
    "slide_layer_data",
    "slide_pyramid",
]

#: file names the reader claims (the napari manifest lists the same patterns)
SLIDE_PATTERNS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".bif",
    ".vms",
    ".vmu",
    ".svslide",
    ".qptiff",
    ".dcm",
    ".btf",
    ".tf2",
    ".tf8",
)
#: chunk side where the file does not say its tile size (OpenSlide's generic default)
DEFAULT_CHUNK = 512
#: what a region that cannot be decoded looks like
UNREADABLE_GREY = 128
#: key under which layers keep what slidescope knows about them (layer.metadata[METADATA_KEY])
METADATA_KEY = "slidescope"


class SlideLevel:
    """One pyramid level as a read-only array-like ``(height, width, 3) uint8``.

    Indexing with slices reads exactly that region of the level (and nothing else): this is what
    dask calls once per chunk. Reads are serialised on one lock per slide when they go through the
    direct TIFF decoder or tiffslide (one shared file handle each); OpenSlide reads (thread-safe,
    GIL released) run in parallel. A region that cannot be decoded (a corrupt tile) is logged and
    shown grey, so one bad tile never breaks the viewer while the rest of the slide stays usable.
    """

    def __init__(self, slide: Any, level: int, lock: threading.Lock) -> None:
        self.slide = slide
        self.level = level
        width, height = slide.level_dimensions[level]
        self.shape = (int(height), int(width), 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        w0, h0 = slide.dimensions
        self._downsample = (w0 / width, h0 / height)
        self._lock = lock
        source = slide.tile_source()
        self._direct = source if source is not None and source.has_level(level) else None
        # parallel reads where the backend declares them safe (OpenSlide); one lock per slide otherwise
        self._parallel = self._direct is None and bool(getattr(slide, "thread_safe", False))

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(height, width) of the file's own tiles at this level (the dask chunk shape)."""
        if self._direct is not None:
            tw, th = self._direct.tile_shape(self.level)
            return int(th), int(tw)
        shape = self.slide.tile_shape(self.level)  # the backend's own tiles; None: strips, plain images
        if shape is None:
            return DEFAULT_CHUNK, DEFAULT_CHUNK
        tw, th = shape
        return int(th), int(tw)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        (y0, y1), (x0, x1) = _bounds(key[0], self.shape[0]), _bounds(key[1], self.shape[1])
        squeeze = tuple(axis for axis in (0, 1) if not isinstance(key[axis], slice))
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)[..., key[2]]
        try:
            pixels = self.read(x0, y0, x1 - x0, y1 - y0)
        except SlideReadError as err:
            log.warning(
                "%s: level %d region x=%d y=%d %dx%d shown grey: %s",
                self.slide.path.name,
                self.level,
                x0,
                y0,
                x1 - x0,
                y1 - y0,
                err,
            )
            pixels = np.full((y1 - y0, x1 - x0, 3), UNREADABLE_GREY, np.uint8)
        return np.squeeze(pixels, axis=squeeze)[..., key[2]] if squeeze else pixels[..., key[2]]

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB ``(height, width, 3)`` at this level's pixel coordinates (inside the level)."""
        if self._direct is not None:
            try:
                with self._lock:
                    return np.array(self._direct.read(self.level, x, y, width, height))
            except SlideReadError as err:
                raise SlideReadError(
                    f"{self.slide.path.name}: cannot decode level {self.level} at x={x}, y={y} ({width}x{height} px): "
                    f"{err}. The file is probably corrupt there: re-export or re-scan it."
                ) from err
        # level-0 location whose floor division by the downsample gives back (x, y) exactly
        dx, dy = self._downsample
        location = (int(np.ceil(x * dx - 1e-9)), int(np.ceil(y * dy - 1e-9)))
        if self._parallel:
            return self.slide.read_region(location, self.level, (width, height))
        with self._lock:
            return self.slide.read_region(location, self.level, (width, height))

    def __repr__(self) -> str:
        return f"SlideLevel({self.slide.path.name!r}, level={self.level}, shape={self.shape})"


def _bounds(index: slice | int, size: int) -> tuple[int, int]:
    if isinstance(index, slice):
        start, stop, step = index.indices(size)
        if step != 1:
            raise IndexError("slide levels are read with unit steps only")
        return start, stop
    i = int(index) % size
    return i, i + 1


def slide_pyramid(slide: Any) -> list[Any]:
    """The slide's levels as lazy dask arrays ``(h, w, 3) uint8``, largest first, chunked to its tiles.

    Parameters
    ----------
    slide : an open :class:`slidescope.wsi.Slide`.

    Returns
    -------
    list of dask.array.Array
        One per pyramid level whose size strictly decreases (a level no smaller than the previous
        one, as some files carry, is skipped: napari needs decreasing shapes). Nothing is read
        until napari (or ``.compute()``) asks for a region.
    """
    import dask.array as da

    from ..features.store import slide_fingerprint

    token = slide_fingerprint(slide.path).replace(":", "-")
    lock = threading.Lock()
    levels: list[Any] = []
    last: tuple[int, int] | None = None
    for level in range(slide.level_count):
        array = SlideLevel(slide, level, lock)
        h, w = array.shape[:2]
        if last is not None and not (h < last[0] or w < last[1]):
            log.debug(
                "%s: level %d (%dx%d) is not smaller than the one before; skipped",
                slide.path.name,
                level,
                w,
                h,
            )
            continue
        last = (h, w)
        th, tw = array.tile_shape
        levels.append(
            da.from_array(
                array,
                chunks=(th, tw, 3),
                name=f"slidescope-{token}-level{level}",
                asarray=False,
                fancy=False,
                meta=np.empty((0, 0, 0), np.uint8),
            )
        )
    return levels


def _check_readable(slide: Any) -> None:
    """Decode the first tile of the coarsest level now, so a slide whose pixels cannot be read at
    all fails here with :class:`SlideReadError` (and its message) instead of inside napari."""
    level = SlideLevel(slide, slide.level_count - 1, threading.Lock())
    th, tw = level.tile_shape
    level.read(0, 0, min(tw, level.shape[1]), min(th, level.shape[0]))


def slide_layer_data(slide: Any, *, name: str | None = None) -> tuple[list[Any], dict[str, Any], str]:
    """The napari layer tuple ``(pyramid, kwargs, "image")`` of an open slide, scaled in µm.

    The scale is level-0 µm per pixel as (row, column) = (mpp_y, mpp_x); napari scales the other
    levels by their shapes. A slide without a known pixel size is shown in pixels (scale 1) and
    says so in ``metadata["slidescope"]["mpp_source"]``.
    """
    _check_readable(slide)
    pyramid = slide_pyramid(slide)
    try:
        mpp_x, mpp_y = slide.mpp
        units, source = "um", slide.mpp_source
    except MissingMppError:
        mpp_x, mpp_y, units, source = 1.0, 1.0, "pixel", "none"
    meta = {
        "path": str(Path(slide.path).resolve()),
        "backend": slide.backend,
        "dimensions": [int(v) for v in slide.dimensions],
        "mpp": [float(mpp_x), float(mpp_y)],
        "mpp_source": source,
        "units": units,
        "magnification": slide.magnification,
        "level_dimensions": [list(map(int, d)) for d in slide.level_dimensions],
        "associated_images": sorted(slide.associated_images),
        "kind": "slide",
    }
    kwargs = {
        "name": name or Path(slide.path).name,
        "rgb": True,
        "multiscale": len(pyramid) > 1,
        "scale": (mpp_y, mpp_x),
        "units": (units, units),
        "contrast_limits": (0, 255),
        # napari's opportunistic dask cache would keep every tile ever seen (up to 1/4 of the RAM);
        # the slide libraries keep their own small tile caches, so memory stays bounded while panning
        "cache": False,
        "metadata": {METADATA_KEY: meta},
    }
    data: Any = pyramid if len(pyramid) > 1 else pyramid[0]
    return data, kwargs, "image"


def read_slide(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[tuple[Any, ...]]:
    """napari reader function: one lazy multiscale image layer per slide.

    A file slidescope cannot open gives a napari error notification with slidescope's message
    (what is wrong and what to do) instead of a traceback, and no layer. A slide without a pixel
    size opens in pixel units with a warning notification.
    """
    from napari.utils.notifications import show_error, show_info, show_warning

    from ..wsi import open_slide

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[tuple[Any, ...]] = []
    for p in paths:
        try:
            slide = open_slide(p)
            data = slide_layer_data(slide)
            # the reader owns this slide: close its files when the layer's arrays go (a slide left to the
            # garbage collector can have its file objects collected first, with a ResourceWarning)
            level0 = data[0][0] if isinstance(data[0], list) else data[0]
            weakref.finalize(level0, _close_quietly, slide)
        except SlidescopeError as err:
            channels = _fluorescence_layer(p, err)
            if channels is None:
                show_error(f"slidescope: {err}")
                continue
            layers.append(channels)
            show_info(f"slidescope: {channels[1]['metadata'][0][METADATA_KEY]['viewing']}")
            continue
        if data[1]["metadata"][METADATA_KEY]["units"] == "pixel":
            show_warning(
                f"slidescope: {Path(p).name} carries no pixel size; it is shown in pixels and cannot be "
                f"analysed until you give one (open_slide(path, slide_mpp=...))."
            )
        layers.append(data)
    return layers or [(None,)]


def _close_quietly(slide: Any) -> None:
    if not getattr(slide, "_backend_closed", True):
        slide.close()


def _fluorescence_layer(path: str | os.PathLike[str], err: SlidescopeError) -> tuple[Any, ...] | None:
    """The channel layers (:mod:`slidescope.viewer._fluorescence`) of a TIFF that open_slide refused for its
    pixel format (multiplex/fluorescence, grey, 16-bit); None for any other error or file."""
    if not getattr(err, "definitive", False):
        return None
    from ._fluorescence import fluorescence_layer_data, open_fluorescence

    image = open_fluorescence(path)
    return None if image is None else fluorescence_layer_data(image, str(err))


def _claimed(path: Path) -> bool:
    """A registered whole-slide backend reads this file by its name (plugins included), or opens this folder
    as one slide (a DICOM-WSI series). Plain images (PNG/JPEG) are left to napari's own reader."""
    from ..wsi import claims_by_name, registered_backends

    if path.is_dir():
        return any(cls.directory_entry(path) is not None for cls in registered_backends().values())
    return claims_by_name(path)


def get_reader(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> Callable[..., Any] | None:
    """npe2 ``get_reader``: :func:`read_slide` for slide file names, else None (another reader may try)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    for p in paths:
        name = str(p).lower()
        if not name.endswith(SLIDE_PATTERNS) and not _claimed(Path(p)):
            return None
    return read_slide
