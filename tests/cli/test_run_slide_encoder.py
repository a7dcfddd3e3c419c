"""`slidescope run --slide-encoder NAME`: each finished slide's embedding into its store and
OUT/slide_embeddings.csv, recorded in the report; again at a rerun (slides skipped); a slide encoder that
cannot read the run's tile embeddings refused before any slide.

The ``mean`` slide embeddings are checked against numpy's mean of the tile embeddings in each store.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from slidescope.errors import InvalidParameterError

ENCODER = "he-descriptor"


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from slidescope.synthetic import make_synthetic_cohort

    root = tmp_path_factory.mktemp("run_slide_encoder")
    manifest = make_synthetic_cohort(root / "cohort", n_slides=3, width=1024, height=768, seed=5)
    with open(manifest, newline="") as fh:
        return [manifest.parent / r["slide"] for r in csv.DictReader(fh)]


def _run(args: list[str]):
    from slidescope.cli import app

    return CliRunner().invoke(app, ["run", *args, "--num-workers", "0", "--no-progress", "--no-heatmaps"])


def test_run_writes_slide_embeddings_into_stores_csv_and_report(slides: list[Path], tmp_path: Path) -> None:
    from slidescope.features.store import open_store

    out = tmp_path / "results"
    res = _run([*map(str, slides), "--encoder", ENCODER, "--slide-encoder", "mean", "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    with open(out / "slide_embeddings.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["slide"] for r in table] == [p.stem for p in slides]
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["slide-encoder"] == "mean"
    for row, rec in zip(table, report["slides"], strict=True):
        store = open_store(out / "stores" / f"{row['slide']}.zarr", encoder=ENCODER)
        want = store.embeddings(ENCODER).astype(np.float64).mean(0)
        got = np.array([float(row[f"d{i}"]) for i in range(len(want))])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(store.slide_embedding(f"mean-{ENCODER}"), want, rtol=1e-5, atol=1e-6)
        assert rec["outputs"]["slide_embedding"].startswith("slide_embeddings.csv")
    first = (out / "slide_embeddings.csv").read_text()
    # a rerun skips the finished slides and writes their slide embeddings again, from the stores
    (out / "slide_embeddings.csv").unlink()
    again = _run([*map(str, slides), "--encoder", ENCODER, "--slide-encoder", "mean", "--out", str(out)])
    assert again.exit_code == 0, (again.output, again.exception)
    report = json.loads((out / "report.json").read_text())
    assert {r["status"] for r in report["slides"]} == {"skipped"}
    assert (out / "slide_embeddings.csv").read_text() == first
    # without --slide-encoder nothing of the kind is written
    plain = tmp_path / "plain"
    assert _run([str(slides[0]), "--encoder", ENCODER, "--out", str(plain)]).exit_code == 0
    assert not (plain / "slide_embeddings.csv").exists()


def test_run_refuses_a_slide_encoder_of_another_patch_encoder_before_any_slide(
    slides: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "results"
    res = _run([str(slides[0]), "--encoder", ENCODER, "--slide-encoder", "feather-uni2", "--out", str(out)])
    assert isinstance(res.exception, InvalidParameterError), res.output
    assert "uni2-h" in str(res.exception) and "--encoder uni2-h" in str(res.exception)
    assert not (out / "slides").exists()
    res = _run([str(slides[0]), "--encoder", ENCODER, "--slide-encoder", "nope", "--out", str(out)])
    assert isinstance(res.exception, InvalidParameterError) and "unknown slide encoder" in str(res.exception)


def test_run_loads_slide_encoder_weights_and_refuses_another_tiling(
    slides: list[Path], tmp_path: Path
) -> None:
    """A slide encoder with weights (a small FEATHER-architecture model registered for he-descriptor tiles):
    ``--slide-encoder-weights`` is loaded, and each row equals the loaded model's own forward pass."""
    import dataclasses

    import torch

    from slidescope.features.slide_encoders import (
        SlideEncoderConfig,
        _registry,
        create_slide_encoder,
        register_slide_encoder,
    )
    from slidescope.features.store import open_store

    small = (("embed_dim", 16), ("attn_dim", 8), ("dropout", 0.0))
    cfg = SlideEncoderConfig(
        name="test-run-abmil",
        family="abmil-mil-lab",
        embed_dim=16,
        patch_encoders=(ENCODER,),
        patch_dim=98,
        tile_size=224,
        mpp=0.5,
        layout="no weights",
        license="none",
        kwargs=small,
    )
    builder = "slidescope.features.slide_encoders._models:build"
    register_slide_encoder(cfg, builder)
    register_slide_encoder(dataclasses.replace(cfg, name="test-run-abmil-512", tile_size=512), builder)
    try:
        torch.manual_seed(0)
        model = create_slide_encoder("test-run-abmil", pretrained=False)
        weights = tmp_path / "w.pt"
        torch.save({f"model.{k}": v for k, v in model.state_dict().items()}, weights)
        out = tmp_path / "results"
        args = [
            *map(str, slides[:2]),
            "--encoder",
            ENCODER,
            "--slide-encoder",
            "test-run-abmil",
            "--out",
            str(out),
        ]
        res = _run([*args, "--slide-encoder-weights", str(weights)])
        assert res.exit_code == 0, (res.output, res.exception)
        with open(out / "slide_embeddings.csv", newline="") as fh:
            table = list(csv.DictReader(fh))
        assert len(table) == 2
        for row in table:
            store = open_store(out / "stores" / f"{row['slide']}.zarr", encoder=ENCODER)
            want = model.embed(store.embeddings(ENCODER), store.coords, store.tile_extent[0]).numpy()
            got = np.array([float(row[f"d{i}"]) for i in range(16)])
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        res = _run([*args[:-4], "--slide-encoder", "test-run-abmil-512", "--out", str(tmp_path / "other")])
        assert isinstance(res.exception, InvalidParameterError), res.output
        assert "--tile-size 512 --mpp 0.5" in str(res.exception)
    finally:
        _registry._REGISTRY.pop("test-run-abmil")
        _registry._REGISTRY.pop("test-run-abmil-512")


