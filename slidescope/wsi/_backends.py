"""Slide-reading backends behind one openslide-shaped interface, and the registry that makes it open.

Each backend is a small adapter class registered with :func:`register_backend` (name -> class). An adapter
opens a file or raises, and normalises what differs between libraries: property values are strings (as
openslide gives them) with ``openslide.*`` keys mirrored for tiffslide, a missing mpp is ``None``, and
pixels come back as RGBA/RGB ``uint8`` arrays. Compositing on white and padding outside the slide happen
once, in :class:`slidescope.wsi.Slide`.

**The contract.** Besides reading, a backend class declares (class attributes of :class:`Backend`):
what it accepts (``extensions``, ``magic`` bytes or its own :meth:`Backend.sniff`, folders through
:meth:`Backend.directory_entry`), its ``priority`` in ``auto``, whether several threads may read one open
slide at once (``thread_safe``), whether the direct TIFF tile decoder may serve its files (``direct_tiff``),
whether its formats are whole-slide formats that folder listing and the napari reader claim by name
(``whole_slide_format``; False for PNG/JPEG, which are also ordinary pictures), and per open slide the
tile shape of each level (:meth:`Backend.tile_shape`). ``auto`` order (:func:`auto_order`), the
command-line and config-file choices of ``--backend``, the viewer's parallel reads and chunk shapes all
derive from the registry, so adding a reader is one module that calls :func:`register_backend`.

**Plugins.** Another distribution adds a reader through an entry point in the group ``slidescope.readers``
naming a module that calls :func:`register_backend` when imported (or a function, called once), as for
every registry (:mod:`slidescope._plugins`, docs/PLUGINS.md). Entry points are loaded the first time the
registry is asked (:func:`registered_backends`), never at import. A plugin that fails to load is skipped
with a log record (a WARNING on the ``slidescope._plugins`` logger; no Python warning, no crash) and
listed by ``slidescope._plugins.plugin_failures("readers")``; the other readers work as before.

The optional libraries are imported when a backend is first used, never when slidescope is imported.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .._plugins import Once
from ..errors import InvalidParameterError, MissingDependencyError, SlideReadError, UnsupportedSlideError

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "Backend",
    "auto_order",
    "backend_names",
    "claims_by_name",
    "register_backend",
    "registered_backends",
]


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


#: leading bytes of TIFF and BigTIFF files (little- and big-endian)
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

#: bytes read from a file's start for :meth:`Backend.sniff` (a DICOM file's "DICM" sits at byte 128)
SNIFF_BYTES = 132


#: µm per OME length unit (PhysicalSizeXUnit; the OME default is µm)
_OME_UNIT_UM = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


class Backend:
    """What every backend adapter provides. Coordinates follow openslide: (x, y) at level 0.

    Class attributes (the contract that :func:`auto_order`, the option choices and the viewer read):

    name : the ``--backend`` value.
    extensions : file name endings it reads, lower case with the dot (``".svs"``, ``".ome.tiff"``); in
        ``auto`` a backend naming a longer matching ending goes before one naming a shorter one.
    magic : leading bytes of the files it reads (the default :meth:`sniff` compares them).
    priority : order in ``auto`` among backends that claim a file equally (lower first).
    thread_safe : several threads may call :meth:`read_region` on one open instance at once (the viewer
        then reads chunks in parallel instead of under one lock).
    direct_tiff : the direct TIFF tile decoder (:mod:`._tiff`) may serve this backend's files; False
        for a backend whose pixels differ from the file's raw tiles or that reads no TIFF.
    whole_slide_format : its extensions name whole-slide images, so a folder given as input lists those
        files and the napari reader claims them. False for formats that are also ordinary pictures
        (PNG, JPEG): those are read when named, never collected from a folder or taken from napari.
    """

    name: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]] = ()
    magic: ClassVar[tuple[bytes, ...]] = ()
    priority: ClassVar[int] = 100
    thread_safe: ClassVar[bool] = False
    direct_tiff: ClassVar[bool] = False
    whole_slide_format: ClassVar[bool] = True

    #: human name of the library and its version, for provenance in stores
    library: str

    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, str]

    def __init__(self, path: Path) -> None:
        """Open ``path`` (a file; for a folder slide, the file :meth:`directory_entry` named) or raise
        :class:`~slidescope.errors.UnsupportedSlideError` (``_definitive`` when no other backend may try)."""
        raise NotImplementedError  # abstract; every registered backend overrides it

    @classmethod
    def sniff(cls, head: bytes) -> bool:
        """Whether a file starting with ``head`` (its first :data:`SNIFF_BYTES` bytes) looks like one of
        this backend's formats. The default compares :attr:`magic`."""
        return any(head.startswith(m) for m in cls.magic)

    @classmethod
    def directory_entry(cls, folder: Path) -> Path | None:
        """The file that opens ``folder`` as one slide with this backend, or None (it reads no folders)."""
        return None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """(h, w, 3 or 4) uint8 for a region fully inside the level (the caller clips)."""
        raise NotImplementedError  # abstract; every registered backend overrides it

    def tile_shape(self, level: int) -> tuple[int, int] | None:
        """(width, height) of the file's own tiles at ``level`` (the unit a read decodes), or None when the
        file has none (strips, a plain image): readers then use their default chunk."""
        return None

    def associated_image_names(self) -> list[str]:
        raise NotImplementedError  # abstract

    def associated_image(self, name: str) -> np.ndarray:
        raise NotImplementedError  # abstract

    def mpp(self) -> tuple[tuple[float, float] | None, str]:
        """(mpp_x, mpp_y) in µm/px at level 0 or None, and where it came from."""
        raise NotImplementedError  # abstract

    def close(self) -> None:
        pass


