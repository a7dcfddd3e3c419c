"""The plugin in a real napari window (Qt, under Xvfb): reader, sample, Analyse and Export widgets, rendering."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from slidescope.viewer import _reader
from slidescope.viewer._layers import level0_to_world

# napari 0.9 warns on every Qt viewer made with PyQt5 (the binding the `viewer` extra installs) that it
# cannot detect the system theme; that is napari's concern, not something these tests can fix

WAIT_MS = 120_000  # generous: the first analysis imports torch and lightning on a loaded 2-core machine


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    counts: Counter = Counter()
    original = _reader.SlideLevel.read

    def counting(self, x, y, width, height):
        counts[self.level] += width * height
        return original(self, x, y, width, height)

    monkeypatch.setattr(_reader.SlideLevel, "read", counting)
    return counts


def _settle(qtbot, viewer, ms: int = 200) -> None:
    """Let napari slice and draw what the camera shows."""
    qtbot.wait(ms)


def _finish(qtbot, widget) -> None:
    """Wait for the widget's analysis and for its encoder list (no thread outlives the test)."""
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: widget.encoders_listed, timeout=WAIT_MS)
    qtbot.wait(50)


def _analyse(make_napari_viewer, qtbot, **fields):
    from slidescope.viewer._analyse_widget import AnalyseWidget

    viewer = make_napari_viewer()
    viewer.open_sample("slidescope", "sample_slide")
    widget = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Analyse")
    for name, value in fields.items():
        getattr(widget, name).value = value
    return viewer, widget


# -- reader -----------------------------------------------------------------------------------------


def test_opening_slides_reads_only_visible_tiles(
    make_napari_viewer, qtbot, cmu_small: Path, sample, reads
) -> None:
    viewer = make_napari_viewer(show=True)
    (cmu,) = viewer.open(str(cmu_small), plugin="slidescope")
    assert len(viewer.layers) == 1 and cmu.rgb and not cmu.multiscale
    np.testing.assert_allclose(cmu.scale, (0.499, 0.499))
    viewer.layers.clear()
    reads.clear()

    (layer,) = viewer.open(str(sample.slide), plugin="slidescope")
    assert layer.multiscale and len(layer.data) == 2 and layer.data[0].shape == (3072, 4096, 3)
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    overlay = viewer.canvas.overlays.scale_bar
    overlay.visible = True
    viewer.reset_view()
    _settle(qtbot, viewer)
    assert reads[0] == 0 and reads[1] > 0  # the whole slide on screen: level 1 only
    # zoom to full resolution on a 200 µm field: level 0, and only around what is visible
    camera = viewer.scene.camera
    camera.center = (800.0, 1000.0)
    camera.zoom = min(viewer.canvas.size) / 200.0
    _settle(qtbot, viewer, 400)
    assert layer.data_level == 0
    assert 0 < reads[0] <= 0.25 * 4096 * 3072, reads


def test_bad_file_dropped_on_the_viewer_gives_a_notification(
    make_napari_viewer, fixtures_dir: Path, notifications
) -> None:
    viewer = make_napari_viewer()
    # a drop on the window opens with the reader napari picks for the extension (the user's choice,
    # remembered per extension); here it is ours
    for name in ("not-a-tiff.svs", "unreadable.svs"):
        assert viewer.open(str(fixtures_dir / name), plugin="slidescope") == []
    assert len(viewer.layers) == 0
    errors = [m for s, m in notifications if s == "error"]
    assert len(errors) == 2 and all(m.startswith("slidescope: ") for m in errors)


def test_sample_data_shows_the_slide_with_its_heatmap(make_napari_viewer, sample) -> None:
    from slidescope.features import open_store

    viewer = make_napari_viewer()
    layers = viewer.open_sample("slidescope", "sample_slide")
    assert [layer.name for layer in layers] == [
        "sample_slide.tiff",
        "sample_slide: tissue",
        "sample_slide: ground-truth/tumour-fraction",
        "sample_slide: tiles",
    ]
    slide, tissue, heat, tiles = layers
    assert slide.multiscale and tissue.nshapes == len(sample.tissue.contours)
    store = open_store(sample.store)
    fraction = store.scores("ground-truth/tumour-fraction")
    i = int(np.argmax(fraction))
    x, y = store.coords[i]
    centre = level0_to_world(np.array([x + 112, y + 112]), (0.5, 0.5))
    assert heat.get_value(centre, world=True) == pytest.approx(fraction[i])
    assert tiles.get_value(centre, world=True) == i + 1


# -- Analyse ----------------------------------------------------------------------------------------


