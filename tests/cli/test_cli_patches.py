"""`slidescope tile --save-patches`: the saved patches are the tiles the encoder sees, read back with PIL."""

from __future__ import annotations

import csv
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slidescope.errors import InvalidParameterError
from slidescope.wsi import detect_tissue, make_tile_grid, open_slide, read_tile
from slidescope.wsi.patches import INDEX_COLUMNS, save_patches

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data" / "sample_slide.tiff"


def _index(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and tuple(rows[0]) == INDEX_COLUMNS
    return rows


def test_tile_save_patches_png(tmp_path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "slidescope",
            "tile",
            str(SAMPLE),
            "--out",
            str(tmp_path / "t"),
            "--tile-size",
            "224",
            "--mpp",
            "1.0",
            "--save-patches",
            str(tmp_path / "p"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    rows = _index(tmp_path / "p" / "sample_slide.patches.csv")
    with open_slide(SAMPLE) as s:  # the grid the command made, made again
        grid = make_tile_grid(s, tile_size=224, mpp=1.0, mask=detect_tissue(s, mpp=8.0))
        assert [[int(r["x"]), int(r["y"])] for r in rows] == grid.coords.tolist()
        assert {int(r["size_level0"]) for r in rows} == {grid.extent[0]} == {448}
        assert {float(r["mpp"]) for r in rows} == {1.0}
        np.testing.assert_allclose(
            [float(r["tissue_fraction"]) for r in rows], grid.tissue_fraction, atol=1e-4
        )
        for i, r in enumerate(rows):
            png = np.asarray(Image.open(tmp_path / "p" / r["file"]))
            assert png.shape == (224, 224, 3)
            np.testing.assert_array_equal(png, read_tile(s, grid, i))


def test_save_patches_jpeg_and_tar(tmp_path) -> None:
    with open_slide(SAMPLE) as s:
        grid = make_tile_grid(s, tile_size=224, mpp=1.0, min_tissue=0.5)
        jpg = _index(save_patches(s, grid, tmp_path / "j", format="jpeg", quality=95))
        tar_rows = _index(save_patches(s, grid, tmp_path / "t", format="tar"))
        with tarfile.open(tmp_path / "t" / "sample_slide.patches.tar") as tar:
            assert sorted(tar.getnames()) == sorted(r["file"] for r in tar_rows)  # block order inside
            for i, r in enumerate(tar_rows):
                member = tar.extractfile(r["file"])
                assert member is not None
                np.testing.assert_array_equal(np.asarray(Image.open(member)), read_tile(s, grid, i))
        for i, r in enumerate(jpg):
            img = np.asarray(Image.open(tmp_path / "j" / r["file"])).astype(int)
            assert np.abs(img - read_tile(s, grid, i).astype(int)).mean() < 3  # lossy, close
        with pytest.raises(InvalidParameterError, match="png, jpeg, tar"):
            save_patches(s, grid, tmp_path / "x", format="tiff")
