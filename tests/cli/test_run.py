"""`slidescope run`: the whole pipeline over a batch of real, synthetic and broken slides, as a user runs it.

One small synthetic cohort (he-descriptor embeddings) gives an ABMIL checkpoint (2 folds, a few epochs) and
a slide-text model; the runs then score fresh copies of its slides, the real slides of ../shared/data and
the broken fixtures. The slide-text model is saved untrained: these tests check the runner (what is
written, skipped, retried, reported), not the model's accuracy (tests/vlm does that).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

ENCODER = "he-descriptor"
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Assets:
    root: Path
    slides: list[Path]  # the synthetic cohort's slides
    run_dir: Path  # ABMIL run folder (fold0, fold1)
    slide_text: Path
    prompts: Path


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    from slidescope.features.extract import extract_slides
    from slidescope.mil.train import train
    from slidescope.vlm.model import SlideTextModel
    from slidescope.vlm.pretrain import default_slide_encoder
    from slidescope.vlm.text import SmallTextTower
    from slidescope.synthetic import make_synthetic_cohort

    root = tmp_path_factory.mktemp("run_assets")
    manifest = make_synthetic_cohort(root / "cohort", n_slides=8, width=1024, height=768, seed=3)
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    slides = [manifest.parent / r["slide"] for r in rows]
    res = extract_slides(slides, ENCODER, store=root / "stores", num_workers=0, progress=False)
    assert all(r.status == "done" for r in res), [(r.slide, r.error) for r in res]
    run = train(
        manifest,
        store=root / "stores",
        encoder=ENCODER,
        out=root / "abmil",
        model="abmil",
        model_kwargs={"embed_dim": 32, "attn_dim": 16},
        folds=2,
        epochs=3,
        batch_size=4,
        seed=0,
        accelerator="cpu",
        bootstrap=50,
    )
    assert len(run.checkpoints) == 2
    tower = SmallTextTower.from_texts([r["report"] for r in rows], width=32, depth=1, heads=2, max_length=64)
    model = SlideTextModel(
        default_slide_encoder(98, latent_seq=8, latent_dim=32, perceiver_depth=1), tower, dim_latents=32
    )
    model.save(root / "slidetext")
    prompts = root / "prompts.yaml"
    prompts.write_text("classes:\n  tumour: [cancer, sheets of atypical cells]\n  normal: [benign stroma]\n")
    return Assets(
        root=root, slides=slides, run_dir=root / "abmil", slide_text=root / "slidetext", prompts=prompts
    )


def cli(*args: str) -> tuple[int, str]:
    """The command in this process (its root callback configures logging: restored afterwards)."""
    from slidescope.cli import app

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        res = CliRunner().invoke(app, list(args))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def files(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time (ns)."""
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()
    }


# the broken fixtures of ../shared/data and what the report must say about each
BROKEN = {
    "boxes": ("MissingMppError", "--slide-mpp"),  # 72 dpi resolution tags: no real pixel size
    "not-a-tiff": ("UnsupportedSlideError", "Is it a whole-slide image"),
    "unopenable": ("UnsupportedSlideError", "compression"),
    "unreadable": ("SlideReadError", "corrupt"),
    "small": ("InvalidParameterError", "smaller tile_size"),  # 16 x 16 px: smaller than one tile
    "missing": ("SlideNotFoundError", "missing.svs"),
}


