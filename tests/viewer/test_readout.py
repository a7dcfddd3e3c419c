"""The tile layer reads as words and stays read-only, tissue outlines stay thin at every zoom (issue 15, defect 7).

ViewerModel tests need no Qt; the sample test opens the sample in a real viewer (Xvfb) without any widget.
"""

from __future__ import annotations

import numpy as np
import pytest

from slidescope.viewer._layers import TileLattice, level0_to_world, tile_labels_layer, tissue_layer
from slidescope.viewer._readout import OUTLINE_PX, watch_viewer


MPP = (0.5, 0.5)


def _tiles_layer(viewer):
    coords = np.array([[0, 0], [224, 0], [0, 224]], np.int64)
    lattice = TileLattice.from_coords(coords, (224, 224))
    data, kwargs, _ = tile_labels_layer(lattice, coords, {"run/attention": np.array([0.1, 0.2, 0.3])}, MPP)
    return viewer.add_labels(data, **kwargs)


def test_tile_layer_stays_read_only_even_after_its_data_change() -> None:
    from napari.components import ViewerModel

    viewer = ViewerModel()
    watch_viewer(viewer)
    layer = _tiles_layer(viewer)
    assert layer.editable is False
    layer.data = layer.data.copy()  # napari makes a labels layer editable again on new data
    assert layer.editable is False
    other = viewer.add_labels(np.zeros((4, 4), np.int32))  # not ours: left alone
    assert other.editable is True


def test_tissue_outlines_stay_a_screen_pixel_or_two_wide_at_every_zoom() -> None:
    from napari.components import ViewerModel

    square = np.array([[100.0, 100.0], [3000.0, 100.0], [3000.0, 2000.0], [100.0, 2000.0]])
    viewer = ViewerModel()
    watch_viewer(viewer)
    data, kwargs, _ = tissue_layer([square], MPP)
    layer = viewer.add_shapes(data, **kwargs)
    for zoom in (0.05, 1.0, 40.0):  # whole slide, 1 screen px per µm, one tile filling the window
        viewer.scene.camera.zoom = zoom
        screen_px = np.asarray(layer.edge_width) * MPP[0] * zoom  # data units are level-0 pixels
        assert screen_px == pytest.approx([OUTLINE_PX], rel=0.2)


def test_sample_tiles_read_as_words_and_cannot_be_painted_without_any_widget(
    make_napari_viewer, sample
) -> None:
    from slidescope.features import open_store

    viewer = make_napari_viewer()
    *_, tiles = viewer.open_sample("slidescope", "sample_slide")
    assert tiles.editable is False
    store = open_store(sample.store)
    fraction = store.scores("ground-truth/tumour-fraction")
    i = int(np.argmax(fraction))
    x, y = store.coords[i]
    centre = level0_to_world(np.array([x + 112.0, y + 112.0]), MPP)
    # what napari's status bar asks the active layer for on every mouse move
    status = tiles.get_status(centre, world=True, dims_displayed=[0, 1])
    expected = (
        f"tile {i} (x {x * 0.5:.0f}, y {y * 0.5:.0f} µm) · ground-truth tumour-fraction {fraction[i]:.3g}"
    )
    assert status["value"] == expected and status["coordinates"].endswith(": " + expected)
    outside = tiles.get_status(np.array([-50.0, -50.0]), world=True, dims_displayed=[0, 1])
    assert outside["value"] == "" and "tile" not in outside["coordinates"]


def test_qc_flags_show_as_a_layer_on_the_injected_artefacts_and_in_the_hover_text(tmp_path) -> None:
    from napari.components import ViewerModel

    from slidescope.features import extract_features, open_store
    from slidescope.synthetic import make_artefact_slide
    from slidescope.viewer._layers import qc_legend_html
    from slidescope.viewer._results import result_layers
    from slidescope.wsi import detect_tissue, make_tile_grid, open_slide

    art = make_artefact_slide(tmp_path / "artefacts.tiff")
    slide = open_slide(art.path)
    grid = make_tile_grid(slide, tile_size=224, mpp=0.5, mask=detect_tissue(slide))
    result = extract_features(
        slide, grid, "he-descriptor", store=tmp_path / "stores", num_workers=0, progress=False, qc="flag"
    )
    store = open_store(result.store)
    viewer = ViewerModel()
    watch_viewer(viewer)
    layers = [viewer._add_layer_from_data(*t)[0] for t in result_layers(store, [], MPP, slide_path=art.path)]
    (qc,) = [layer for layer in layers if layer.metadata["slidescope"]["kind"] == "qc"]
    tiles = layers[-1]
    assert qc.name == "artefacts: QC flags" and qc.visible
    blur_label = qc.metadata["slidescope"]["checks"].index("blur") + 1
    for kind, label in (("blur", blur_label), ("pen", None)):
        cells = np.flatnonzero(art.labels(store.coords, kind))
        assert len(cells) == 6
        for i in cells:  # the injected artefact's tile carries its flag, in the layer and in the hover text
            x, y = store.coords[i]
            centre = level0_to_world(np.array([x + 112.0, y + 112.0]), MPP)
            if label is not None:
                assert qc.get_value(centre, world=True) == label
            text = tiles.get_status(centre, world=True, dims_displayed=[0, 1])["value"]
            assert "QC: " in text and kind in text.split("QC: ")[1]
    for x, y in store.coords:  # every tile: a QC colour exactly where the hover text names a flag
        centre = level0_to_world(np.array([x + 112.0, y + 112.0]), MPP)
        text = tiles.get_status(centre, world=True, dims_displayed=[0, 1])["value"]
        assert ("QC: " in text) == (qc.get_value(centre, world=True) > 0)
    assert "blur (6)" in qc_legend_html(layers)


def test_tissue_outlines_are_closed_paths_that_add_in_a_blink() -> None:
    import time

    from napari.components import ViewerModel

    angle = np.linspace(0, 2 * np.pi, 5000, endpoint=False)  # a detailed outline, as on a whole slide
    radius = 20000 + 2000 * np.sin(40 * angle)
    ring = np.stack([40000 + radius * np.cos(angle), 30000 + radius * np.sin(angle)], axis=1)  # open
    hole = ring[::50] * 0.1 + 30000
    data, kwargs, _ = tissue_layer([ring], MPP, holes=[[np.vstack([hole, hole[:1]])]])
    t0 = time.perf_counter()
    layer = ViewerModel().add_shapes(data, **kwargs)
    seconds = time.perf_counter() - t0
    assert set(layer.shape_type) == {"path"} and all(np.array_equal(d[0], d[-1]) for d in layer.data)
    np.testing.assert_allclose(layer.data[0][:-1], ring[:, ::-1])  # (row, col), then back to the start
    assert len(layer.data[1]) == len(hole) + 1  # a closed ring is not closed twice
    assert seconds < 2.0, seconds  # as a polygon napari triangulates its face: about 5 s here
