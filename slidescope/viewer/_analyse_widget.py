"""The "Analyse" dock widget: slide + encoder + (MIL checkpoint | zero-shot prompts) -> heatmaps, or
(slide encoder + few-shot support set) -> the slide's class probabilities.

The widget only gathers inputs, runs :func:`~slidescope.viewer._analysis.run_analysis` in a napari
``thread_worker`` (progress bar, Cancel button; the UI stays responsive) and turns the scores it
wrote into layers with :func:`~slidescope.viewer._results.result_layers`. A slidescope error
(unreadable slide, store of another slide, checkpoint of another encoder, empty prompts...) becomes
a napari error notification with slidescope's message, never a traceback.
"""

from __future__ import annotations

import functools
import importlib
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    RadioButtons,
    Select,
    TextEdit,
)

from .._compat import renamed_attribute
from ..errors import SlidescopeError
from ._analysis import AnalysisRequest, AnalysisResult, Progress, run_analysis
from ._compat import keep_triton_out
from ._layers import level0_to_world, show_tile_grid, top_tiles
from ._ask import TOP_K, AskMixin
from ._display import DisplayControls, run_label
from ._fluorescence import analysis_refusal
from ._readout import watch_viewer
from ._slide_model_widget import FEW_SHOT, NO_TILE_MAP, SlideModelFields
from ._widgets import add_layer_tuples, layers_of_kind, notify_error, slide_layers, slidescope_meta

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["AnalyseWidget"]

MIL, ZERO_SHOT = "MIL checkpoint", "Zero-shot prompts"
MODES = [MIL, ZERO_SHOT, FEW_SHOT]
DEFAULT_ENCODER = "he-descriptor"
#: what the pixel-size field shows at 0 (the slide's own pixel size is used)
FROM_SLIDE = "from slide"
PROMPTS_HINT = "tumour: invasive carcinoma; sheets of atypical cells\nnormal: benign stroma"


#: serialises the first import of torch and friends across worker threads (see _import_compute_stack)
_IMPORTS = threading.Lock()


def _import_compute_stack() -> None:
    """Import torch, the encoder registry (timm), the MIL task (lightning) and the slide-text API on one
    thread at a time (two threads importing torch's extension modules at once can crash the interpreter),
    after keeping triton out of a process whose OpenGL runs on a system LLVM (see ``_compat``)."""
    with _IMPORTS:
        keep_triton_out()
        for module in ("slidescope.mil.task", "slidescope.vlm.api"):
            importlib.import_module(module)
        from ..features import list_encoders

        list_encoders()


@dataclass(frozen=True)
class Failed:
    """What the worker returns for an input that cannot work: the message for the notification.

    (A worker that returns an exception object has it re-raised by superqt, traceback and all.)"""

    message: str


def _job(request: AnalysisRequest, cancel: threading.Event):
    """The worker body: the analysis, with slidescope errors returned as :class:`Failed`, not raised."""
    _import_compute_stack()
    try:
        return (yield from run_analysis(request, cancel=cancel))
    except SlidescopeError as err:
        return Failed(str(err))
    except OSError as err:
        return Failed(f"cannot read or write a file: {err}. Check the path and its permissions.")


def _list_encoders() -> list[str]:
    from ..features import list_encoders

    _import_compute_stack()
    return list_encoders()


def _while_alive(method):
    """A worker callback that does nothing once the widget is gone (closed while the worker ran)."""

    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except RuntimeError as err:  # Qt: "wrapped C/C++ object ... has been deleted"
            if "deleted" not in str(err):
                raise
            return None

    return wrapper


def set_pixel_size(layer: Any, mpp: float) -> None:
    """Show a slide opened without a pixel size in µm at ``mpp`` µm/px, and remember it was entered."""
    meta = {**slidescope_meta(layer), "mpp": [mpp, mpp], "units": "um", "mpp_source": "entered"}
    layer.scale = (mpp, mpp)
    layer.units = ("um", "um")
    layer.metadata = {**layer.metadata, "slidescope": meta}


