"""The classic tile QC on IHC and on the real slides (issue 17, item 4): what is validated.

* Synthetic IHC/DAB slides (:func:`slidescope.synthetic.make_synthetic_ihc_slide`: blue counterstain, brown
  DAB) with a Gaussian blur of sigma 3 px injected into a third of the tiles: the focus measure separates
  them (tile-level AUROC by scikit-learn), and the ``blur`` check flags every blurred tile.
* The pen check follows tissue detection's pen mode: ``pen="auto"`` turns pen removal off on these slides
  (their counterstain would be taken for ink), and the QC does not measure pen there either (the raw rule
  takes nearly every IHC tile for ink).
* The real H&E test slides: no tile is flagged as blurred or dark (their focus is far above the threshold).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from slidescope.synthetic import make_synthetic_ihc_slide
from slidescope.wsi import (
    detect_tissue,
    iter_tiles,
    make_tile_grid,
    open_slide,
    qc_flags,
    qc_tiles,
    tile_qc,
)
from slidescope.wsi._qc import FOCUS_MIN


@pytest.mark.parametrize("seed", [0, 2])
def test_focus_finds_blur_on_ihc_and_pen_follows_the_slides_pen_mode(tmp_path, seed) -> None:
    ihc = make_synthetic_ihc_slide(tmp_path / "ihc.tiff", width=3584, height=2688, seed=seed)
    with open_slide(ihc.path) as slide:
        mask = detect_tissue(slide)
        grid = make_tile_grid(slide, tile_size=224, mpp=0.5, mask=mask)
        tiles = np.stack([t for _, t in iter_tiles(slide, grid)])
        measured = qc_tiles(slide, grid, "flag", mask=mask)
    glass = mask.params.get("glass_rgb")
    blurred = np.random.default_rng(seed).random(len(tiles)) < 1 / 3
    for i in np.flatnonzero(blurred):
        tiles[i] = ndimage.gaussian_filter(tiles[i].astype(float), (3, 3, 0)).round().astype(np.uint8)
    values = tile_qc(tiles, glass=glass)
    assert blurred.sum() >= 40 and roc_auc_score(blurred, -values["focus"]) >= 0.95
    assert qc_flags(values)["blur"][blurred].all()
    # pen: detection took the slide for IHC and kept the counterstain; the QC does the same
    assert mask.params["pen_used"] == "off"
    assert np.isnan(measured.qc["pen_fraction"]).all() and not qc_flags(measured.qc)["pen"].any()
    assert (values["pen_fraction"] > 0.5).mean() > 0.9  # the raw rule, which would flag every tile


@pytest.mark.parametrize("fixture", ["cmu_small", "ome_detail"])
def test_sharp_real_slides_have_no_blur_or_dark_flags(fixture, request) -> None:
    with open_slide(request.getfixturevalue(fixture)) as slide:
        mask = detect_tissue(slide)
        grid = qc_tiles(slide, make_tile_grid(slide, tile_size=224, mpp=0.5, mask=mask), "flag", mask=mask)
    flags = qc_flags(grid.qc)
    assert len(grid) >= 4 and not flags["blur"].any() and not flags["dark"].any()
    assert grid.qc["focus"].min() > 5 * FOCUS_MIN
