"""Exports round-trip to the same slide coordinates: pyramidal TIFF, tiles and tissue GeoJSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slidescope.viewer._export import (
    heatmap_downsample,
    shapes_feature_collection,
    shapes_to_level0,
    tiles_feature_collection,
    write_heatmap_tiff,
    write_shapes_geojson,
)
from slidescope.viewer._layers import TileLattice, heatmap_layer, level0_to_world, tissue_layer

MPP = (0.5, 0.5)
SLIDE = (4096, 3072)


def _tiles(overlap: int = 0):
    extent = (224, 224)
    stride = (224 - overlap, 224 - overlap)
    cols, rows = np.meshgrid(np.arange(3, 12), np.arange(2, 9))
    coords = np.stack([cols.ravel() * stride[0], rows.ravel() * stride[1]], axis=1).astype(np.int64)
    scores = np.random.default_rng(0).random(len(coords)).astype(np.float32)
    return coords, extent, stride, scores


@pytest.mark.parametrize("overlap", [0, 32])
def test_heatmap_tiff_is_pyramidal_and_aligned(tmp_path: Path, overlap: int) -> None:
    import tifffile

    coords, extent, stride, scores = _tiles(overlap)
    lattice = TileLattice.from_coords(coords, extent, stride)
    # the smallest divisor of the tile geometry (224 px tiles; 192 px stride and 16 px margins) that
    # keeps 4096 px within the longest side asked for
    assert heatmap_downsample(lattice, SLIDE, max_side=1000) == (7 if overlap == 0 else 8)
    f = heatmap_downsample(lattice, SLIDE, max_side=2048)
    assert f == 2
    path = write_heatmap_tiff(
        tmp_path / "h.tif",
        scores,
        coords,
        extent,
        stride=stride,
        slide_dimensions=SLIDE,
        mpp=MPP,
        downsample=f,
        name="abmil/attention",
    )
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.shape == (3072 // f, 4096 // f) and page.dtype == np.float32 and page.is_tiled
        levels = [page.asarray()] + [np.asarray(s.asarray()) for s in (page.pages or [])]
        assert [lv.shape for lv in levels][1:] == [(3072 // (2 * f), 4096 // (2 * f))][: len(levels) - 1]
        # resolution tags: pixels per cm = 1e4 / (µm per pixel)
        xres = page.tags["XResolution"].value
        assert xres[0] / xres[1] == pytest.approx(1e4 / (f * MPP[0]))
        meta = json.loads(page.description)
        assert meta["downsample"] == f and meta["score"] == "abmil/attention"
    image = levels[0]
    centres = lattice.centres()
    for i in range(len(coords)):
        cx, cy = centres[i]
        assert image[int(cy // f), int(cx // f)] == pytest.approx(scores[i])
    assert np.isnan(image[0, 0]) and np.isnan(image[-1, -1])  # no tile there
    if overlap == 0:  # each tile covers exactly its own whole pixels
        x, y = coords[10]
        block = image[y // f : (y + 224) // f, x // f : (x + 224) // f]
        assert np.all(block == scores[10])
        assert image[y // f - 1, x // f] != scores[10]


def test_tiles_geojson_round_trips_to_the_heatmap_cells() -> None:
    from napari.components import ViewerModel

    coords, extent, stride, scores = _tiles()
    sims = {"zero-shot/tumour": scores, "zero-shot/normal": 1 - scores}
    gj = json.loads(
        json.dumps(
            tiles_feature_collection(
                coords, extent, sims, main="zero-shot/tumour", classes=["tumour", "normal"]
            )
        )
    )
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(coords)
    lattice = TileLattice.from_coords(coords, extent, stride)
    data, kwargs, _ = heatmap_layer(scores, lattice, MPP, name="t")
    heat = ViewerModel().add_image(data, **kwargs)
    for i, feature in enumerate(gj["features"]):
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        assert ring[0].tolist() == coords[i].tolist()  # level-0 top-left, QuPath's origin
        assert ring[2].tolist() == (coords[i] + extent).tolist() and ring[0].tolist() == ring[-1].tolist()
        props = feature["properties"]
        assert props["measurements"]["zero-shot/tumour"] == pytest.approx(scores[i])
        assert props["measurements"]["zero-shot/normal"] == pytest.approx(1 - scores[i])
        assert props["classification"]["name"] == ("tumour" if scores[i] > 0.5 else "normal")
        # the polygon's centre, back in the viewer, is this tile's heatmap cell
        centre = level0_to_world(ring[:4].mean(axis=0), MPP)
        assert heat.get_value(centre, world=True) == pytest.approx(scores[i])


def test_tiles_without_classes_are_classified_by_tertile() -> None:
    coords, extent, _, scores = _tiles()
    gj = tiles_feature_collection(coords, extent, {"abmil/attention": scores})
    names = {f["properties"]["classification"]["name"] for f in gj["features"]}
    assert names == {"attention high", "attention medium", "attention low"}
    top = int(np.argmax(scores))
    assert gj["features"][top]["properties"]["classification"]["name"] == "attention high"


def test_tissue_shapes_export_round_trips_through_tissue_mask(sample, tmp_path: Path) -> None:
    from napari.components import ViewerModel

    from slidescope.wsi import TissueMask

    mask = sample.tissue
    data, kwargs, _ = tissue_layer(mask.contours, mpp=(0.5, 0.5))
    layer = ViewerModel().add_shapes(data, **kwargs)
    polygons = shapes_to_level0(
        layer.data, {"scale": layer.scale, "translate": layer.translate}, mpp=(0.5, 0.5)
    )
    for got, contour in zip(polygons, mask.contours, strict=True):
        np.testing.assert_allclose(got, contour, atol=1e-9)
    out = write_shapes_geojson(str(tmp_path / "tissue.geojson"), layer.data, layer._get_state())
    gj = json.loads(Path(out[0]).read_text())
    assert {f["properties"]["classification"]["name"] for f in gj["features"]} == {"Tissue"}
    areas = sorted(f["properties"]["measurements"]["area_um2"] for f in gj["features"])
    expected = sorted(f["properties"]["measurements"]["area_um2"] for f in mask.to_geojson()["features"])
    np.testing.assert_allclose(areas, expected, rtol=0.05)
    back = TissueMask.from_geojson(gj, slide_dimensions=mask.slide_dimensions, slide_mpp=0.5, mask_mpp=8.0)
    iou = (back.mask & mask.mask).sum() / (back.mask | mask.mask).sum()
    assert iou > 0.95


def test_napari_saves_a_shapes_layer_as_qupath_geojson(tmp_path: Path) -> None:
    import napari
    from napari.components import ViewerModel
    from npe2 import PluginManager

    PluginManager.instance().discover()  # finds the manifest through the napari.manifest entry point
    contour = np.array([[10.0, 20.0], [410.0, 20.0], [410.0, 220.0], [10.0, 220.0], [10.0, 20.0]])
    data, kwargs, _ = tissue_layer([contour], MPP)
    layer = ViewerModel().add_shapes(data, **kwargs)
    written = napari.save_layers(str(tmp_path / "tissue.geojson"), [layer], plugin="slidescope")
    assert written == [str(tmp_path / "tissue.geojson")]
    feature = json.loads(Path(written[0]).read_text())["features"][0]
    np.testing.assert_allclose(feature["geometry"]["coordinates"][0], contour)
    assert feature["properties"]["classification"]["name"] == "Tissue"
    assert feature["properties"]["measurements"]["area_um2"] == pytest.approx(400 * 200 * MPP[0] * MPP[1])


def test_shapes_drawn_on_a_slide_export_in_level0_pixels() -> None:
    # a rectangle drawn in world µm on a 0.5 µm/px slide, in a shapes layer with default scale
    world = np.array([[50.0, 100.0], [50.0, 300.0], [150.0, 300.0], [150.0, 100.0]])
    polygons = shapes_to_level0([world], {"scale": (1.0, 1.0), "translate": (0.0, 0.0)}, mpp=MPP)
    np.testing.assert_allclose(polygons[0][0], [100.0 / 0.5 + 0.5, 50.0 / 0.5 + 0.5])
    gj = shapes_feature_collection(polygons, mpp=MPP)
    assert gj["features"][0]["properties"]["measurements"]["area_um2"] == pytest.approx(200.0 * 100.0)


def _piece_with_holes() -> np.ndarray:
    """A tissue mask (8 µm/px on a 0.5 µm/px slide): one piece with 4 holes, one island in a hole, one
    separate piece (the layout that came out as 5+ separate "Tissue" annotations)."""
    mask = np.zeros((120, 160), bool)
    mask[10:110, 10:110] = True
    for r, c in [(20, 20), (20, 65), (65, 20), (65, 65)]:
        mask[r : r + 25, c : c + 25] = False
    mask[70:80, 70:80] = True  # an island in the last hole
    mask[30:90, 125:150] = True
    return mask


def test_tissue_export_is_one_polygon_with_holes_per_piece(tmp_path: Path) -> None:
    from napari.components import ViewerModel
    from skimage.draw import polygon as fill_polygon

    from slidescope.wsi._polygons import mask_contours

    mask, ds = _piece_with_holes(), (16.0, 16.0)  # level-0 px per mask px
    contours, holes = mask_contours(mask, ds)
    data, kwargs, _ = tissue_layer(contours, MPP, holes=holes)
    layer = ViewerModel().add_shapes(data, **kwargs)
    assert layer.nshapes == 3 + 4  # the layer draws outer rings and holes as separate outlines
    out = write_shapes_geojson(str(tmp_path / "tissue.geojson"), layer.data, layer._get_state())
    gj = json.loads(Path(out[0]).read_text())
    assert gj["type"] == "FeatureCollection"
    features = gj["features"]
    assert sorted(len(f["geometry"]["coordinates"]) for f in features) == [1, 1, 5]  # island, piece, 4 holes
    raster = np.zeros(mask.shape, np.int32)
    for f in features:
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        props = f["properties"]
        assert props["objectType"] == "annotation" and props["classification"]["name"] == "Tissue"
        outer, *inner = (np.asarray(r) for r in f["geometry"]["coordinates"])
        assert all(np.array_equal(r[0], r[-1]) for r in (outer, *inner))  # closed rings
        # GeoJSON winding in (x, y) numbers: outer positive shoelace area, holes negative
        shoelace = [0.5 * np.sum(r[:-1, 0] * r[1:, 1] - r[1:, 0] * r[:-1, 1]) for r in (outer, *inner)]
        assert shoelace[0] > 0 and all(a < 0 for a in shoelace[1:])
        # rasterise (scikit-image, pixel centres) back on the mask grid: outer fills, holes cut out
        for sign, ring in [(1, outer)] + [(-1, h) for h in inner]:
            rr, cc = fill_polygon(ring[:, 1] / ds[1] - 0.5, ring[:, 0] / ds[0] - 0.5, mask.shape)
            raster[rr, cc] += sign
        area_px = abs(shoelace[0]) - sum(abs(a) for a in shoelace[1:])
        assert props["measurements"]["area_um2"] == pytest.approx(area_px * MPP[0] * MPP[1], abs=0.01)
    np.testing.assert_array_equal(raster == 1, mask)  # every tissue pixel once, every hole pixel none
    total = sum(f["properties"]["measurements"]["area_um2"] for f in features)
    tissue_um2 = mask.sum() * ds[0] * ds[1] * MPP[0] * MPP[1]
    # the tracing tolerance: rings within half a mask pixel of the mask's edges (corners are cut), so the
    # area within half a mask pixel times the rings' length; holes counted as tissue would be 160000 µm² more
    length = sum(np.abs(np.diff(r, axis=0)).sum() for f in features for r in f["geometry"]["coordinates"])
    assert abs(total - tissue_um2) <= 0.5 * length * ds[0] * MPP[0] * MPP[1] < 0.25 * 4 * 25 * 25 * 256


def test_exports_never_overwrite(tmp_path: Path) -> None:
    from slidescope.viewer._export import unique_path

    first = unique_path(tmp_path / "slide.abmil-attention.tiles.geojson")
    assert first.name == "slide.abmil-attention.tiles.geojson"
    first.write_text("{}")
    second = unique_path(first)
    assert second.name == "slide.abmil-attention.tiles-2.geojson"
    second.write_text("{}")
    assert unique_path(first).name == "slide.abmil-attention.tiles-3.geojson"