class AnalyseWidget(AskMixin, Container):
    """Pick a slide, an encoder and a MIL checkpoint or zero-shot prompts; run; see the heatmaps.

    Attributes
    ----------
    last_result : the last :class:`~slidescope.viewer._analysis.AnalysisResult` shown (or None).
    last_seconds : seconds from pressing Analyse to the heatmap layers being in the viewer.
    busy : an analysis is running.
    encoders_listed : the encoder list is filled (it loads in the background, the registry imports torch).
    display : the :class:`~slidescope.viewer._display.DisplayControls` (run, map, opacity, threshold, smoothing,
        legend).
    elsewhere : the last similarity search's most similar tiles in the other slides of the store folder.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self.slide = ComboBox(
            label="Slide",
            choices=self._slide_choices,
            tooltip="A slide opened with the slidescope reader (File > Open) or the sample.",
        )
        # choice lists are callables over the widget's own state: napari resets every choice widget of a
        # dock widget on each layer insert/remove/rename/move (``reset_choices``), and a fixed list given
        # here would come back (the encoder list would drop to he-descriptor, top tiles would empty)
        self._encoder_names = [DEFAULT_ENCODER]
        self._top: dict[str, tuple[np.ndarray, np.ndarray, tuple[int, int], tuple[float, float]]] = {}
        self._top_choices: list[tuple[str, tuple[str, int]]] = []
        self.pixel_size = FloatSpinBox(
            label="Pixel size (µm/px)",
            value=0.0,
            min=0.0,
            max=100.0,
            step=0.0001,
            tooltip="Level-0 µm per pixel, for a slide whose file carries none (empty: from the file). "
            "Analyse then shows that slide in µm.",
        )
        self.pixel_size.native.setSpecialValueText(FROM_SLIDE)  # at 0: the field reads "from slide"
        self.encoder = ComboBox(
            label="Encoder",
            choices=self._encoder_choices,
            value=DEFAULT_ENCODER,
            tooltip="Patch encoder; he-descriptor needs no weights. Cached embeddings are reused.",
        )
        self.weights = FileEdit(
            label="Encoder weights",
            mode=FileDialogMode.EXISTING_FILE,
            nullable=True,
            tooltip="Weights file for encoders that need one (empty: their hub id / cache).",
        )
        self.mode = RadioButtons(label="Model", choices=MODES, value=MIL, orientation="horizontal")
        self.run_folder = FileEdit(
            label="MIL run folder",
            mode=FileDialogMode.EXISTING_DIRECTORY,
            nullable=True,
            tooltip="A training run folder (`slidescope train --out RUN`): all its folds are averaged, "
            "as `slidescope run --model RUN` does. Takes precedence over a single checkpoint.",
        )
        self.checkpoint = FileEdit(
            label="or one checkpoint",
            mode=FileDialogMode.EXISTING_FILE,
            filter="*.ckpt",
            nullable=True,
            tooltip="One trained MIL checkpoint (a fold's best.ckpt from `slidescope train`).",
        )
        self.slide_text_model = FileEdit(
            label="Slide-text model",
            mode=FileDialogMode.EXISTING_DIRECTORY,
            nullable=True,
            tooltip="Folder written by `slidescope pretrain` (its `model` folder).",
        )
        self.prompts_file = FileEdit(
            label="Prompts file", mode=FileDialogMode.EXISTING_FILE, filter="*.yaml *.yml", nullable=True
        )
        self.prompts_text = TextEdit(label="or type prompts", value="")
        self.prompts_text.native.setPlaceholderText(PROMPTS_HINT)
        self.store = FileEdit(
            label="Store folder",
            mode=FileDialogMode.EXISTING_DIRECTORY,
            nullable=True,
            tooltip="Folder of embedding stores (empty: slidescope's cache folder).",
        )
        self._make_run_widgets()
        self._make_result_widgets()
        self.extend(
            [
                self.slide,
                self.pixel_size,
                self.encoder,
                self.weights,
                self.mode,
                self.run_folder,
                self.checkpoint,
                self.slide_text_model,
                self.prompts_file,
                self.prompts_text,
                *self._few_shot_fields(),
                self.store,
                self.device,
                self.dark_background,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
                self.summary,
                self.display,
                self.tile_grid,
                self.region_button,
                self.similar,
                self.top_by,
                self.top_tiles,
                self.associated,
                self.show_associated,
            ]
        )

        self.last_result: AnalysisResult | None = None
        self.last_seconds: float | None = None
        self.worker: Any = None
        self.busy = False  # an analysis runs (from start() until its worker has finished)
        self._cancel = threading.Event()
        self._started = 0.0

        self._connect(viewer)
        watch_viewer(viewer)  # tile hover text in words, a read-only tile layer, thin outlines
        self._on_mode(self.mode.value)
        self._on_layers_changed()
        self.encoders_worker = self._load_encoder_names()

    def _make_run_widgets(self) -> None:
        """The widgets of the run itself: device, dark-background switch, Analyse and Cancel."""
        self.device = ComboBox(
            label="Device",
            choices=["cpu", "cuda"],
            value="cpu",
            tooltip="Where the encoder and the model run (cuda: the first NVIDIA GPU).",
        )
        self.dark_background = CheckBox(
            text="Dark background",
            value=False,
            tooltip="Analyse a brightfield scan whose background is dark. Without it such a slide is refused as "
            "a fluorescence image stored as RGB, which the encoders are not made for (--allow-darkfield of a "
            "batch run).",
        )
        self.run_button = PushButton(text="Analyse")
        self.cancel_button = PushButton(text="Cancel", enabled=False)

    def _make_result_widgets(self) -> None:
        """The widgets below the run: progress, status, summary, legend, tile grid, similarity clicks, top
        tiles, label and macro."""
        self.progress = ProgressBar(label="Progress", min=0, max=100, value=0)
        self.status = Label(label="Status", value="Open a slide, choose a model, press Analyse.")
        self.status.native.setWordWrap(True)  # error messages are long: whole, on several lines
        self.summary = Label(label="Slide", value="")
        self.tile_grid = CheckBox(text="Show tile grid", value=False)
        self.region_button = PushButton(
            text="Analyse inside the drawn shapes",
            tooltip="The MIL model on the tiles whose centre lies inside each shape of the selected shapes "
            "layer (draw one, or open QuPath GeoJSON annotations): each region's prediction in the Slide "
            "line, the attention within each region as a heatmap.",
        )
        self.similar = CheckBox(
            text="Click a tile: similar tiles",
            value=False,
            tooltip="Click a tile (pan/zoom mode): a heatmap of every tile's cosine similarity to it, from the "
            "cached embeddings of the chosen encoder; the most similar tiles of this slide are listed under "
            "Top tiles, those of the other slides of the store folder in the Slide line.",
        )
        self.display = DisplayControls(self._viewer)  # run, map, opacity, threshold, smoothing, legend
        self.legend = self.display.legend
        self._runs = 0  # analysis runs so far (their layers' names count them)
        self.elsewhere: list[Any] = []  # the last similarity search's top tiles in the folder's other slides
        self.top_by = ComboBox(label="Top tiles by", choices=self._top_by_choices)
        self.top_tiles = Select(label="Top tiles", choices=self._top_tile_choices)
        self.associated = ComboBox(label="Label / macro", choices=self._associated_choices)
        self.show_associated = PushButton(text="Show")

    def _connect(self, viewer: napari.viewer.Viewer) -> None:
        """Wire the buttons, choices and the viewer's layer events to the widget."""
        self.mode.changed.connect(self._on_mode)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.region_button.changed.connect(self.analyse_regions)
        self.tile_grid.changed.connect(self._on_tile_grid)
        self.top_by.changed.connect(self._fill_top_tiles)
        self.top_tiles.changed.connect(self._on_top_tile)
        self.slide.changed.connect(lambda _: self.associated.reset_choices())
        self.show_associated.changed.connect(self.add_associated_image)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._on_layers_changed)
        ref = weakref.ref(self)

        def on_click(_viewer: Any, event: Any) -> None:  # the viewer keeps it: no strong reference to us
            widget = ref()
            if widget is not None and widget.similar.value and event.button == 1:
                widget.similar_at(tuple(event.position))

        viewer.mouse_drag_callbacks.append(on_click)

    #: the old name of ``slide_text_model``, for one release (docs/GLOSSARY.md)
    slidetext_model = renamed_attribute("slidetext_model", "slide_text_model")

    # -- choices ----------------------------------------------------------------------------------
    def _slide_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in slide_layers(self._viewer)]

    def _encoder_choices(self, _widget: Any = None) -> list[str]:
        return list(self._encoder_names)

    def _top_by_choices(self, _widget: Any = None) -> list[str]:
        return list(self._top)

    def _top_tile_choices(self, _widget: Any = None) -> list[tuple[str, tuple[str, int]]]:
        return list(self._top_choices)

    def _associated_choices(self, _widget: Any = None) -> list[str]:
        layer = self.slide.value if hasattr(self, "slide") else None
        return list(slidescope_meta(layer).get("associated_images", [])) if layer is not None else []

    def _on_layers_changed(self, _event: Any = None) -> None:
        self.slide.reset_choices()
        self.associated.reset_choices()
        self.display.refresh()

    def next_run(self, what: str) -> str:
        """The label of a new run of ``what`` (``run 3 · abmil · 16:40``), counted per widget."""
        self._runs += 1
        return run_label(self._runs, what)

    def _load_encoder_names(self) -> Any:
        """Fill the encoder list off the UI thread (the registry imports torch and timm)."""
        from napari.qt.threading import create_worker

        self.encoders_listed = False
        return create_worker(
            _list_encoders, _connect={"returned": self._fill_encoders, "finished": self._encoders_done}
        )

    @_while_alive
    def _fill_encoders(self, names: list[str]) -> None:
        current = self.encoder.value
        self._encoder_names = list(names)
        self.encoder.reset_choices()
        self.encoder.value = current if current in names else DEFAULT_ENCODER

    def _encoders_done(self) -> None:
        self.encoders_listed = True

    def _few_shot_fields(self) -> list[Any]:
        """Make the fields of the slide encoder + few-shot model (``self.few_shot``); returns its widgets."""
        self.few_shot = SlideModelFields(self._require_encoder)
        return self.few_shot.widgets

    def _require_encoder(self, name: str) -> None:
        """Choose the patch encoder ``name`` (the one a slide encoder needs), listed even before the list loads."""
        if name not in self._encoder_names:
            self._encoder_names.append(name)
            self.encoder.reset_choices()
        self.encoder.value = name

    def _on_mode(self, value: str) -> None:
        mil = value == MIL
        self.checkpoint.visible = mil
        self.run_folder.visible = mil
        for widget in (self.slide_text_model, self.prompts_file, self.prompts_text):
            widget.visible = value == ZERO_SHOT
        self.few_shot.show(value == FEW_SHOT)
        if value == FEW_SHOT:
            self.few_shot.on_slide_encoder(self.few_shot.slide_encoder.value)

    # -- running ----------------------------------------------------------------------------------
    def request(self) -> AnalysisRequest | None:
        """The request the widget's fields describe (None, with a notification, when incomplete)."""
        layer = self.slide.value
        if layer is None:
            notify_error(
                analysis_refusal(self._viewer)
                or "open a slide first: File > Open (any slide format), or File > Open Sample > slidescope"
            )
            return None
        meta = slidescope_meta(layer)
        slide_mpp = None
        if meta.get("units") != "um":
            if not self.pixel_size.value:
                notify_error(
                    f"{layer.name} has no pixel size, so tiles cannot be cut at the encoder's resolution: "
                    "enter its µm per pixel in the Pixel size field (from the scanner's report or a "
                    "calibration slide) and press Analyse again"
                )
                return None
            slide_mpp = float(self.pixel_size.value)
            set_pixel_size(layer, slide_mpp)
        elif meta.get("mpp_source") == "entered":
            slide_mpp = float(meta["mpp"][0])
        common = {
            "slide": Path(meta["path"]),
            "encoder": self.encoder.value,
            "store": self.store.value,
            "weights": str(self.weights.value) if self.weights.value else None,
            "device": self.device.value,
            "slide_mpp": slide_mpp,
            "allow_darkfield": bool(self.dark_background.value),
        }
        if self.mode.value == MIL:
            model = self.run_folder.value or self.checkpoint.value
            if model is None:
                notify_error(
                    "choose a MIL run folder (`slidescope train --out RUN`: its folds are averaged) or one "
                    "checkpoint (a fold's best.ckpt), e.g. from `slidescope demo`"
                )
                return None
            return AnalysisRequest(**common, checkpoint=Path(model))
        if self.mode.value == FEW_SHOT:
            return AnalysisRequest(**common, few_shot=self.few_shot.request())
        prompts: Any = Path(self.prompts_file.value) if self.prompts_file.value else self.prompts_text.value
        return AnalysisRequest(**common, prompts=prompts, slide_text_model=self.slide_text_model.value)

    def start(self, _value: Any = None) -> Any:
        """Run the analysis the fields describe in a background worker; returns the worker (or None)."""
        from napari.qt.threading import create_worker

        if self.busy:
            return None
        request = self.request()
        if request is None:
            return None
        self._cancel = threading.Event()
        self._started = time.perf_counter()
        self.busy = True
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.status.value = "starting"
        self.worker = create_worker(
            _job,
            request,
            self._cancel,
            _connect={
                "yielded": self._on_progress,
                "returned": self._on_returned,
                "finished": self._on_finished,
            },
        )
        return self.worker

    def cancel(self, _value: Any = None) -> None:
        """Stop the running analysis at the next batch or step; what is computed stays cached."""
        self._cancel.set()
        self.cancel_button.enabled = False
        self.status.value = "cancelling..."

    @_while_alive
    def _on_progress(self, progress: Progress) -> None:
        fraction = progress.fraction
        if fraction is None:
            self.status.value = progress.step
        else:
            self.progress.value = int(round(100 * fraction))
            self.status.value = f"{progress.step}: {progress.done} / {progress.total} tiles"

    @_while_alive
    def _on_finished(self) -> None:
        self.busy = False
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    @_while_alive
    def _on_returned(self, outcome: AnalysisResult | Failed) -> None:
        if isinstance(outcome, Failed):
            self.status.value = f"failed: {outcome.message}"  # whole, wrapped: the toast shows one line
            self.progress.value = 0
            notify_error(outcome.message)
            return
        if outcome.cancelled:
            self.status.value = outcome.cancel_message()
            return
        try:
            self.show_result(outcome)
        except SlidescopeError as err:
            notify_error(str(err))
            self.status.value = f"failed: {err}"
            return
        self.last_seconds = time.perf_counter() - self._started
        self.progress.value = 100
        reused = "cached embeddings" if outcome.reused_embeddings else "new embeddings"
        then = NO_TILE_MAP if not outcome.scores else "hover a tile to see its scores"
        self.status.value = f"done in {self.last_seconds:.1f} s ({reused}); {then}"

    # -- results ----------------------------------------------------------------------------------
    def show_result(self, result: AnalysisResult) -> list[Any]:
        """Add the layers of a finished analysis as a new run (heatmaps, classes, tiles named
        ``<slide>: run N · <model> · HH:MM · <score>``; the slide's tissue); show its first map alone (a
        zero-shot run: the best-class map with its legend); returns the layers."""
        from ..features import open_store
        from ._results import read_scores, result_layers, store_lattice

        store = open_store(result.store)
        run = self.next_run(result.what)
        tuples = result_layers(
            store,
            result.scores,
            result.mpp,
            slide_path=result.slide,
            classes=result.classes,
            tissue=result.tissue,
            run=run,
        )
        added = add_layer_tuples(self._viewer, tuples)
        for layer in added:
            if slidescope_meta(layer).get("kind") == "classes" and result.logit_scale is not None:
                layer.metadata = {  # what a region's zero-shot pools with
                    **layer.metadata,
                    "slidescope": {
                        **slidescope_meta(layer),
                        "logit_scale": result.logit_scale,
                        "label": result.what,
                    },
                }
        self.display.forget(added)
        self.display.show_run(run)
        tiles = added[-1]
        show_tile_grid(tiles, self.tile_grid.value)
        self._viewer.layers.selection.active = tiles  # its status line shows the hovered tile's scores
        coords, lattice = store_lattice(store)
        self._top = {
            name: (values, coords, lattice.extent, result.mpp)
            for name, values in read_scores(store, result.scores).items()
        }
        self.top_by.reset_choices()
        if self._top:
            self.top_by.value = next(iter(self._top))
        self._fill_top_tiles()
        self.summary.value = result.summary
        self.last_result = result
        return added

    def _on_tile_grid(self, value: bool) -> None:
        for layer in layers_of_kind(self._viewer, "tiles"):
            show_tile_grid(layer, bool(value))

    def _fill_top_tiles(self, _value: Any = None) -> None:
        name = self.top_by.value
        choices = []
        if name in self._top:
            values, coords, _, _ = self._top[name]
            for rank, i in enumerate(top_tiles(values, TOP_K), start=1):
                x, y = coords[i]
                choices.append((f"{rank}. {values[i]:.3g}  tile {i} at x={x}, y={y}", (name, int(i))))
        self._top_choices = choices
        self.top_tiles.reset_choices()

    def _on_top_tile(self, selected: list[tuple[str, int]]) -> None:
        if selected:
            self.go_to_tile(*selected[0])

    def go_to_tile(self, score: str, index: int) -> None:
        """Centre the view on a tile and zoom so it spans about a third of the canvas."""
        _, coords, extent, mpp = self._top[score]
        centre = level0_to_world(np.asarray(coords[index], dtype=np.float64) + np.asarray(extent) / 2, mpp)
        camera = self._viewer.scene.camera
        camera.center = tuple(float(v) for v in centre)
        tile_um = max(extent[0] * mpp[0], extent[1] * mpp[1])
        camera.zoom = float(min(self._viewer.canvas.size)) / (3.0 * tile_um)

    # -- associated images -----------------------------------------------------------------------
    def add_associated_image(self, _value: Any = None) -> Any:
        """Show the chosen associated image (label, macro...) beside the slide, scaled to half its height."""
        from ..wsi import open_slide

        layer, name = self.slide.value, self.associated.value
        if layer is None or name is None:
            notify_error("choose a slide and one of its associated images (label, macro...)")
            return None
        meta = slidescope_meta(layer)
        try:
            with open_slide(meta["path"]) as slide:
                image = slide.associated_images[name]
        except (SlidescopeError, KeyError) as err:
            notify_error(f"cannot read the {name} image of {layer.name}: {err}")
            return None
        (w0, h0), (mx, my) = meta["dimensions"], meta["mpp"]
        size = 0.5 * h0 * my / image.shape[0]  # µm per associated-image pixel
        return self._viewer.add_image(
            image,
            rgb=True,
            name=f"{Path(meta['path']).stem}: {name}",
            scale=(size, size),
            translate=(0.0, w0 * mx * 1.05),
            units=(meta["units"],) * 2,
            metadata={"slidescope": {"kind": "associated", "image": name}},
        )
