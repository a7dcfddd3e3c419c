"""The scripts in examples/ run offline, as a developer would run them, on a small synthetic cohort.

Each test calls a script's ``main(argv)`` with a shared output folder and a small cohort (8 slides of
1024 x 768 px); each script makes the cohort and the embeddings itself when they are missing, so every
test also passes alone. One subprocess runs every script with ``--help`` as ``python examples/<script>.py``.
"""

from __future__ import annotations

import csv
import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SMALL = ["--n-slides", "8", "--size", "1024"]


def main_of(script: str):
    return runpy.run_path(str(EXAMPLES / script))["main"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("examples") / "work"


def test_every_example_is_tested() -> None:
    tested = {
        "extract_cohort.py",
        "train_abmil_cv.py",
        "zero_shot_prompts.py",
        "export_trident_h5.py",
        "batch_run.py",
        "titan_prompts.py",
    }  # tested in tests/vlm/test_zeroshot_parity.py (on a TITAN-shaped checkout)
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_extract_cohort(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_of("extract_cohort.py")(["--out", str(work), "--num-workers", "0", *SMALL]) == 0
    text = capsys.readouterr().out
    assert "8 of 8 slides ready" in text and "embeddings (" in text and ", 98) float16" in text
    with open(work / "extraction.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert (
        len(rows) == 8 and {r["status"] for r in rows} == {"done"} and all(int(r["tiles"]) > 0 for r in rows)
    )
    assert len(list((work / "stores").glob("*.zarr"))) == 8


def test_extract_reports_a_bad_slide(
    tmp_path: Path, fixtures_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = REPO / "sample_data" / "sample_slide.tiff"
    code = main_of("extract_cohort.py")(
        [str(good), str(fixtures_dir / "not-a-tiff.svs"), "--out", str(tmp_path), "--num-workers", "0"]
    )
    text = capsys.readouterr().out
    assert code == 1 and "1 of 2 slides ready" in text
    assert "not-a-tiff.svs" in text and "failed" in text and "UnsupportedSlideError" in text
    with open(tmp_path / "extraction.csv", newline="") as fh:
        assert [r["status"] for r in csv.DictReader(fh)] == ["done", "failed"]


def test_train_abmil_cv(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_of("train_abmil_cv.py")(["--out", str(work), "--folds", "2", "--epochs", "3", *SMALL]) == 0
    text = capsys.readouterr().out
    assert "pooled" in text and "auroc" in text
    assert sorted(p.parent.name for p in (work / "abmil").glob("fold*/best.ckpt")) == ["fold0", "fold1"]
    with open(work / "abmil_scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    assert all(float(r["prob_normal"]) + float(r["prob_tumour"]) == pytest.approx(1, abs=1e-5) for r in rows)
    from slidescope.features import open_store

    store = open_store(next((work / "stores").glob("*.zarr")))
    assert store.scores("abmil/attention").shape == (store.n_tiles,)


def test_zero_shot_prompts(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_of("zero_shot_prompts.py")(["--out", str(work), "--epochs", "5", *SMALL]) == 0
    text = capsys.readouterr().out
    assert "held-out slides right" in text and "similarity map" in text
    with open(work / "zero_shot.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) == {
        "slide",
        "prob_tumour",
        "prob_normal",
        "predicted",
    }  # the prompt file's classes
    assert (work / "slidetext" / "model" / "config.json").is_file()
    pngs = list(work.glob("zero_shot_*.png"))
    assert len(pngs) == 1
    from PIL import Image

    with Image.open(pngs[0]) as img:
        assert img.size[0] > 100


def test_export_trident_h5(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without stores it embeds sample_data/sample_slide.tiff first, then exports and reads back with h5py."""
    import h5py

    assert main_of("export_trident_h5.py")(["--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "sample_slide.h5: features (" in text and "patch_size 224 px" in text
    with h5py.File(tmp_path / "h5" / "sample_slide.h5", "r") as f:
        feats, coords = f["features"][:], f["coords"][:]
        assert feats.shape[1] == 98 and coords.shape == (len(feats), 2) and coords.dtype == np.int64
        assert f["coords"].attrs["patch_size_level0"] == 224  # 224 px at 0.5 µm/px of a 0.5 µm/px scan
    from slidescope.features import open_store

    store = open_store(tmp_path / "sample_stores" / "sample_slide.zarr")
    np.testing.assert_array_equal(coords, store.coords)
    np.testing.assert_allclose(feats, store.embeddings("he-descriptor").astype(np.float32))


def test_examples_run_as_scripts() -> None:
    """``python examples/<script>.py --help``: each parses its arguments and imports what it needs when run as a
    script (not only through this test's runpy)."""
    code = (
        "import runpy, sys\n"
        "for name in sys.argv[1:]:\n"
        "    sys.argv = [name, '--help']\n"
        "    try:\n"
        "        runpy.run_path(name, run_name='__main__')\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (name, e.code)\n"
    )
    scripts = sorted(str(p) for p in EXAMPLES.glob("*.py"))
    proc = subprocess.run(
        [sys.executable, "-c", code, *scripts], capture_output=True, text=True, cwd=EXAMPLES
    )
    assert proc.returncode == 0, proc.stderr
    for p in scripts:
        assert Path(p).name.replace(".py", "") in proc.stdout or "usage:" in proc.stdout
    assert proc.stdout.count("usage:") == len(scripts)


def test_batch_run(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_of("batch_run.py")(["--out", str(work), *SMALL]) == 0
    text = capsys.readouterr().out
    assert "{'done': 8}" in text or "{'skipped': 8}" in text
    report = json.loads((work / "results" / "report.json").read_text())
    assert report["totals"]["slides"] == 8 and report["exit_code"] == 0
    with open(work / "results" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and "mil_prob_tumour" in rows[0]
    assert len(list((work / "results" / "heatmaps").glob("*.png"))) == 8


# -- the public API: numpydoc docstrings with shapes and examples that run --------------------------------

#: the public functions of ``slidescope`` whose docstrings are checked here (zero_shot and few_shot are
#: documented with slidescope.vlm and tested there)
PUBLIC = (
    "open_slide",
    "detect_tissue",
    "make_tile_grid",
    "create_encoder",
    "extract_features",
    "open_store",
    "create_aggregator",
    "train",
    "score",
    "heatmap",
    "run",
)


@pytest.mark.parametrize("name", PUBLIC)
def test_public_docstrings(name: str) -> None:
    import slidescope

    doc = getattr(slidescope, name).__doc__ or ""
    for section in ("Parameters\n", "Returns\n", "Examples\n"):
        assert section in doc, f"{name}: no {section.strip()} section"
    assert ">>> " in doc


def test_public_names_are_the_functions() -> None:
    """``slidescope.train``/``score``/``heatmap`` are functions even once their submodules of the same name were
    imported (a package attribute then names the submodule)."""
    import importlib
    import types

    import slidescope

    for module in ("slidescope.mil.train", "slidescope.mil.score", "slidescope.mil.heatmap"):
        importlib.import_module(module)
    for name in (*PUBLIC, "zero_shot", "few_shot"):
        vars(slidescope).pop(name, None)  # forget the cached value: resolve it again now
        value = getattr(slidescope, name)
        assert callable(value) and not isinstance(value, types.ModuleType), (name, value)
        assert value.__name__ == name


def test_docstring_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples in the public docstrings run (on sample_data, from the repository root) and print what
    they say; those marked ``+SKIP`` need real slides or weights."""
    import doctest

    import slidescope

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # tempfile.mkdtemp() in the examples
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    finder, failures, attempted = doctest.DocTestFinder(recurse=False), [], 0
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for name in PUBLIC:
        for test in finder.find(getattr(slidescope, name), name, globs={}):
            result = runner.run(test, out=failures.append)
            attempted += result.attempted
    assert not failures, "".join(failures)
    assert attempted >= 30
