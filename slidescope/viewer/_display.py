"""How results are shown: one analysis run and one of its maps at a time, opacity, a score threshold, smoothing,
and a legend that belongs to what is visible.

napari (0.6-0.9) has no layer groups in its stable API, so a run is the set of layers whose slidescope metadata
carry the same ``run`` label, and whose names start with it (``sample_slide: run 2 · abmil · 16:40 · ...``).
:func:`display_grid` is plain numpy/scipy; :class:`DisplayControls` is the widget part the Analyse widget shows.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, FloatSpinBox, Label

from ._layers import HEATMAP_OPACITY, class_legend_html, qc_legend_html
from ._widgets import slidescope_meta

__all__ = ["SMOOTH_SIGMA", "display_grid", "run_label", "layer_run", "DisplayControls"]

#: standard deviation, in tiles, of the Gaussian of the smoothed display
SMOOTH_SIGMA = 1.0


def display_grid(
    raw: np.ndarray, *, threshold: float | None = None, smooth: bool = False, sigma: float = SMOOTH_SIGMA
) -> np.ndarray:
    """What a heatmap layer draws from its score grid ``raw`` (rows, cols; NaN where there is no tile).

    ``smooth``: a Gaussian of ``sigma`` tiles over the tiles only (normalised convolution: cells without a tile
    neither count nor get a value, so the map does not bleed off the tissue). ``threshold``: cells whose *raw*
    score is below it become NaN (transparent). The scores themselves (hover text, exports) never change.
    """
    raw = np.asarray(raw, dtype=np.float32)
    tile = np.isfinite(raw)
    shown = raw.copy()
    if smooth and tile.any():
        from scipy.ndimage import gaussian_filter

        weight = gaussian_filter(tile.astype(np.float64), sigma, mode="constant")
        total = gaussian_filter(np.where(tile, raw, 0.0).astype(np.float64), sigma, mode="constant")
        with np.errstate(invalid="ignore", divide="ignore"):
            shown = np.where(tile, total / weight, np.nan).astype(np.float32)
    if threshold is not None:
        shown[~(raw >= threshold)] = np.nan
    return shown


def run_label(n: int, what: str, when: float | None = None) -> str:
    """``run 2 · abmil · 16:40``: the prefix of the layers of the ``n``-th run of ``what`` (model, prompts...)."""
    return f"run {n} · {what} · {time.strftime('%H:%M', time.localtime(when))}"


def layer_run(layer: Any) -> str | None:
    """The run a layer belongs to (None: the slide, its tissue, the sample's ground truth...)."""
    return slidescope_meta(layer).get("run")


#: layer kinds a run shows one at a time
_SHOWN_ONE = ("heatmap", "classes")


class DisplayControls(Container):
    """Run, Map, Opacity, Threshold, Smooth and the legend: one run and one of its maps visible at a time.

    Choosing a run shows its first map (a zero-shot run: its best-class map) and hides every map of the other
    runs; choosing a map shows it alone. Opacity, threshold and smoothing act on the map shown.
    """

    def __init__(self, viewer: Any) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._raw: weakref.WeakKeyDictionary[Any, np.ndarray] = weakref.WeakKeyDictionary()
        self._watched: weakref.WeakSet[Any] = weakref.WeakSet()
        self.run = ComboBox(
            label="Run",
            choices=self._run_choices,
            tooltip="Each analysis is a run (its layers are named after it); only the chosen run's map shows.",
        )
        self.map = ComboBox(
            label="Map", choices=self._map_choices, tooltip="The run's map to show (one at a time)."
        )
        self.opacity = FloatSlider(label="Opacity", value=HEATMAP_OPACITY, min=0.0, max=1.0, step=0.05)
        self.threshold = FloatSpinBox(
            label="Hide scores below",
            value=0.0,
            min=-1e9,
            max=1e9,
            step=0.01,
            tooltip="Tiles whose score is below this value are transparent (the hover text still shows them).",
        )
        self.threshold.enabled = False
        self.use_threshold = CheckBox(text="Threshold", value=False)
        self.smooth = CheckBox(
            text="Smooth (Gaussian, 1 tile)",
            value=False,
            tooltip=f"Display only: a Gaussian of {SMOOTH_SIGMA:g} tile over the tiles' scores (not off the "
            "tissue); hover text and exports keep each tile's own score.",
        )
        self.legend = Label(label="Legend", value="")
        self.legend.native.setWordWrap(True)
        self.extend(
            [self.run, self.map, self.opacity, self.use_threshold, self.threshold, self.smooth, self.legend]
        )
        self.run.changed.connect(self._on_run)
        self.map.changed.connect(self._on_map)
        self.opacity.changed.connect(self._on_opacity)
        self.use_threshold.changed.connect(self._on_threshold_switch)
        self.threshold.changed.connect(lambda _: self.apply())
        self.smooth.changed.connect(lambda _: self.apply())

    # -- choices (callables: napari resets every choice widget on layer events) ----------------------
    def _run_choices(self, _widget: Any = None) -> list[str]:
        runs: list[str] = []
        for layer in self._viewer.layers:
            run = layer_run(layer)
            if run and run not in runs and slidescope_meta(layer).get("kind") in _SHOWN_ONE:
                runs.append(run)
        return runs

    def _map_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        run = self.run.value if hasattr(self, "run") else None
        return [(layer.name.rsplit(" · ", 1)[-1], layer) for layer in self.maps(run)]

    def maps(self, run: str | None) -> list[Any]:
        """The maps (heatmaps, best-class layer) of a run, best-class map first."""
        found = [
            layer
            for layer in self._viewer.layers
            if run is not None
            and layer_run(layer) == run
            and slidescope_meta(layer).get("kind") in _SHOWN_ONE
        ]
        return sorted(found, key=lambda layer: slidescope_meta(layer).get("kind") != "classes")

    def refresh(self) -> None:
        """Re-read the runs and maps from the viewer's layers (a layer was added or removed)."""
        self.run.reset_choices()
        self.map.reset_choices()
        for layer in self._viewer.layers:
            if slidescope_meta(layer) and layer not in self._watched:
                self._watched.add(layer)
                layer.events.visible.connect(self.update_legend)
        self.update_legend()

    # -- showing ------------------------------------------------------------------------------------
    def show_run(self, run: str, shown: Any = None) -> Any:
        """Show one map of ``run`` (``shown``, else its best-class map, else its first heatmap) and its tile grid,
        and hide every other run's maps and tile grids; returns the layer shown. (A similarity or region run has
        no tile grid of its own: the one shown stays.)"""
        self.refresh()
        if run not in self.run.choices:
            return None
        with self.run.changed.blocked():
            self.run.value = run
        self.map.reset_choices()
        layers = self.maps(run)
        target = shown if shown in layers else (layers[0] if layers else None)
        grids = [layer for layer in self._viewer.layers if slidescope_meta(layer).get("kind") == "tiles"]
        if any(layer_run(layer) == run for layer in grids):  # the run's own tile grid (hover text) alone
            for layer in grids:
                if layer_run(layer) is not None:
                    layer.visible = layer_run(layer) == run
        if target is not None:
            with self.map.changed.blocked():
                self.map.value = target
        return self.show_map(target)

    def show_map(self, target: Any) -> Any:
        """Show ``target`` alone among the slidescope maps (its colour bar on), with the widget's opacity,
        threshold and smoothing; returns it."""
        for layer in self._viewer.layers:
            if slidescope_meta(layer).get("kind") in _SHOWN_ONE:
                layer.visible = layer is target
        if target is not None:
            if slidescope_meta(target).get("kind") == "heatmap" and hasattr(target, "colorbar"):
                target.colorbar.visible = True
            with self.opacity.changed.blocked():
                self.opacity.value = float(target.opacity)
            self._fit_threshold(target)
            self.apply()
        self.update_legend()
        return target

    def _on_run(self, run: str | None) -> None:
        if run:
            self.show_run(run)

    def _on_map(self, layer: Any) -> None:
        if layer is not None:
            self.show_map(layer)

    def _on_opacity(self, value: float) -> None:
        layer = self.map.value
        if layer is not None:
            layer.opacity = float(value)

    def _on_threshold_switch(self, on: bool) -> None:
        self.threshold.enabled = bool(on)
        self.apply()

    def _fit_threshold(self, layer: Any) -> None:
        """The threshold's step and start for the map's score range (its contrast limits)."""
        if slidescope_meta(layer).get("kind") != "heatmap":
            return
        lo, hi = (float(v) for v in layer.contrast_limits)
        with self.threshold.changed.blocked():
            self.threshold.step = max((hi - lo) / 100.0, 1e-6)
            if not self.use_threshold.value:
                self.threshold.value = lo

    def forget(self, layers: Sequence[Any]) -> None:
        """Take the current data of ``layers`` as their score grids (new layers, or a re-run's updated ones)."""
        for layer in layers:
            self._raw.pop(layer, None)

    def raw(self, layer: Any) -> np.ndarray:
        """The layer's own score grid (as made, before any threshold or smoothing)."""
        if layer not in self._raw:
            self._raw[layer] = np.asarray(layer.data, dtype=np.float32).copy()
        return self._raw[layer]

    def apply(self, layer: Any = None) -> None:
        """Draw the shown heatmap (or ``layer``) with the widget's threshold and smoothing."""
        layer = layer if layer is not None else self.map.value
        if layer is None or slidescope_meta(layer).get("kind") != "heatmap":
            return
        threshold = float(self.threshold.value) if self.use_threshold.value else None
        layer.data = display_grid(self.raw(layer), threshold=threshold, smooth=bool(self.smooth.value))

    def update_legend(self, _event: Any = None) -> None:
        """The legend of what is visible: the best-class colours while a best-class layer shows, the QC flags
        while the QC layer shows; empty otherwise (a hidden or removed layer takes its legend with it)."""
        visible = [layer for layer in self._viewer.layers if layer.visible and slidescope_meta(layer)]
        self.legend.value = "<br>".join(t for t in (class_legend_html(visible), qc_legend_html(visible)) if t)