#: name -> backend class, filled by :func:`register_backend`. Read it through :func:`registered_backends`,
#: which first loads the built-in CZI, DICOM, fastslide, OME-Zarr and plain-image readers and the
#: ``slidescope.readers`` entry points.
BACKENDS: dict[str, type[Backend]] = {}

#: loads the built-in readers once per process (threads wait for it: see :class:`slidescope._plugins.Once`)
_BUILTINS_ONCE = Once()


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Add a backend class to the registry (usable as a class decorator); a later one of the same name wins."""
    if (
        not isinstance(cls, type)
        or not issubclass(cls, Backend)
        or not isinstance(getattr(cls, "name", None), str)
    ):
        raise InvalidParameterError(f"{cls!r} is not a Backend subclass with a name; cannot register it")
    if BACKENDS.get(cls.name, cls) is not cls:
        log.warning("backend %r registered twice; the later one wins", cls.name)
    BACKENDS[cls.name] = cls
    return cls


def registered_backends() -> dict[str, type[Backend]]:
    """The registry (name -> class), after loading the built-in CZI, DICOM, fastslide, OME-Zarr and
    plain-image readers and, once, the plugins."""
    from .._plugins import load_plugins

    _BUILTINS_ONCE(_import_builtin_readers)
    load_plugins("readers")  # then the `slidescope.readers` entry points (a plugin may override a name)
    return BACKENDS


def _import_builtin_readers() -> None:
    """Register the built-in optional readers (their libraries are imported when a file is opened)."""
    from . import _czi, _dicom, _fastslide, _omezarr, _pil  # noqa: F401


def backend_names() -> tuple[str, ...]:
    """The registered backend names, in ``priority`` order."""
    regs = registered_backends()
    return tuple(sorted(regs, key=lambda n: (regs[n].priority, n)))


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
    extensions = (
        ".svs",
        ".tif",
        ".tiff",
        ".ndpi",
        ".vms",
        ".vmu",
        ".scn",
        ".mrxs",
        ".bif",
        ".svslide",
        ".dcm",
    )
    magic = TIFF_MAGIC
    priority = 10
    thread_safe = True  # OpenSlide handles are thread-safe and release the GIL while decoding
    direct_tiff = True

    @classmethod
    def sniff(cls, head: bytes) -> bool:
        return super().sniff(head) or head[128:132] == b"DICM"

    @classmethod
    def directory_entry(cls, folder: Path) -> Path | None:
        """A DICOM-WSI series folder: OpenSlide opens the whole series through any one of its files."""
        dcm = sorted(p for p in folder.glob("*.dcm") if p.is_file())
        return dcm[0] if dcm else None

    def __init__(self, path: Path) -> None:
        if path.is_dir():
            entry = self.directory_entry(path)
            if entry is None:
                raise UnsupportedSlideError(
                    f"{path} is a folder without .dcm files; OpenSlide reads no other folders"
                )
            path = entry
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

    def tile_shape(self, level: int) -> tuple[int, int] | None:
        tw = self.properties.get(f"openslide.level[{level}].tile-width")
        th = self.properties.get(f"openslide.level[{level}].tile-height")
        try:
            return int(tw), int(th)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None

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
    extensions = (
        ".ome.tif",
        ".ome.tiff",
        ".ome.tf2",
        ".ome.tf8",
        ".ome.btf",
        ".qptiff",
        ".tif",
        ".tiff",
        ".svs",
        ".btf",
        ".tf2",
        ".tf8",
        ".ndpi",
        ".scn",
        ".bif",
    )
    magic = TIFF_MAGIC
    priority = 20
    thread_safe = False  # one tifffile handle per slide: reads are serialised
    direct_tiff = True

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

    def tile_shape(self, level: int) -> tuple[int, int] | None:
        tif: Any = getattr(self._slide, "ts_tifffile", None)
        page = tif.series[0].levels[level].keyframe
        return (int(page.tilewidth), int(page.tilelength)) if page.is_tiled else None

    def associated_image_names(self) -> list[str]:
        return sorted(self._slide.associated_images.keys())

    def associated_image(self, name: str) -> np.ndarray:
        return np.asarray(self._slide.associated_images[name])

    def _ome_mpp(self) -> tuple[float, float] | None:
        """PhysicalSizeX/Y of the OME-XML's first image in µm (tiffslide reads only the resolution tags)."""
        tif: Any = getattr(self._slide, "ts_tifffile", None)
        xml = str(tif.pages.first.description or "")
        pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml)
        if pixels is None:
            return None
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0)))
        sizes = []
        for axis in ("X", "Y"):
            value = _float(attrs.get(f"PhysicalSize{axis}"))
            scale = _OME_UNIT_UM.get(attrs.get(f"PhysicalSize{axis}Unit", "µm"))
            if value is None or scale is None:
                return None
            sizes.append(value * scale)
        return sizes[0], sizes[1]

    def mpp(self) -> tuple[tuple[float, float] | None, str]:
        if self._is_ome:
            ome = self._ome_mpp()
            if ome is not None:
                return ome, "OME-XML PhysicalSizeX/Y"
        mx = _float(self.properties.get("tiffslide.mpp-x"))
        my = _float(self.properties.get("tiffslide.mpp-y"))
        if mx is None or my is None:
            return None, "none"
        return (mx, my), "TIFF resolution tags (XResolution/YResolution)" if self._is_ome else _mpp_source(
            self.vendor
        )

    def close(self) -> None:
        self._whole.clear()
        self._slide.close()


