"""The plugin stays put (Qt, under Xvfb): widget choices survive layer changes, slides open with
slidescope's reader without ``plugin=``, re-runs replace their layers, one heatmap shows with its colour
bar, exports are named by run and never overwrite."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest


WAIT_MS = 120_000
SHOTS = Path("/tmp/q_shots")


def _result(sample, store: Path, scores: list[str], classes: list[str] | None = None):
    from slidescope.viewer._analysis import AnalysisResult

    return AnalysisResult(
        slide=sample.slide,
        store=store,
        mpp=(0.5, 0.5),
        tissue=sample.tissue,
        scores=scores,
        classes=classes or [],
        summary="test",
    )


@pytest.fixture
def scored_store(sample, tmp_path: Path) -> Path:
    """A copy of the sample store with two MIL runs' attention and two zero-shot classes written in."""
    from slidescope.features import SlideStore

    path = Path(shutil.copytree(sample.store, tmp_path / "stores" / sample.store.name))
    store = SlideStore.open(path, mode="r+")
    fraction = np.asarray(store.scores("ground-truth/tumour-fraction"), dtype=np.float32)
    rng = np.random.default_rng(0)
    store.write_scores("runA/attention", fraction)
    store.write_scores("runB/attention", rng.random(store.n_tiles).astype(np.float32))
    store.write_scores("zero-shot/tumour", fraction)
    store.write_scores("zero-shot/normal", 1 - fraction)
    return path


def test_analyse_widget_keeps_its_choices_when_layers_change(
    make_napari_viewer, qtbot, sample, cmu_small: Path
) -> None:
    from slidescope.viewer._analyse_widget import AnalyseWidget

    viewer = make_napari_viewer()
    viewer.open_sample("slidescope", "sample_slide")
    widget = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Analyse")  # napari resets its choices on layer events
    qtbot.waitUntil(lambda: widget.encoders_listed, timeout=WAIT_MS)
    assert "uni" in widget.encoder.choices
    widget.encoder.value = "uni"
    widget.show_result(_result(sample, sample.store, ["ground-truth/tumour-fraction"]))
    tops = widget.top_tiles.choices
    assert len(tops) == 10
    extra = viewer.add_image(np.zeros((8, 8)), name="extra")
    viewer.layers.remove(extra)
    viewer.add_shapes([np.array([[0, 0], [0, 50], [50, 50]])], shape_type="polygon", name="drawn")
    (second,) = viewer.open(str(cmu_small), plugin="slidescope")
    viewer.layers.move(0, len(viewer.layers) - 1)
    assert widget.encoder.value == "uni"
    assert widget.top_tiles.choices == tops and widget.top_by.value == "ground-truth/tumour-fraction"
    assert second in widget.slide.choices and widget.slide.value is viewer.layers["sample_slide.tiff"]
    # the invisible tile grid (hovered for its scores) cannot be painted on, even after napari resets it
    tiles = viewer.layers["sample_slide: tiles"]
    assert not tiles.editable
    tiles.data = tiles.data.copy()
    assert not tiles.editable and tiles.mode == "pan_zoom"


def test_error_notifications_keep_the_whole_message_in_the_log(notifications, caplog) -> None:
    from slidescope.viewer._widgets import notify_error

    message = "the store x.zarr was made from another slide; " + "choose this slide's store " * 20 + "END"
    with caplog.at_level("ERROR", logger="slidescope.viewer"):
        notify_error(message)
    assert notifications == [("error", f"slidescope: {message}")]
    assert caplog.records[-1].getMessage() == f"slidescope: {message}"


