"""The DICOM whole-slide backend: VL Whole Slide Microscopy series read with wsidicom (extra ``dicom``).

A DICOM WSI slide is a series: one ``.dcm`` instance per pyramid level (tiled JPEG / JPEG 2000 frames),
plus label, overview and thumbnail instances, usually in one folder. Given one ``.dcm`` file, this
backend reads the instances of that file's series (SeriesInstanceUID) in its folder, as OpenSlide does;
a folder opens through its first ``.dcm`` file. The slide is named after its folder (see
:func:`slidescope.wsi.dicom_series_name`).

**Why a second DICOM reader.** OpenSlide 4 reads DICOM WSI itself and stays first in ``auto``: on
CMU-1-Small-Region converted by wsidicomizer both readers give the same levels, pixel size and pixels
(tests/wsi/test_dicom.py). This backend is tried when OpenSlide refuses a series. The case seen in the
field is an instance without the ImageType attribute, which says whether an image is a pyramid level
(``VOLUME``), a ``LABEL``, an ``OVERVIEW`` or a ``THUMBNAIL``: OpenSlide stops with "Couldn't get image
flavor" and wsidicom skips the file. Here the flavour of an instance without ImageType is inferred: a
pyramid level when its frames (tiles) have the size of the largest image's and its total pixel matrix
the same aspect ratio (within 1 %); otherwise it is left out (a label, overview or thumbnail cannot be
told apart without ImageType, so such a series shows no associated images). OpenSlide stays first
because it is a core dependency (wsidicom is an optional extra) and reads the same pixels; the two read
at a similar speed (CMU-1 as DICOM, 88 reads of 256x256 px from a fresh open: about 0.2-0.5 s each on a
busy 2-core machine, wsidicom not slower). Choose it with ``backend="wsidicom"``.

Only 8-bit RGB brightfield series are read (three samples per pixel, one optical path): fluorescence
(several optical paths, one grey sample each) is refused in one line, like a multiplex TIFF. The
pixel size comes from the base level's PixelSpacing (Pixel Measures, in mm).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideReadError, UnsupportedSlideError
from ._backends import Backend, _definitive, max_decode_bytes, register_backend
from ._tiff import fluorescence_refusal

log = logging.getLogger(__name__)

__all__ = ["DicomBackend"]

#: SOP class of VL Whole Slide Microscopy Image Storage
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"

#: the ImageType given to an instance that has none and is taken for a pyramid level
_VOLUME_TYPE = ["DERIVED", "PRIMARY", "VOLUME", "NONE"]

#: header attributes read to choose a series and infer missing flavours (pixel data is not read)
_HEADER_TAGS = [
    "SOPClassUID",
    "SeriesInstanceUID",
    "ImageType",
    "TotalPixelMatrixColumns",
    "TotalPixelMatrixRows",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "NumberOfOpticalPaths",
    "Manufacturer",
    "ManufacturerModelName",
    "ContainerIdentifier",
]


def _import() -> Any:
    try:
        import pydicom  # sets its logger's level on import: before the level is changed below

        quiet = logging.getLogger("pydicom")
        level = quiet.level
        with warnings.catch_warnings():
            # dicomweb-client (a wsidicom dependency) imports a pydicom function deprecated in pydicom 3:
            # their DeprecationWarning (which pydicom also logs), not ours, raised once at import
            warnings.simplefilter("ignore", DeprecationWarning)
            quiet.setLevel(logging.ERROR)
            try:
                import wsidicom
            finally:
                quiet.setLevel(level)
    except ImportError as err:
        # not MissingDependencyError: in `auto` this is one reader's refusal among others (OpenSlide's reason
        # is shown beside it), and a batch goes on with its other slides
        raise UnsupportedSlideError(
            "wsidicom is not installed; it reads the DICOM WSI series that OpenSlide refuses (e.g. without "
            "ImageType): `pip install 'slidescope[dicom]'`"
        ) from err
    return pydicom, wsidicom


def _dcm_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.lower().endswith(".dcm") and p.is_file())


def _headers(pydicom: Any, files: list[Path]) -> list[tuple[Path, Any]]:
    """(file, header) of the VL WSI instances among ``files``; an unreadable file is skipped (logged)."""
    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except Exception as err:  # noqa: BLE001 - pydicom raises many types on damaged headers
            log.info("%s is not a readable DICOM file: %s: %s", f, type(err).__name__, err)
            continue
        if str(ds.get("SOPClassUID", "")) == WSI_SOP_CLASS:
            out.append((f, ds))
    return out


def _area(ds: Any) -> int:
    return int(ds.get("TotalPixelMatrixColumns", 0) or 0) * int(ds.get("TotalPixelMatrixRows", 0) or 0)


def _series(pydicom: Any, path: Path) -> list[tuple[Path, Any]]:
    """The instances of the slide at ``path`` (a folder: its largest image's series; a file: that file's)."""
    folder = path if path.is_dir() else path.parent
    found = _headers(pydicom, _dcm_files(folder))
    if path.is_dir():
        chosen = max(found, key=lambda item: _area(item[1]), default=None)
    else:
        chosen = next((item for item in found if item[0] == path), None)
    if chosen is None:
        what = (
            "no VL Whole Slide Microscopy instance"
            if path.is_dir()
            else "not a VL Whole Slide Microscopy image"
        )
        raise UnsupportedSlideError(
            f"{path.name}: {what} (SOP class {WSI_SOP_CLASS}) could be read: a truncated or corrupt .dcm "
            "file, or a DICOM file of another kind; check the file, or export the slide again from its source"
        )
    uid = chosen[1].get("SeriesInstanceUID")
    series = [item for item in found if item[1].get("SeriesInstanceUID") == uid]
    if len(series) < len(found):
        log.info("%s: %d instance(s) of other series left out", folder, len(found) - len(series))
    return series


def _flavours(series: list[tuple[Path, Any]]) -> dict[Path, list[str] | None]:
    """The ImageType to give each instance that has none (None: keep the file's own; [] : leave it out)."""
    base = max((ds for _, ds in series), key=_area)
    ratio = int(base.TotalPixelMatrixColumns) / max(int(base.TotalPixelMatrixRows), 1)
    out: dict[Path, list[str] | None] = {}
    for f, ds in series:
        if ds.get("ImageType"):
            out[f] = None
            continue
        rows = max(int(ds.get("TotalPixelMatrixRows", 0) or 0), 1)
        own = int(ds.get("TotalPixelMatrixColumns", 0) or 0) / rows
        frames = (ds.get("Rows"), ds.get("Columns")) == (base.get("Rows"), base.get("Columns"))
        out[f] = list(_VOLUME_TYPE) if frames and abs(own / ratio - 1) <= 0.01 else []
    left = sorted(f.name for f, flavour in out.items() if flavour == [])
    if left:
        log.info(
            "%d instance(s) without ImageType and not shaped like a pyramid level left out (a label, "
            "overview or thumbnail cannot be told apart without it): %s",
            len(left),
            ", ".join(left),
        )
    return out


def _check_pixels(path: Path, series: list[tuple[Path, Any]]) -> None:
    """Refuse what is not 8-bit RGB brightfield, and frames over the decode budget, from the headers."""
    base = max((ds for _, ds in series), key=_area)
    samples = int(base.get("SamplesPerPixel", 3) or 3)
    paths = int(base.get("NumberOfOpticalPaths", 1) or 1)
    bits = int(base.get("BitsAllocated", 8) or 8)
    if samples != 3 and paths > 1:
        dtype = f"uint{bits}"
        raise _definitive(UnsupportedSlideError(f"{path.name} {fluorescence_refusal(paths, [], dtype)}"))
    if samples != 3 or bits != 8:
        raise _definitive(
            UnsupportedSlideError(
                f"{path.name} stores {samples} sample(s) of {bits} bits per pixel, not 8-bit RGB: slidescope "
                "reads RGB brightfield images (H&E, IHC)"
            )
        )
    for f, ds in series:
        frame = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * 3
        if frame > max_decode_bytes():
            raise _definitive(
                UnsupportedSlideError(
                    f"{f.name}: frames of {ds.Columns}x{ds.Rows} px decode to {frame / 2**20:.0f} MiB each, "
                    "over the decode budget (SLIDESCOPE_MAX_DECODE_MB): a damaged header or a decompression "
                    "bomb"
                )
            )


def _open_wsi(wsidicom: Any, series: list[tuple[Path, Any]], flavours: dict[Path, list[str] | None]) -> Any:
    """A wsidicom.WsiDicom over the series' files, with the inferred ImageType of instances that lack one."""
    from wsidicom.file import WsiDicomFileSource
    from wsidicom.file.io import WsiDicomIO

    class _FlavouredIO(WsiDicomIO):
        """A file whose header gets the inferred ImageType when it has none (the file is not changed)."""

        image_type: list[str] | None = None

        def read_dataset(self, force: bool = False) -> Any:
            ds = super().read_dataset(force)
            if self.image_type and "ImageType" not in ds:
                ds.ImageType = self.image_type
            return ds

    streams = []
    for f, _ in series:
        flavour = flavours[f]
        if flavour == []:
            continue
        io = _FlavouredIO(open(f, "rb"), filepath=f, owned=True)  # noqa: SIM115 - the WsiDicom owns it
        io.image_type = flavour
        streams.append(io)
    try:
        return wsidicom.WsiDicom(WsiDicomFileSource(streams), True)
    except Exception:
        for io in streams:
            io.close()
        raise


@register_backend
class DicomBackend(Backend):
    """wsidicom: DICOM WSI series (a folder of .dcm or one .dcm), including those OpenSlide refuses."""

    name = "wsidicom"
    extensions = (".dcm",)
    priority = 30  # after OpenSlide, which reads the series it accepts faster
    thread_safe = True  # frame reads take wsidicom's per-file lock; decoding runs outside it
    direct_tiff = False  # not a TIFF

    @classmethod
    def sniff(cls, head: bytes) -> bool:
        return head[128:132] == b"DICM"

    @classmethod
    def directory_entry(cls, folder: Path) -> Path | None:
        """A DICOM-WSI series folder opens through its first ``.dcm`` file (its series), as with OpenSlide:
        stores record that file's fingerprint."""
        dcm = _dcm_files(folder)
        return dcm[0] if dcm else None

    def __init__(self, path: Path) -> None:
        pydicom, wsidicom = _import()
        series = _series(pydicom, path)
        _check_pixels(path, series)
        flavours = _flavours(series)
        try:
            self._wsi = _open_wsi(wsidicom, series, flavours)
        except Exception as err:  # noqa: BLE001 - wsidicom raises its own and pydicom's many types
            raise UnsupportedSlideError(
                f"wsidicom cannot open {path.name}: {type(err).__name__}: {err}. Check that the series is "
                f"complete (every level's .dcm file), or export the slide again"
            ) from err
        self.library = f"wsidicom {wsidicom.__version__} / pydicom {pydicom.__version__}"
        self._levels = list(self._wsi.levels.levels)
        self.level_dimensions = tuple((int(lv.size.width), int(lv.size.height)) for lv in self._levels)
        self.dimensions = self.level_dimensions[0]
        w0, h0 = self.dimensions
        self._scales = [(w0 / w, h0 / h) for w, h in self.level_dimensions]
        self.level_downsamples = tuple((sx + sy) / 2 for sx, sy in self._scales)  # as OpenSlide computes them
        spacing = self._levels[0].pixel_spacing  # mm per pixel
        mx, my = (float(spacing.width) * 1000, float(spacing.height) * 1000) if spacing else (0.0, 0.0)
        self._mpp = (mx, my) if mx > 0 and my > 0 and np.isfinite(mx + my) else None
        self.properties = self._properties(series)

    def _properties(self, series: list[tuple[Path, Any]]) -> dict[str, str]:
        base = max((ds for _, ds in series), key=_area)
        props = {
            "openslide.vendor": "dicom",
            "openslide.level-count": str(len(self._levels)),
            "dicom.series-instance-uid": str(series[0][1].get("SeriesInstanceUID", "")),
        }
        if self._mpp is not None:
            props["openslide.mpp-x"], props["openslide.mpp-y"] = (f"{v:g}" for v in self._mpp)
        for key in ("Manufacturer", "ManufacturerModelName", "ContainerIdentifier"):
            value = base.get(key)
            if value:
                props[f"dicom.{key}"] = str(value)
        for i, lv in enumerate(self._levels):
            props[f"openslide.level[{i}].tile-width"] = str(int(lv.tile_size.width))
            props[f"openslide.level[{i}].tile-height"] = str(int(lv.tile_size.height))
        return props

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        sx, sy = self._scales[level]
        # the level pixel whose level-0 span holds the location (Slide maps level pixels to level 0 and back)
        x, y = int(np.floor(location[0] / sx + 1e-9)), int(np.floor(location[1] / sy + 1e-9))
        try:
            image = self._wsi.read_region((x, y), self._levels[level].level, tuple(size))
        except Exception as err:  # noqa: BLE001 - frame decoding errors come from several codecs
            raise SlideReadError(f"{type(err).__name__}: {err}") from err
        return np.asarray(image.convert("RGB") if image.mode not in ("RGB", "RGBA") else image)

    def tile_shape(self, level: int) -> tuple[int, int] | None:
        ts = self._levels[level].tile_size
        return int(ts.width), int(ts.height)

    def _associated(self) -> dict[str, Any]:
        """OpenSlide's names of the associated images -> the wsidicom series holding them."""
        present = {
            "label": self._wsi.labels,
            "macro": self._wsi.overviews,
            "thumbnail": self._wsi.pyramid.thumbnails,
        }
        return {name: series for name, series in present.items() if series is not None and len(series) > 0}

    def associated_image_names(self) -> list[str]:
        return sorted(self._associated())

    def associated_image(self, name: str) -> np.ndarray:
        series = self._associated()[name]  # KeyError for a name the series lacks
        try:
            image = series[0].get_default_full()
        except Exception as err:  # noqa: BLE001 - frame decoding errors come from several codecs
            raise SlideReadError(f"{name}: {type(err).__name__}: {err}") from err
        return np.asarray(image.convert("RGB"))

    def mpp(self) -> tuple[tuple[float, float] | None, str]:
        if self._mpp is None:
            return None, "none"
        return self._mpp, "DICOM PixelSpacing (Pixel Measures)"

    def close(self) -> None:
        self._wsi.close()
