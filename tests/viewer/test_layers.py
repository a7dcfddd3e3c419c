"""Layer builders without Qt: heatmap cells on their tiles in µm, tile grid status, tissue, colours."""

from __future__ import annotations

import numpy as np
import pytest

from slidescope.viewer._analysis import parse_prompts
from slidescope.viewer._layers import (
    TileLattice,
    heatmap_colormap,
    heatmap_layer,
    level0_to_world,
    tile_labels_layer,
    tissue_layer,
    top_tiles,
    world_to_level0,
)

MPP = (0.25, 0.3)  # x and y differ on purpose: a swapped axis shows up


def _grid(overlap: int = 0, origin=(96, 40), extent=(448, 448)):
    stride = (extent[0] - overlap, extent[1] - overlap)
    rows, cols = np.mgrid[0:5, 0:7]
    keep = (rows + cols) % 3 != 0  # holes in the lattice, like tissue tiles
    coords = np.stack([origin[0] + cols[keep] * stride[0], origin[1] + rows[keep] * stride[1]], axis=1)
    return coords.astype(np.int64), extent, stride


def test_world_and_level0_conversions_invert_each_other() -> None:
    xy = np.array([[0.0, 0.0], [100.5, 7.25], [4096, 3072]])
    np.testing.assert_allclose(world_to_level0(level0_to_world(xy, MPP), MPP), xy)
    # the centre of level-0 pixel (row 2, col 3) is world (2 * mpp_y, 3 * mpp_x), napari's pixel centre
    np.testing.assert_allclose(level0_to_world(np.array([3.5, 2.5]), MPP), [2 * MPP[1], 3 * MPP[0]])


