"""The Analyse widget's questions about the slide: a region (MIL or zero-shot on the tiles inside drawn or
imported shapes) and similar tiles (click a tile). Each answer is a run of its own (its heatmap named after it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SlidescopeError
from ._widgets import add_layer_tuples, layers_of_kind, notify_error, slidescope_meta

__all__ = ["TOP_K", "AskMixin"]

#: tiles listed under "Top tiles" (and similar tiles per other slide)
TOP_K = 10
MIL = "MIL checkpoint"


def _user_shapes(layers: Any) -> list[Any]:
    """Shapes drawn by the user or opened from QuPath GeoJSON (not the tissue outlines)."""
    return [
        lay
        for lay in layers
        if type(lay).__name__ == "Shapes" and slidescope_meta(lay).get("kind", "annotations") == "annotations"
    ]


class AskMixin:
    """Region analysis and similarity search for :class:`~slidescope.viewer._analyse_widget.AnalyseWidget`."""

    _viewer: Any
    slide: Any
    run_folder: Any
    checkpoint: Any
    mode: Any
    device: Any
    encoder: Any
    summary: Any
    display: Any
    top_by: Any
    elsewhere: list[Any]
    _top: dict[str, Any]

    if TYPE_CHECKING:  # AnalyseWidget's own methods, declared for the type checker only

        def next_run(self, what: str) -> str: ...

        def _fill_top_tiles(self, _value: Any = None) -> None: ...

    # -- regions ----------------------------------------------------------------------------------
    def _region_tiles(self) -> list[Any]:
        """The tile layers of the chosen slide (newest last), else of any slide."""
        tiles = layers_of_kind(self._viewer, "tiles")
        slide = self.slide.value
        path = Path(slidescope_meta(slide).get("path") or "").resolve() if slide is not None else None
        mine = [t for t in tiles if Path(slidescope_meta(t).get("slide", "")).resolve() == path]
        return mine or tiles

    def _zero_shot_of(self, tiles: list[Any]) -> tuple[Any, dict[str, Any]] | None:
        """(tile layer, zero-shot inputs) of the newest zero-shot run on the slide: its classes, each tile's
        cosines (the run's own, from its tile layer) and the model's logit scale."""
        for classes in reversed(layers_of_kind(self._viewer, "classes")):
            meta = slidescope_meta(classes)
            run = [t for t in tiles if slidescope_meta(t).get("run") == meta.get("run")]
            if run and meta.get("logit_scale") is not None:
                table = run[-1].features
                names = list(meta["classes"])
                cosines = np.stack([table[f"zero-shot/{c}"].to_numpy()[1:] for c in names], axis=1)
                info = {"classes": names, "cosines": cosines, "logit_scale": meta["logit_scale"]}
                return run[-1], {**info, "label": meta.get("label", "zero-shot")}
        return None

    def _region_inputs(self) -> tuple[Any, Any, dict[str, Any]] | None:
        """(shapes layer, tile layer, scorer arguments) for a region analysis, or None with a notification."""
        shapes = (_user_shapes(self._viewer.layers.selection) or _user_shapes(self._viewer.layers) or [None])[
            -1
        ]
        tiles = self._region_tiles()
        model = self.run_folder.value or self.checkpoint.value
        if shapes is None or not len(shapes.data):
            notify_error(
                "draw a region first: add a Shapes layer (or open QuPath GeoJSON) and draw on the slide"
            )
            return None
        if not tiles:
            notify_error("press Analyse on the slide first: a region is scored from its tiles' embeddings")
            return None
        if self.mode.value == MIL:
            if model is None:
                notify_error("region analysis with a MIL model: choose a MIL run folder or checkpoint")
                return None
            return shapes, tiles[-1], {"model": model}
        found = self._zero_shot_of(tiles)
        if found is None:
            notify_error(
                "zero-shot on a region pools the tiles' scores of a zero-shot run: press Analyse with the "
                "prompts on this slide first, then analyse the region"
            )
            return None
        return shapes, found[0], {"zero_shot": found[1]}

    def analyse_regions(self, _value: Any = None) -> list[Any] | None:
        """Run the chosen MIL model (MIL mode: :func:`~slidescope.viewer._region.score_region`) or pool the
        newest zero-shot run's tile scores (zero-shot mode: :func:`~slidescope.viewer._region.zero_shot_region`)
        on the tiles inside each shape of the selected (else the last) shapes layer; show the tile scores within
        the regions as a new run and each region's result in the Slide line; returns the RegionScore list."""
        from ._region import region_layer, region_summary

        inputs = self._region_inputs()
        if inputs is None:
            return None
        shapes, tiles, how = inputs
        what = how["zero_shot"]["label"] if "zero_shot" in how else "MIL"
        run = self.next_run(f"region {what}")
        try:
            results, layer_tuple = region_layer(
                shapes, slidescope_meta(tiles), device=self.device.value, run=run, **how
            )
        except SlidescopeError as err:
            notify_error(f"region analysis: {err}")
            return None
        (layer,) = add_layer_tuples(self._viewer, [layer_tuple])
        self.display.forget([layer])
        self.display.show_run(run)
        self.summary.value = region_summary(results)
        return [r for _, r in results]

    # -- similarity search ------------------------------------------------------------------------
    def similar_at(self, position: tuple[float, ...]) -> Any:
        """Similarity search from the tile at world ``position`` (the click): see :meth:`find_similar`."""
        try:
            layers = list(reversed(layers_of_kind(self._viewer, "tiles")))
        except RuntimeError:  # the widget is gone (Qt deleted it)
            return None
        for layer in layers:
            label = layer.get_value(position, world=True)
            label = label[1] if isinstance(label, tuple) else label
            if label is not None and int(label) > 0:
                return self.find_similar(layer, int(label) - 1)
        return None

    def find_similar(self, tiles: Any, index: int) -> Any:
        """Show every tile's cosine similarity to tile ``index`` of the slide behind the tile layer ``tiles``
        (a heatmap, 1.0 at that tile, as a new run), list its most similar tiles under Top tiles and the most
        similar tiles of the other slides of its store folder (``similar_tiles``: top ``TOP_K`` per slide) in the
        Slide line; returns the heatmap layer."""
        from ..features import open_store
        from ._layers import heatmap_layer
        from ._results import store_lattice
        from ._similarity import similar_tiles, tile_similarity

        meta = slidescope_meta(tiles)
        encoder = self.encoder.value
        try:
            store = open_store(meta["store"])
            sims = tile_similarity(store, encoder, index)
            elsewhere = [
                t
                for t in similar_tiles(Path(meta["store"]).parent, encoder, (store, index), k=TOP_K)
                if Path(t.store).resolve() != Path(meta["store"]).resolve()
            ]
        except SlidescopeError as err:
            notify_error(
                f"no similarity search: {err}. Run Analyse with the {encoder} encoder on this slide first "
                "(its embeddings are what is compared)."
            )
            return None
        coords, lattice = store_lattice(store)
        mpp = tuple(meta["mpp"])
        name = f"similarity to tile {index} ({encoder})"
        run = self.next_run(f"similar to tile {index}")
        layer_tuple = heatmap_layer(
            sims,
            lattice,
            mpp,
            name=f"{Path(meta['slide']).stem}: {run} · {name}",
            kind="similarity",
            metadata={
                **{k: meta[k] for k in ("slide", "store", "mpp")},
                "query_tile": index,
                "run": run,
                "score": name,
            },
        )
        layer_tuple[1]["contrast_limits"] = (float(np.nanmin(sims)), 1.0)
        (layer,) = add_layer_tuples(self._viewer, [layer_tuple])
        self.display.forget([layer])
        self.display.show_run(run)
        self._viewer.layers.selection.active = tiles  # the hover text stays on
        self._top[name] = (sims, coords, lattice.extent, mpp)
        self.top_by.reset_choices()
        self.top_by.value = name
        self._fill_top_tiles()
        self.elsewhere = elsewhere
        best: dict[str, Any] = {}
        for t in elsewhere:
            best.setdefault(t.slide, t)
        others = ", ".join(f"{t.slide} tile {t.index} ({t.similarity:.2f})" for t in list(best.values())[:3])
        self.summary.value = f"tiles like tile {index}" + (f"; elsewhere: {others}" if others else "")
        return layer
