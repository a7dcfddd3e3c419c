"""Slide-reading backends behind one openslide-shaped interface.

Each backend is a small adapter registered in :data:`BACKENDS` (name -> class). An adapter opens a
file or raises, and normalises what differs between libraries: property values are strings (as
openslide gives them) with ``openslide.*`` keys mirrored for tiffslide, a missing mpp is ``None``,
and pixels come back as RGBA/RGB ``uint8`` arrays. Compositing on white and padding outside the
slide happen once, in :class:`slidescope.wsi.Slide`.

The optional libraries are imported when a backend is first used, never when slidescope is imported.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import InvalidParameterError, MissingDependencyError, SlideReadError, UnsupportedSlideError

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "Backend", "register_backend"]


#: Largest level-0 image accepted, in pixels: 100 gigapixels, twice the largest real scans (about
#: 150k x 350k px at 40x). A header declaring more is a forgery or a bomb. Raise it with the
#: environment variable ``SLIDESCOPE_MAX_IMAGE_PIXELS``.
MAX_IMAGE_PIXELS = 10**11

#: Largest amount of decoded pixel data one read may need, in bytes: one decoded file segment (a
#: strip or tile that a reader must decode whole) or one requested region. 512 MiB: a real slide's
#: tiles are a few MB; a single-strip image above this (~13k x 13k RGB) is refused at open instead
#: of being decoded whole (a decompression bomb decodes to GBs). Below it, a level stored in big
#: strips is decoded once and kept (:data:`WHOLE_LEVEL_STRIP_BYTES`): the memory a strip read needs
#: anyway, held instead of re-decoded per block. Raise it with ``SLIDESCOPE_MAX_DECODE_MB`` (MiB).
MAX_DECODE_BYTES = 512 * 2**20


def _env_limit(name: str, default: int, scale: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise InvalidParameterError(
            f"{name} must be a positive number, got {raw!r}; unset it to use the default"
        )
    return int(value * scale)


def max_image_pixels() -> int:
    """The level-0 pixel limit in force (:data:`MAX_IMAGE_PIXELS` or ``$SLIDESCOPE_MAX_IMAGE_PIXELS``)."""
    return _env_limit("SLIDESCOPE_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS)


def max_decode_bytes() -> int:
    """The per-read decode budget in force (:data:`MAX_DECODE_BYTES` or ``$SLIDESCOPE_MAX_DECODE_MB``)."""
    return _env_limit("SLIDESCOPE_MAX_DECODE_MB", MAX_DECODE_BYTES, 2**20)


#: Strips bigger than this (bytes, decoded) make tiffslide decode the whole level once instead of a
#: strip per read: 8 MiB, the size of a few dozen ordinary strips or tiles.
WHOLE_LEVEL_STRIP_BYTES = 8 * 2**20


def _definitive(err: UnsupportedSlideError) -> UnsupportedSlideError:
    """Mark a refusal that no other backend can overturn (bomb, not brightfield): open_slide stops there."""
    err.definitive = True  # type: ignore[attr-defined]
    return err


class Backend:
    """What every backend adapter provides. Coordinates follow openslide: (x, y) at level 0."""

    name: ClassVar[str]
    #: human name of the library and its version, for provenance in stores
    library: str

    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, str]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """(h, w, 3 or 4) uint8 for a region fully inside the level (the caller clips)."""
        raise NotImplementedError  # abstract; every registered backend overrides it

    def associated_image_names(self) -> list[str]:
        raise NotImplementedError  # abstract

    def associated_image(self, name: str) -> np.ndarray:
        raise NotImplementedError  # abstract

    def mpp(self) -> tuple[tuple[float, float] | None, str]:
        """(mpp_x, mpp_y) in µm/px at level 0 or None, and where it came from."""
        raise NotImplementedError  # abstract

    def close(self) -> None:
        pass


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    if cls.name in BACKENDS:
        log.warning("backend %r registered twice; the later one wins", cls.name)
    BACKENDS[cls.name] = cls
    return cls


def _float(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) and out > 0 else None


def _mpp_source(vendor: str | None) -> str:
    """Name where a backend's mpp came from, from the vendor the library detected."""
    if vendor == "aperio":
        return "Aperio ImageDescription (MPP)"
    if vendor in (None, "", "generic-tiff"):
        return "TIFF resolution tags (XResolution/YResolution)"
    return f"{vendor} vendor metadata"