@pytest.mark.parametrize("overlap", [0, 64])
def test_a_tile_with_a_known_score_lands_on_its_tile(overlap: int) -> None:
    from napari.components import ViewerModel

    coords, extent, stride = _grid(overlap)
    scores = np.linspace(0.1, 0.9, len(coords))
    lattice = TileLattice.from_coords(coords, extent, stride)
    data, kwargs, _ = heatmap_layer(scores, lattice, MPP, name="score", kind="probability")
    viewer = ViewerModel()
    slide = viewer.add_image(np.zeros((3072, 4096), np.uint8), scale=(MPP[1], MPP[0]), units=("um", "um"))
    heat = viewer.add_image(data, **kwargs)
    assert np.isnan(data).sum() == data.size - len(coords)
    for i in (0, 5, len(coords) - 1):
        x, y = coords[i]
        centre = level0_to_world(np.array([x + extent[0] / 2, y + extent[1] / 2]), MPP)
        assert heat.get_value(centre, world=True) == pytest.approx(scores[i])
        # the same world point is the tile's centre pixel on the slide
        row, col = np.round(slide.world_to_data(centre)).astype(int)
        assert (col, row) in {
            (x + extent[0] // 2 - d, y + extent[1] // 2 - e) for d in (0, 1) for e in (0, 1)
        }
        # just inside the tile's stride cell (centred on the tile) still reads this tile's score
        half = (stride[0] / 2 - 1, stride[1] / 2 - 1)
        for dx, dy in ((-half[0], -half[1]), (half[0], half[1])):
            inside = level0_to_world(np.array([x + extent[0] / 2 + dx, y + extent[1] / 2 + dy]), MPP)
            assert heat.get_value(inside, world=True) == pytest.approx(scores[i])
    if overlap == 0:  # without overlap the cell is exactly the tile: its corners border the next cells
        x, y = coords[0]
        assert heat.get_value(
            level0_to_world(np.array([x + 0.5, y + 0.5]), MPP), world=True
        ) == pytest.approx(scores[0])
        outside = heat.get_value(level0_to_world(np.array([x - 0.5, y + 10]), MPP), world=True)
        assert outside is None or np.isnan(outside)


def test_heatmap_layer_settings() -> None:
    coords, extent, stride = _grid()
    lattice = TileLattice.from_coords(coords, extent, stride)
    values = np.linspace(-0.2, 0.4, len(coords))
    _, kwargs, _ = heatmap_layer(values, lattice, MPP, name="zero-shot/tumour", kind="similarity")
    assert kwargs["contrast_limits"] == pytest.approx((-0.2, 0.4))
    assert kwargs["blending"] == "translucent" and 0.5 <= kwargs["opacity"] <= 0.7
    assert kwargs["units"] == ("um", "um")
    assert kwargs["scale"] == pytest.approx((448 * MPP[1], 448 * MPP[0]))
    assert kwargs["translate"] == pytest.approx(((40 + 224 - 0.5) * MPP[1], (96 + 224 - 0.5) * MPP[0]))
    _, kwargs, _ = heatmap_layer(values, lattice, MPP, name="p", kind="probability")
    assert kwargs["contrast_limits"] == (0.0, 1.0)


def test_heatmap_colormap_is_transparent_at_zero() -> None:
    cmap = heatmap_colormap()
    rgba = cmap.map(np.array([0.0, 0.1, 0.5, 1.0]))
    assert rgba[0, 3] == 0.0
    assert 0 < rgba[1, 3] < 1 and rgba[2, 3] == rgba[3, 3] == 1.0
    assert rgba[3, 0] > 0.9 and rgba[3, 1] > 0.9  # hot end: bright yellow


def test_tile_grid_layer_names_the_hovered_tile_in_words_and_nothing_outside() -> None:
    from napari.components import ViewerModel

    from slidescope.viewer._readout import watch_viewer

    coords, extent, stride = _grid(overlap=64)
    lattice = TileLattice.from_coords(coords, extent, stride)
    scores = {
        "abmil/attention": np.arange(len(coords)) / 100.0,
        "zero-shot/tumour": np.linspace(0, 1, len(coords)),
    }
    data, kwargs, kind = tile_labels_layer(lattice, coords, scores, MPP)
    viewer = ViewerModel()
    watch_viewer(viewer)  # what the sample and the widgets do
    layer = viewer.add_labels(data, **kwargs)
    assert kind == "labels" and layer.opacity == 0.0  # hidden grid, but hovering still works
    viewer.mouse_over_canvas = True
    viewer.layers.selection.active = layer
    i = 7
    x, y = coords[i]
    centre = level0_to_world(np.array([x + extent[0] / 2, y + extent[1] / 2]), MPP)
    assert layer.get_value(centre, world=True) == i + 1
    viewer.cursor.position = tuple(centre)
    expected = (
        f"tile {i} (x {x * MPP[0]:.0f}, y {y * MPP[1]:.0f} µm) · abmil attention 0.07"
        f" · zero-shot tumour {scores['zero-shot/tumour'][i]:.3g}"
    )
    assert viewer.status["value"] == expected
    assert viewer.status["coordinates"].endswith(": " + expected)  # what the status bar shows
    assert layer._get_tooltip_text(np.asarray(centre), world=True) == expected
    # between tiles (a hole of the lattice) and outside the lattice: nothing but the position
    hole = lattice.translate(MPP)  # the centre of lattice cell (0, 0): (rows + cols) % 3 == 0, no tile
    assert layer.get_value(hole, world=True) == 0
    for where in (hole, (-500.0, -500.0)):
        viewer.cursor.position = tuple(float(v) for v in where)
        assert viewer.status["value"] == "" and "tile" not in viewer.status["coordinates"]
        assert ": " not in viewer.status["coordinates"]
    # sub-pixels of neighbouring tiles never mix: each tile is a k x k block (k: 1/k-tile-wide grid lines)
    k = kwargs["metadata"]["slidescope"]["subpixels"]
    assert k == 32 and data.shape == ((lattice.shape[0] + 2) * k, (lattice.shape[1] + 2) * k)


def test_tile_grid_subpixels_stay_within_the_texture_limit() -> None:
    coords = np.stack([np.arange(700) * 224, np.zeros(700, np.int64)], axis=1)  # one long row of tiles
    data, kwargs, _ = tile_labels_layer(TileLattice.from_coords(coords, (224, 224)), coords, {}, MPP)
    assert max(data.shape) <= 16384 and kwargs["metadata"]["slidescope"]["subpixels"] >= 1


def test_tissue_outline_is_in_level0_edges() -> None:
    from napari.components import ViewerModel

    contour = np.array([[100.0, 200.0], [900.0, 200.0], [900.0, 700.0], [100.0, 700.0], [100.0, 200.0]])
    data, kwargs, kind = tissue_layer([contour], MPP)
    layer = ViewerModel().add_shapes(data, **kwargs)
    np.testing.assert_allclose(layer.data[0][0], [200.0, 100.0])  # (row, col) = (y, x)
    world = layer.data_to_world(layer.data[0][0])
    np.testing.assert_allclose(world, level0_to_world(np.array([100.0, 200.0]), MPP))


def test_top_tiles_and_prompts() -> None:
    values = np.array([0.2, np.nan, 0.9, 0.5, 0.9])
    assert top_tiles(values, 3).tolist() == [2, 4, 3]
    assert top_tiles(values, 10).tolist() == [2, 4, 3, 0]
    assert parse_prompts("tumour: a; b\n# comment\n\nnormal") == {"tumour": ["a", "b"], "normal": ["normal"]}
    from slidescope.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="one class per line"):
        parse_prompts("  \n# nothing\n")
