"""`slidescope info` and `slidescope tile` as a user runs them (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slidescope", *args], capture_output=True, text=True, cwd=cwd
    )


def test_info_real_svs(cmu_small: Path) -> None:
    out = run("info", str(cmu_small))
    assert out.returncode == 0, out.stderr
    assert "2220 x 2967" in out.stdout and "0.4990" in out.stdout and "Aperio ImageDescription" in out.stdout
    assert "20.0x" in out.stdout and "label" in out.stdout and "macro" in out.stdout
    as_json = json.loads(run("info", str(cmu_small), "--json").stdout)
    assert as_json["mpp"] == [0.499, 0.499] and as_json["level_count"] == 1
    assert set(as_json["associated_images"]) == {"label", "macro", "thumbnail"}


def test_info_reports_missing_mpp_without_failing(fixtures_dir: Path) -> None:
    out = run("info", str(fixtures_dir / "boxes.tiff"))
    assert out.returncode == 0
    assert "--slide-mpp" in out.stdout


@pytest.mark.parametrize(
    ("name", "expect"),
    [("not-a-tiff.svs", "UnsupportedSlideError"), ("unopenable.tiff", "UnsupportedSlideError")],
)
def test_bad_files_give_one_line_error(fixtures_dir: Path, name: str, expect: str) -> None:
    out = run("info", str(fixtures_dir / name))
    assert out.returncode == 2
    assert expect in out.stderr and "Traceback" not in out.stderr


def test_missing_file(tmp_path: Path) -> None:
    out = run("tile", str(tmp_path / "missing.svs"))
    assert out.returncode == 2 and "no such slide" in out.stderr


def test_tile_writes_grid_thumbnail_and_geojson(cmu_small: Path, tmp_path: Path) -> None:
    out = run("tile", str(cmu_small), "--mpp", "0.5", "--tile-size", "224", "--out", str(tmp_path / "t"))
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "t"
    meta = json.loads((folder / "grid.json").read_text())
    assert meta["extent"] == [224, 224] and meta["mpp_source"] == "Aperio ImageDescription (MPP)"
    tiles = np.loadtxt(folder / "tiles.csv", delimiter=",", skiprows=1)
    assert len(tiles) == meta["n_tiles"] > 20
    assert np.all(tiles[:, 3] >= 0.25)
    geo = json.loads((folder / "tissue.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and geo["features"]
    from PIL import Image

    thumb = np.asarray(Image.open(folder / "thumbnail.png").convert("RGB"))
    assert max(thumb.shape[:2]) == 1024
    # tile outlines are drawn in blue: some pixels are strongly blue
    blue = (thumb[..., 2] > 180) & (thumb[..., 0] < 80) & (thumb[..., 1] < 110)
    assert blue.sum() > 500


def test_tile_without_mpp_says_slide_mpp(fixtures_dir: Path, tmp_path: Path) -> None:
    out = run("tile", str(fixtures_dir / "boxes.tiff"), "--out", str(tmp_path / "b"))
    assert out.returncode == 2 and "--slide-mpp" in out.stderr