@register_backend
class OpenSlideBackend(Backend):
    """OpenSlide: SVS, NDPI, MRXS, SCN, BIF, DICOM, Philips TIFF, Ventana, generic tiled TIFF."""

    name = "openslide"

    def __init__(self, path: Path) -> None:
        try:
            import openslide
        except ImportError as err:  # pragma: no cover - openslide is a core dependency
            raise MissingDependencyError(
                "openslide-python is not installed: `uv pip install openslide-python openslide-bin`"
            ) from err
        self._openslide = openslide
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError as err:
            raise UnsupportedSlideError(f"OpenSlide does not recognise {path}") from err
        except openslide.OpenSlideError as err:
            raise UnsupportedSlideError(f"OpenSlide cannot open {path}: {err}") from err
        self.library = f"openslide-python {openslide.__version__} / OpenSlide {openslide.__library_version__}"
        self.dimensions = tuple(self._slide.dimensions)
        self.level_dimensions = tuple(tuple(d) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties = {str(k): str(v) for k, v in self._slide.properties.items()}
        self.vendor = self.properties.get("openslide.vendor")

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        try:
            img = self._slide.read_region(location, level, size)
        except self._openslide.OpenSlideError as err:
            raise SlideReadError(str(err)) from err
        if img.getchannel("A").getextrema()[0] == 255:  # opaque: PIL drops alpha in C, no numpy pass
            return np.asarray(img.convert("RGB"))
        return np.asarray(img)  # premultiplied RGBA; Slide composites it on white

    def associated_image_names(self) -> list[str]:
        return sorted(self._slide.associated_images.keys())

    def associated_image(self, name: str) -> np.ndarray:
        return np.asarray(self._slide.associated_images[name])

    def mpp(self) -> tuple[tuple[float, float] | None, str]:
        mx = _float(self.properties.get("openslide.mpp-x"))
        my = _float(self.properties.get("openslide.mpp-y"))
        if mx is None or my is None:
            return None, "none"
        return (mx, my), _mpp_source(self.vendor)

    def close(self) -> None:
        self._slide.close()


@register_backend
class TiffSlideBackend(Backend):
    """tiffslide (tifffile): OME-TIFF, QPTIFF, SVS, generic TIFF, and TIFFs OpenSlide refuses."""

    name = "tiffslide"

    def __init__(self, path: Path) -> None:
        try:
            import tiffslide
        except ImportError as err:  # pragma: no cover - tiffslide is a core dependency
            raise MissingDependencyError("tiffslide is not installed: `uv pip install tiffslide`") from err
        self._slide = None
        try:
            self._slide = tiffslide.TiffSlide(str(path))
            self._slide.level_dimensions  # noqa: B018 - forces the pyramid to be parsed now
            page = self._slide.ts_tifffile.series[0].levels[0].keyframe
            decoder = page.decode  # tifffile hands back a raising stub for codecs it cannot decode
        except Exception as err:  # tifffile raises many types (TiffFileError, ValueError, KeyError...)
            self._close_quietly()
            raise UnsupportedSlideError(f"tiffslide cannot open {path}: {type(err).__name__}: {err}") from err
        if "raise" in getattr(decoder, "__name__", ""):
            self._close_quietly()
            raise UnsupportedSlideError(
                f"tiffslide cannot decode {path}: TIFF compression {page.compression!r} is not supported"
            )
        self._check_decode_budget(path)
        self.library = f"tiffslide {tiffslide.__version__}"
        self.dimensions = tuple(self._slide.dimensions)
        self.level_dimensions = tuple(tuple(d) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        props: dict[str, str] = {}
        for k, v in self._slide.properties.items():
            if v is None:
                continue
            props[str(k)] = str(v)
        # mirror openslide's key namespace so callers see one vocabulary
        for k, v in list(props.items()):
            if k.startswith("tiffslide."):
                props.setdefault("openslide." + k[len("tiffslide.") :], v)
        self.properties = props
        self.vendor = props.get("tiffslide.vendor")
        self._is_ome = bool(getattr(self._slide.ts_tifffile, "is_ome", False))
        self._whole: dict[int, np.ndarray] = {}  # levels decoded once (see _whole_level)

    def _check_decode_budget(self, path: Path) -> None:
        """Refuse a level whose strips or tiles decode to more than the per-read budget.

        tifffile decodes a whole strip or tile for any region touching it, so a single-strip level of
        50k x 50k px (a few MB of zeros deflated: a decompression bomb) would be decoded whole, 7.5 GB,
        for every block read from it. The check reads only the page headers."""
        budget = max_decode_bytes()
        self._decode_whole: set[int] = set()
        for level, lvl in enumerate(self._slide.ts_tifffile.series[0].levels):
            page = lvl.keyframe
            itemsize = np.dtype(page.dtype or np.uint8).itemsize
            chunk = int(np.prod(page.chunks, dtype=np.int64)) * itemsize
            if (
                not page.is_tiled
                and chunk > WHOLE_LEVEL_STRIP_BYTES
                and int(np.prod(page.shape, dtype=np.int64)) * itemsize <= budget
            ):
                self._decode_whole.add(level)
            if chunk > budget:
                self._close_quietly()
                shape = "x".join(str(v) for v in page.chunks)
                raise _definitive(
                    UnsupportedSlideError(
                        f"{path.name}: level {level} ({page.imagewidth}x{page.imagelength} px) is stored in "
                        f"{'tiles' if page.is_tiled else 'strips'} of {shape} that each decode to "
                        f"{chunk / 2**20:.0f} MiB, over the decode budget of {budget / 2**20:.0f} MiB per read "
                        f"(MAX_DECODE_BYTES): an untiled huge image or a decompression bomb, decoded whole for every "
                        f"block. Convert it to a tiled pyramid (`vips tiffsave in.tif out.tif --tile --pyramid "
                        f"--compression jpeg`), or if you trust the file raise the budget: "
                        f"SLIDESCOPE_MAX_DECODE_MB={int(chunk / 2**20) + 1}."
                    )
                )

    def _close_quietly(self) -> None:
        slide = getattr(self, "_slide", None)
        if slide is not None:
            slide.close()

    def _whole_level(self, level: int) -> np.ndarray:
        """A level stored in big strips, decoded once and kept (within the decode budget).

        tifffile decodes a whole strip for any region that touches it; a level of one 100 MB strip
        read in 512 px blocks would be decoded hundreds of times."""
        arr = self._whole.get(level)
        if arr is None:
            arr = self._slide.ts_tifffile.series[0].levels[level].keyframe.asarray()
            self._whole[level] = arr
        return arr

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        try:
            if level in self._decode_whole:
                ds = self.level_downsamples[level]
                # tiffslide's own mapping of a level-0 location to level pixels
                x, y = int(location[0] / ds), int(location[1] / ds)
                arr = self._whole_level(level)
                if arr.ndim == 3:
                    return arr[y : y + size[1], x : x + size[0]]
            arr = self._slide.read_region(location, level, size, as_array=True)
        except Exception as err:  # decoder errors come from imagecodecs with many types
            raise SlideReadError(f"{type(err).__name__}: {err}") from err
        return np.asarray(arr)

    def associated_image_names(self) -> list[str]:
        return sorted(self._slide.associated_images.keys())

    def associated_image(self, name: str) -> np.ndarray:
        return np.asarray(self._slide.associated_images[name])

    def mpp(self) -> tuple[tuple[float, float] | None, str]:
        mx = _float(self.properties.get("tiffslide.mpp-x"))
        my = _float(self.properties.get("tiffslide.mpp-y"))
        if mx is None or my is None:
            return None, "none"
        if self._is_ome:
            return (mx, my), "OME-XML PhysicalSizeX/Y"
        return (mx, my), _mpp_source(self.vendor)

    def close(self) -> None:
        self._whole.clear()
        self._slide.close()


# Which backend `auto` tries first, by file name. OpenSlide knows the vendor formats; tiffslide is the
# better first choice for OME-TIFF / QPTIFF (OpenSlide refuses most of them). Whatever is tried first,
# `auto` falls back to the other backend before giving up.
_TIFFSLIDE_FIRST = re.compile(r"\.(ome\.tiff?|ome\.tf[28]|ome\.btf|qptiff)$", re.IGNORECASE)


def auto_order(path: Path) -> list[str]:
    """Backend names in the order ``backend='auto'`` tries them for this file."""
    if _TIFFSLIDE_FIRST.search(path.name):
        return ["tiffslide", "openslide"]
    return ["openslide", "tiffslide"]
