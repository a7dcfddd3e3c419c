"""`slidescope extract`, `export-h5`, `import-h5` and `encoders` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from slidescope.features import open_store

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data" / "sample_slide.tiff"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slidescope", *args], capture_output=True, text=True)


def test_extract_batch_with_a_bad_slide(fixtures_dir: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "slides.csv"
    manifest.write_text(f"slide\n{SAMPLE}\n{fixtures_dir / 'not-a-tiff.svs'}\n")
    out = run(
        "-q",
        "extract",
        str(manifest),
        "--encoder",
        "he-descriptor",
        "--out",
        str(tmp_path / "stores"),
        "--num-workers",
        "1",
    )
    assert out.returncode == 1, out.stderr  # some slides failed
    assert "sample_slide.tiff: done" in out.stdout
    assert "not-a-tiff.svs: failed (UnsupportedSlideError" in out.stdout
    report = json.loads((tmp_path / "stores" / "reports" / "extract-latest.json").read_text())
    assert report["counts"] == {"done": 1, "failed": 1}
    store = open_store(tmp_path / "stores" / "sample_slide.zarr")
    emb = store.embeddings("he-descriptor")
    assert emb.shape == (store.n_tiles, 98) and np.isfinite(emb.astype(np.float32)).all()
    assert store.attrs["tiling"]["mpp"] == 0.5 and store.attrs["tiling"]["tile_size"] == 224

    again = run("-q", "extract", str(SAMPLE), "--encoder", "he-descriptor", "--out", str(tmp_path / "stores"))
    assert again.returncode == 0 and "sample_slide.tiff: reused" in again.stdout

    h5 = run(
        "export-h5", str(tmp_path / "stores"), "--encoder", "he-descriptor", "--out", str(tmp_path / "h5")
    )
    assert h5.returncode == 0, h5.stderr
    back = run(
        "import-h5",
        str(tmp_path / "h5" / "sample_slide.h5"),
        "--encoder",
        "he-descriptor",
        "--out",
        str(tmp_path / "imported"),
        "--slides",
        str(SAMPLE.parent),
    )
    assert back.returncode == 0, back.stderr
    imported = open_store(tmp_path / "imported" / "sample_slide.zarr")
    assert np.array_equal(imported.embeddings("he-descriptor"), emb)


def test_unknown_encoder_and_missing_weights(tmp_path: Path) -> None:
    out = run("extract", str(SAMPLE), "--encoder", "nope", "--out", str(tmp_path))
    assert out.returncode == 2 and "unknown encoder 'nope'" in out.stderr
    out = run(
        "extract",
        str(SAMPLE),
        "--encoder",
        "uni",
        "--weights",
        str(tmp_path / "missing.safetensors"),
        "--out",
        str(tmp_path),
    )
    assert out.returncode == 2 and "WeightsError" in out.stderr and "--weights PATH" in out.stderr


def test_encoders_lists_presets() -> None:
    out = run("encoders")
    assert out.returncode == 0
    for name in ("uni", "virchow2", "conch-v1.5", "he-descriptor", "resnet50-trunc"):
        assert name in out.stdout
