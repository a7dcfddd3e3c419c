"""The Zeiss CZI backend, read with pylibCZIrw (Zeiss's own libCZI; the ``czi`` extra).

**Scenes.** A CZI holds one or more scenes (the separate tissue regions of one scan). One scene is one
slide: the first scene (index 0) is read, or the one named by the environment variable
``SLIDESCOPE_CZI_SCENE`` (0-based; ``slidescope info`` lists the scenes in ``czi.scenes``). Coordinates are
relative to the scene's top-left corner; pixels of the scene's bounding box that no subblock covers read
white. A CZI without scenes is read whole.

**Levels.** The levels are the file's own pyramid: libCZI's pyramid subblocks, whose stored size is a
fraction (1/2, 1/3, 1/4...) of the area they cover, give one level per subsampling factor, read through
libCZI's zoom (which then serves those subblocks' pixels as stored). Level ``k`` of factor ``d`` has
``floor(w / d) x floor(h / d)`` pixels, as libCZI composes them. A CZI without pyramid subblocks is one
level: libCZI's zoom on layer 0 is nearest-neighbour subsampling, so no coarser levels are invented; coarser
reads (thumbnails, tiles at a lower magnification) are then area-averaged from level 0 by
:class:`slidescope.wsi.Slide` and the tiler, as for a plain image.

**Pixels and size.** Only 8-bit RGB brightfield scans are read (libCZI pixel type ``Bgr24``, returned
as RGB); grey or multi-channel (fluorescence) images, 16-bit or float samples and time series / z-stacks
are refused with the reason. The pixel size is the metadata's ``Scaling/Items/Distance`` for X and Y
(metres per pixel). Decoded compressed subblocks are kept in libCZI's cache (:data:`CZI_CACHE_BYTES` per
open slide). The CZI's attachments (label, slide preview) are not read: pylibCZIrw gives no access
to them, so ``associated_images`` is empty.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidParameterError, MissingDependencyError, SlideReadError, UnsupportedSlideError
from ._backends import Backend, _definitive, _float, register_backend
from ._tiff import fluorescence_refusal

__all__ = ["CziBackend", "czi_scene"]

#: libCZI's cache of decoded compressed subblocks, per open slide: 256 MiB, a row of 25 subblocks of
#: 1800 x 1800 px, so a grid read row by row decodes each subblock about once (uncompressed subblocks are
#: not cached: they are read straight from the file)
CZI_CACHE_BYTES = 256 * 2**20

#: µm per metre (CZI scaling is in metres per pixel)
_UM_PER_M = 1e6


def _import() -> Any:
    try:
        from pylibCZIrw import czi  # type: ignore[import-untyped]
    except ImportError as err:
        raise MissingDependencyError(
            "reading Zeiss CZI files needs pylibCZIrw: pip install 'slidescope[czi]'"
        ) from err
    return czi


def czi_scene() -> int:
    """The CZI scene to read: ``$SLIDESCOPE_CZI_SCENE`` (0-based), 0 when unset."""
    raw = os.environ.get("SLIDESCOPE_CZI_SCENE", "").strip()
    if not raw:
        return 0
    try:
        scene = int(raw)
    except ValueError:
        scene = -1
    if scene < 0:
        raise InvalidParameterError(
            f"SLIDESCOPE_CZI_SCENE must be a scene index (0, 1, ...), got {raw!r}; unset it to read scene 0"
        )
    return scene


def _distance_um(metadata: dict[str, Any]) -> tuple[float, float] | None:
    """X and Y of ``ImageDocument/Metadata/Scaling/Items/Distance`` in µm per pixel, or None."""
    try:
        items = metadata["ImageDocument"]["Metadata"]["Scaling"]["Items"]["Distance"]
    except (KeyError, TypeError):
        return None
    items = items if isinstance(items, list) else [items]
    values = {d.get("@Id"): _float(d.get("Value")) for d in items if isinstance(d, dict)}
    mx, my = values.get("X"), values.get("Y")
    if mx is None or my is None:
        return None
    return mx * _UM_PER_M, my * _UM_PER_M


@register_backend
class CziBackend(Backend):
    """pylibCZIrw (libCZI): Zeiss CZI brightfield scans (one scene; its pyramid subblocks as levels)."""

    name = "czi"
    extensions = (".czi",)
    magic = (b"ZISRAWFILE",)
    priority = 30
    thread_safe = False  # one libCZI reader per slide: reads are serialised by Slide
    direct_tiff = False

    def __init__(self, path: Path) -> None:
        czi = _import()
        try:
            cache = czi.CacheOptions(max_memory_usage=CZI_CACHE_BYTES)
            self._reader = czi.CziReader(str(path), cache_options=cache)
        except Exception as err:  # noqa: BLE001 - libCZI raises RuntimeError and others for damaged files
            raise UnsupportedSlideError(
                f"pylibCZIrw cannot open {path.name}: {type(err).__name__}: {err}"
            ) from err
        self._lock = threading.Lock()
        try:
            self._check(path)
            self._scene, self._box, scenes = self._pick_scene(path)
            self._layers = self._pyramid(self._scene)
        except Exception:
            self._reader.close()
            raise
        self.library = f"pylibCZIrw {_dist_version()}"
        w, h = self._box.w, self._box.h
        self.level_downsamples = tuple(float(d) for d, _ in self._layers)
        self.level_dimensions = tuple((w // d, h // d) for d, _ in self._layers)
        self.dimensions = self.level_dimensions[0]
        self._mpp = _distance_um(self._reader.metadata)
        self.properties = {
            "openslide.vendor": "zeiss",
            "openslide.level-count": str(len(self._layers)),
            "czi.scene": str(self._scene),
            "czi.scene-count": str(max(len(scenes), 1)),
            "czi.scenes": "; ".join(f"{i}: {r.w}x{r.h} at ({r.x}, {r.y})" for i, r in sorted(scenes.items())),
        }

    def _check(self, path: Path) -> None:
        reader = self._reader
        box = reader.total_bounding_box
        planes = {k: v[1] - v[0] for k, v in box.items() if k in ("T", "Z") and v[1] - v[0] > 1}
        if planes:
            raise _definitive(
                UnsupportedSlideError(
                    f"{path.name} has planes besides one image ({planes}: a time series or z-stack); "
                    f"slidescope reads one 8-bit RGB brightfield image"
                )
            )
        types = reader.pixel_types
        channels = box.get("C", (0, 1))[1] - box.get("C", (0, 1))[0]
        if channels > 1 or any(t.startswith("Gray") for t in types.values()):
            if channels > 1:
                raise _definitive(
                    UnsupportedSlideError(f"{path.name} {fluorescence_refusal(channels, [], types.get(0))}")
                )
            raise _definitive(
                UnsupportedSlideError(
                    f"{path.name} is a greyscale CZI ({types.get(0)}): slidescope reads 8-bit RGB "
                    f"brightfield images (pixel type Bgr24)"
                )
            )
        if types.get(0) != "Bgr24":
            raise _definitive(
                UnsupportedSlideError(
                    f"{path.name} stores {types.get(0)} pixels, not 8-bit RGB (Bgr24): export the scan as "
                    f"8-bit RGB first"
                )
            )

    def _pick_scene(self, path: Path) -> tuple[int | None, Any, dict[int, Any]]:
        scenes = self._reader.scenes_bounding_rectangle_no_pyramid
        wanted = czi_scene()
        if not scenes:
            if wanted != 0:
                raise InvalidParameterError(
                    f"{path.name} has no scenes; SLIDESCOPE_CZI_SCENE={wanted} cannot be read (unset it)"
                )
            return None, self._reader.total_bounding_rectangle_no_pyramid, {}
        if wanted not in scenes:
            raise InvalidParameterError(
                f"{path.name} has scenes {sorted(scenes)}; SLIDESCOPE_CZI_SCENE={wanted} is not one of them"
            )
        return wanted, scenes[wanted], dict(scenes)

    def _pyramid(self, scene: int | None) -> list[tuple[int, tuple[int, int] | None]]:
        """(subsampling factor, most common stored subblock (w, h)) per pyramid layer, layer 0 first."""
        tiles: dict[int, Counter[tuple[int, int]]] = {}

        def visit(_index: int, info: Any) -> bool:
            if scene is not None and _scene_of(info) not in (None, scene):
                return True
            stored = (int(info.physicalSize.w), int(info.physicalSize.h))
            if stored[0] > 0 and stored[1] > 0:
                factor = max(1, round(info.logicalRect.w / stored[0]))
                tiles.setdefault(factor, Counter())[stored] += 1
            return True

        self._reader.enumerate_subblocks(visit)
        if 1 not in tiles:
            tiles[1] = Counter()
        return [(d, tiles[d].most_common(1)[0][0] if tiles[d] else None) for d in sorted(tiles)]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        d, _ = self._layers[level]
        (w, h), box = size, self._box
        # the level pixel whose level-0 span holds the location (Slide maps level pixels to level 0 and back)
        lx, ly = location[0] // d, location[1] // d
        try:
            with self._lock:
                if d == 1:
                    bgr = self._reader.read(
                        roi=(box.x + lx, box.y + ly, w, h), scene=self._scene, background_pixel=(1, 1, 1)
                    )
                else:  # one pixel more than asked: libCZI floors the zoomed size, which may round down
                    bgr = self._reader.read(
                        roi=(box.x + lx * d, box.y + ly * d, (w + 1) * d, (h + 1) * d),
                        zoom=1.0 / d,
                        scene=self._scene,
                        background_pixel=(1, 1, 1),
                    )
        except Exception as err:  # noqa: BLE001 - libCZI raises RuntimeError for damaged subblocks
            raise SlideReadError(f"pylibCZIrw: {type(err).__name__}: {err}") from err
        return np.ascontiguousarray(bgr[:h, :w, ::-1])

    def tile_shape(self, level: int) -> tuple[int, int] | None:
        return self._layers[level][1]

    def associated_image_names(self) -> list[str]:
        return []

    def associated_image(self, name: str) -> np.ndarray:
        raise KeyError(name)

    def mpp(self) -> tuple[tuple[float, float] | None, str]:
        if self._mpp is None:
            return None, "none"
        return self._mpp, "CZI metadata (Scaling/Distance)"

    def close(self) -> None:
        self._reader.close()


def _scene_of(info: Any) -> int | None:
    """The S index of a subblock, or None when it has none."""
    scene = info.coordinate.to_dict().get("S")
    return None if scene is None else int(scene)


def _dist_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pylibCZIrw")
    except PackageNotFoundError:
        return "?"
