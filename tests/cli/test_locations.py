"""Store locations: every store-consuming command on a ``memory://`` and a moto-S3 location gives what it gives
on a local folder, and writes nothing locally that it was asked to write there.

One small synthetic cohort (he-descriptor embeddings, an untrained ABMIL checkpoint and slide-text model: the
commands are under test, not the models) is run through ``extract``, ``score``, ``heatmap``, ``zero-shot``,
``few-shot``, ``prompt-spread``, ``train``, ``pretrain``, ``export-h5``, ``import-h5`` and ``run`` once with local stores and once per URL kind; the
stores (read back), CSVs, PNGs and h5 files must be equal. ``report`` (PRISM) is in
tests/vlm/test_report_locations.py.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from s3_server import remote_root, s3_server

ENCODER = "he-descriptor"
TILING = ["--tile-size", "128", "--mpp", "1.0"]


def cli(*args: str, ok: bool = True):
    """The command in this process (its root callback configures logging: restored afterwards)."""
    from slidescope.cli import app

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        res = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    if ok:
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception
        assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["memory", "s3"])
def remote(request, monkeypatch):
    """An empty folder URL of each kind and its file system."""
    endpoint = request.getfixturevalue("s3_endpoint") if request.param == "s3" else None
    with remote_root(request.param, monkeypatch, endpoint) as (url, fs):
        yield url, fs


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    import torch
    import yaml

    from slidescope.mil.task import MILTask
    from slidescope.vlm.model import SlideTextModel
    from slidescope.vlm.pretrain import default_slide_encoder
    from slidescope.vlm.text import SmallTextTower
    from slidescope.synthetic import make_synthetic_slide

    root = tmp_path_factory.mktemp("locations")
    (root / "slides").mkdir()
    labels = ["normal", "tumour"] * 4
    slides = [
        make_synthetic_slide(
            root / "slides" / f"s{i}.tiff", width=1024, height=768, seed=20 + i, tumour=lab == "tumour"
        ).path
        for i, lab in enumerate(labels)
    ]
    torch.manual_seed(0)
    task = MILTask(
        "abmil",
        {"embed_dim": 16, "attn_dim": 8},
        in_dim=98,
        num_classes=2,
        class_names=["normal", "tumour"],
        encoder=ENCODER,
    )
    ckpt = root / "runs" / "abmil" / "fold0" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict()}, ckpt)
    texts = ["sheets of atypical cells", "benign stroma", "cancer", "normal tissue"]
    tower = SmallTextTower.from_texts(texts, width=32, depth=1, heads=2, max_length=32)
    SlideTextModel(
        default_slide_encoder(98, latent_seq=4, latent_dim=32, perceiver_depth=1), tower, dim_latents=32
    ).save(root / "slidetext")
    (root / "prompts.yaml").write_text(
        yaml.safe_dump({"classes": {"tumour": ["cancer"], "normal": ["benign stroma"]}})
    )
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide", "patient", "label", "report"])
        for i, (p, lab) in enumerate(zip(slides, labels, strict=True)):
            w.writerow([f"slides/{p.name}", f"p{i}", lab, texts[i % 2 + 2 * (i % 3 == 0)]])
    return root, slides


def run_all(assets, stores: str, work: Path) -> dict:
    """Every store-consuming command with its stores at ``stores``; what each made, read back."""
    from slidescope._location import join
    from slidescope.features.store import open_store

    root, slides = assets
    work.mkdir()
    cli("extract", *slides, "--encoder", ENCODER, *TILING, "--num-workers", "0", "--stores", stores)
    cli(
        "score",
        "--stores",
        stores,
        "--model",
        root / "runs/abmil/fold0/best.ckpt",
        "--name",
        "abmil",
        "--out",
        work / "score.csv",
    )
    cli(
        "heatmap",
        slides[1],
        "--stores",
        stores,
        "--scores",
        "abmil/attention",
        "--out",
        work / "heatmap.png",
        "--size",
        "256",
    )
    cli(
        "zero-shot",
        "--stores",
        stores,
        "--model",
        root / "slidetext",
        "--prompts",
        root / "prompts.yaml",
        "--encoder",
        ENCODER,
        "--out",
        work / "zero-shot.csv",
    )
    cli(
        "few-shot",
        "--model",
        root / "slidetext",
        "--train",
        root / "labels.csv",
        "--test",
        root / "labels.csv",
        "--stores",
        stores,
        "--encoder",
        ENCODER,
        "--method",
        "simpleshot",
        "--out",
        work / "few-shot.csv",
    )
    cli(
        "prompt-spread",
        "--model",
        root / "slidetext",
        "--prompts",
        root / "prompts.yaml",
        "--encoder",
        ENCODER,
        "--manifest",
        root / "labels.csv",
        "--stores",
        stores,
        "--n-subsets",
        "3",
        "--out",
        work / "spread.csv",
    )
    cli(
        "train",
        "--manifest",
        root / "labels.csv",
        "--stores",
        stores,
        "--encoder",
        ENCODER,
        "--model",
        "mean",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--accelerator",
        "cpu",
        "--out",
        work / "train",
    )
    cli(
        "pretrain",
        "--manifest",
        root / "labels.csv",
        "--stores",
        stores,
        "--encoder",
        ENCODER,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--max-instances",
        "8",
        "--accelerator",
        "cpu",
        "--out",
        work / "pretrain",
    )
    cli("export-h5", "--store", join(stores, "s0.zarr"), "--encoder", ENCODER, "--out", work / "h5")
    imported = join(stores, "imported")
    cli("import-h5", work / "h5" / "s0.h5", "--encoder", ENCODER, "--stores", imported)
    run_stores = join(stores, "run")
    cli(
        "run",
        *slides[:2],
        "--encoder",
        ENCODER,
        *TILING,
        "--num-workers",
        "0",
        "--no-progress",
        "--stores",
        run_stores,
        "--out",
        work / "results",
        "--model",
        root / "runs" / "abmil",
        "--prompts",
        root / "prompts.yaml",
        "--slide-text-model",
        root / "slidetext",
        "--heatmap-size",
        "128",
    )

    import h5py

    made: dict = {}
    for p in slides:
        st = open_store(join(stores, f"{p.stem}.zarr"))
        made[f"{p.stem} embeddings"] = st.embeddings(ENCODER)
        made[f"{p.stem} attention"] = st.scores("abmil/attention")
    for p in slides[:2]:
        made[f"run {p.stem} embeddings"] = open_store(join(run_stores, f"{p.stem}.zarr")).embeddings(ENCODER)
    made["imported embeddings"] = open_store(join(imported, "s0.zarr")).embeddings(ENCODER)
    with h5py.File(work / "h5" / "s0.h5") as f:
        made["h5 features"], made["h5 coords"] = f["features"][:], f["coords"][:]
    for name in (
        "score.csv",
        "zero-shot.csv",
        "few-shot.csv",
        "spread.csv",
        "train/oof_predictions.csv",
        "heatmap.png",
        "results/predictions.csv",
    ):
        made[name] = (work / name).read_bytes()
    made["pretrain metrics"] = json.loads((work / "pretrain" / "metrics.json").read_text())["metrics"]
    made["run heatmaps"] = sorted(p.name for p in (work / "results" / "heatmaps").iterdir())
    return made


@pytest.fixture(scope="module")
def local_run(assets, tmp_path_factory):
    """What every command made on local stores, and the stores folder."""
    work = tmp_path_factory.mktemp("local")
    return run_all(assets, str(work / "stores"), work / "out"), work / "stores"


def local_names(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_every_store_command_on_a_url_equals_local(assets, local_run, remote, tmp_path, monkeypatch) -> None:
    url, fs = remote
    local_made, _ = local_run
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    made = run_all(assets, f"{url}/stores", tmp_path / "out")
    assert made.keys() == local_made.keys()
    for key, value in local_made.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(made[key], value), key
        else:
            assert made[key] == value, key
    # the stores are in the object store, and nothing URL-like was written locally
    assert fs.exists(f"{url}/stores/s0.zarr/zarr.json".split("://", 1)[1])
    assert fs.exists(f"{url}/stores/reports/extract-latest.json".split("://", 1)[1])
    assert local_names(cwd) == []
    assert not [n for n in local_names(tmp_path) if ":" in n]
    assert not (tmp_path / "out" / "stores").exists()


def test_extract_out_url_writes_nothing_locally(assets, remote, tmp_path, monkeypatch) -> None:
    """The issue's case: `extract --out memory://...` (the old name of --stores) made ./memory:/... on disk."""
    from slidescope.features.store import open_store

    url, fs = remote
    root, slides = assets
    monkeypatch.chdir(tmp_path)
    before = local_names(root)
    res = cli(
        "extract", slides[0], "--encoder", ENCODER, *TILING, "--num-workers", "0", "--out", f"{url}/stores"
    )
    assert "--out is deprecated" in res.stderr and "use --stores" in res.stderr
    assert local_names(tmp_path) == [] and local_names(root) == before
    assert open_store(f"{url}/stores/s0.zarr").embeddings(ENCODER).shape[1] == 98


