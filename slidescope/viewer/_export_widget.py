"""The "Export" dock widget: a heatmap as a pyramidal TIFF, tiles and tissue as QuPath GeoJSON, a PNG.

It reads what the Analyse widget (or the sample) put in the viewer: the heatmap layer's store and
score, the tile layer's scores (every one becomes a QuPath measurement), the class layer (the tile
classification) and the tissue outline as currently drawn.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, SpinBox

from ..errors import SlidescopeError
from ._export import (
    shapes_feature_collection,
    shapes_to_level0,
    tiles_feature_collection,
    unique_path,
    write_geojson,
    write_heatmap_tiff,
)
from ._widgets import layers_of_kind, notify_error, slidescope_meta

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["ExportWidget"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "score"


class ExportWidget(Container):
    """Export the chosen heatmap and its tiles in the slide's own coordinates."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self.heatmap = ComboBox(label="Heatmap", choices=self._heatmap_choices)
        self.folder = FileEdit(
            label="Folder", mode=FileDialogMode.EXISTING_DIRECTORY, value=Path.cwd() / "slidescope-export"
        )
        self.downsample = SpinBox(
            label="TIFF downsample",
            value=0,
            min=0,
            max=4096,
            tooltip="Level-0 pixels per TIFF pixel; 0 picks one that keeps tiles on whole pixels.",
        )
        self.tiff_button = PushButton(text="Heatmap as pyramidal TIFF")
        self.geojson_button = PushButton(text="Tiles and tissue as QuPath GeoJSON")
        self.png_button = PushButton(text="Heatmap as PNG (over the thumbnail, with a colour bar)")
        self.status = Label(label="Wrote", value="")
        self.extend(
            [
                self.heatmap,
                self.folder,
                self.downsample,
                self.tiff_button,
                self.geojson_button,
                self.png_button,
                self.status,
            ]
        )
        self.tiff_button.changed.connect(lambda _: self._guarded(self.export_tiff))
        self.geojson_button.changed.connect(lambda _: self._guarded(self.export_geojson))
        self.png_button.changed.connect(lambda _: self._guarded(self.export_png))
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._on_layers_changed)  # a bound method: napari keeps a weak reference

    def _on_layers_changed(self, _event: Any = None) -> None:
        self.heatmap.reset_choices()

    def _heatmap_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in layers_of_kind(self._viewer, "heatmap")]

    def _guarded(self, action: Any) -> list[Path]:
        try:
            paths = action()
        except (SlidescopeError, OSError) as err:
            notify_error(str(err))
            return []
        self.status.value = ", ".join(p.name for p in paths)
        return paths

    def _chosen(self) -> tuple[Any, dict[str, Any]]:
        layer = self.heatmap.value
        if layer is None:
            raise SlidescopeError("no heatmap to export: analyse a slide (or open the sample) first")
        return layer, slidescope_meta(layer)

    def _siblings(self, kind: str, store: str) -> list[Any]:
        return [
            layer
            for layer in layers_of_kind(self._viewer, kind)
            if slidescope_meta(layer).get("store") == store
        ]

    def _folder(self) -> Path:
        folder = Path(self.folder.value)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _out(self, meta: dict[str, Any], what: str) -> Path:
        """``<folder>/<slide>.<score>.<what>``, made unique (``-2``, ``-3``...): an export never overwrites."""
        return unique_path(self._folder() / f"{Path(meta['slide']).stem}.{_slug(meta['score'])}.{what}")

    def export_tiff(self) -> list[Path]:
        """The chosen heatmap's scores as ``<slide>.<score>.tif`` (pyramidal float32, aligned to the slide)."""
        from ..features import open_store
        from ._results import store_lattice

        layer, meta = self._chosen()
        store = open_store(meta["store"])
        coords, lattice = store_lattice(store)
        values = np.asarray(store.scores(meta["score"]), dtype=np.float32)
        out = self._out(meta, "tif")
        path = write_heatmap_tiff(
            out,
            values,
            coords,
            lattice.extent,
            stride=lattice.stride,
            slide_dimensions=store.attrs["slide"]["dimensions"],
            mpp=meta["mpp"],
            downsample=self.downsample.value or None,
            name=meta["score"],
            extra={"slide": Path(meta["slide"]).name},
        )
        return [path]

    def export_geojson(self) -> list[Path]:
        """``<slide>.<score>.tiles.geojson`` (every score of the run as a measurement, named by its run)
        and ``<slide>.<score>.tissue.geojson`` (one polygon with holes per tissue piece)."""
        from ..features import open_store

        layer, meta = self._chosen()
        store = open_store(meta["store"])
        tiles = self._siblings("tiles", meta["store"])
        table = tiles[0].features if tiles else None
        scores = {meta["score"]: np.asarray(store.scores(meta["score"]), dtype=np.float64)}
        if table is not None:
            for column in table.columns:
                if column not in ("index", "tile", "x", "y"):
                    scores[column] = table[column].to_numpy()[1:]  # row 0 is "no tile"
        classes = None
        for labels in self._siblings("classes", meta["store"]):
            classes = slidescope_meta(labels).get("classes")
        written = [
            write_geojson(
                self._out(meta, "tiles.geojson"),
                tiles_feature_collection(
                    store.coords, store.tile_extent, scores, main=meta["score"], classes=classes
                ),
            )
        ]
        tissues = [
            t
            for t in layers_of_kind(self._viewer, "tissue")
            if slidescope_meta(t).get("slide") == meta["slide"]
        ]
        for tissue in tissues:
            polygons = shapes_to_level0(
                tissue.data, {"scale": tissue.scale, "translate": tissue.translate}, mpp=meta["mpp"]
            )
            written.append(
                write_geojson(
                    self._out(meta, "tissue.geojson"),
                    shapes_feature_collection(polygons, mpp=meta["mpp"], classification="Tissue", nest=True),
                )
            )
        return written

    def export_png(self) -> list[Path]:
        """``<slide>.<score>.png``: the chosen heatmap rendered from its scores over the slide's thumbnail, whole
        slide, with a colour bar (:func:`slidescope.mil.heatmap.heatmap`, as ``slidescope heatmap`` draws it;
        colours scaled min-max), whatever the canvas shows."""
        from ..mil.heatmap import heatmap

        layer, meta = self._chosen()
        out = self._out(meta, "png")
        heatmap(
            meta["slide"], meta["store"], scores=meta["score"], out_png=out, normalize="minmax", size=1024
        )
        return [out]