def test_an_error_toast_opens_its_whole_message(make_napari_viewer, qtbot) -> None:
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QMessageBox, QPushButton

    from slidescope.viewer._widgets import WHOLE_MESSAGE, notify_error

    viewer = make_napari_viewer(show=True)  # napari shows toasts on a visible window only
    message = "the store x.zarr was made from another slide; " + "choose this slide's store " * 20 + "END"
    notify_error(message)
    qtbot.waitUntil(lambda: bool(NapariQtNotification._instances), timeout=5000)
    toast = NapariQtNotification._instances[-1]
    assert toast.message.text() == f"slidescope: {message}"  # the toast itself elides it to one line
    (button,) = [b for b in toast.findChildren(QPushButton) if b.text() == WHOLE_MESSAGE]
    button.click()
    boxes = viewer.window._qt_window.findChildren(QMessageBox)
    assert [box.text() for box in boxes] == [f"slidescope: {message}"] and boxes[0].isVisible()
    boxes[0].close()
    toast.close()


def test_slides_open_with_slidescope_without_naming_the_plugin(
    make_napari_viewer, qtbot, sample, cmu_small: Path, tmp_path: Path
) -> None:
    from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog
    from napari.plugins import _npe2
    from napari.settings import get_settings
    from npe2 import PluginManager

    viewer = make_napari_viewer()
    settings = get_settings()
    # napari's builtin reader claims .svs/.tif/.ndpi... too: before our fix, viewer.open raised
    # MultipleReaderError and the drop dialog pre-selected "napari builtins"
    assert set(_npe2.get_readers(str(cmu_small))) == {"slidescope", "napari"}
    dialog = QtReaderDialog(pth=str(cmu_small), readers=_npe2.get_readers(str(cmu_small)))
    qtbot.addWidget(dialog)
    assert dialog._get_plugin_choice() == "Slidescope"

    settings.plugins.extension2reader = {"*.btf": "napari"}  # the user's own choice stays
    pm = PluginManager.instance()
    pm.deactivate("slidescope")
    viewer.window.add_plugin_dock_widget("slidescope", "Analyse")  # first use activates the plugin
    prefs = settings.plugins.extension2reader
    assert prefs["*.btf"] == "napari" and prefs["*.svs"] == prefs["*.tiff"] == prefs["*.ndpi"] == "slidescope"

    from napari.plugins.utils import get_preferred_reader

    assert get_preferred_reader(str(cmu_small)) == "slidescope"
    # a drop on the window (and File > Open) opens with the preferred reader, no dialog; so does
    # viewer.open(path, plugin=None) (napari's own default for viewer.open is plugin="napari")
    viewer.window._qt_viewer._qt_open([str(cmu_small)], stack=False)
    cmu = viewer.layers[-1]
    tif = Path(shutil.copy(sample.slide, tmp_path / "sample_slide.tif"))
    (slide,) = viewer.open(str(tif), plugin=None)
    assert cmu.source.reader_plugin == "slidescope", (cmu.source, cmu.metadata)
    assert cmu.metadata["slidescope"]["kind"] == "slide"
    np.testing.assert_allclose(cmu.scale, (0.499, 0.499))
    assert slide.multiscale and [str(u) for u in slide.units] == ["micrometer", "micrometer"]
    assert type(slide.data[0]).__name__ == "Array"  # dask: lazy, not read whole