def test_analyse_with_a_checkpoint_on_cached_embeddings(
    make_napari_viewer, qtbot, sample, checkpoint: Path, run_layer
) -> None:
    from slidescope.features import open_store

    viewer, widget = _analyse(make_napari_viewer, qtbot, checkpoint=checkpoint)
    assert widget.slide.value is viewer.layers["sample_slide.tiff"]
    worker = widget.start()
    assert worker is not None and not widget.run_button.enabled and widget.cancel_button.enabled
    _finish(qtbot, widget)
    assert widget.last_result is not None, widget.status.value
    assert widget.last_result.reused_embeddings and "cached embeddings" in widget.status.value
    assert widget.run_button.enabled and widget.progress.value == 100
    heat = run_layer(viewer, "abmil/attention")
    assert heat.name.startswith("sample_slide: run 1 · abmil · ")  # the run: its number, model and time
    attention = open_store(sample.store).scores("abmil/attention")
    coords = open_store(sample.store).coords
    best = int(np.argmax(attention))
    centre = level0_to_world(coords[best] + 112, (0.5, 0.5))
    assert heat.get_value(centre, world=True) == pytest.approx(attention[best])
    assert heat.colormap.map(np.array([0.0]))[0, 3] == 0  # transparent at the bottom of the range
    # the tile grid is selected: hovering a tile shows its scores in the status bar
    tiles = run_layer(viewer, "tiles")
    assert viewer.layers.selection.active is tiles
    viewer.mouse_over_canvas = True
    viewer.cursor.position = tuple(centre)
    status = viewer._calc_status_from_cursor()[0]["value"]
    x, y = coords[best]
    assert (
        status == f"tile {best} (x {x * 0.5:.0f}, y {y * 0.5:.0f} µm) · abmil attention {attention[best]:.3g}"
    )
    # top tiles: highest first; choosing one centres the view on it
    first = widget.top_tiles.choices[0]
    assert first == ("abmil/attention", best) and len(widget.top_tiles.choices) == 10
    widget.top_tiles.value = [first]
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], centre)
    widget.tile_grid.value = True
    assert tiles.opacity > 0 and tiles.contour == 1
    assert "abmil: predicted" in widget.summary.value
    # label and macro on request
    widget.associated.value = "label"
    label = widget.add_associated_image()
    assert label.rgb and label.translate[1] > 4096 * 0.5


def test_analyse_zero_shot_with_typed_prompts(
    make_napari_viewer, qtbot, sample, slide_text_model: Path, run_layer
) -> None:
    viewer, widget = _analyse(make_napari_viewer, qtbot)
    widget.mode.value = "Zero-shot prompts"
    # (the window is not shown in this test: ask Qt whether the fields are hidden, not whether they are visible)
    assert not widget.prompts_text.native.isHidden() and widget.checkpoint.native.isHidden()
    widget.slide_text_model.value = slide_text_model
    widget.prompts_text.value = "tumour: invasive carcinoma; sheets of atypical cells\nnormal: benign stroma"
    widget.start()
    _finish(qtbot, widget)
    assert widget.last_result is not None, widget.status.value
    run = "sample_slide: run 1 · zero-shot typed prompts · "
    assert run_layer(viewer, "zero-shot/tumour").name.startswith(run)
    assert run_layer(viewer, "zero-shot/normal").name.startswith(run)
    classes = run_layer(viewer, "best class")
    # the best-class map shows alone, its legend with it
    assert classes.visible and not run_layer(viewer, "zero-shot/tumour").visible
    assert widget.display.map.value is classes and "best class:" in widget.legend.value
    assert set(np.unique(classes.data)) <= {0, 1, 2} and classes.features["class"].tolist()[1:] == [
        "tumour",
        "normal",
    ]
    tumour = run_layer(viewer, "zero-shot/tumour")
    assert tumour.colormap.name.startswith("slidescope") and tumour.blending == "translucent"
    assert widget.top_by.choices == ("zero-shot/tumour", "zero-shot/normal")
    assert "zero-shot: best match" in widget.summary.value


@pytest.mark.parametrize("case", ["other-encoder", "empty-prompts", "other-slide-store"])
def test_analyse_bad_input_is_a_notification(
    make_napari_viewer,
    qtbot,
    sample,
    checkpoint,
    uni_checkpoint,
    slide_text_model,
    cmu_small,
    notifications,
    case: str,
) -> None:
    viewer, widget = _analyse(make_napari_viewer, qtbot)
    if case == "other-encoder":
        widget.checkpoint.value = uni_checkpoint
        expected = "trained on 'uni' 1024-d"
    elif case == "empty-prompts":
        widget.mode.value = "Zero-shot prompts"
        widget.slide_text_model.value = slide_text_model
        widget.prompts_text.value = "\n  \n"
        expected = "one class per line"
    else:  # the sample's store chosen for another slide
        viewer.open(str(cmu_small), plugin="slidescope")
        widget.slide.value = viewer.layers["CMU-1-Small-Region.svs"]
        widget.checkpoint.value = checkpoint
        widget.store.value = sample.store
        expected = "made from sample_slide.tiff"
    widget.start()
    _finish(qtbot, widget)
    errors = [m for s, m in notifications if s == "error"]
    assert len(errors) == 1 and errors[0].startswith("slidescope: ") and expected in errors[0], notifications
    assert widget.last_result is None and widget.run_button.enabled and "failed" in widget.status.value
    assert expected in widget.status.value and widget.status.native.wordWrap()  # the whole message, wrapped