def test_run_good_and_broken_slides_then_rerun(assets: Assets, shared_data: Path, tmp_path: Path) -> None:
    good = [
        *assets.slides[:2],
        shared_data / "slides" / "CMU-1-Small-Region.svs",
        shared_data / "slides" / "OS-1-detail.ome.tif",
    ]
    broken = [*sorted((shared_data / "fixtures").iterdir()), tmp_path / "missing.svs"]
    manifest = tmp_path / "slides.csv"
    manifest.write_text("slide\n" + "".join(f"{p}\n" for p in good + broken))
    out = tmp_path / "results"
    args = [
        "run",
        str(manifest),
        "--encoder",
        ENCODER,
        "--model",
        str(assets.run_dir),
        "--prompts",
        str(assets.prompts),
        "--slide-text-model",
        str(assets.slide_text),
        "--out",
        str(out),
        "--num-workers",
        "0",
        "--heatmap-size",
        "256",
        "--no-progress",
    ]
    code, text = cli(*args)
    assert code == 1, text  # some slides failed, the others are done
    assert "4 slides done, 0 skipped (finished before), 6 failed, of 10" in text
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"done": 4, "failed": 6} and report["finished"] and report["exit_code"] == 1
    by_key = {s["key"]: s for s in report["slides"]}
    for key, (cls, hint) in BROKEN.items():
        s = by_key[key]
        assert s["status"] == "failed" and s["error_class"] == cls, s
        assert hint in s["error_message"], s["error_message"]
        assert f"{key}: failed ({cls}" in text
    # the good ones: scored (ensemble of the 2 folds) and zero-shot, with heatmaps, timings and the tiles' mpp
    cmu = by_key["CMU-1-Small-Region"]
    assert cmu["n_tiles"] > 20 and cmu["effective_mpp"] == pytest.approx([0.5, 0.5], abs=0.01)
    assert set(cmu["timings"]) >= {
        "open",
        "tissue",
        "tiles",
        "extract",
        "score",
        "zero_shot",
        "heatmaps",
        "total",
    }
    preds = read_csv(out / "predictions.csv")
    assert [r["slide"] for r in preds] == [Path(p).name.split(".")[0] for p in good]
    for r in preds:
        assert float(r["mil_prob_normal"]) + float(r["mil_prob_tumour"]) == pytest.approx(1, abs=1e-5)
        assert float(r["zero_shot_prob_normal"]) + float(r["zero_shot_prob_tumour"]) == pytest.approx(
            1, abs=1e-5
        )
        assert r["mil_predicted"] in ("normal", "tumour") and int(r["n_tiles"]) > 0
    from PIL import Image

    for key in (r["slide"] for r in preds):
        for name in ("abmil", "zero-shot-tumour", "zero-shot-normal"):
            png = out / "heatmaps" / f"{key}.{name}.png"
            with Image.open(png) as img:
                assert img.size[0] > 200
            geo = json.loads((out / "heatmaps" / f"{key}.{name}.geojson").read_text())
            assert len(geo["features"]) == by_key[key]["n_tiles"]
        assert (out / "stores" / f"{key}.zarr").is_dir() and (out / "tissue" / f"{key}.geojson").is_file()
    md = (out / "report.md").read_text()
    assert "## Failed" in md and "MissingMppError" in md and "| CMU-1-Small-Region | done |" in md
    assert not [p for p in out.rglob("*") if "partial" in p.name or p.suffix == ".lock"]

    # a rerun skips the finished slides (nothing of theirs is rewritten) and retries the failed ones
    good_keys = [r["slide"] for r in preds]
    listing = files(out)
    mine = {k: v for k, v in listing.items() if any(f"/{g}." in f"/{k}" for g in good_keys)}
    assert sum(k.startswith(("slides/", "tissue/", "heatmaps/")) for k in mine) == 4 * 8
    code, text = cli(*args)
    assert code == 1 and "0 slides done, 4 skipped (finished before), 6 failed, of 10" in text
    after = files(out)
    assert {k: after[k] for k in mine} == mine
    assert after["slides/boxes.json"] != listing["slides/boxes.json"]  # retried
    assert read_csv(out / "predictions.csv") == preds
    again = json.loads((out / "report.json").read_text())
    assert again["counts"] == {"failed": 6, "skipped": 4}

    # another model invalidates the results: the plan redoes the slides, it does not skip them (dry run)
    listing = files(out)
    code, text = cli(*args[:5], str(assets.run_dir / "fold1" / "best.ckpt"), *args[6:], "--dry-run")
    assert code == 0, text
    assert "dry run: nothing is written" in text and "4 do, 6 retry" in text
    assert (
        "configuration changed (model)" in text
        and f'model: ["{assets.run_dir / "fold1" / "best.ckpt"}"]' in text
    )
    assert files(out) == listing


