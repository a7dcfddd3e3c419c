"""Fluorescence and multiplex TIFFs in napari: one false-colour image layer per channel, for viewing only.

:func:`slidescope.wsi.open_slide` refuses a multiplex/fluorescence image (a PerkinElmer QPTIFF with one
grey page per channel, an OME-TIFF with several channels, several grey planes, samples beyond RGB): the
encoders are for brightfield scans. The napari reader still shows such a file, read by tifffile:

- one image layer per channel (napari's ``channel_axis``), additive blending on black, each in a false
  colour: the file's own (OME ``Channel/@Color``, QPTIFF ``<Color>``), else blue for a DAPI/Hoechst
  channel and green, red, magenta, cyan, yellow, orange, white for the others in turn (the three samples
  of a 16-bit RGB image: red, green, blue);
- channel names from the metadata (OME ``Channel/@Name``, QPTIFF ``<Name>``), else ``channel 1`` ...;
- contrast limits per channel from the 0.5 and 99.9 percentiles of the coarsest pyramid level (at most
  2048 x 2048 px of it, from its centre), the dtype's range where that is flat;
- lazily: every pyramid level is a dask array over tifffile's zarr view of the file, chunked to its
  tiles; napari reads only the chunks it shows, level 0 is never read whole;
- in µm when the pixel size is known (OME ``PhysicalSizeX/Y``, else the TIFF resolution tags in cm or
  inch, as QPTIFF stores it), else in pixels.

Axes other than the channels and Y, X (Z, time) are shown at their first index. The layers' metadata
have ``kind="fluorescence"`` and ``refusal``: the one-line reason open_slide gave, which the analysis
widgets show instead of analysing (analysis needs a brightfield slide).
"""

from __future__ import annotations

import logging
import os
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "FLUORESCENCE_KIND",
    "FluorescenceImage",
    "analysis_refusal",
    "fluorescence_layer_data",
    "open_fluorescence",
    "viewing_only",
]

#: ``metadata["slidescope"]["kind"]`` of a fluorescence channel layer
FLUORESCENCE_KIND = "fluorescence"
#: false colours (RGB 0-1) for channels whose file names none, in turn (DAPI/Hoechst take blue)
PALETTE = (
    ("green", (0.0, 1.0, 0.0)),
    ("red", (1.0, 0.0, 0.0)),
    ("magenta", (1.0, 0.0, 1.0)),
    ("cyan", (0.0, 1.0, 1.0)),
    ("yellow", (1.0, 1.0, 0.0)),
    ("orange", (1.0, 0.5, 0.0)),
    ("white", (1.0, 1.0, 1.0)),
)
BLUE = (0.0, 0.0, 1.0)
#: channel names taken for a nuclear counterstain (shown blue)
_NUCLEAR = re.compile(r"dapi|hoechst|nuclear|nuclei|draq", re.I)
#: percentiles of the coarsest level giving the contrast limits
CONTRAST_PERCENTILES = (0.5, 99.9)
#: side of the central window of the coarsest level read for the contrast limits
CONTRAST_WINDOW = 2048
#: µm per pixel taken as plausible from the metadata
_MPP_RANGE = (0.01, 1000.0)


@dataclass
class FluorescenceImage:
    """A multi-channel TIFF opened for viewing: lazy levels ``(C, Y, X)``, largest first, and its metadata."""

    path: Path
    levels: list[Any]  # dask arrays (C, Y, X)
    names: list[str]
    colors: list[tuple[float, float, float]]
    mpp: tuple[float, float] | None
    mpp_source: str
    axes: str  # the file's own axes of the main series
    _tif: Any = field(default=None, repr=False)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.levels[0].dtype)

    def close(self) -> None:
        """Close the file under the lazy arrays now (else when the last of them is garbage collected)."""
        if self._tif is not None:
            self._tif.close()


