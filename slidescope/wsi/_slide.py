"""`open_slide` and :class:`Slide`: one openslide-shaped interface over several readers."""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._compat import renamed_kwargs
from ..errors import (
    InvalidParameterError,
    MissingMppError,
    SlideNotFoundError,
    SlidescopeError,
    SlideReadError,
    UnsupportedSlideError,
)
from ._backends import (
    Backend,
    _definitive,
    auto_order,
    backend_names,
    max_decode_bytes,
    max_image_pixels,
    registered_backends,
)

log = logging.getLogger(__name__)

__all__ = ["Slide", "open_slide", "MPP_PLAUSIBLE", "MPP_FILLED_IN", "MPP_FROM_MANIFEST"]

#: Level-0 pixel sizes outside this range (µm/px) are not a microscope scan: a TIFF written by
#: ordinary software carries 72 or 96 dpi (353 or 265 µm/px), which must not pass for a real mpp.
MPP_PLAUSIBLE = (0.02, 50.0)

#: Tolerance when choosing a pyramid level for a target mpp: a level up to 1% coarser than the
#: target is still used (and resized up by < 1%) rather than reading 4x more pixels from the level
#: below. The physical extent of a tile is unaffected; only its sampling density differs by < 1%.
LEVEL_MPP_TOLERANCE = 0.01

#: ``Slide.mpp_source`` when the pixel size came from ``slide_mpp`` (the file has none)
MPP_FILLED_IN = "filled in"

#: ``Slide.mpp_source`` when the pixel size came from a manifest's ``slide_mpp`` column (the file has none)
MPP_FROM_MANIFEST = "manifest"


@dataclass(frozen=True)
class _OpenArgs:
    path: Path
    backend: str
    force_slide_mpp: tuple[float, float] | None
    slide_mpp: tuple[float, float] | None = None
    slide_mpp_source: str = MPP_FILLED_IN