def test_local_only_outputs_refuse_urls(assets, tmp_path, monkeypatch) -> None:
    """Results (CSVs, PNGs, run folders) stay local: a URL there is a clear error, and nothing is written."""
    from slidescope.errors import InvalidParameterError

    root, slides = assets
    monkeypatch.chdir(tmp_path)
    cases = [
        ("score", str(tmp_path), "--model", root / "runs/abmil/fold0/best.ckpt", "--out", "memory://x/p.csv"),
        ("heatmap", slides[0], "--stores", str(tmp_path), "--scores", "a", "--out", "s3://b/h.png"),
        ("tile", slides[0], "--out", "memory://x/tiles"),
        (
            "train",
            "--manifest",
            root / "labels.csv",
            "--stores",
            str(tmp_path),
            "--encoder",
            ENCODER,
            "--out",
            "memory://x/run",
        ),
    ]
    for args in cases:
        res = cli(*args, ok=False)
        assert isinstance(res.exception, InvalidParameterError), (args, res.output)
        assert "must be a local path" in str(res.exception) and "URL" in str(res.exception)
    res = cli("run", slides[0], "--encoder", ENCODER, "--out", "memory://x/results", ok=False)
    assert isinstance(res.exception, InvalidParameterError) and "only the slides" in str(res.exception)
    assert local_names(tmp_path) == []


