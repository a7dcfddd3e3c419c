"""QuPath GeoJSON annotations -> a napari shapes layer on the slide (File > Open, or drop the file). No Qt here.

QuPath exports annotations (File > Export objects as GeoJSON) as a ``FeatureCollection`` (older versions: a
plain list of features) of ``Polygon`` / ``MultiPolygon`` geometries in level-0 pixel coordinates, origin at
the image's top-left corner. Each polygon becomes one shape (its outer ring: a hole of an annotation is not
cut out of the region), drawn on the slide open in the viewer in µm (level-0 pixels when no slide in µm is
open), ready for *Analyse inside the drawn shapes*.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ._reader import METADATA_KEY

__all__ = ["get_geojson_reader", "read_qupath_geojson", "annotation_polygons"]


def annotation_polygons(collection: Any) -> list[tuple[np.ndarray, str]]:
    """``[(outer ring (K, 2) level-0 (x, y), name)]`` of a QuPath GeoJSON object: a FeatureCollection, a list
    of features, one feature or one geometry; one entry per polygon (a MultiPolygon gives several). The name
    is the feature's ``name``, else its classification's, else ``annotation <k>``."""
    if isinstance(collection, dict) and collection.get("type") == "FeatureCollection":
        features = collection.get("features", [])
    elif isinstance(collection, list):
        features = collection
    elif isinstance(collection, dict) and collection.get("type") == "Feature":
        features = [collection]
    elif isinstance(collection, dict) and "coordinates" in collection:
        features = [{"type": "Feature", "geometry": collection, "properties": {}}]
    else:
        raise InvalidParameterError(
            "not GeoJSON annotations: expected a FeatureCollection (QuPath: File > Export objects as GeoJSON)"
        )
    out: list[tuple[np.ndarray, str]] = []
    for feature in features:
        geometry = (feature or {}).get("geometry") or {}
        props = (feature or {}).get("properties") or {}
        kind = geometry.get("type")
        polygons = (
            [geometry["coordinates"]]
            if kind == "Polygon"
            else geometry.get("coordinates", [])
            if kind == "MultiPolygon"
            else []
        )
        classification = props.get("classification") or {}
        for rings in polygons:
            ring = np.asarray(rings[0], dtype=np.float64).reshape(-1, 2) if rings else np.zeros((0, 2))
            if len(ring) >= 3:
                name = props.get("name") or classification.get("name") or f"annotation {len(out) + 1}"
                out.append((ring, str(name)))
    return out


def _viewer_slide_mpp() -> list[float] | None:
    """The level-0 µm/px of the slide open in µm in the current viewer (the newest), else None."""
    try:
        from napari import current_viewer

        viewer = current_viewer()
    except ImportError:  # pragma: no cover - napari is what calls this reader
        return None
    for layer in reversed(list(viewer.layers) if viewer is not None else []):
        meta = layer.metadata.get(METADATA_KEY, {})
        if meta.get("kind") == "slide" and meta.get("units") == "um":
            return [float(v) for v in meta["mpp"]]
    return None


def read_qupath_geojson(
    path: str | os.PathLike[str], mpp: Sequence[float] | None = None
) -> list[tuple[list[np.ndarray], dict[str, Any], str]]:
    """One shapes layer tuple of the annotations of a QuPath GeoJSON file.

    The shapes' data are level-0 pixel-edge coordinates (row, col) = (y, x); ``scale`` (the slide's ``mpp``,
    default: the slide open in the viewer) and a half-pixel ``translate`` put them on the slide in µm, as the
    tissue outlines. Raises :class:`~slidescope.errors.InvalidParameterError` for a file without polygons.
    """
    path = Path(path)
    try:
        collection = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidParameterError(f"cannot read {path.name} as GeoJSON: {err}") from err
    found = annotation_polygons(collection)
    if not found:
        raise InvalidParameterError(
            f"{path.name} holds no Polygon or MultiPolygon annotation: export the annotations from QuPath "
            "(File > Export objects as GeoJSON) or draw the region in napari"
        )
    mpp = list(mpp) if mpp is not None else _viewer_slide_mpp()
    units = "um" if mpp is not None else "pixel"
    mx, my = (float(mpp[0]), float(mpp[1])) if mpp is not None else (1.0, 1.0)
    data = [np.ascontiguousarray(ring[:, ::-1]) for ring, _ in found]
    kwargs = {
        "name": path.stem,
        "shape_type": "polygon",
        "scale": (my, mx),
        "translate": (-0.5 * my, -0.5 * mx),
        "units": (units, units),
        "edge_color": "cyan",
        "face_color": "transparent",
        "edge_width": 4.0 / min(mx, my) if mpp is not None else 4.0,
        "features": {"name": [name for _, name in found]},
        "metadata": {METADATA_KEY: {"kind": "annotations", "source": str(path), "mpp": mpp}},
    }
    return [(data, kwargs, "shapes")]


def get_geojson_reader(path: str | os.PathLike[str] | Sequence[str]) -> Callable[..., Any] | None:
    """npe2 reader hook: QuPath GeoJSON annotations (``*.geojson``) as a shapes layer on the open slide."""
    if isinstance(path, (list, tuple)) or not str(path).lower().endswith(".geojson"):
        return None

    def reader(p: str) -> list[tuple[Any, ...]]:
        from ._widgets import notify_error

        try:
            return list(read_qupath_geojson(p))
        except InvalidParameterError as err:
            notify_error(str(err))
            return []

    return reader