def test_run_passes_trust_remote_code_to_a_remote_code_slide_encoder(
    slides: list[Path], tmp_path: Path
) -> None:
    """PRISM and TITAN are built by their publishers' code: `run` refuses them before any slide without
    --trust-remote-code (the real TITAN entry), and hands the opt-in to the registry's builder with it (a
    remote-code entry registered here, whose builder gives the ``mean`` encoder once trusted: what the flag
    reaches is checked, not the publishers' models, which tests/features/test_slide_encoders.py loads)."""
    import dataclasses

    from slidescope.features.slide_encoders import (
        _registry,
        create_slide_encoder,
        get_slide_encoder_config,
        register_slide_encoder,
    )
    from slidescope.vlm.published import RemoteCodeError

    out = tmp_path / "titan"
    titan = [str(slides[0]), "--encoder", "conch-v1.5", "--tile-size", "512", "--slide-encoder", "titan"]
    res = _run([*titan, "--out", str(out)])
    assert isinstance(res.exception, RemoteCodeError), res.output
    assert "--trust-remote-code" in str(res.exception) and not (out / "slides").exists()

    seen: list[bool] = []

    def builder(config, *, weights=None, trust_remote_code=False, device="cpu"):
        seen.append(trust_remote_code)
        if not trust_remote_code:
            raise RemoteCodeError("test-remote runs its publisher's code: pass --trust-remote-code")
        return create_slide_encoder("mean")

    cfg = dataclasses.replace(
        get_slide_encoder_config("mean"), name="test-remote", requires_remote_code=True, weight_free=True
    )
    register_slide_encoder(cfg, builder)
    try:
        args = [str(slides[0]), "--encoder", ENCODER, "--slide-encoder", "test-remote"]
        res = _run([*args, "--out", str(tmp_path / "refused")])
        assert isinstance(res.exception, RemoteCodeError) and seen == [], (
            res.output
        )  # refused before building
        res = _run([*args, "--trust-remote-code", "--out", str(tmp_path / "trusted")])
        assert res.exit_code == 0 and seen == [True], (res.output, res.exception)
        assert (tmp_path / "trusted" / "slide_embeddings.csv").exists()
    finally:
        _registry._REGISTRY.pop("test-remote")
