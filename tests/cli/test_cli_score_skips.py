"""`score` and `zero-shot` over a batch with an empty and a damaged store: the good slides are scored and
written, the others reported (stderr and <out>.skipped.csv), and the exit status says whether any failed."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

ENCODER = "he-descriptor"


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from slidescope.features.extract import extract_slides
    from slidescope.mil.train import train
    from slidescope.synthetic import make_synthetic_cohort
    from slidescope.vlm.model import SlideTextModel
    from slidescope.vlm.pretrain import default_slide_encoder
    from slidescope.vlm.text import SmallTextTower

    root = tmp_path_factory.mktemp("score_skips")
    manifest = make_synthetic_cohort(root / "cohort", n_slides=6, width=1024, height=768, seed=3)
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    res = extract_slides(
        [manifest.parent / r["slide"] for r in rows],
        ENCODER,
        store=root / "stores",
        num_workers=0,
        progress=False,
    )
    assert all(r.status == "done" for r in res), [(r.slide, r.error) for r in res]
    run = train(
        manifest,
        store=root / "stores",
        encoder=ENCODER,
        out=root / "abmil",
        model="abmil",
        model_kwargs={"embed_dim": 16, "attn_dim": 8},
        folds=2,
        epochs=1,
        batch_size=4,
        seed=0,
        accelerator="cpu",
        bootstrap=10,
    )
    tower = SmallTextTower.from_texts([r["report"] for r in rows], width=32, depth=1, heads=2, max_length=64)
    model = SlideTextModel(
        default_slide_encoder(98, latent_seq=4, latent_dim=32, perceiver_depth=1), tower, dim_latents=32
    )
    model.save(root / "slidetext")
    (root / "prompts.yaml").write_text("classes:\n  tumour: [cancer]\n  normal: [benign stroma]\n")
    return {"root": root, "ckpt": run.checkpoints[0], "stores": root / "stores"}


def cli(*args: str) -> tuple[int, str, str]:
    from slidescope.cli import app

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        res = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def _with_empty_store(assets, tmp_path: Path) -> tuple[Path, int]:
    """The cohort's stores plus TRIDENT's file for a slide without tissue, imported: an empty store."""
    from slidescope.features import import_h5

    stores = tmp_path / "stores"
    shutil.copytree(assets["stores"], stores, ignore=shutil.ignore_patterns("reports"))
    empty = tmp_path / "blank.h5"
    with h5py.File(empty, "w") as f:
        f.create_dataset("features", data=np.zeros((0, 98), np.float32))
        c = f.create_dataset("coords", data=np.zeros((0, 2), np.int64))
        c.attrs.update(
            {
                "patch_size": 224,
                "patch_size_level0": 448,
                "level0_magnification": 40,
                "target_magnification": 20,
            }
        )
    import_h5(empty, encoder=ENCODER, store=stores)
    return stores, len(list(assets["stores"].glob("*.zarr")))


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_score_skips_empty_and_failed_stores(assets, tmp_path) -> None:
    stores, n = _with_empty_store(assets, tmp_path)
    out = tmp_path / "p.csv"
    code, stdout, stderr = cli("score", stores, "--model", assets["ckpt"], "--out", out)
    assert code == 0, stderr  # a slide without tissue is nothing to score, not a failure
    assert "blank: not scored, empty" in stderr and len(_read(out)) == n
    assert [(r["slide"], r["status"]) for r in _read(tmp_path / "p.skipped.csv")] == [("blank", "empty")]

    chunk = sorted(stores.glob("*.zarr/tilings/*/features/he-descriptor/embeddings/c/*/*"))[0]
    chunk.unlink()  # one store damaged
    code, stdout, stderr = cli("score", stores, "--model", assets["ckpt"], "--out", out, "--no-write-scores")
    assert code == 1 and len(_read(out)) == n - 1
    skipped = {r["slide"]: r for r in _read(tmp_path / "p.skipped.csv")}
    assert skipped["blank"]["status"] == "empty"
    (bad,) = [r for r in skipped.values() if r["status"] == "failed"]
    assert bad["slide"] == chunk.relative_to(stores).parts[0][: -len(".zarr")] and "Error" in bad["error"]
    assert f"{n - 1} of {n + 1} slides scored" in stderr


def test_zero_shot_skips_empty_stores(assets, tmp_path) -> None:
    stores, n = _with_empty_store(assets, tmp_path)
    out = tmp_path / "zs.csv"
    args = ["--model", assets["root"] / "slidetext", "--prompts", assets["root"] / "prompts.yaml"]
    code, stdout, stderr = cli("zero-shot", stores, *args, "--encoder", ENCODER, "--out", out)
    assert code == 0, stderr
    assert "blank: not scored, empty" in stderr
    assert sorted(r["slide"] for r in _read(out)) == sorted(p.stem for p in assets["stores"].glob("*.zarr"))
    assert [r["slide"] for r in _read(tmp_path / "zs.skipped.csv")] == ["blank"]
    chunk = sorted(stores.glob("*.zarr/tilings/*/features/he-descriptor/embeddings/c/*/*"))[0]
    chunk.unlink()  # one store damaged: found before the model runs
    code, _, stderr = cli("zero-shot", stores, *args, "--encoder", ENCODER, "--out", out)
    assert code == 1 and len(_read(out)) == len(list(assets["stores"].glob("*.zarr"))) - 1
    assert {r["status"] for r in _read(tmp_path / "zs.skipped.csv")} == {"empty", "failed"}
    before = out.read_bytes()
    code, _, stderr = cli("zero-shot", stores / "blank.zarr", *args, "--encoder", ENCODER, "--out", out)
    # nothing scored: exit 1, and the --out file is neither deleted nor replaced (it may not be ours)
    assert code == 1 and "0 of 1 slides scored" in stderr and out.read_bytes() == before