def _channel_axis(axes: str, shape: tuple[int, ...]) -> int | None:
    """Index of the channel axis of a series: C, else contiguous samples S (beyond one), else a plane axis."""
    for letter in "CSQI":
        if letter in axes and (letter != "S" or shape[axes.index(letter)] > 1):
            return axes.index(letter)
    return None


def _ome_channels(xml: str) -> tuple[list[str], list[tuple[float, float, float] | None], tuple | None]:
    """Names, colours and (mpp_x, mpp_y) of the first image of an OME-XML document (empty when absent)."""
    image = re.search(r"<(?:\w+:)?Image[ >].*?</(?:\w+:)?Image>", xml, re.S)
    block = image.group(0) if image else xml
    names: list[str] = []
    colors: list[tuple[float, float, float] | None] = []
    for channel in re.findall(r"<(?:\w+:)?Channel\b[^>]*>", block):
        name = re.search(r'\bName="([^"]*)"', channel)
        names.append(name.group(1) if name else "")
        color = re.search(r'\bColor="(-?\d+)"', channel)
        colors.append(_rgba_int(int(color.group(1))) if color else None)
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", block)
    mpp = None
    if pixels:
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0)))
        try:
            mpp = tuple(
                float(attrs[f"PhysicalSize{a}"])
                * _UNIT_TO_UM.get(attrs.get(f"PhysicalSize{a}Unit", "µm"), 1.0)
                for a in "XY"
            )
        except (KeyError, ValueError):
            mpp = None
    return names, colors, mpp


#: OME length units in µm
_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


def _rgba_int(value: int) -> tuple[float, float, float] | None:
    """An OME colour (signed 32-bit RGBA) as RGB 0-1; None for white/black (the OME default, not a choice)."""
    v = value & 0xFFFFFFFF
    rgb = ((v >> 24) & 255, (v >> 16) & 255, (v >> 8) & 255)
    if rgb in ((255, 255, 255), (0, 0, 0)):
        return None
    return (rgb[0] / 255, rgb[1] / 255, rgb[2] / 255)


def _qpi_channels(tif: Any, count: int) -> tuple[list[str], list[tuple[float, float, float] | None]]:
    """Names and colours (``<Name>``, ``<Color>r,g,b</Color>``) of the first ``count`` QPTIFF pages."""
    names: list[str] = []
    colors: list[tuple[float, float, float] | None] = []
    for page in list(tif.pages)[:count]:
        xml = str(getattr(page, "description", "") or "")
        name = re.search(r"<Name>([^<]*)</Name>", xml)
        names.append(name.group(1).strip() if name else "")
        color = re.search(r"<Color>\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*</Color>", xml)
        r, g, b = (int(c) / 255 for c in color.groups()) if color else (-1.0, -1.0, -1.0)
        colors.append((r, g, b) if color else None)
    return names, colors


def _tag_mpp(page: Any) -> tuple[float, float] | None:
    """µm per pixel from the TIFF resolution tags when their unit is cm or inch."""
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    per_um = {2: 1 / 25400, 3: 1 / 1e4}.get(int(unit.value) if unit is not None else 2)
    x, y = tags.get("XResolution"), tags.get("YResolution")
    if per_um is None or x is None or y is None or unit is None:
        return None
    try:
        res = [v.value[0] / v.value[1] for v in (x, y)]
        return (1 / (res[0] * per_um), 1 / (res[1] * per_um))
    except (ZeroDivisionError, TypeError, IndexError):
        return None


def _plausible(mpp: tuple | None) -> tuple[float, float] | None:
    if mpp is None or not all(_MPP_RANGE[0] <= float(v) <= _MPP_RANGE[1] for v in mpp):
        return None
    return float(mpp[0]), float(mpp[1])


