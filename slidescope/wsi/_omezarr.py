"""The OME-Zarr backend: an OME-NGFF image (``multiscales``, NGFF 0.4 on Zarr v2 or 0.5 on Zarr v3) read with zarr.

The slide is a local folder (``slide.ome.zarr``) whose root group holds the ``multiscales`` metadata; its
first multiscale's datasets are the pyramid levels, largest first. The image must be 8-bit RGB brightfield:
axes ``y``, ``x`` and a channel axis ``c`` of 3 (any ``t``/``z`` axes of size 1). A channel axis of another
size is a fluorescence/multiplex image and is refused in one line, like a multiplex TIFF; other dtypes are
refused with the reason. The level-0 pixel size comes from the first dataset's ``scale``
coordinate transformation (multiplied by a multiscale-level one, if any) in the axes' units (micrometre,
nanometre, millimetre...); a unit-less scale is not trusted as a pixel size.

A folder of this kind is recognised from its metadata, never from its name: a slidescope embedding store
(also a ``.zarr`` folder) has no ``multiscales`` and is not taken for a slide.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UnsupportedSlideError
from ._backends import Backend, _definitive, register_backend
from ._tiff import fluorescence_refusal

__all__ = ["OmeZarrBackend"]

#: micrometres per NGFF space unit
_UNIT_UM = {
    "micrometer": 1.0,
    "nanometer": 1e-3,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
    "angstrom": 1e-4,
}


def _multiscales(folder: Path) -> list[dict[str, Any]] | None:
    """The ``multiscales`` list of an OME-NGFF root folder (0.4: ``.zattrs``; 0.5: ``zarr.json``), or None."""
    for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
        meta = folder / name
        if not meta.is_file():
            continue
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        attrs = data.get(key, {}) if key else data
        attrs = attrs.get("ome", attrs) if isinstance(attrs, dict) else {}
        found = attrs.get("multiscales") if isinstance(attrs, dict) else None
        if isinstance(found, list) and found and isinstance(found[0], dict):
            return found
    return None


def _scale(transforms: Any) -> list[float] | None:
    for t in transforms or ():
        if isinstance(t, dict) and t.get("type") == "scale":
            return [float(v) for v in t.get("scale", ())]
    return None


@register_backend
class OmeZarrBackend(Backend):
    """zarr: OME-Zarr (OME-NGFF multiscales) RGB images in a local folder."""

    name = "ome-zarr"
    extensions = (".ome.zarr",)
    priority = 40
    thread_safe = True  # zarr chunk reads share no file handle
    direct_tiff = False

    @classmethod
    def directory_entry(cls, folder: Path) -> Path | None:
        return folder if _multiscales(folder) is not None else None

    def __init__(self, path: Path) -> None:
        import zarr

        multiscales = _multiscales(path) if path.is_dir() else None
        if multiscales is None:
            raise UnsupportedSlideError(f"{path.name} is not an OME-Zarr image (no multiscales metadata)")
        ms = multiscales[0]
        axes = [
            a["name"] if isinstance(a, dict) else str(a) for a in ms.get("axes", ("t", "c", "z", "y", "x"))
        ]
        units = {a["name"]: a.get("unit") for a in ms.get("axes", ()) if isinstance(a, dict)}
        try:
            group = zarr.open_group(str(path), mode="r")
            arrays: list[Any] = [group[d["path"]] for d in ms["datasets"]]
        except Exception as err:  # noqa: BLE001 - zarr raises many types for damaged stores
            raise UnsupportedSlideError(f"zarr cannot open {path.name}: {type(err).__name__}: {err}") from err
        if not arrays or not all(isinstance(a, zarr.Array) for a in arrays):
            raise UnsupportedSlideError(f"{path.name}: the multiscales datasets are not all zarr arrays")
        self._arrays: list[Any] = arrays
        self._axes = axes
        self._check(path, self._arrays[0])
        self.library = f"zarr {zarr.__version__}"
        yx = (axes.index("y"), axes.index("x"))
        self.level_dimensions = tuple((int(a.shape[yx[1]]), int(a.shape[yx[0]])) for a in self._arrays)
        self.dimensions = self.level_dimensions[0]
        w0 = self.dimensions[0]
        self.level_downsamples = tuple(w0 / w for w, _ in self.level_dimensions)
        h0 = self.dimensions[1]
        self._scales = [(w0 / w, h0 / h) for w, h in self.level_dimensions]
        self._chunks = [(int(a.chunks[yx[1]]), int(a.chunks[yx[0]])) for a in self._arrays]
        self.properties = {
            "openslide.vendor": "ome-zarr",
            "ome-zarr.version": str(ms.get("version", "0.5")),
            "ome-zarr.axes": "".join(axes),
        }
        self._mpp = self._pixel_size(ms, axes, units)

    def _check(self, path: Path, array: Any) -> None:
        axes, shape = self._axes, tuple(array.shape)
        if "y" not in axes or "x" not in axes or len(axes) != len(shape):
            raise UnsupportedSlideError(
                f"{path.name}: OME-Zarr axes {axes} do not match the array shape {shape}"
            )
        sizes = dict(zip(axes, shape, strict=True))
        extra = {a: n for a, n in sizes.items() if a not in ("y", "x", "c") and n != 1}
        channels = int(sizes.get("c", 1))
        if extra:
            raise _definitive(
                UnsupportedSlideError(
                    f"{path.name} has planes besides one image ({extra}: a time series or z-stack); slidescope "
                    f"reads one 8-bit RGB brightfield image (t and z of size 1)"
                )
            )
        if channels > 1 and channels != 3:
            raise _definitive(
                UnsupportedSlideError(f"{path.name} {fluorescence_refusal(channels, [], array.dtype)}")
            )
        if channels != 3:
            raise _definitive(
                UnsupportedSlideError(
                    f"{path.name} is a greyscale OME-Zarr image (axes {''.join(axes)}, shape {shape}): slidescope "
                    f"reads 8-bit RGB brightfield images (a channel axis 'c' of 3)"
                )
            )
        if np.dtype(array.dtype) != np.uint8:
            raise _definitive(
                UnsupportedSlideError(
                    f"{path.name} stores {array.dtype} samples, not 8-bit RGB brightfield pixels; convert it to "
                    f"uint8 RGB first"
                )
            )

    @staticmethod
    def _pixel_size(ms: dict[str, Any], axes: list[str], units: dict[str, Any]) -> tuple[float, float] | None:
        scale = _scale(ms["datasets"][0].get("coordinateTransformations"))
        if scale is None or len(scale) != len(axes):
            return None
        outer = _scale(ms.get("coordinateTransformations"))
        if outer is not None and len(outer) == len(scale):
            scale = [a * b for a, b in zip(scale, outer, strict=True)]
        out = []
        for axis in ("x", "y"):
            factor = _UNIT_UM.get(str(units.get(axis)))
            if factor is None:
                return None
            out.append(scale[axes.index(axis)] * factor)
        return (out[0], out[1]) if all(np.isfinite(v) and v > 0 for v in out) else None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        sx, sy = self._scales[level]
        # the level pixel whose level-0 span holds the location (Slide maps level pixels to level 0 and back)
        x, y = int(np.floor(location[0] / sx + 1e-9)), int(np.floor(location[1] / sy + 1e-9))
        w, h = size
        index = tuple(
            slice(y, y + h) if a == "y" else slice(x, x + w) if a == "x" else slice(None) if a == "c" else 0
            for a in self._axes
        )
        block = np.asarray(self._arrays[level][index])
        kept = [a for a in self._axes if a in ("y", "x", "c")]
        return np.ascontiguousarray(np.transpose(block, [kept.index(a) for a in ("y", "x", "c")]))

    def tile_shape(self, level: int) -> tuple[int, int] | None:
        return self._chunks[level]

    def associated_image_names(self) -> list[str]:
        return []

    def associated_image(self, name: str) -> np.ndarray:
        raise KeyError(name)

    def mpp(self) -> tuple[tuple[float, float] | None, str]:
        if self._mpp is None:
            return None, "none"
        return self._mpp, "OME-NGFF multiscales (scale transformation)"

    def close(self) -> None:
        self._arrays = []