def test_renamed_options_warn_and_still_work(assets, local_run, tmp_path) -> None:
    from slidescope.errors import InvalidParameterError

    root, slides = assets
    made, stores = local_run
    args = [
        "few-shot",
        "--model",
        root / "slidetext",
        "--train",
        root / "labels.csv",
        "--test",
        root / "labels.csv",
        "--encoder",
        ENCODER,
        "--method",
        "simpleshot",
    ]
    old = cli(*args, "--store", stores, "--out", tmp_path / "old.csv")
    assert "--store is deprecated" in old.stderr and "use --stores" in old.stderr
    assert (tmp_path / "old.csv").read_bytes() == made["few-shot.csv"]
    new = cli(*args, "--stores", stores)
    assert "deprecated" not in new.stderr
    both = cli("extract", slides[0], "--encoder", ENCODER, "--stores", stores, "--out", stores, ok=False)
    assert isinstance(both.exception, InvalidParameterError) and "give --stores only" in str(both.exception)
    helps = cli("extract", "--help").stdout
    assert "--stores" in helps and "--out" not in helps  # the old name is hidden


@pytest.mark.parametrize(
    ("text", "url", "local"),
    [
        ("s3://bucket/stores/", True, "s3://bucket/stores"),
        ("memory://x", True, "memory://x"),
        ("simplecache::s3://b/k", True, "simplecache::s3://b/k"),
        ("file:///tmp/stores", False, Path("/tmp/stores")),
        ("stores", False, Path("stores")),
        ("run:1/a", False, Path("run:1/a")),  # a colon in a local name is not a scheme
    ],
)
def test_one_test_for_urls(text, url, local) -> None:
    from slidescope._location import as_location, is_url
    from slidescope.features.store import is_remote
    from slidescope.wsi._remote import is_url as wsi_is_url

    assert is_url(text) is url and is_remote(text) is url and wsi_is_url(text) is url
    assert as_location(text) == local
    assert is_url(Path("stores")) is False