def _false_colours(
    names: list[str], given: list[tuple[float, float, float] | None]
) -> list[tuple[float, float, float]]:
    colours: list[tuple[float, float, float]] = []
    palette = iter(PALETTE * (len(names) // len(PALETTE) + 1))
    for name, colour in zip(names, given, strict=True):
        if colour is not None:
            colours.append(colour)
        elif _NUCLEAR.search(name) and BLUE not in colours:
            colours.append(BLUE)
        else:
            colours.append(next(palette)[1])
    return colours


def open_fluorescence(path: str | os.PathLike[str]) -> FluorescenceImage | None:
    """The multi-channel image of a TIFF for viewing, or None when it is not one (or not a TIFF).

    A file counts when tifffile's first series has a channel axis (C, more than one contiguous sample S,
    or a plane axis Q/I) or is a single grey plane; RGB images (3 or 4 samples of 8 bits) are slides, not
    this. Nothing of the pixels is read here but the coarsest level's window for the contrast limits.
    """
    import dask.array as da
    import tifffile
    import zarr

    path = Path(path)
    try:
        tif = tifffile.TiffFile(str(path))
    except Exception as err:  # noqa: BLE001 - not a TIFF: not for this reader
        log.debug("%s is not a TIFF for the fluorescence view: %s", path, err)
        return None
    try:
        series = tif.series[0]
        axes, shape = str(series.axes), tuple(int(n) for n in series.shape)
        page = series.keyframe
        if axes.endswith("YXS") and shape[-1] in (3, 4) and np.dtype(series.dtype) == np.uint8:
            tif.close()
            return None  # 8-bit RGB(A): a brightfield slide, or a dark-field RGB one (shown as RGB)
        axis = _channel_axis(axes, shape)
        count = shape[axis] if axis is not None else 1
        names: list[str] = [""] * count
        given: list[tuple[float, float, float] | None] = [None] * count
        mpp: tuple[float, float] | None = None
        mpp_source = "none"
        if getattr(tif, "is_ome", False) and tif.ome_metadata:
            ome_names, ome_colors, ome_mpp = _ome_channels(tif.ome_metadata)
            if len(ome_names) == count:
                names, given = ome_names, ome_colors
            mpp, mpp_source = _plausible(ome_mpp), "OME PhysicalSize"
        elif getattr(tif, "is_qpi", False):
            names, given = _qpi_channels(tif, count)
        elif axis is not None and axes[axis] == "S" and int(page.photometric) == 2 and count == 3:
            names, given = ["red", "green", "blue"], [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
        if mpp is None:
            mpp, mpp_source = _plausible(_tag_mpp(page)), "TIFF resolution tags"
        store = tif.series[0].aszarr()
    except Exception as err:  # noqa: BLE001 - an odd file: napari shows open_slide's reason instead
        log.debug("no fluorescence view of %s: %s", path, err, exc_info=True)
        tif.close()
        return None
    # the file stays open while napari holds the arrays, and is closed when the last of them goes
    weakref.finalize(store, tif.close)
    node = zarr.open(store, mode="r")
    arrays = [node] if isinstance(node, zarr.Array) else [node[k] for k in sorted(node.array_keys(), key=int)]
    levels = [_to_cyx(da.from_zarr(a), axes, axis) for a in arrays]
    names = [n or f"channel {i + 1}" for i, n in enumerate(names)]
    return FluorescenceImage(
        path=path,
        levels=levels,
        names=names,
        colors=_false_colours(names, given),
        mpp=mpp,
        mpp_source=mpp_source if mpp is not None else "none",
        axes=axes,
        _tif=tif,
    )


def _to_cyx(array: Any, axes: str, axis: int | None) -> Any:
    """A lazy ``(C, Y, X)`` view of one level: other axes (Z, T...) at index 0, the channel axis first."""
    index = tuple(slice(None) if a in "YX" or i == axis else 0 for i, a in enumerate(axes))
    kept = [a for i, a in enumerate(axes) if a in "YX" or i == axis]
    array = array[index]
    if axis is None:
        return array[None]
    import dask.array as da

    return da.moveaxis(array, kept.index(axes[axis]), 0)


def contrast_limits(image: FluorescenceImage) -> list[tuple[float, float]]:
    """Per channel, the :data:`CONTRAST_PERCENTILES` of the coarsest level (a central window of it)."""
    level = image.levels[-1]
    _, h, w = level.shape
    y0, x0 = max(0, (h - CONTRAST_WINDOW) // 2), max(0, (w - CONTRAST_WINDOW) // 2)
    window = np.asarray(level[:, y0 : y0 + CONTRAST_WINDOW, x0 : x0 + CONTRAST_WINDOW].compute())
    dtype = image.dtype
    full = (float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)) if dtype.kind in "ui" else None
    limits = []
    for plane in window:
        lo, hi = (float(v) for v in np.percentile(plane, CONTRAST_PERCENTILES))
        if not hi > lo:
            lo, hi = full if full is not None else (float(plane.min()), float(plane.max()) + 1.0)
        limits.append((lo, hi))
    return limits


def fluorescence_layer_data(image: FluorescenceImage, refusal: str) -> tuple[Any, dict[str, Any], str]:
    """The napari layer tuple of a fluorescence image: ``(levels, kwargs with channel_axis=0, "image")``.

    ``refusal`` is what open_slide said (kept in the metadata for the analysis widgets).
    """
    from napari.utils.colormaps import Colormap

    if image.mpp is not None:
        scale, units = (image.mpp[1], image.mpp[0]), "um"
    else:
        scale, units = (1.0, 1.0), "pixel"
    colormaps = [
        Colormap(
            colors=[[0.0, 0.0, 0.0, 1.0], [*c, 1.0]],
            name="#{:02x}{:02x}{:02x}".format(*(round(v * 255) for v in c)),
        )
        for c in image.colors
    ]
    metadata = [
        {
            "slidescope": {
                "kind": FLUORESCENCE_KIND,
                "path": str(image.path.resolve()),
                "channel": i,
                "channel_name": name,
                "channels": list(image.names),
                "dtype": str(image.dtype),
                "mpp": list(image.mpp) if image.mpp is not None else None,
                "mpp_source": image.mpp_source,
                "units": units,
                "level_shapes": [list(map(int, level.shape[1:])) for level in image.levels],
                "refusal": refusal,
                "viewing": viewing_only(image.path.name, refusal),
            }
        }
        for i, name in enumerate(image.names)
    ]
    kwargs = {
        "channel_axis": 0,
        "name": [f"{image.path.name} [{n}]" for n in image.names],
        "colormap": colormaps,
        "contrast_limits": contrast_limits(image),
        "blending": "additive",
        "multiscale": len(image.levels) > 1,
        "scale": scale,
        "units": (units, units),
        "cache": False,
        "metadata": metadata,
    }
    data: Any = image.levels if len(image.levels) > 1 else image.levels[0]
    return data, kwargs, "image"


def viewing_only(name: str, refusal: str) -> str:
    """One line: file ``name`` (refused by open_slide with ``refusal``) is shown for viewing, not analysed."""
    what = (
        "a fluorescence/multiplex image" if "multiplex/fluorescence" in refusal else "not a brightfield scan"
    )
    return (
        f"{name} is {what}: shown for viewing only, one layer per channel; analysis needs a brightfield slide "
        f"(H&E or IHC, 8-bit RGB)"
    )


def analysis_refusal(viewer: Any) -> str | None:
    """What an analysis widget says when the viewer shows channel layers of this module and no slide.

    None when there is no such layer; else :func:`viewing_only` of each file, joined by "; " (the reason
    open_slide gave is in each layer's ``metadata["slidescope"]["refusal"]``).
    """
    seen: dict[str, str] = {}
    for layer in viewer.layers:
        meta = (getattr(layer, "metadata", None) or {}).get("slidescope") or {}
        if meta.get("kind") == FLUORESCENCE_KIND:
            seen.setdefault(Path(meta["path"]).name, str(meta.get("refusal", "")))
    return "; ".join(viewing_only(name, refusal) for name, refusal in seen.items()) or None