def test_cancel_stops_the_extraction(
    make_napari_viewer, qtbot, checkpoint, sample_copy: Path, tmp_path: Path
) -> None:
    from slidescope.features import open_store

    viewer, widget = _analyse(make_napari_viewer, qtbot, checkpoint=checkpoint, store=tmp_path / "stores")
    (copy,) = viewer.open(str(sample_copy), plugin="slidescope")
    widget.slide.value = copy
    widget.start()
    qtbot.waitUntil(lambda: widget.status.value.startswith("extracting embeddings"), timeout=WAIT_MS)
    widget.cancel_button.clicked()
    _finish(qtbot, widget)
    assert widget.status.value.startswith("cancelled") and widget.last_result is None
    assert "he-descriptor" not in open_store(tmp_path / "stores" / "sample_slide.zarr").encoders()
    assert not [layer for layer in viewer.layers if "attention" in layer.name]


# -- Export and rendering ---------------------------------------------------------------------------


def test_export_widget_writes_aligned_files(
    make_napari_viewer, qtbot, sample, tmp_path: Path, save_artefact
) -> None:
    import json

    import tifffile

    from slidescope.features import open_store
    from slidescope.viewer._export_widget import ExportWidget

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 900)
    viewer.open_sample("slidescope", "sample_slide")
    widget = ExportWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Export")
    assert widget.heatmap.value is viewer.layers["sample_slide: ground-truth/tumour-fraction"]
    widget.folder.value = tmp_path / "export"
    store = open_store(sample.store)
    fraction, coords = store.scores("ground-truth/tumour-fraction"), store.coords

    (tif,) = widget.export_tiff()
    with tifffile.TiffFile(tif) as f:
        image = f.pages[0].asarray()
        ds = json.loads(f.pages[0].description)["downsample"]
    i = int(np.argmax(fraction))
    assert image[(coords[i][1] + 112) // ds, (coords[i][0] + 112) // ds] == pytest.approx(fraction[i])

    tiles_path, tissue_path = widget.export_geojson()
    tiles = json.loads(tiles_path.read_text())["features"]
    assert [f["geometry"]["coordinates"][0][0] for f in tiles] == coords.tolist()
    assert tiles[i]["properties"]["measurements"]["ground-truth/tumour-fraction"] == pytest.approx(
        fraction[i]
    )
    assert (
        json.loads(tissue_path.read_text())["features"][0]["properties"]["classification"]["name"] == "Tissue"
    )

    viewer.reset_view()
    qtbot.wait(300)
    (png,) = widget.export_png()
    from PIL import Image

    pixels = np.asarray(Image.open(png))
    assert pixels.shape[0] > 100 and pixels[..., :3].mean() > 50  # rendered, not a black frame
    save_artefact(png)


def test_screenshot_shows_hot_tiles_where_the_tumour_is(
    make_napari_viewer, qtbot, sample, tmp_path: Path, save_artefact, hot_pixels
) -> None:
    from PIL import Image

    from slidescope.features import open_store

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1100, 900)
    viewer.open_sample("slidescope", "sample_slide")
    viewer.reset_view()
    qtbot.wait(400)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    path = tmp_path / "sample_slide_heatmap.png"
    Image.fromarray(shot).save(path)
    save_artefact(path)

    store = open_store(sample.store)
    fraction, coords = store.scores("ground-truth/tumour-fraction"), store.coords
    camera = viewer.scene.camera
    height, width = shot.shape[:2]

    def on_screen(xy: np.ndarray) -> np.ndarray:
        """Screenshot (row, col) of a level-0 (x, y) position: world µm through the camera."""
        world = level0_to_world(np.asarray(xy, dtype=np.float64), (0.5, 0.5))
        return (world - np.asarray(camera.center[-2:])) * camera.zoom + (height / 2, width / 2)

    def window(i: int) -> np.ndarray:
        """Screenshot pixels over the middle half of tile i."""
        row, col = on_screen(coords[i] + 112)
        half = 0.25 * 224 * 0.5 * camera.zoom
        return shot[int(row - half) : int(row + half), int(col - half) : int(col + half), :3]

    tumour = np.flatnonzero(fraction >= 0.9)
    stroma = np.flatnonzero(fraction == 0)
    assert len(tumour) >= 3 and len(stroma) >= 10
    hot_tumour = np.mean([hot_pixels(window(i)).mean() for i in tumour])
    hot_stroma = np.mean([hot_pixels(window(i)).mean() for i in stroma])
    # pale yellow over tumour (dark nuclei darken part of each tile), never over tumour-free tissue
    assert hot_tumour > 0.35, hot_tumour
    assert hot_stroma < 0.02, hot_stroma
    # glass far from any tile keeps the slide's own colour (no tile there: nothing drawn over it)
    row, col = on_screen(np.array([3900.0, 2950.0])).astype(int)
    assert np.abs(shot[row, col, :3].astype(int) - 242).max() < 15
