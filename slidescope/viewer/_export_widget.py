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


def _run_parts(meta: dict[str, Any]) -> tuple[str, str]:
    """``("run2", "abmil")`` from a layer's run label ``run 2 · abmil · 16:40`` (``("", "")`` without a run)."""
    parts = str(meta.get("run") or "").split(" · ")
    return (parts[0].replace(" ", ""), parts[1]) if len(parts) >= 2 else ("", "")


def measurement_name(meta: dict[str, Any], score: str) -> str:
    """The QuPath measurement name of a score of a run: it names the model (``abmil/attention``; zero-shot
    ``zero-shot typed prompts: tumour``, the prompt set and the class)."""
    what = _run_parts(meta)[1]
    if not what or score.startswith(what):
        return score
    return f"{what}: {score.removeprefix('zero-shot/')}"


def layer_values(layer: Any, meta: dict[str, Any]) -> np.ndarray:
    """The per-tile scores a heatmap layer was made from (its own, whatever a later run wrote to the store)."""
    if meta.get("values") is not None:
        return np.asarray(meta["values"], dtype=np.float64)
    from ..features import open_store

    return np.asarray(open_store(meta["store"]).scores(meta["score"]), dtype=np.float64)


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
        self.regions_button = PushButton(
            text="Region results (QuPath GeoJSON + tiles CSV)",
            tooltip="For a region heatmap (Analyse inside the drawn shapes): each region with its scores as a "
            "QuPath annotation, and every tile of each region with its score in a CSV.",
        )
        self.status = Label(label="Wrote", value="")
        self.extend(
            [
                self.heatmap,
                self.folder,
                self.downsample,
                self.tiff_button,
                self.geojson_button,
                self.png_button,
                self.regions_button,
                self.status,
            ]
        )
        self.tiff_button.changed.connect(lambda _: self._guarded(self.export_tiff))
        self.geojson_button.changed.connect(lambda _: self._guarded(self.export_geojson))
        self.png_button.changed.connect(lambda _: self._guarded(self.export_png))
        self.regions_button.changed.connect(lambda _: self._guarded(self.export_regions))
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

    def _siblings(self, kind: str, meta: dict[str, Any]) -> list[Any]:
        """Layers of ``kind`` of the same run as ``meta``'s layer (same store; same run when it has one)."""
        return [
            layer
            for layer in layers_of_kind(self._viewer, kind)
            if slidescope_meta(layer).get("store") == meta["store"]
            and slidescope_meta(layer).get("run") == meta.get("run")
        ]

    def _folder(self) -> Path:
        folder = Path(self.folder.value)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _out(self, meta: dict[str, Any], what: str) -> Path:
        """``<folder>/<slide>.<run>-<score>.<what>`` (``sample.run2-abmil-attention.png``), made unique (``-2``,
        ``-3``...): an export never overwrites."""
        tag = _slug(f"{_run_parts(meta)[0]} {meta['score']}")
        return unique_path(self._folder() / f"{Path(meta['slide']).stem}.{tag}.{what}")

    def export_tiff(self) -> list[Path]:
        """The chosen heatmap's scores as ``<slide>.<score>.tif`` (pyramidal float32, aligned to the slide)."""
        from ..features import open_store
        from ._results import store_lattice

        layer, meta = self._chosen()
        store = open_store(meta["store"])
        coords, lattice = store_lattice(store)
        values = layer_values(layer, meta).astype(np.float32)
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
        """``<slide>.<run>-<score>.tiles.geojson`` (every score of the run as a measurement named after its model,
        :func:`measurement_name`) and ``<slide>.<run>-<score>.tissue.geojson`` (one polygon with holes per
        tissue piece)."""
        from ..features import open_store

        layer, meta = self._chosen()
        store = open_store(meta["store"])
        tiles = self._siblings("tiles", meta)
        table = tiles[-1].features if tiles else None
        main = measurement_name(meta, meta["score"])
        scores = {main: layer_values(layer, meta)}
        if table is not None:
            for column in table.columns:
                if column not in ("index", "tile", "x", "y", "qc") and measurement_name(meta, column) != main:
                    scores[measurement_name(meta, column)] = table[column].to_numpy()[1:]  # row 0: "no tile"
        classes = None
        for labels in self._siblings("classes", meta):
            classes = slidescope_meta(labels).get("classes")
        # the best class among this run's own class scores (under their measurement names here)
        extra = [
            f"zero-shot/{c}"
            for c in classes or []
            if measurement_name(meta, f"zero-shot/{c}") != f"zero-shot/{c}"
        ]
        for key in extra:
            scores[key] = scores[measurement_name(meta, key)]
        collection = tiles_feature_collection(
            store.coords, store.tile_extent, scores, main=main, classes=classes
        )
        for feature in collection["features"]:
            for key in extra:
                feature["properties"]["measurements"].pop(key, None)
        written = [write_geojson(self._out(meta, "tiles.geojson"), collection)]
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
        """``<slide>.<run>-<score>.png``: the chosen heatmap drawn from its tile scores over the slide's thumbnail
        (whole slide, with a colour bar in the scores' units, coloured as the layer's contrast limits;
        :func:`~slidescope.viewer._export.render_heatmap_png`), whatever the canvas shows."""
        from ..features import open_store
        from ._export import render_heatmap_png

        layer, meta = self._chosen()
        store = open_store(meta["store"])
        mpp_source = slidescope_meta(self._slide_of(meta)).get("mpp_source")
        path = render_heatmap_png(
            self._out(meta, "png"),
            meta["slide"],
            layer_values(layer, meta),
            store.coords,
            store.tile_extent,
            limits=tuple(layer.contrast_limits),
            name=measurement_name(meta, meta["score"]),
            slide_mpp=float(meta["mpp"][0]) if mpp_source == "entered" else None,
        )
        return [path]

    def _slide_of(self, meta: dict[str, Any]) -> Any:
        for layer in layers_of_kind(self._viewer, "slide"):
            if Path(slidescope_meta(layer).get("path", "")).resolve() == Path(meta["slide"]).resolve():
                return layer
        return None

    def export_regions(self) -> list[Path]:
        """For a region heatmap: ``<slide>.<run>-<score>.regions.geojson`` (each region a QuPath annotation with
        the model's scores as measurements, :func:`~slidescope.viewer._region.regions_feature_collection`) and
        ``<slide>.<run>-<score>.regions.csv`` (each region's tiles and their scores)."""
        from ..features import open_store
        from ._region import regions_feature_collection, write_region_tiles_csv

        layer, meta = self._chosen()
        if not meta.get("regions"):
            raise SlidescopeError(
                "the chosen heatmap is not a region analysis: draw shapes, press Analyse inside the drawn "
                "shapes, then choose its heatmap here"
            )
        collection = regions_feature_collection(meta["regions"], str(meta.get("model", "")), mpp=meta["mpp"])
        coords = open_store(meta["store"]).coords
        return [
            write_geojson(self._out(meta, "regions.geojson"), collection),
            write_region_tiles_csv(self._out(meta, "regions.csv"), meta["regions"], coords),
        ]
