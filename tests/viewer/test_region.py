"""Ask about a region (issue 15, "What to build" 3): a MIL model or a zero-shot prompt set on the tiles inside a
drawn shape only, checked against the batch scorers (and MI-Zero on the region's own tiles), with pixel checks in
the viewer, and the per-region export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slidescope.features import open_store
from slidescope.viewer._region import score_region, tiles_in_region, zero_shot_region


WAIT_MS = 120_000


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def test_a_region_covering_every_tile_scores_as_slidescope_score(sample, checkpoint: Path) -> None:
    from slidescope.mil.score import score

    store = open_store(sample.store)
    inside = tiles_in_region(store.coords, store.tile_extent, _rectangle(-1, -1, 1e6, 1e6))
    assert inside.all()
    region = score_region(checkpoint, store, inside)
    (row,) = score([checkpoint], [sample.store], write_scores=False)
    assert region.probs == pytest.approx(row.probs, abs=1e-6) and region.predicted == row.predicted
    np.testing.assert_allclose(region.attention, row.attention, atol=1e-6)


def test_a_region_is_the_tiles_whose_centre_it_holds_and_only_they_count(sample, checkpoint: Path) -> None:
    store = open_store(sample.store)
    coords = store.coords
    x0, y0, x1, y1 = 500.0, 400.0, 2000.0, 1500.0
    inside = tiles_in_region(coords, (224, 224), _rectangle(x0, y0, x1, y1))
    centres = coords + 112
    expected = (centres[:, 0] > x0) & (centres[:, 0] < x1) & (centres[:, 1] > y0) & (centres[:, 1] < y1)
    np.testing.assert_array_equal(inside, expected)
    assert 0 < inside.sum() < len(coords)
    region = score_region(checkpoint, store, inside)
    assert np.isnan(region.attention[~inside]).all() and np.isfinite(region.attention[inside]).all()
    assert region.attention[inside].sum() == pytest.approx(1.0, abs=1e-5)  # ABMIL: a softmax over the region
    assert sum(region.probs.values()) == pytest.approx(1.0, abs=1e-5) and region.n_tiles == inside.sum()


def test_drawing_a_region_in_the_viewer_scores_its_tiles_only(
    make_napari_viewer, qtbot, sample, checkpoint: Path, notifications, run_layer
) -> None:
    from slidescope.viewer._analyse_widget import AnalyseWidget
    from slidescope.viewer._layers import level0_to_world

    viewer = make_napari_viewer()
    viewer.open_sample("slidescope", "sample_slide")
    widget = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Analyse")
    qtbot.waitUntil(lambda: widget.encoders_listed, timeout=WAIT_MS)
    widget.checkpoint.value = checkpoint
    assert widget.analyse_regions() is None  # no shape yet: a notification says to draw one
    assert any(s == "error" and "draw a region first" in m for s, m in notifications)

    # a rectangle drawn in world µm (a new shapes layer has scale 1): level-0 x 500-2000, y 400-1500 px
    corners = level0_to_world(_rectangle(500.0, 400.0, 2000.0, 1500.0), (0.5, 0.5))
    viewer.add_shapes([corners], shape_type="rectangle", name="my region", units=("um", "um"))
    (region,) = widget.analyse_regions()
    layer = run_layer(viewer, "abmil region attention")
    assert layer.name.startswith("sample_slide: run 1 · region MIL · ") and layer.visible
    store = open_store(sample.store)
    for i, (x, y) in enumerate(store.coords):
        value = layer.get_value(level0_to_world(np.array([x + 112.0, y + 112.0]), (0.5, 0.5)), world=True)
        assert np.isfinite(value) == bool(region.inside[i])  # the region's tiles only
    assert (
        widget.summary.value.startswith("region 1: ")
        and f"over {region.n_tiles} tiles" in widget.summary.value
    )


PROMPTS = {"tumour": ["invasive carcinoma", "sheets of atypical cells"], "normal": ["benign stroma"]}


@pytest.fixture
def zero_shot_store(sample, slide_text_model: Path, tmp_path: Path):
    """A copy of the sample store with tile-level zero-shot cosines written by slidescope.vlm.zero_shot."""
    import shutil

    from slidescope.vlm import zero_shot

    path = Path(shutil.copytree(sample.store, tmp_path / "stores" / sample.store.name))
    (row,) = zero_shot([path], PROMPTS, model=slide_text_model, encoder="he-descriptor", level="tile")
    return path, row


def test_zero_shot_on_a_region_is_mi_zero_on_its_tiles_only(zero_shot_store, slide_text_model: Path) -> None:
    import torch

    from slidescope.vlm import SlideTextModel, load_prompts, mi_zero
    from slidescope.vlm._embeddings import tile_embeddings
    from slidescope.vlm.zeroshot import class_text_embeddings

    path, row = zero_shot_store
    store = open_store(path)
    classes = list(PROMPTS)
    cosines = np.stack([store.scores(f"zero-shot/{c}") for c in classes], axis=1)
    model = SlideTextModel.load(slide_text_model)
    scale = float(model.scale().detach())
    everything = zero_shot_region(cosines, classes, np.ones(len(cosines), bool), logit_scale=scale)
    assert everything.probs == pytest.approx(row.probs, abs=1e-5)  # the whole slide: as slidescope zero-shot

    inside = tiles_in_region(store.coords, store.tile_extent, _rectangle(500.0, 400.0, 2000.0, 1500.0))
    assert 10 < inside.sum() < len(inside)
    region = zero_shot_region(cosines, classes, inside, logit_scale=scale)
    # the oracle: MI-Zero (top-10 mean, as CONCH's run_mizero) on the region's tiles' joint-space embeddings
    prompts, prompt_class = load_prompts(PROMPTS).build()
    with torch.no_grad():
        w = class_text_embeddings(model.encode_text(prompts), prompt_class)
    z = tile_embeddings(store, model=model, encoder="he-descriptor")
    expected = mi_zero(z[torch.from_numpy(inside)], w, k=10, logit_scale=scale)
    assert list(region.probs.values()) == pytest.approx(expected.probs.tolist(), abs=1e-5)
    assert region.predicted == classes[int(expected.probs.argmax())]
    best = classes.index(region.predicted)
    np.testing.assert_allclose(region.tile_scores[inside], cosines[inside, best], atol=1e-6)
    assert np.isnan(region.tile_scores[~inside]).all() and region.measure == f"cosine with {region.predicted}"
    outside = zero_shot_region(cosines, classes, ~inside, logit_scale=scale)
    assert outside.probs != pytest.approx(region.probs, abs=1e-4)  # other tiles, another answer


def test_zero_shot_region_in_the_viewer_and_its_export(
    make_napari_viewer,
    qtbot,
    sample_copy: Path,
    slide_text_model: Path,
    tmp_path: Path,
    run_layer,
    notifications,
) -> None:
    import csv
    import json

    from slidescope.viewer._analyse_widget import ZERO_SHOT, AnalyseWidget
    from slidescope.viewer._export_widget import ExportWidget
    from slidescope.viewer._layers import level0_to_world

    viewer = make_napari_viewer()
    viewer.open(str(sample_copy), plugin="slidescope")
    widget = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Analyse")
    qtbot.waitUntil(lambda: widget.encoders_listed, timeout=WAIT_MS)
    widget.mode.value = ZERO_SHOT
    widget.store.value = tmp_path / "stores"
    viewer.add_shapes(
        [level0_to_world(_rectangle(500.0, 400.0, 2000.0, 1500.0), (0.5, 0.5))],
        shape_type="rectangle",
        name="my region",
        units=("um", "um"),
    )
    assert widget.analyse_regions() is None  # no run yet: a notification says to run one first
    assert any(s == "error" and "press Analyse on the slide first" in m for s, m in notifications)
    widget.slide_text_model.value = slide_text_model
    widget.prompts_text.value = "tumour: invasive carcinoma; sheets of atypical cells\nnormal: benign stroma"
    widget.start()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert widget.last_result is not None, widget.status.value
    viewer.layers.selection.active = viewer.layers["my region"]
    (region,) = widget.analyse_regions()
    layer = run_layer(viewer, "zero-shot typed prompts region cosine")
    assert layer.visible and widget.display.run.value.startswith("run 2 · region zero-shot typed prompts")
    store = open_store(widget.last_result.store)
    for i, (x, y) in enumerate(store.coords):  # pixel check: the region's tiles only
        value = layer.get_value(level0_to_world(np.array([x + 112.0, y + 112.0]), (0.5, 0.5)), world=True)
        assert np.isfinite(value) == bool(region.inside[i])
    assert widget.summary.value.startswith(f"region 1: {region.predicted} (tumour ")

    export = ExportWidget(viewer)
    export.folder.value = tmp_path / "export"
    export.heatmap.value = layer
    geojson, table = export.export_regions()
    (feature,) = json.loads(geojson.read_text())["features"]
    measurements = feature["properties"]["measurements"]
    assert measurements["zero-shot typed prompts: p(tumour)"] == pytest.approx(region.probs["tumour"])
    assert measurements["zero-shot typed prompts: tiles"] == region.n_tiles
    assert feature["properties"]["classification"]["name"] == region.predicted
    ring = np.asarray(feature["geometry"]["coordinates"][0])
    assert ring.min(axis=0) == pytest.approx([500.0, 400.0], abs=1e-3)  # level-0 px, as drawn
    assert ring.max(axis=0) == pytest.approx([2000.0, 1500.0], abs=1e-3)
    with table.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["tile"]) for r in rows] == np.flatnonzero(region.inside).tolist()
    for r in rows:
        i = int(r["tile"])
        assert (int(r["x"]), int(r["y"])) == tuple(store.coords[i])
        assert float(r["score"]) == pytest.approx(region.tile_scores[i], rel=1e-5)
    export.heatmap.value = run_layer(viewer, "zero-shot/tumour")
    assert export._guarded(export.export_regions) == []  # not a region heatmap: a notification says so
    assert any("not a region analysis" in m for _, m in notifications)


def test_qupath_geojson_annotations_open_as_regions_on_the_slide(
    make_napari_viewer, qtbot, sample, checkpoint: Path, tmp_path: Path, run_layer
) -> None:
    import json

    from slidescope.viewer._analyse_widget import AnalyseWidget

    # as QuPath writes them (File > Export objects as GeoJSON): level-0 px, top-left origin
    rect = _rectangle(500.0, 400.0, 2000.0, 1500.0)
    ring = np.vstack([rect, rect[:1]]).tolist()
    second = _rectangle(2200.0, 200.0, 3400.0, 1200.0).tolist()
    collection = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "5b0a6a7e-0000",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                },
            },
            {
                "type": "Feature",
                "geometry": {"type": "MultiPolygon", "coordinates": [[second + second[:1]]]},
                "properties": {"objectType": "annotation", "name": "focus 2"},
            },
        ],
    }
    path = tmp_path / "annotations.geojson"
    path.write_text(json.dumps(collection))
    viewer = make_napari_viewer()
    viewer.open_sample("slidescope", "sample_slide")
    (shapes,) = viewer.open(str(path), plugin=None)  # the only reader of *.geojson: no dialog on a drop
    assert type(shapes).__name__ == "Shapes" and shapes.nshapes == 2
    assert list(shapes.features["name"]) == ["Tumor", "focus 2"]
    widget = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Analyse")
    qtbot.waitUntil(lambda: widget.encoders_listed, timeout=WAIT_MS)
    widget.checkpoint.value = checkpoint
    first, other = widget.analyse_regions()
    store = open_store(sample.store)
    np.testing.assert_array_equal(first.inside, tiles_in_region(store.coords, store.tile_extent, rect))
    np.testing.assert_array_equal(
        other.inside, tiles_in_region(store.coords, store.tile_extent, np.asarray(second))
    )
    assert run_layer(viewer, "abmil region attention").visible


def test_geojson_without_polygons_says_what_to_export(tmp_path: Path) -> None:
    import json

    from slidescope.errors import InvalidParameterError
    from slidescope.viewer._annotations import get_geojson_reader, read_qupath_geojson

    points = tmp_path / "points.geojson"
    points.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [1, 2]},
                        "properties": {},
                    }
                ],
            }
        )
    )
    with pytest.raises(InvalidParameterError, match="Export objects as GeoJSON"):
        read_qupath_geojson(points, mpp=(0.5, 0.5))
    assert get_geojson_reader(str(tmp_path / "slide.svs")) is None
    # an older QuPath export: a plain list of features, in level-0 px; at 0.5 µm/px the shape lands in µm
    old = tmp_path / "old.geojson"
    square = [[[10, 20], [110, 20], [110, 120], [10, 120], [10, 20]]]
    old.write_text(json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square}}]))
    ((data,), kwargs, kind) = read_qupath_geojson(old, mpp=(0.5, 0.5))[0]
    world = data * np.asarray(kwargs["scale"]) + np.asarray(kwargs["translate"])
    from slidescope.viewer._layers import level0_to_world

    np.testing.assert_allclose(world, level0_to_world(np.asarray(square[0], dtype=float), (0.5, 0.5)))
    assert kind == "shapes" and kwargs["units"] == ("um", "um")