def test_each_run_is_a_named_group_shown_one_map_at_a_time_with_its_colour_bar_and_legend(
    make_napari_viewer, qtbot, sample, scored_store: Path, save_artefact, run_layer
) -> None:
    from PIL import Image

    from slidescope.viewer._analyse_widget import AnalyseWidget

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1100, 900)
    viewer.open_sample("slidescope", "sample_slide")
    widget = AnalyseWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="Analyse")
    widget.show_result(_result(sample, scored_store, ["runA/attention"]))
    widget.show_result(_result(sample, scored_store, ["runB/attention"]))
    widget.show_result(
        _result(sample, scored_store, ["runA/attention"])
    )  # a re-run of run A: a run of its own
    runs = list(widget.display.run.choices)
    assert [r.split(" · ")[:2] for r in runs] == [["run 1", "runA"], ["run 2", "runB"], ["run 3", "runA"]]
    for run, score in zip(runs, ["runA/attention", "runB/attention", "runA/attention"], strict=True):
        # every layer of a run carries its label: its heatmap and its tile grid
        names = [layer.name for layer in viewer.layers if layer.metadata["slidescope"].get("run") == run]
        assert names == [f"sample_slide: {run} · {score}", f"sample_slide: {run} · tiles"]
    heatmaps = [layer for layer in viewer.layers if layer.metadata["slidescope"].get("kind") == "heatmap"]
    shown = [layer for layer in heatmaps if layer.visible]
    assert [layer.name for layer in shown] == [f"sample_slide: {runs[2]} · runA/attention"]
    assert shown[0].colorbar.visible and widget.display.run.value == runs[2]
    widget.display.run.value = runs[1]  # the Run switch: run 2's map alone
    assert [layer.name for layer in heatmaps if layer.visible] == [
        f"sample_slide: {runs[1]} · runB/attention"
    ]
    widget.display.run.value = runs[2]
    dock.hide()  # the whole window for the canvas
    viewer.reset_view()
    qtbot.wait(400)
    with_bar = viewer.screenshot(canvas_only=True, flash=False)
    shown[0].colorbar.visible = False
    qtbot.wait(200)
    without = viewer.screenshot(canvas_only=True, flash=False)
    shown[0].colorbar.visible = True
    h, w = with_bar.shape[:2]
    corner = (slice(0, h // 3), slice(2 * w // 3, w))
    changed = np.any(with_bar[corner][..., :3] != without[corner][..., :3], axis=-1)
    assert changed.sum() > 25 * 100  # the colour bar is drawn in the top-right corner
    assert not np.any(with_bar[h // 2 :, : w // 2, :3] != without[h // 2 :, : w // 2, :3])
    SHOTS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(with_bar).save(SHOTS / "heatmap_colorbar.png")
    save_artefact(SHOTS / "heatmap_colorbar.png")

    widget.show_result(
        _result(sample, scored_store, ["zero-shot/tumour", "zero-shot/normal"], ["tumour", "normal"])
    )
    from slidescope.viewer._layers import CLASS_COLOURS

    classes = run_layer(viewer, "best class")
    np.testing.assert_allclose(classes.colormap.map(np.array([1]))[0, :3], np.array(CLASS_COLOURS[0]) / 255)
    assert "tumour" in widget.legend.value and "rgb(230,25,75)" in widget.legend.value
    # a zero-shot run shows its best-class map alone (legend on); the Map switch shows one class's map instead
    visible = [
        layer.name.split(" · ")[-1] for layer in viewer.layers if layer.visible and " · " in layer.name
    ]
    assert visible == ["best class", "tiles"]
    widget.display.map.value = run_layer(viewer, "zero-shot/tumour")
    visible = [
        layer.name.split(" · ")[-1] for layer in viewer.layers if layer.visible and " · " in layer.name
    ]
    assert visible == ["zero-shot/tumour", "tiles"] and run_layer(viewer, "zero-shot/tumour").colorbar.visible
    assert widget.legend.value == ""  # the legend goes with its layer (it stayed on in the similarity shot)
    widget.display.map.value = classes
    assert "tumour" in widget.legend.value
    classes.visible = False  # hidden by hand: its legend goes too
    assert widget.legend.value == ""
    classes.visible = True
    viewer.layers.remove(classes)
    assert widget.legend.value == ""
    qtbot.waitUntil(lambda: widget.encoders_listed, timeout=WAIT_MS)  # no worker outlives the test


def test_export_names_say_the_run_and_never_overwrite(
    make_napari_viewer, qtbot, sample, scored_store: Path, tmp_path: Path, run_layer
) -> None:
    import json

    from PIL import Image

    from slidescope.viewer._analyse_widget import AnalyseWidget
    from slidescope.viewer._export_widget import ExportWidget

    viewer = make_napari_viewer()
    viewer.open_sample("slidescope", "sample_slide")
    analyse = AnalyseWidget(viewer)
    analyse.show_result(_result(sample, scored_store, ["runA/attention"]))
    widget = ExportWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Export")
    widget.heatmap.value = run_layer(viewer, "runA/attention")
    widget.folder.value = tmp_path / "export"
    first = widget.export_geojson()
    second = widget.export_geojson()
    assert [p.name for p in first] == [
        "sample_slide.run1-runA-attention.tiles.geojson",
        "sample_slide.run1-runA-attention.tissue.geojson",
    ]
    assert [p.name for p in second] == [
        "sample_slide.run1-runA-attention.tiles-2.geojson",
        "sample_slide.run1-runA-attention.tissue-2.geojson",
    ]
    tiles = json.loads(first[0].read_text())["features"]
    assert "runA/attention" in tiles[0]["properties"]["measurements"]
    (png,) = widget.export_png()
    assert png.name == "sample_slide.run1-runA-attention.png" and widget.export_png()[0].name.endswith(
        "-2.png"
    )
    qtbot.waitUntil(lambda: analyse.encoders_listed, timeout=WAIT_MS)
    image = np.asarray(Image.open(png).convert("RGB"))
    # rendered from the scores over the thumbnail (not a canvas screenshot): the slide's 4:3 aspect, a bar
    assert image.shape[1] >= 1024 * 0.95 and image.mean() > 50
    from slidescope.features import SlideStore, open_store
    from slidescope.mil.heatmap import colormap
    from slidescope.wsi import open_slide

    store = open_store(scored_store)
    fraction = np.asarray(store.scores("ground-truth/tumour-fraction"), dtype=np.float64)
    with open_slide(sample.slide) as slide:
        thumb = slide.get_thumbnail((1024, 1024)).astype(np.float64)
        scale = thumb.shape[1] / slide.dimensions[0]
    for i in (int(np.argmax(fraction)), int(np.argmin(fraction))):  # the hottest and the coldest tile
        cx, cy = ((store.coords[i] + 112) * scale).astype(int)
        lo, hi = fraction.min(), fraction.max()
        scaled = (fraction[i] - lo) / (hi - lo)
        a = 0.6 * min(1.0, 4 * scaled)  # the viewer's ramp: transparent at the bottom of the range
        expected = a * colormap(np.array([scaled]))[0] + (1 - a) * thumb[cy, cx, :3]
        np.testing.assert_allclose(image[cy, cx], expected, atol=3)

    # a later run writes other scores under the same name: run 1's exports keep run 1's own scores
    SlideStore.open(scored_store, mode="r+").write_scores("runA/attention", (1 - fraction).astype(np.float32))
    analyse.show_result(_result(sample, scored_store, ["runA/attention"]))
    (tif,) = widget.export_tiff()
    assert tif.name == "sample_slide.run1-runA-attention.tif"
    tiles = json.loads(widget.export_geojson()[0].read_text())["features"]
    got = [f["properties"]["measurements"]["runA/attention"] for f in tiles]
    np.testing.assert_allclose(got, fraction, atol=1e-6)

    # zero-shot: measurement names say the prompt set; the tiles are classified by the run's own best class
    result = _result(sample, scored_store, ["zero-shot/tumour", "zero-shot/normal"], ["tumour", "normal"])
    result.label = "zero-shot demo-prompts"
    analyse.show_result(result)
    widget.heatmap.value = run_layer(viewer, "zero-shot/tumour")
    path, _ = widget.export_geojson()
    assert path.name == "sample_slide.run3-zero-shot-tumour.tiles.geojson"
    features = json.loads(path.read_text())["features"]
    names = set(features[0]["properties"]["measurements"])
    assert {"zero-shot demo-prompts: tumour", "zero-shot demo-prompts: normal"} <= names
    assert not any(n.startswith("zero-shot/") for n in names)
    best = ["tumour" if f >= 0.5 else "normal" for f in fraction]
    assert [f["properties"]["classification"]["name"] for f in features] == best