class _AssociatedImages(Mapping[str, np.ndarray]):
    """Lazy name -> RGB (h, w, 3) uint8 mapping; images are decoded on access."""

    def __init__(self, slide: Slide) -> None:
        self._slide = slide

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._slide._backend.associated_image_names():
            raise KeyError(name)
        try:
            return _to_rgb(self._slide._backend.associated_image(name))
        except Exception as err:  # noqa: BLE001 - backends raise many types; one slidescope error out
            raise SlideReadError(
                f"{self._slide.path.name}: the associated image {name!r} cannot be decoded "
                f"({type(err).__name__}: {err}). The file is damaged there; the slide's pixels may still read."
            ) from err

    def __iter__(self) -> Iterator[str]:
        return iter(self._slide._backend.associated_image_names())

    def __len__(self) -> int:
        return len(self._slide._backend.associated_image_names())


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    """RGBA/RGB/grey uint8 -> RGB uint8, compositing transparency on white."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.dtype != np.uint8:
        raise SlideReadError(
            f"expected 8-bit pixels, got {arr.dtype}; only 8-bit RGB brightfield slides are supported"
        )
    if arr.shape[2] == 4:
        alpha = arr[..., 3:4]
        if alpha.min() == 255:
            return np.ascontiguousarray(arr[..., :3])
        # openslide returns premultiplied RGBA; fully transparent pixels are (0,0,0,0): add white behind
        rgb = arr[..., :3].astype(np.uint16) + (255 - alpha.astype(np.uint16))
        return np.minimum(rgb, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


class Slide:
    """A whole-slide image opened through one of the registered backends.

    The interface mirrors ``openslide.OpenSlide`` (``dimensions``, ``level_count``,
    ``level_dimensions``, ``level_downsamples``, ``properties``, ``associated_images``,
    ``read_region``, ``get_thumbnail``) with numpy outputs, plus the physical pixel size
    (:attr:`mpp`, :attr:`mpp_source`) and :attr:`magnification`.

    Create it with :func:`open_slide`. A ``Slide`` pickles as its path and options and reopens
    itself in the receiving process, so it can be handed to DataLoader workers.
    """

    def __init__(
        self,
        path: Path,
        backend: Backend,
        *,
        force_slide_mpp: tuple[float, float] | None = None,
        slide_mpp: tuple[float, float] | None = None,
        slide_mpp_source: str = MPP_FILLED_IN,
    ) -> None:
        self.path = path
        self._backend = backend
        self._mpp_override = force_slide_mpp
        self._mpp_default = slide_mpp
        self._mpp_default_source = slide_mpp_source
        self._tiff = None  # fast tile source, made on first use (see tile_source)
        self._tiff_tried = False
        self._backend_closed = False

    # -- openslide-shaped interface ---------------------------------------------------------------
    @property
    def backend(self) -> str:
        """Name of the backend that reads this slide (``"openslide"``, ``"tiffslide"``, ``"pil"``...)."""
        return self._backend.name

    @property
    def thread_safe(self) -> bool:
        """Whether several threads may read this slide at once (the backend's declaration)."""
        return bool(type(self._backend).thread_safe)

    def tile_shape(self, level: int) -> tuple[int, int] | None:
        """(width, height) of the file's own tiles at ``level``, or None when it has none (strips, plain
        images): the natural read unit, e.g. the viewer's chunk shape."""
        shape = self._backend.tile_shape(level)
        return None if shape is None else (int(shape[0]), int(shape[1]))

    @property
    def reader(self) -> str:
        """Library and version that decodes the pixels, for provenance."""
        return self._backend.library

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self._backend.dimensions

    @property
    def level_count(self) -> int:
        return len(self._backend.level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of every pyramid level."""
        return self._backend.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._backend.level_downsamples

    @property
    def properties(self) -> dict[str, str]:
        """Metadata as strings, with openslide's key names (``openslide.mpp-x``...)."""
        return dict(self._backend.properties)

    @property
    def associated_images(self) -> Mapping[str, np.ndarray]:
        """Label, macro, thumbnail... as RGB arrays, decoded lazily."""
        return _AssociatedImages(self)

    @property
    def vendor(self) -> str | None:
        return self._backend.properties.get("openslide.vendor")

    # -- physical size ----------------------------------------------------------------------------
    @property
    def mpp(self) -> tuple[float, float]:
        """(x, y) micrometres per level-0 pixel.

        Raises :class:`MissingMppError` when neither the file nor the caller gives a plausible one.
        """
        mpp, _ = self._resolve_mpp()
        return mpp

    @property
    def mpp_source(self) -> str:
        """Where :attr:`mpp` came from: ``"user"`` (``force_slide_mpp=``, overriding the file), ``"filled in"``
        (``slide_mpp=``, the file has no plausible pixel size; ``"manifest"`` when a batch took it from the
        manifest's ``slide_mpp`` column: ``slide_mpp_source=``) or the metadata that gave it
        (``"Aperio ImageDescription (MPP)"``...)."""
        _, source = self._resolve_mpp()
        return source

    def _resolve_mpp(self) -> tuple[tuple[float, float], str]:
        if self._mpp_override is not None:
            return self._mpp_override, "user"
        found, source = self._backend.mpp()
        lo, hi = MPP_PLAUSIBLE
        if self._mpp_default is not None and (found is None or not all(lo <= v <= hi for v in found)):
            return self._mpp_default, self._mpp_default_source
        if found is None:
            raise MissingMppError(
                f"{self.path.name} carries no pixel size (µm/px) in its metadata. Pass it yourself: "
                f"open_slide(path, slide_mpp=0.25), or `--slide-mpp 0.25` on the command line (0.25 for a 40x scan, "
                f"0.5 for 20x; check the scanner's report)."
            )
        if not all(lo <= v <= hi for v in found):
            raise MissingMppError(
                f"{self.path.name}: the {source} say {found[0]:.4g} µm/px, which is not a microscope scan "
                f"(plausible: {lo}-{hi} µm/px; 72 dpi software defaults give 353). Pass the real pixel size: "
                f"open_slide(path, slide_mpp=...), or `--slide-mpp` on the command line."
            )
        return found, source

    @property
    def has_mpp(self) -> bool:
        try:
            self._resolve_mpp()
        except MissingMppError:
            return False
        return True

    @property
    def magnification(self) -> float | None:
        """Objective power from the metadata, else the usual 10 / mpp (20x ~ 0.5 µm/px), else None."""
        power = self._backend.properties.get("openslide.objective-power")
        try:
            value = float(power) if power is not None else None
        except ValueError:
            value = None
        if value and value > 0:
            return value
        if self.has_mpp:
            return 10.0 / float(np.mean(self.mpp))
        return None

    @property
    def magnification_source(self) -> str:
        power = self._backend.properties.get("openslide.objective-power")
        if power not in (None, "", "None"):
            return "metadata (objective power)"
        return "estimated as 10 / mpp" if self.has_mpp else "none"

    def level_mpp(self, level: int) -> tuple[float, float]:
        """(x, y) µm/px of a pyramid level (from its real size ratio to level 0)."""
        w0, h0 = self.dimensions
        w, h = self.level_dimensions[level]
        mx, my = self.mpp
        return mx * w0 / w, my * h0 / h

    def best_level_for_mpp(self, mpp: float) -> int:
        """The coarsest level whose pixels are at least as fine as ``mpp`` (1% tolerance)."""
        best = 0
        for level in range(self.level_count):
            lx, ly = self.level_mpp(level)
            if max(lx, ly) <= mpp * (1 + LEVEL_MPP_TOLERANCE):
                best = level
        return best

    # -- pixels -----------------------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read a region as RGB ``uint8 (h, w, 3)``.

        Parameters
        ----------
        location : (x, y) top-left in level-0 pixels.
        level : pyramid level to read from.
        size : (w, h) in pixels of that level.

        Transparent pixels are composited on white; the parts outside the slide are white.
        A region that cannot be decoded raises :class:`SlideReadError` naming slide and region.
        """
        x, y = (int(v) for v in location)
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0:
            raise InvalidParameterError(f"region size must be positive, got {size}")
        budget = max_decode_bytes()
        if w * h * 4 > budget:  # the backend hands back RGBA
            raise InvalidParameterError(
                f"a {w}x{h} px region needs {w * h * 4 / 2**20:.0f} MiB, over the decode budget of "
                f"{budget / 2**20:.0f} MiB per read: read it in blocks (or raise SLIDESCOPE_MAX_DECODE_MB)"
            )
        if not 0 <= level < self.level_count:
            raise InvalidParameterError(
                f"level {level} does not exist; {self.path.name} has {self.level_count}"
            )
        ds_x, ds_y = self._level_scale(level)
        lw, lh = self.level_dimensions[level]
        # the requested region in this level's pixel grid
        lx0, ly0 = int(np.floor(x / ds_x)), int(np.floor(y / ds_y))
        cx0, cy0 = max(lx0, 0), max(ly0, 0)
        cx1, cy1 = min(lx0 + w, lw), min(ly0 + h, lh)
        if cx0 == lx0 and cy0 == ly0 and cx1 == lx0 + w and cy1 == ly0 + h:
            return self._read_inside((x, y), level, (w, h))
        out = np.full((h, w, 3), 255, np.uint8)
        if cx1 > cx0 and cy1 > cy0:
            loc0 = (int(round(cx0 * ds_x)), int(round(cy0 * ds_y))) if level else (cx0, cy0)
            part = self._read_inside(loc0, level, (cx1 - cx0, cy1 - cy0))
            out[cy0 - ly0 : cy1 - ly0, cx0 - lx0 : cx1 - lx0] = part
        return out

    def _level_scale(self, level: int) -> tuple[float, float]:
        w0, h0 = self.dimensions
        w, h = self.level_dimensions[level]
        return w0 / w, h0 / h

    def _read_inside(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        try:
            return _to_rgb(self._backend.read_region(location, level, size))
        except SlidescopeError as err:
            if not isinstance(err, SlideReadError):
                raise
            raise SlideReadError(
                f"{self.path.name}: cannot decode the region at level-0 (x={location[0]}, y={location[1]}), "
                f"level {level}, size {size[0]}x{size[1]} ({self.backend}: {err}). The file is probably "
                f"corrupt there: re-export or re-scan it, or exclude that region."
            ) from err
        except Exception as err:  # noqa: BLE001 - a reader's own bug on an odd file: one slide fails, not the batch
            raise SlideReadError(
                f"{self.path.name}: the {self.backend} reader failed on the region at level-0 (x={location[0]}, "
                f"y={location[1]}), level {level}, size {size[0]}x{size[1]} ({type(err).__name__}: {err}). The "
                f"file's structure is unusual or damaged: re-export it as a tiled pyramidal TIFF (e.g. "
                f"`vips tiffsave in out.tif --tile --pyramid --compression jpeg`)."
            ) from err

    def get_thumbnail(self, size: tuple[int, int]) -> np.ndarray:
        """RGB ``uint8 (h, w, 3)`` of the whole slide, fitting in ``size=(w, h)``, aspect kept.

        Read from the coarsest level that is at least as detailed as the thumbnail, block by block
        and area-averaged, so memory stays bounded even for a single-level gigapixel slide."""
        from ._downsample import read_downsampled

        w0, h0 = self.dimensions
        scale = max(w0 / size[0], h0 / size[1], 1.0)
        level = 0
        for lv, ds in enumerate(self.level_downsamples):
            if ds <= scale:
                level = lv
        tw, th = max(1, round(w0 / scale)), max(1, round(h0 / scale))
        return read_downsampled(self, level, (tw, th))

    def tile_source(self):  # -> _tiff.TiffTileSource | None
        """The direct TIFF tile decoder for this file, or None where it does not apply (the file is not a
        tiled TIFF, or the backend does not allow it: ``direct_tiff`` of its class)."""
        if not self._tiff_tried and not type(self._backend).direct_tiff:
            self._tiff_tried = True
        if not self._tiff_tried:
            from ._tiff import TiffTileSource

            self._tiff_tried = True
            self._tiff = TiffTileSource.open(self.path, self.level_dimensions)
            if self._tiff is not None:
                # through a weak reference: a bound method would make a Slide <-> source cycle, and a
                # cycle is freed by the garbage collector in any order, file handles before close()
                ref = weakref.ref(self)

                def fallback(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
                    slide = ref()
                    if slide is None:
                        raise SlideReadError("the slide was closed")
                    return slide._read_level_region(level, x, y, w, h)

                self._tiff.fallback = fallback
        return self._tiff

    def _read_level_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB of a region inside a level, in level pixels, read through the backend (the fast reader's
        fallback). Raises SlideReadError with the backend's own words."""
        loc = (x, y)
        if level:
            dsx, dsy = self._level_scale(level)
            # the smallest level-0 coordinate that maps back to level pixel (x, y) (see read_region)
            loc = (int(np.ceil(x * dsx - 1e-9)), int(np.ceil(y * dsy - 1e-9)))
        try:
            return _to_rgb(self._backend.read_region(loc, level, (w, h)))
        except SlidescopeError:
            raise
        except Exception as err:  # noqa: BLE001 - a reader's own bug on an odd file is its verdict too
            raise SlideReadError(f"{self.backend}: {type(err).__name__}: {err}") from err

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the file handles (also done when the object is garbage collected)."""
        backend, self._backend_closed = self._backend, True
        backend.close()
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None

    def __del__(self) -> None:
        if not getattr(self, "_backend_closed", True):
            try:
                self.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown: nothing useful to report
                log.debug("closing %s at garbage collection failed", getattr(self, "path", "?"))

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        args = _OpenArgs(
            self.path, self.backend, self._mpp_override, self._mpp_default, self._mpp_default_source
        )
        return (_reopen, (args,))

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({str(self.path)!r}, backend={self.backend!r}, {w}x{h}, levels={self.level_count})"


def _check_size(path: Path, backend: Backend) -> None:
    """Refuse an image larger than the pixel limit before anything is decoded (decompression bombs)."""
    w, h = backend.dimensions
    limit = max_image_pixels()
    if int(w) * int(h) > limit:
        backend.close()
        raise _definitive(
            UnsupportedSlideError(
                f"{path.name} declares a {w}x{h} px image ({int(w) * int(h) / 1e9:.3g} gigapixels), over the limit "
                f"of {limit / 1e9:.3g} gigapixels (MAX_IMAGE_PIXELS): a forged or damaged header, or a decompression "
                f"bomb. If the image is real, raise the limit: SLIDESCOPE_MAX_IMAGE_PIXELS={int(w) * int(h)}."
            )
        )


def _reopen(args: _OpenArgs) -> Slide:
    return open_slide(
        args.path,
        backend=args.backend,
        force_slide_mpp=args.force_slide_mpp,
        slide_mpp=args.slide_mpp,
        slide_mpp_source=args.slide_mpp_source,
    )


def _check_mpp(mpp: float | tuple[float, float] | None) -> tuple[float, float] | None:
    if mpp is None:
        return None
    pair = (mpp, mpp) if np.isscalar(mpp) else tuple(mpp)  # type: ignore[arg-type]
    if len(pair) != 2 or not all(np.isfinite(v) and v > 0 for v in pair):
        raise InvalidParameterError(
            f"mpp must be a positive number of µm per pixel (or an (x, y) pair), got {mpp!r}"
        )
    return float(pair[0]), float(pair[1])


@renamed_kwargs(mpp="force_slide_mpp", default_mpp="slide_mpp")
def open_slide(
    path: str | os.PathLike[str],
    *,
    backend: str = "auto",
    slide_mpp: float | tuple[float, float] | None = None,
    force_slide_mpp: float | tuple[float, float] | None = None,
    slide_mpp_source: str = MPP_FILLED_IN,
) -> Slide:
    """Open a whole-slide image.

    Parameters
    ----------
    path : str or os.PathLike
        The slide file (SVS, NDPI, MRXS, SCN, BIF, DICOM, Philips TIFF, OME-TIFF, QPTIFF, generic tiled
        TIFF, Zeiss CZI..., or a plain PNG/JPEG/flat TIFF with ``slide_mpp``), a DICOM-WSI or OME-Zarr
        folder, or an fsspec URL of a single-file slide (``s3://...``), read through a local copy in the slide cache.
    backend : str, default "auto"
        A registered reader (``"openslide"``, ``"tiffslide"``, ``"czi"``, ``"wsidicom"``, ``"ome-zarr"``,
        ``"pil"``, ``"fastslide"`` and any plugin's; see
        :func:`slidescope.wsi.backend_names`) or ``"auto"``: the readers that claim the file by its
        extension, then by its first bytes, in their priority order (OpenSlide first, tiffslide first for
        OME-TIFF/QPTIFF names, Pillow for PNG/JPEG and for a flat TIFF the others refuse).
    slide_mpp : float or (float, float), optional
        Level-0 µm per pixel used only when the file has no plausible one (``mpp_source`` is
        ``"filled in"``); a file's own pixel size wins. The command line's ``--slide-mpp``. Formerly
        ``default_mpp`` (still accepted for one release, with a DeprecationWarning).
    force_slide_mpp : float or (float, float), optional
        Level-0 µm per pixel, overriding the file's metadata (one number, or (x, y)); ``mpp_source`` is
        ``"user"``. The command line's ``--force-slide-mpp``. Formerly ``mpp`` (still accepted for one
        release, with a DeprecationWarning): ``mpp`` now only ever means a target resolution.
    slide_mpp_source : str, default "filled in"
        What ``mpp_source`` says when ``slide_mpp`` is used: the batch commands pass ``"manifest"`` for a
        value from a manifest's ``slide_mpp`` column.

    Returns
    -------
    Slide
        OpenSlide's vocabulary: ``dimensions`` (w, h) at level 0, ``level_count``, ``level_dimensions``,
        ``level_downsamples``, ``properties``, ``associated_images``; ``read_region((x, y), level, (w, h))``
        returns RGB ``uint8 (h, w, 3)``; plus ``mpp`` (x, y) and ``mpp_source``. A context manager.

    Raises
    ------
    SlideNotFoundError
        No such file.
    UnsupportedSlideError
        No backend can open it (not a slide, unknown compression, truncated file); it is not 8-bit RGB
        brightfield (16-bit or float samples, greyscale, fluorescence/multiplex channels); or it is over
        a size limit: more than ``SLIDESCOPE_MAX_IMAGE_PIXELS`` level-0 pixels (default 1e11), or strips
        or tiles that decode to more than ``SLIDESCOPE_MAX_DECODE_MB`` each (default 512), checked from
        the headers before anything is decoded.
    InvalidParameterError
        Unknown backend or an implausible ``mpp``.

    Examples
    --------
    >>> import slidescope as ss
    >>> slide = ss.open_slide("sample_data/sample_slide.tiff")   # the repository's synthetic sample
    >>> slide.dimensions, slide.level_count, slide.mpp, slide.mpp_source
    ((4096, 3072), 2, (0.5, 0.5), 'Aperio ImageDescription (MPP)')
    >>> slide.read_region((1024, 1024), 0, (256, 128)).shape    # (h, w, 3) uint8 RGB
    (128, 256, 3)
    >>> ss.open_slide("scan.tif", slide_mpp=0.25)                 # doctest: +SKIP
    """
    from ._remote import is_url, localize_slide

    if is_url(path):  # s3://, gs://, https://...: read through a local copy (see _remote.py)
        path = localize_slide(path)
    elif isinstance(path, str) and path.startswith("file://"):
        path = path[len("file://") :]
    p = Path(path).expanduser()
    if not p.exists():
        from ._inputs import broken_link_message

        broken = broken_link_message(p)  # a dangling link or a link loop: say so, not "no such slide"
        raise SlideNotFoundError(
            broken or f"no such slide: {p}. Check the path (relative paths are from {Path.cwd()})."
        )
    override = _check_mpp(force_slide_mpp)
    fill = _check_mpp(slide_mpp)
    regs = registered_backends()
    if backend == "auto":
        names = auto_order(p)
    elif backend in regs:
        names = [backend]
    else:
        raise InvalidParameterError(
            f"unknown backend {backend!r}; choose 'auto' or one of {', '.join(backend_names())}"
        )
    targets = {name: p for name in names}
    if p.is_dir():
        # a folder slide (a DICOM-WSI series, an OME-Zarr image): each backend names what it opens, or declines
        found = {name: regs[name].directory_entry(p) for name in names}
        targets = {name: entry for name, entry in found.items() if entry is not None}
        if not targets:
            raise SlideNotFoundError(
                f"{p} is a directory, not a slide (no slide reader opens it as one: a DICOM-WSI series folder "
                f"holds .dcm files, an OME-Zarr image its multiscales metadata). Pass a slide file (for a "
                f"batch, use `slidescope` batch commands on the folder)."
            )
    from ._tiff import pixel_format_problem

    for target in dict.fromkeys(targets.values()):
        problem = pixel_format_problem(target)  # before any backend: a backend would read it as RGB anyway
        if problem is not None:
            raise _definitive(UnsupportedSlideError(f"{target.name} {problem}"))
    errors: list[str] = []
    for name, p in targets.items():
        try:
            opened = regs[name](p)
        except UnsupportedSlideError as err:
            if getattr(err, "definitive", False):
                raise
            errors.append(f"{name}: {err}")
            log.debug("backend %s could not open %s: %s", name, p, err)
            continue
        except SlidescopeError:
            raise
        except Exception as err:  # noqa: BLE001 - a library's own bug on an odd file: try the next backend
            errors.append(f"{name}: {type(err).__name__}: {err}")
            log.debug("backend %s failed on %s", name, p, exc_info=True)
            continue
        _check_size(p, opened)
        return Slide(p, opened, force_slide_mpp=override, slide_mpp=fill, slide_mpp_source=slide_mpp_source)
    raise UnsupportedSlideError(
        f"cannot open {p.name} as a slide ({'; '.join(errors)}). Is it a whole-slide image? Supported: "
        f"SVS, NDPI, MRXS, SCN, BIF, DICOM, Philips TIFF, OME-TIFF, QPTIFF, tiled TIFF, CZI, OME-Zarr, and "
        f"PNG/JPEG/flat TIFF with --slide-mpp (readers: {', '.join(backend_names())}). A truncated or corrupt file gives "
        f"this error too: check its size and checksum."
    )
