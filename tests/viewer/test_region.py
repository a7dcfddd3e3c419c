"""Ask about a region (issue 15, "What to build" 3): a MIL model on the tiles inside a drawn shape only,
checked against the batch scorer and with pixel checks in the viewer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slidescope.features import open_store
from slidescope.viewer._region import score_region, tiles_in_region


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
    make_napari_viewer, qtbot, sample, checkpoint: Path, notifications
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
    layer = viewer.layers["sample_slide: abmil region attention"]
    store = open_store(sample.store)
    for i, (x, y) in enumerate(store.coords):
        value = layer.get_value(level0_to_world(np.array([x + 112.0, y + 112.0]), (0.5, 0.5)), world=True)
        assert np.isfinite(value) == bool(region.inside[i])  # the region's tiles only
    assert (
        widget.summary.value.startswith("region 1: ")
        and f"over {region.n_tiles} tiles" in widget.summary.value
    )
