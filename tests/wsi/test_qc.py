"""Classic tile QC: the measures against independent implementations, the injected artefacts found
(tile-level AUROC by scikit-learn), the measures stored with the tiles, ``qc="exclude"`` keeping flagged
tiles out of MIL bags, the cache key, and the QC summary in the run report and ``slidescope info --qc``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from slidescope.synthetic import ARTEFACT_KINDS, make_artefact_slide
from slidescope.wsi import QCGrid, detect_tissue, make_tile_grid, open_slide, qc_flags, qc_tiles, tile_qc

#: which measure finds which artefact (higher = more likely an artefact)
SCORES = {
    "blur": lambda v: -v["focus"],
    "pen": lambda v: v["pen_fraction"],
    "fold": lambda v: v["density"],
    "bubble": lambda v: v["bright_fraction"],
}


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    return make_artefact_slide(tmp_path_factory.mktemp("qc") / "artefacts.tiff", seed=3)


@pytest.fixture(scope="module")
def measured(artefacts):
    with open_slide(artefacts.path) as slide:
        mask = detect_tissue(slide)
        grid = make_tile_grid(slide, tile_size=artefacts.cell, mpp=artefacts.mpp, mask=mask)
        return mask, qc_tiles(slide, grid, "flag", mask=mask)


def test_measures_match_independent_implementations() -> None:
    rng = np.random.default_rng(0)
    tiles = ndimage.gaussian_filter(rng.integers(40, 200, (3, 64, 64, 3)).astype(float), (0, 1, 1, 0))
    tiles = tiles.astype(np.uint8)
    v = tile_qc(tiles)
    from PIL import Image
    from skimage.color import rgb2hsv

    for i, t in enumerate(tiles):
        grey = np.asarray(Image.fromarray(t).convert("L"), np.float64)
        assert v["brightness"][i] == pytest.approx(grey.mean(), abs=0.6)  # PIL rounds to whole levels
        g = t.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        lap = ndimage.laplace(g)[1:-1, 1:-1]  # every pixel is tissue here (dark, saturated)
        assert v["focus"][i] == pytest.approx((lap**2).mean(), rel=1e-4)
        area = t.reshape(16, 4, 16, 4, 3).mean(axis=(1, 3)).round().astype(np.uint8)  # 4 x 4 averaged
        assert v["saturation"][i] == pytest.approx(rgb2hsv(area)[..., 1].mean(), rel=1e-4)


def test_focus_compares_across_tile_sizes_and_falls_with_blur(artefacts) -> None:
    with open_slide(artefacts.path) as slide:
        x, y = artefacts.regions["fold"][0]  # a cell wholly on tissue (the fold does not change sharpness)
        big = slide.read_region((x, y), 0, (448, 448))
    small = big[112:336, 112:336]
    f_big, f_small = tile_qc(big)["focus"][0], tile_qc(small)["focus"][0]
    assert f_small == pytest.approx(f_big, rel=0.35)
    blurred = ndimage.gaussian_filter(small.astype(float), (2, 2, 0)).round().astype(np.uint8)
    assert tile_qc(blurred)["focus"][0] < 0.2 * f_small


def test_tile_qc_refuses_floats() -> None:
    from slidescope.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="uint8"):
        tile_qc(np.zeros((1, 8, 8, 3), np.float32))


@pytest.mark.parametrize("kind", ARTEFACT_KINDS)
def test_injected_artefacts_found(artefacts, measured, kind) -> None:
    _, grid = measured
    label = artefacts.labels(grid.coords, kind)
    clean = ~artefacts.labels(grid.coords)
    assert label.sum() >= 4, "most injected cells should be tissue tiles of the grid"
    keep = label | clean
    auroc = roc_auc_score(label[keep], SCORES[kind](grid.qc)[keep])
    assert auroc >= 0.95, f"{kind}: tile-level AUROC {auroc:.3f}"
    flags = qc_flags(grid.qc)[kind]
    assert flags[label].mean() >= 0.8 and flags[clean].mean() <= 0.05


def test_exclude_drops_flagged_tiles_and_changes_the_cache_key(measured, artefacts) -> None:
    mask, flagged = measured
    with open_slide(artefacts.path) as slide:
        grid = make_tile_grid(slide, tile_size=artefacts.cell, mpp=artefacts.mpp, mask=mask)
        assert qc_tiles(slide, grid, "off") is grid
        out = qc_tiles(slide, grid, "exclude", mask=mask)
    bad = np.zeros(len(grid), bool)
    for f in qc_flags(flagged.qc).values():
        bad |= f
    assert isinstance(out, QCGrid) and len(out) == len(grid) - bad.sum() and bad.sum() > 0
    # a fold on tissue paler than the slide's usual can stay under the relative density threshold
    assert artefacts.labels(out.coords).sum() <= 1 and not (out.qc["focus"] < 60).any()
    assert out.to_dict()["qc"]["policy"] == "exclude" and "qc" not in flagged.to_dict()
    assert out.qc_summary["excluded"] == int(bad.sum()) and len(out.qc["focus"]) == len(out)


def test_exclude_keeps_injected_tiles_out_of_mil_bags(artefacts, tmp_path) -> None:
    from slidescope.features import extract_slides
    from slidescope.features.store import open_store, store_path
    from slidescope.mil.data import BagDataset, SlideRow

    kw = dict(tile_size=artefacts.cell, mpp=artefacts.mpp, device="cpu", num_workers=0, progress=False)
    (off,) = extract_slides([artefacts.path], "he-descriptor", store=tmp_path / "off", **kw)
    (exc,) = extract_slides([artefacts.path], "he-descriptor", store=tmp_path / "exc", qc="exclude", **kw)
    assert off.status == exc.status == "done" and exc.extra["qc"]["excluded"] > 0
    all_store = open_store(off.store)
    assert artefacts.labels(all_store.coords).sum() >= 16 and all_store.qc() == {}
    st = open_store(exc.store)
    assert artefacts.labels(st.coords).sum() <= 1  # of 24 injected (see the test above)
    assert set(st.qc()) >= {"focus", "pen_fraction"} and len(st.qc()["focus"]) == st.n_tiles
    row = SlideRow(slide=str(artefacts.path), label="a", patient="p")
    bag = BagDataset([row], store=tmp_path / "exc", encoder="he-descriptor", class_names=["a"])[0]
    assert bag["features"].shape[0] == st.n_tiles == exc.n_tiles < off.n_tiles
    injected = all_store.embeddings("he-descriptor")[artefacts.labels(all_store.coords)].astype(np.float32)
    dist = np.abs(bag["features"].numpy()[:, None] - injected[None]).sum(-1)
    assert (dist.min(axis=0) > 0).sum() >= len(injected) - 1, "injected tiles' embeddings are in the bag"
    assert store_path(tmp_path / "exc", artefacts.path).exists()


def test_qc_in_the_run_report_and_info(artefacts, measured) -> None:
    from typer.testing import CliRunner

    from slidescope.cli import app
    from slidescope.pipeline._report import _qc_markdown

    _, grid = measured
    lines = _qc_markdown([{"key": "a", "qc": grid.qc_summary}, {"key": "b", "qc": None}])
    text = "\n".join(lines)
    assert "## Quality control" in text and "| a | flag |" in text and "| b |" not in text
    assert grid.qc_summary["flagged_fraction"]["blur"] > 0
    res = CliRunner().invoke(app, ["info", str(artefacts.path), "--qc", "--json"])
    assert res.exit_code == 0, res.output
    q = json.loads(res.stdout)["qc"]
    assert q["policy"] == "flag" and q["n_tiles"] > 0 and q["tissue_mm2"] > 0
    assert set(q["flagged_fraction"]) == {"blur", "fold", "dark", "pen", "bubble"}
    assert q["focus_quantiles"]["q05"] <= q["focus_quantiles"]["q50"] <= q["focus_quantiles"]["q95"]
    text = CliRunner().invoke(app, ["info", str(artefacts.path), "--qc"]).output
    assert "QC flagged" in text and "focus" in text


def test_qc_exported_as_qupath_geojson_at_the_flagged_tiles(artefacts, tmp_path) -> None:
    from typer.testing import CliRunner

    from slidescope.cli import app
    from slidescope.features import extract_slides
    from slidescope.features.store import open_store

    kw = dict(tile_size=artefacts.cell, mpp=artefacts.mpp, device="cpu", num_workers=0, progress=False)
    (res,) = extract_slides([artefacts.path], "he-descriptor", store=tmp_path / "st", qc="flag", **kw)
    store = open_store(res.store)
    flags = qc_flags(store.qc())
    bad = np.any(list(flags.values()), axis=0)
    out = tmp_path / "qc"
    run = CliRunner().invoke(app, ["export-qc", str(tmp_path / "st"), "--out", str(out)])
    assert run.exit_code == 0, run.output
    (path,) = out.glob("*.qc.geojson")
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == bad.sum() > 0
    w, h = store.tile_extent
    for feature in collection["features"]:
        props = feature["properties"]
        i = props["tile_index"]
        assert bad[i] and props["objectType"] == "tile"
        (ring,) = feature["geometry"]["coordinates"]
        x, y = store.coords[i].tolist()
        assert feature["geometry"]["type"] == "Polygon" and ring[0] == ring[-1]
        assert {tuple(p) for p in ring} == {(x, y), (x + w, y), (x + w, y + h), (x, y + h)}
        hits = [k for k, f in flags.items() if f[i]]
        assert props["classification"]["name"] == hits[0] and props["name"] == ", ".join(hits)
        m = props["measurements"]
        assert all(isinstance(v, float) for v in m.values())
        assert m["focus"] == pytest.approx(float(store.qc()["focus"][i])) and m[f"flag_{hits[0]}"] == 1.0
    # the injected artefacts are among the exported squares (blur and pen: every injected tile)
    exported = {tuple(f["geometry"]["coordinates"][0][0]) for f in collection["features"]}
    for kind in ("blur", "pen"):
        cells = store.coords[artefacts.labels(store.coords, kind)]
        assert len(cells) and all(tuple(c) in exported for c in cells.tolist()), kind
    every = CliRunner().invoke(app, ["export-qc", str(tmp_path / "st"), "--out", str(out), "--all-tiles"])
    assert every.exit_code == 0 and len(json.loads(path.read_text())["features"]) == store.n_tiles
    (plain,) = extract_slides([artefacts.path], "he-descriptor", store=tmp_path / "plain", **kw)
    refused = CliRunner().invoke(app, ["export-qc", str(tmp_path / "plain"), "--out", str(out)])
    assert refused.exit_code != 0 and "--qc flag" in str(refused.exception)


def test_flag_measures_on_the_tiles_the_extraction_reads(artefacts, measured, tmp_path, monkeypatch) -> None:
    """``qc="flag"`` reads no tile for the QC: the extraction's readers measure the tiles they read (in this
    process and in a worker process), with the values of a separate pass; reused embeddings reuse the
    stored measures, and a store made without QC is measured once when QC is asked of it."""
    from slidescope.features import extract_slides
    from slidescope.features.store import open_store
    from slidescope.wsi import _qc_grid

    _, separate = measured
    kw = dict(tile_size=artefacts.cell, mpp=artefacts.mpp, device="cpu", progress=False)
    (plain,) = extract_slides([artefacts.path], "he-descriptor", store=tmp_path / "a", num_workers=0, **kw)
    real_measure = _qc_grid._measure_tiles

    def no_read(*args, **kwargs):
        raise AssertionError("the QC read the tiles itself")

    monkeypatch.setattr(_qc_grid, "_measure_tiles", no_read)
    for workers in (0, 1):
        store = tmp_path / f"w{workers}"
        (res,) = extract_slides(
            [artefacts.path], "he-descriptor", store=store, qc="flag", num_workers=workers, **kw
        )
        st = open_store(res.store)
        assert res.status == "done" and st.tiling_key == open_store(plain.store).tiling_key
        for name, value in separate.qc.items():
            np.testing.assert_allclose(st.qc()[name], value, rtol=1e-6, err_msg=name)
        assert res.extra["qc"] == separate.qc_summary
    (again,) = extract_slides(
        [artefacts.path], "he-descriptor", store=tmp_path / "w0", qc="flag", num_workers=0, **kw
    )
    assert again.status == "reused" and again.extra["qc"] == separate.qc_summary
    # embeddings made without QC: reused, and their tiles measured by a read of their own
    calls = []
    monkeypatch.setattr(_qc_grid, "_measure_tiles", lambda *a, **k: calls.append(1) or real_measure(*a, **k))
    (late,) = extract_slides(
        [artefacts.path], "he-descriptor", store=tmp_path / "a", qc="flag", num_workers=0, **kw
    )
    assert late.status == "reused" and calls == [1] and late.extra["qc"] == separate.qc_summary
    assert set(open_store(late.store).qc()) == set(separate.qc)


def test_the_pipelines_embed_step_summarises_the_flag_qc_after_extraction(
    artefacts, measured, tmp_path
) -> None:
    from slidescope.features import create_encoder
    from slidescope.options import TilingOptions
    from slidescope.pipeline import embed_slide

    _, separate = measured
    steps = {}
    tiling = TilingOptions(tile_size=artefacts.cell, mpp=artefacts.mpp, qc="flag")
    with open_slide(artefacts.path) as slide:
        enc = create_encoder("he-descriptor", device="cpu")
        res = embed_slide(
            slide, enc, stores=tmp_path, tiling=tiling, num_workers=0, on_step=steps.__setitem__
        )
    assert steps["grid"].qc_summary is None  # deferred: nothing read before the extraction
    assert res.result.extra["qc"] == separate.qc_summary
