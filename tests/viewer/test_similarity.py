"""Similarity search from cached embeddings (issue 15, "What to build" 4): the function against scikit-learn,
the peaks on the tiles of the same synthetic class, across a store folder, and the widget's click."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from slidescope.features import open_store
from slidescope.viewer import similar_tiles, tile_similarity


ENCODER = "he-descriptor"
WAIT_MS = 120_000


def test_similarity_is_cosine_and_peaks_on_the_tiles_of_the_same_class(sample) -> None:
    from sklearn.metrics.pairwise import cosine_similarity

    store = open_store(sample.store)
    emb = store.embeddings(ENCODER).astype(np.float64)
    truth = np.asarray(store.scores("ground-truth/tumour-fraction"))
    tumour = np.flatnonzero(truth >= 0.9)
    assert len(tumour) >= 3
    for i in tumour:
        sims = tile_similarity(sample.store, ENCODER, int(i))
        np.testing.assert_allclose(sims, cosine_similarity(emb, emb[i : i + 1])[:, 0], atol=1e-12)
        assert sims[i] == pytest.approx(1.0)
        # the map's peaks are the tumour tiles: the tiles mostly tumour (ground truth >= 0.5) are exactly
        # the most similar ones to a tumour tile
        mostly = np.flatnonzero(truth >= 0.5)
        peaks = np.argsort(-sims, kind="stable")[: len(mostly)]
        assert set(peaks.tolist()) == set(mostly.tolist())


def test_similar_tiles_across_a_store_folder(sample, tmp_path: Path) -> None:
    folder = tmp_path / "stores"
    folder.mkdir()
    shutil.copytree(sample.store, folder / sample.store.name)
    # a second slide: the same pixels under another name, so its tile i is the query tile's twin
    twin = tmp_path / "twin_slide.tiff"
    shutil.copy(sample.slide, twin)
    from slidescope.features import extract_features
    from slidescope.wsi import detect_tissue, make_tile_grid, open_slide

    slide = open_slide(twin)
    grid = make_tile_grid(slide, tile_size=224, mpp=0.5, mask=detect_tissue(slide))
    extract_features(slide, grid, ENCODER, store=folder, num_workers=0, progress=False)
    (folder / "broken.zarr").mkdir()  # not a store: skipped, the others still count

    store = open_store(folder / sample.store.name)
    i = int(np.argmax(store.scores("ground-truth/tumour-fraction")))
    found = similar_tiles(folder, ENCODER, (folder / sample.store.name, i), k=3)
    assert len(found) == 6 and [t.similarity for t in found] == sorted(
        (t.similarity for t in found), reverse=True
    )
    by_slide = {t.slide: [u for u in found if u.slide == t.slide] for t in found}
    assert set(by_slide) == {"sample_slide.tiff", "twin_slide.tiff"}
    for tiles in by_slide.values():
        assert tiles[0].index == i and tiles[0].similarity == pytest.approx(1.0)
        assert (tiles[0].x, tiles[0].y) == tuple(store.coords[i])


def test_clicking_a_tile_shows_its_similarity_map(make_napari_viewer, qtbot, sample, tmp_path: Path) -> None:
    from slidescope.viewer._analyse_widget import AnalyseWidget
    from slidescope.viewer._analysis import AnalysisResult
    from slidescope.viewer._layers import level0_to_world

    # a store folder with the sample's store and a twin slide's (a copy: its tile i is the clicked tile's twin)
    folder = tmp_path / "stores"
    mine = Path(shutil.copytree(sample.store, folder / sample.store.name))
    shutil.copytree(sample.store, folder / "twin_slide.zarr")
    viewer = make_napari_viewer()
    viewer.open_sample("slidescope", "sample_slide")
    widget = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Analyse")
    qtbot.waitUntil(lambda: widget.encoders_listed, timeout=WAIT_MS)
    run = AnalysisResult(
        sample.slide, mine, (0.5, 0.5), sample.tissue, scores=["ground-truth/tumour-fraction"]
    )
    widget.show_result(run)
    store = open_store(mine)
    truth = np.asarray(store.scores("ground-truth/tumour-fraction"))
    i = int(np.argmax(truth))
    x, y = store.coords[i]
    centre = tuple(level0_to_world(np.array([x + 112.0, y + 112.0]), (0.5, 0.5)))

    widget.similar.value = True
    layer = widget.similar_at(centre)  # what a left click at that point does
    assert layer is not None and layer.name.startswith("sample_slide: run 2 · similar to tile ")
    assert layer.name.endswith(f" · similarity to tile {i} ({ENCODER})")
    assert layer.visible and layer.get_value(centre, world=True) == pytest.approx(1.0)
    assert layer.colorbar.visible and widget.display.map.value is layer
    # the top tiles list now ranks the tiles like the clicked one, the clicked tile first
    assert widget.top_by.value == f"similarity to tile {i} ({ENCODER})"
    assert widget.top_tiles.choices[0] == (widget.top_by.value, i)
    # and the other slides of the store folder: their top tiles (similar_tiles), the twin tile first
    assert len(widget.elsewhere) == 10 and {t.store.name for t in widget.elsewhere} == {"twin_slide.zarr"}
    assert widget.elsewhere[0].index == i and widget.elsewhere[0].similarity == pytest.approx(1.0)
    assert f"elsewhere: sample_slide.tiff tile {i} (1.00)" in widget.summary.value
    assert widget.similar_at((-100.0, -100.0)) is None  # outside the tiles: nothing