def test_config_file_flags_override_and_bad_keys(assets: Assets, tmp_path: Path) -> None:
    from slidescope.errors import InvalidParameterError, SlidescopeError
    from slidescope.pipeline import CONFIG_KEYS, RunConfig, load_config_file, resolve_config

    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text(
        f'slides = ["{assets.slides[0]}"]\nencoder = "{ENCODER}"\nout = "results"\n'
        f'model = "{assets.run_dir}"\ntile-size = 112\nmin_tissue = 0.5\nheatmaps = false\n'
    )
    paths, cfg = resolve_config(config=cfg_file, min_tissue=0.1)
    assert paths == [assets.slides[0]]
    assert cfg.out == str(tmp_path / "results")  # relative to the config file
    assert cfg.tile_size == 112 and cfg.min_tissue == 0.1 and cfg.heatmaps is False  # the option wins
    assert len(cfg.model) == 2 and cfg.score_name == "abmil"  # a run folder -> its fold checkpoints
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    # every RunConfig field is a config key (and the CLI's long options are the same words); the other keys
    # say where the slides run
    from slidescope.pipeline import EXECUTION_KEYS

    assert {k.replace("-", "_") for k in CONFIG_KEYS} - {"slides"} - set(EXECUTION_KEYS) == set(
        RunConfig.__dataclass_fields__
    ) - {"progress", "slide_mpps"}  # slide_mpps: from the manifests' slide_mpp column, not a config key

    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(f"encoder: {ENCODER}\nout: r\ntile_sise: 224\n")
    with pytest.raises(
        InvalidParameterError, match=r"unknown key 'tile_sise' \(did you mean 'tile-size'\?\)"
    ):
        load_config_file(yaml_file)
    yaml_file.write_text("heatmap-size: big\n")
    with pytest.raises(InvalidParameterError, match="heatmap-size must be a whole number"):
        load_config_file(yaml_file)
    with pytest.raises(InvalidParameterError, match="backend must be one of auto, openslide, tiffslide"):
        resolve_config(assets.slides[0], encoder=ENCODER, out=str(tmp_path), backend="pillow")
    with pytest.raises(InvalidParameterError, match="--slide-text-model"):
        resolve_config(assets.slides[0], encoder=ENCODER, out=str(tmp_path), prompts=str(assets.prompts))
    with pytest.raises(
        SlidescopeError, match="trained on 'he-descriptor' 98-d embeddings.*--encoder he-descriptor"
    ):
        resolve_config(
            assets.slides[0], encoder="lunit-dino-vits8", out=str(tmp_path), model=[str(assets.run_dir)]
        )

    # the command line: one clear line and exit code 2, listing the valid keys
    yaml_file.write_text("encoder: he-descriptor\nout: r\ncolour: red\n")
    proc = subprocess.run(
        [sys.executable, "-m", "slidescope", "run", str(assets.slides[0]), "--config", str(yaml_file)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert (
        "InvalidParameterError: run.yaml: unknown key 'colour'" in proc.stderr and "tile-size" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_importing_the_runner_is_light() -> None:
    """``slidescope.run`` (and the command's module) load without torch or the slide libraries."""
    code = (
        "import sys, slidescope, slidescope.cli._run; run = slidescope.run; "
        "print(run.__module__, [m for m in ('torch', 'openslide', 'tiffslide', 'lightning', 'zarr') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["slidescope.pipeline._run", "[]"]


class _ReversedPickling:
    """An executor in the shape a process pool or Dask would have: the function and the configuration go
    through pickle, and outcomes come back in another order than the slides."""

    def map(self, fn, slides, config):
        fn, config = pickle.loads(pickle.dumps((fn, config)))
        for slide in reversed(list(slides)):
            yield pickle.loads(pickle.dumps(fn(slide, config)))


def test_executor_seam(assets: Assets, tmp_path: Path) -> None:
    from slidescope import run

    slides = [str(p) for p in assets.slides[:3]]
    res = run(
        slides,
        executor=_ReversedPickling(),
        encoder=ENCODER,
        model=[str(assets.run_dir)],
        out=str(tmp_path / "r"),
        stores=str(assets.root / "stores"),
        num_workers=0,
        heatmaps=False,
        progress=False,
    )
    assert res.exit_code == 0 and res.counts == {"done": 3}
    assert [o.slide for o in res.outcomes] == slides  # back in input order
    assert all(
        o.computed_tiles == 0 and o.n_tiles > 0 for o in res.outcomes
    )  # embeddings came from the cache
    report = json.loads(res.report.read_text())  # type: ignore[union-attr]
    assert [s["slide"] for s in report["slides"]] == slides
    assert len(read_csv(tmp_path / "r" / "predictions.csv")) == 3


def _zero_shot_args(assets: Assets, out: Path) -> list[str]:
    """Zero-shot only: a subprocess then starts without Lightning (MIL scoring is tested above)."""
    return [
        "run",
        *map(str, assets.slides),
        "--encoder",
        ENCODER,
        "--prompts",
        str(assets.prompts),
        "--slide-text-model",
        str(assets.slide_text),
        "--heatmap-size",
        "128",
        "--num-workers",
        "0",
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def reference(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The results of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "results"
    code, text = cli(*_zero_shot_args(assets, out), "--no-progress")
    assert code == 0, text
    return out


def _same_results(out: Path, reference: Path, keys: list[str]) -> None:
    from slidescope.features import open_store

    assert (out / "predictions.csv").read_text() == (reference / "predictions.csv").read_text()
    assert {k for k in files(out) if not k.startswith("stores/")} == {
        k for k in files(reference) if not k.startswith("stores/")
    }  # no partial or lock file left behind
    for key in keys:
        a, b = open_store(out / "stores" / f"{key}.zarr"), open_store(reference / "stores" / f"{key}.zarr")
        assert np.array_equal(a.embeddings(ENCODER), b.embeddings(ENCODER))
        assert np.array_equal(a.scores("zero-shot/tumour"), b.scores("zero-shot/tumour"))
    for name in ("tissue/{}.geojson", "heatmaps/{}.zero-shot-tumour.geojson"):
        for key in keys:
            assert (out / name.format(key)).read_text() == (reference / name.format(key)).read_text()


def test_ctrl_c_mid_slide_then_rerun(
    assets: Assets, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the third slide draws its heatmaps (its store and tissue are written, its record is not)."""
    from slidescope.pipeline import _slide

    real = _slide._heatmap
    calls: list[str] = []

    def interrupted(slide, *args, **kwargs):
        calls.append(slide)
        if Path(slide) == assets.slides[2]:
            raise KeyboardInterrupt
        return real(slide, *args, **kwargs)

    monkeypatch.setattr(_slide, "_heatmap", interrupted)
    out = tmp_path / "results"
    code, text = cli(*_zero_shot_args(assets, out), "--no-progress")
    assert code == 130 and "interrupted" in text and "run the same command again" in text
    report = json.loads((out / "report.json").read_text())
    assert not report["finished"]
    assert [s["status"] for s in report["slides"]] == ["done", "done"] + ["interrupted"] * (
        len(assets.slides) - 2
    )
    assert sorted(p.name for p in (out / "slides").iterdir()) == [f"{p.stem}.json" for p in assets.slides[:2]]
    assert (out / "tissue" / f"{assets.slides[2].stem}.geojson").is_file()  # written before the interruption
    assert not [p for p in out.rglob("*") if "partial" in p.name]

    monkeypatch.setattr(_slide, "_heatmap", real)
    code, text = cli(*_zero_shot_args(assets, out), "--no-progress")
    assert code == 0 and f"{len(assets.slides) - 2} slides done, 2 skipped" in text
    _same_results(out, reference, [p.stem for p in assets.slides])


def _records(out: Path) -> int:
    return len(list((out / "slides").glob("[!.]*.json"))) if (out / "slides").is_dir() else 0


def test_killed_run_resumes_to_the_same_results(assets: Assets, reference: Path, tmp_path: Path) -> None:
    """``kill -9`` a real ``slidescope run`` once it has finished a slide, then run the same command again."""
    out = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "slidescope", *_zero_shot_args(assets, out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    deadline = time.monotonic() + 180
    while _records(out) < 1:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{proc.communicate()[0]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no slide finished in time")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    n = _records(out)
    assert 1 <= n < len(assets.slides), "the run finished before it was killed"
    report = json.loads((out / "report.json").read_text())
    assert not report["finished"]  # the report never claims more than was done

    code, text = cli(*_zero_shot_args(assets, out), "--no-progress")
    assert code == 0 and f"{len(assets.slides) - n} slides done, {n} skipped" in text, text
    _same_results(out, reference, [p.stem for p in assets.slides])


@pytest.mark.slow
def test_score_and_zero_shot_on_dask_equal_local(assets: Assets, tmp_path: Path) -> None:
    """`score` and `zero-shot` with --executor dask (one task per store, 2 worker processes) write the same
    predictions as in-process, and the same tile attention into the stores."""
    import shutil

    from slidescope.features.store import open_store

    pytest.importorskip("distributed")
    results = {}
    for mode in ("local", "dask"):
        stores = tmp_path / mode / "stores"
        shutil.copytree(assets.root / "stores", stores)
        extra = ["--executor", "dask", "--dask-workers", "2"] if mode == "dask" else []
        ckpts = [a for c in sorted(assets.run_dir.glob("fold*/best.ckpt")) for a in ("--model", str(c))]
        code, out = cli("score", str(stores), *ckpts, "--out", str(tmp_path / mode / "mil.csv"), *extra)
        assert code == 0, out
        code, out = cli(
            "zero-shot",
            str(stores),
            "--model",
            str(assets.slide_text),
            "--prompts",
            str(assets.prompts),
            "--encoder",
            ENCODER,
            "--out",
            str(tmp_path / mode / "zs.csv"),
            *extra,
        )
        assert code == 0, out
        results[mode] = (
            read_csv(tmp_path / mode / "mil.csv"),
            read_csv(tmp_path / mode / "zs.csv"),
            {p.name: open_store(p).scores("abmil/attention") for p in sorted(stores.glob("*.zarr"))},
        )
    (mil_l, zs_l, att_l), (mil_d, zs_d, att_d) = results["local"], results["dask"]
    # A worker process runs torch with its own intra-op thread count, so reductions may round differently from
    # this process (CI saw attention differ in the last float bits): labels equal, numbers equal up to rounding.
    # zero-shot also does one slide per matrix product on the workers vs all at once here.
    assert len(mil_l) == len(assets.slides)
    for rows_l, rows_d in ((mil_l, mil_d), (zs_l, zs_d)):
        assert [(r["slide"], r["predicted"]) for r in rows_l] == [
            (r["slide"], r["predicted"]) for r in rows_d
        ]
        for a, b in zip(rows_l, rows_d, strict=True):
            for col in (c for c in a if c.startswith("prob_")):
                assert abs(float(a[col]) - float(b[col])) <= 2e-6, (a, b)
    assert att_l.keys() == att_d.keys()
    for k in att_l:
        np.testing.assert_allclose(att_d[k], att_l[k], rtol=1e-5, atol=1e-7, err_msg=k)
