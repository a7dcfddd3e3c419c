"""What the status bar says over a tile: ``tile 15 (x 1200, y 560 µm) · abmil attention 0.83``. No Qt here.

The tile layer (:func:`~slidescope.viewer._layers.tile_labels_layer`) is a labels layer whose label is
the tile index + 1 and whose features hold every score; napari's own status line for it reads
``16; tile: 15, x: 2400, ...``. :func:`attach_tile_readout` makes the layer describe the hovered tile
in words instead (nothing outside the tiles) and keeps it read-only (one stray paint click would
change which tile the status bar names). :func:`watch_viewer` does that for every tile layer a
viewer gets, the sample's included, whichever widget is open, and keeps the tissue outlines
:data:`OUTLINE_PX` screen pixels wide at every zoom (napari draws shape edges in data units, so a fixed
width hides tissue when zoomed in and vanishes when zoomed out).
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._layers import keep_read_only
from ._reader import METADATA_KEY

__all__ = [
    "OUTLINE_PX",
    "score_label",
    "describe_tile",
    "tile_status_text",
    "attach_tile_readout",
    "fit_outlines",
    "watch_viewer",
]

#: width of the tissue outlines on screen, in screen pixels, whatever the zoom
OUTLINE_PX = 1.5

#: feature columns that are not scores
_NOT_SCORES = ("index", "tile", "x", "y", "qc")
#: what the status bar shows instead of the unit name
_UNIT_SIGNS = {"um": "µm", "micrometer": "µm", "pixel": "px"}


def score_label(name: str) -> str:
    """A score name as people read it: ``abmil/attention`` -> ``abmil attention``, ``probs[1]`` kept."""
    return name.replace("/", " ")


def describe_tile(row: Mapping[str, Any], mpp: tuple[float, float] | None, units: str = "um") -> str:
    """One tile in words from its feature row: index, top-left position in µm (px without a pixel size),
    then every finite score with 3 significant digits and the tile's QC flags, separated by ``·``."""
    x, y = float(row["x"]), float(row["y"])
    if mpp is not None and units != "pixel":
        position = f"x {x * mpp[0]:.0f}, y {y * mpp[1]:.0f} {_UNIT_SIGNS.get(units, units)}"
    else:
        position = f"x {x:.0f}, y {y:.0f} px"
    parts = [f"tile {int(row['tile'])} ({position})"]
    for key, value in row.items():
        if key in _NOT_SCORES:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if np.isfinite(number):
            parts.append(f"{score_label(str(key))} {number:.3g}")
    if row.get("qc"):
        parts.append(f"QC: {row['qc']}")
    return " · ".join(parts)


def tile_status_text(layer: Any, label: Any) -> str:
    """The words for label value ``label`` of a tile layer; ``""`` outside the tiles (label 0 or None)."""
    if isinstance(label, tuple):  # a multiscale layer gives (data level, value)
        label = label[1]
    if label is None or int(label) <= 0:
        return ""
    features = layer.features
    hit = np.flatnonzero(np.asarray(features["index"]) == int(label))
    if hit.size == 0:
        return ""
    meta = layer.metadata.get(METADATA_KEY, {})
    mpp = meta.get("mpp")
    units = str(meta.get("units", "um"))
    row = features.iloc[int(hit[0])].to_dict()
    return describe_tile(row, (float(mpp[0]), float(mpp[1])) if mpp else None, units)


def _get_status(self: Any, position: Any = None, **kwargs: Any) -> dict[str, str]:
    """``Labels.get_status`` with the hovered tile in words (installed on the layer instance)."""
    from napari.layers import Labels

    status = Labels.get_status(self, position, **kwargs)
    if position is None:
        return status
    kwargs.pop("value", None)
    text = tile_status_text(self, self.get_value(position, **kwargs))
    status["value"] = text
    status["coordinates"] = f"{status.get('coords', '')}: {text}" if text else status.get("coords", "")
    return status


def _get_tooltip_text(self: Any, position: Any, **kwargs: Any) -> str:
    """The tooltip (View > Layer tooltips): the same words as the status bar."""
    return tile_status_text(self, self.get_value(position, **kwargs))


def attach_tile_readout(layer: Any) -> None:
    """Make a tile layer describe the hovered tile in words and keep it read-only."""
    layer.get_status = types.MethodType(_get_status, layer)
    layer._get_tooltip_text = types.MethodType(_get_tooltip_text, layer)
    keep_read_only(layer)


def _is_tiles(layer: Any) -> bool:
    return getattr(layer, "metadata", {}).get(METADATA_KEY, {}).get("kind") == "tiles"


def _on_inserted(event: Any) -> None:
    if _is_tiles(event.value):
        attach_tile_readout(event.value)


def fit_outlines(viewer: Any) -> None:
    """Set the edge width of the viewer's tissue-outline layers to :data:`OUTLINE_PX` screen pixels.

    A width changes only when it is off by more than a fifth (each change re-meshes the outlines)."""
    zoom = float(viewer.scene.camera.zoom)
    if not np.isfinite(zoom) or zoom <= 0:
        return
    for layer in viewer.layers:
        meta = getattr(layer, "metadata", {}).get(METADATA_KEY, {})
        if meta.get("kind") != "tissue" or not len(layer.data):
            continue
        # data units are level-0 pixels: one of them spans zoom * scale screen pixels
        width = OUTLINE_PX / (zoom * float(min(abs(v) for v in layer.scale[-2:])))
        current = np.asarray(layer.edge_width, dtype=np.float64)
        if current.size and np.all(np.abs(current / width - 1.0) <= 0.2):
            continue
        layer.edge_width = width


def watch_viewer(viewer: Any) -> None:
    """Give every slidescope tile layer of ``viewer``, now and later, the readout, and keep its tissue
    outlines thin at every zoom (idempotent)."""
    for layer in viewer.layers:
        if _is_tiles(layer):
            attach_tile_readout(layer)
    viewer.layers.events.inserted.connect(_on_inserted)  # a module function: napari connects it once
    if any(getattr(cb, "__name__", "") == "_fit_outlines_of_viewer" for cb in _callbacks(viewer)):
        return
    ref = weakref.ref(viewer)

    def _fit_outlines_of_viewer(_event: Any = None) -> None:
        alive = ref()
        if alive is not None:
            fit_outlines(alive)

    viewer.scene.camera.events.zoom.connect(_fit_outlines_of_viewer)
    viewer.layers.events.inserted.connect(_fit_outlines_of_viewer)
    fit_outlines(viewer)


def _callbacks(viewer: Any) -> list[Any]:
    return list(getattr(viewer.scene.camera.events.zoom, "callbacks", ()))
