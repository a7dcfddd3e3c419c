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
import re
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import MissingDependencyError, SlideReadError, UnsupportedSlideError

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "Backend", "register_backend"]


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

    def _close_quietly(self) -> None:
        slide = getattr(self, "_slide", None)
        if slide is not None:
            slide.close()

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        try:
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

