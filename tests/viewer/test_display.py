"""Results you can read (issue 15, "What to build" 2): one run and one map at a time, opacity, a score threshold
(tiles below it transparent) and a smoothed display, checked on the grid and in the viewer."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from slidescope.viewer._display import SMOOTH_SIGMA, display_grid

WAIT_MS = 120_000


def _brute_force_smooth(raw: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised Gaussian convolution over the tile cells, written out cell by cell (4 sigma radius)."""
    rows, cols = raw.shape
    radius = int(4 * sigma + 0.5)
    out = np.full(raw.shape, np.nan)
    for r in range(rows):
        for c in range(cols):
            if not np.isfinite(raw[r, c]):
                continue
            num = den = 0.0
            for dr in range(-radius, radius + 1):
                for dc in range(-radius, radius + 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < rows and 0 <= cc < cols and np.isfinite(raw[rr, cc]):
                        w = np.exp(-(dr * dr + dc * dc) / (2 * sigma * sigma))
                        num, den = num + w * raw[rr, cc], den + w
            out[r, c] = num / den
    return out


def test_display_grid_thresholds_on_the_raw_scores_and_smooths_over_tiles_only() -> None:
    rng = np.random.default_rng(0)
    raw = rng.random((9, 12)).astype(np.float32)
    raw[:, :3] = np.nan  # no tiles there (off the tissue)
    raw[4, 7] = np.nan
    np.testing.assert_array_equal(display_grid(raw), raw)  # default: the scores as they are
    shown = display_grid(raw, threshold=0.5)
    assert np.isnan(shown[~(raw >= 0.5)]).all() and np.array_equal(shown[raw >= 0.5], raw[raw >= 0.5])
    smooth = display_grid(raw, smooth=True)
    np.testing.assert_allclose(smooth, _brute_force_smooth(raw, SMOOTH_SIGMA), rtol=1e-5, equal_nan=True)
    assert np.isnan(smooth[:, :3]).all() and np.isnan(smooth[4, 7])  # it does not bleed off the tissue
    assert smooth[np.isfinite(raw)].std() < raw[np.isfinite(raw)].std()
    # smoothed and thresholded: the threshold applies to each tile's own score, not the smoothed one
    both = display_grid(raw, threshold=0.5, smooth=True)
    np.testing.assert_array_equal(np.isnan(both), ~(raw >= 0.5))
    np.testing.assert_allclose(both[raw >= 0.5], smooth[raw >= 0.5])


def test_opacity_threshold_and_smoothing_in_the_widget(
    make_napari_viewer, qtbot, sample, tmp_path: Path, run_layer
) -> None:
    from slidescope.features import open_store
    from slidescope.viewer._analyse_widget import AnalyseWidget
    from slidescope.viewer._analysis import AnalysisResult
    from slidescope.viewer._layers import level0_to_world

    store_path = Path(shutil.copytree(sample.store, tmp_path / "stores" / sample.store.name))
    viewer = make_napari_viewer()
    viewer.open_sample("slidescope", "sample_slide")
    widget = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Analyse")
    result = AnalysisResult(
        sample.slide, store_path, (0.5, 0.5), sample.tissue, scores=["ground-truth/tumour-fraction"]
    )
    widget.show_result(result)
    heat = run_layer(viewer, "ground-truth/tumour-fraction")
    store = open_store(store_path)
    fraction = np.asarray(store.scores("ground-truth/tumour-fraction"))
    centres = [
        tuple(level0_to_world(np.asarray(xy, dtype=np.float64) + 112.0, (0.5, 0.5))) for xy in store.coords
    ]

    def shown() -> np.ndarray:
        return np.array([heat.get_value(c, world=True) for c in centres], dtype=np.float64)

    np.testing.assert_allclose(shown(), fraction, atol=1e-6)
    widget.display.opacity.value = 0.9
    assert heat.opacity == pytest.approx(0.9)
    widget.display.use_threshold.value = True
    widget.display.threshold.value = 0.5
    values = shown()
    assert np.isnan(values[fraction < 0.5]).all()  # below the threshold: transparent
    np.testing.assert_allclose(values[fraction >= 0.5], fraction[fraction >= 0.5], atol=1e-6)
    tiles = run_layer(viewer, "tiles")  # the hover text keeps every tile's own score
    np.testing.assert_allclose(tiles.features["ground-truth/tumour-fraction"].to_numpy()[1:], fraction)
    widget.display.use_threshold.value = False
    widget.display.smooth.value = True
    values = shown()
    assert np.isfinite(values).all() and not np.allclose(values, fraction, atol=1e-3)
    lattice_grid = widget.display.raw(heat)
    np.testing.assert_allclose(heat.data, display_grid(lattice_grid, smooth=True), equal_nan=True)
    widget.display.smooth.value = False
    np.testing.assert_allclose(shown(), fraction, atol=1e-6)  # back to the tiles' own scores
    qtbot.waitUntil(lambda: widget.encoders_listed, timeout=WAIT_MS)
