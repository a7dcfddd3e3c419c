"""`slidescope demo` on a small synthetic cohort: the results table, the files it promises, the honest wording,
and a rerun that reuses everything."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

N_SLIDES = 20


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory):
    import contextlib
    import io

    from slidescope.demo import demo

    out = tmp_path_factory.mktemp("demo") / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = demo(out, n_slides=N_SLIDES, seed=0, progress=False)
    return result, buf.getvalue()


def _hot_fraction(png: Path) -> float:
    """Fraction of the thumbnail (colour bar excluded) painted in the hot end of inferno (bright yellow/orange)."""
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    body = img[:, : int(img.shape[1] * 0.85)]
    r, g, b = body[..., 0], body[..., 1], body[..., 2]
    return float(((r > 200) & (g > 120) & (b < 150)).mean())


def test_results_table(ran) -> None:
    result, text = ran
    print(f"\n{result.table()}")
    assert result.n_dev + result.n_heldout == N_SLIDES and result.n_heldout >= 4
    assert result.heldout_auroc >= 0.9, result.heldout_auroc
    assert result.zero_shot_auroc >= 0.8, result.zero_shot_auroc
    assert result.cv_auroc >= 0.8, result.cv_auroc
    for value, (lo, hi) in [
        (result.cv_auroc, result.cv_ci),
        (result.heldout_auroc, result.heldout_ci),
        (result.zero_shot_auroc, result.zero_shot_ci),
    ]:
        assert 0.0 <= lo <= value <= hi <= 1.0
    assert f"{result.heldout_auroc:.3f}" in text and f"{result.zero_shot_auroc:.3f}" in text
    assert f"{result.cv_auroc:.3f}" in text and "95% CI" in text
    saved = json.loads((result.out / "results.json").read_text())
    assert saved["heldout_auroc_supervised"] == pytest.approx(result.heldout_auroc)


def test_files(ran) -> None:
    result, _ = ran
    out = result.out
    assert len(list((out / "stores").glob("*.zarr"))) == N_SLIDES
    assert [p.name for p in result.checkpoints] == ["best.ckpt"] * 3
    assert all(p.is_file() for p in result.checkpoints)
    assert all((out / "runs" / "abmil" / f"fold{k}" / "best.ckpt").is_file() for k in range(3))
    assert (out / "runs" / "slidetext" / "model").is_dir()
    assert (
        (out / "prompts.yaml").is_file()
        and result.supervised_csv.is_file()
        and result.zero_shot_csv.is_file()
    )
    # the zero-shot phrasings never occur in the development reports the model was pretrained on
    import csv

    with open(result.dev_manifest, newline="") as fh:
        corpus = " ".join(r["report"].lower() for r in csv.DictReader(fh))
    assert "cancer" not in corpus and "bland connective tissue" not in corpus
    # 2 attention maps (+ GeoJSON) and 1 zero-shot map, all in OUT/heatmaps, with hot tiles
    assert len(result.heatmaps) == 3 and len(result.geojson) == 2
    assert sum("attention" in p.name for p in result.heatmaps) == 2 and "zero-shot" in result.heatmaps[2].name
    for png in result.heatmaps:
        assert png.parent == out / "heatmaps" and png.is_file()
        assert _hot_fraction(png) > 0.005, (png.name, _hot_fraction(png))
    for g in result.geojson:
        features = json.loads(g.read_text())["features"]
        assert len(features) >= 5


def test_says_synthetic_and_how_to_run_on_real_slides(ran) -> None:
    _, text = ran
    head, tail = text[:600].lower(), text[-2500:].lower()
    for part in (head, tail):
        assert "synthetic" in part and "not a foundation model" in part
    assert "slidescope extract" in text and "--encoder uni --weights" in text
    assert "slidescope train" in text and "slidescope zero-shot" in text


def test_rerun_reuses_everything(ran, capsys) -> None:
    from slidescope.demo import demo

    result, _ = ran
    ckpt_times = [p.stat().st_mtime_ns for p in result.checkpoints]
    model_files = sorted((result.out / "runs" / "slidetext" / "model").iterdir())
    model_times = [p.stat().st_mtime_ns for p in model_files]
    again = demo(result.out, n_slides=N_SLIDES, seed=0, progress=True)
    text = capsys.readouterr().out
    assert "reusing" in text and "0 computed" in text
    assert [p.stat().st_mtime_ns for p in again.checkpoints] == ckpt_times
    assert [p.stat().st_mtime_ns for p in model_files] == model_times
    assert again.cv_auroc == pytest.approx(result.cv_auroc)
    assert again.heldout_auroc == pytest.approx(result.heldout_auroc)
    assert again.seconds < result.seconds


def test_cli_demo_help() -> None:
    from typer.testing import CliRunner

    from slidescope.cli import app

    res = CliRunner().invoke(app, ["demo", "--help"])
    assert res.exit_code == 0
    assert "--out" in res.output and "--slides" in res.output