def _extension_match(cls: type[Backend], name: str) -> int:
    """Length of the longest of ``cls.extensions`` that ``name`` ends with (0: none)."""
    name = name.lower()
    return max((len(e) for e in cls.extensions if name.endswith(e.lower())), default=0)


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(SNIFF_BYTES)
    except OSError:  # a folder, or unreadable: the backends say why when they try
        return b""


def claims_by_name(path: str | os.PathLike[str]) -> bool:
    """Whether a registered whole-slide backend reads files named like ``path`` (by extension).

    Plain-image formats (``whole_slide_format`` False) do not count: folder listing and the napari
    reader leave PNG/JPEG files alone unless they are named explicitly."""
    name = Path(os.fspath(path)).name
    return any(
        cls.whole_slide_format and _extension_match(cls, name) for cls in registered_backends().values()
    )


def auto_order(path: Path) -> list[str]:
    """Backend names in the order ``backend='auto'`` tries them for this file or folder.

    First the backends whose ``extensions`` match the name (a longer matching ending first, e.g. tiffslide's
    ``.ome.tiff`` before openslide's ``.tiff``; then by ``priority``), then those whose :meth:`Backend.sniff`
    recognises the file's first bytes, by ``priority``. A backend that claims the file neither way is not
    tried, unless none claims it: then every backend is tried, by ``priority``. For a folder, the
    backends whose :meth:`Backend.directory_entry` accepts it."""
    regs = registered_backends()
    path = Path(path)
    if path.is_dir():
        folder = [c for c in regs.values() if c.directory_entry(path) is not None]
        return [c.name for c in sorted(folder, key=lambda c: (c.priority, c.name))]
    head = _head(path)
    by_name = [c for c in regs.values() if _extension_match(c, path.name)]
    by_name.sort(key=lambda c: (-_extension_match(c, path.name), c.priority, c.name))
    sniffed = [c for c in regs.values() if c not in by_name and head and c.sniff(head)]
    sniffed.sort(key=lambda c: (c.priority, c.name))
    order = by_name + sniffed
    if not order:
        order = sorted(regs.values(), key=lambda c: (c.priority, c.name))
    return [c.name for c in order]
