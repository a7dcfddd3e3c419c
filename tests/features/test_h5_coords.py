"""``extract --coords``: embeddings on the tiles another tool chose (TRIDENT/CLAM h5, CSV).

The TRIDENT file is written as trident/IO.py ``coords_to_h5`` writes one (mahmoodlab/TRIDENT @
a91fa8490e0210ebbbe58452c3babe009e0ab7ca): ``patch_size`` at ``target_magnification``, ``patch_size_level0 =
patch_size * src_mag // target_mag``, magnifications, overlap, name, savetodir, level-0 size; the CLAM one as
extract_features_fp.py writes its features (no attributes).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from slidescope.features import extract_features, open_store
from slidescope.features.extract import extract_slides
from slidescope.wsi import make_tile_grid, open_slide
from slidescope.wsi.patches import save_patches


def trident_coords(path: Path, coords: np.ndarray, *, patch_size=256, src_mag=40, target_mag=20) -> Path:
    with h5py.File(path, "w") as f:
        d = f.create_dataset("coords", data=np.asarray(coords, np.int64), maxshape=(None, 2), chunks=(1, 2))
        d.attrs.update(
            {
                "patch_size": patch_size,
                "patch_size_level0": patch_size * src_mag // target_mag,
                "level0_magnification": src_mag,
                "target_magnification": target_mag,
                "overlap": 0,
                "name": path.stem.replace("_patches", ""),
                "savetodir": "None",
                "level0_width": 2048,
                "level0_height": 1536,
            }
        )
    return path


@pytest.fixture
def slide40(pyramid):
    return pyramid(2048, 1536, mpp=0.25, levels=3)


def _reference(slide_path, tiny_encoder, store):
    """Our own grid at 256 px, 0.5 µm/px, and its embeddings."""
    with open_slide(slide_path) as s:
        grid = make_tile_grid(s, tile_size=256, mpp=0.5, min_tissue=0.0)
        res = extract_features(s, grid, tiny_encoder(), store=store, num_workers=0, progress=False)
    return grid, open_store(res.store, encoder="tiny-test").embeddings("tiny-test").astype(np.float32)


def _extract(slide_path, tiny_encoder, store, coords, **kw):
    (res,) = extract_slides(
        [slide_path],
        tiny_encoder(),
        store=store,
        coords=coords,
        tile_size=256,
        mpp=0.5,
        num_workers=0,
        progress=False,
        **kw,
    )
    return res


def test_trident_coords_give_the_same_tiles(slide40, tiny_encoder, tmp_path) -> None:
    grid, ref = _reference(slide40, tiny_encoder, tmp_path / "ref")
    pick = np.array([5, 0, 7, 3])  # another tool's order and subset
    h5 = trident_coords(tmp_path / f"{slide40.name.split('.')[0]}_patches.h5", grid.coords[pick])
    res = _extract(slide40, tiny_encoder, tmp_path / "s", tmp_path)  # found in the folder by name
    assert res.status == "done" and res.n_tiles == 4, res.error
    st = open_store(res.store, encoder="tiny-test")
    np.testing.assert_array_equal(st.coords, grid.coords[pick])
    assert st.tile_extent == (512, 512) and st.attrs["tiling"]["tile_size"] == 256
    tiling = st.attrs["tiling"]
    assert tiling["coords_file"] == h5.name and tiling["coords_format"] == "trident"
    assert tiling["coords_footprint_from"] == "file" and len(tiling["coords_sha256"]) == 64
    np.testing.assert_array_equal(st.embeddings("tiny-test").astype(np.float32), ref[pick])
    np.testing.assert_allclose(st.tissue_fraction, grid.tissue_fraction[pick], atol=1e-6)

    assert _extract(slide40, tiny_encoder, tmp_path / "s", h5).status == "reused"
    trident_coords(h5, grid.coords[pick[:2]])  # other coordinates: another tiling, computed
    again = _extract(slide40, tiny_encoder, tmp_path / "s", h5)
    assert again.status == "done" and again.n_tiles == 2


def test_csv_and_clam_coords(slide40, tiny_encoder, tmp_path) -> None:
    grid, ref = _reference(slide40, tiny_encoder, tmp_path / "ref")
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("x,y\n" + "".join(f"{x},{y}\n" for x, y in grid.coords[[2, 4]]))
    res = _extract(slide40, tiny_encoder, tmp_path / "s", csv_path)  # footprint from tile size and mpp
    st = open_store(res.store, encoder="tiny-test")
    assert st.tile_extent == (512, 512) and st.attrs["tiling"]["coords_footprint_from"] == "tile_size and mpp"
    np.testing.assert_array_equal(st.embeddings("tiny-test").astype(np.float32), ref[[2, 4]])

    with open_slide(slide40) as s:  # our own patch index, fed back
        index = save_patches(s, grid.subset(np.array([1, 6])), tmp_path / "p")
    res = _extract(slide40, tiny_encoder, tmp_path / "s2", index)
    st = open_store(res.store, encoder="tiny-test")
    assert st.attrs["tiling"]["coords_footprint_from"] == "file"
    np.testing.assert_array_equal(st.embeddings("tiny-test").astype(np.float32), ref[[1, 6]])

    clam = tmp_path / "clam.h5"
    with h5py.File(clam, "w") as f:  # a CLAM feature file: no attributes
        f.create_dataset("features", data=np.zeros((1, 8), np.float32))
        f.create_dataset("coords", data=grid.coords[[3]].astype(np.int32))
    res = _extract(slide40, tiny_encoder, tmp_path / "s3", clam)
    st = open_store(res.store, encoder="tiny-test")
    assert st.attrs["tiling"]["coords_format"] == "h5"
    np.testing.assert_array_equal(st.embeddings("tiny-test").astype(np.float32), ref[[3]])


def test_bad_coordinates_fail_that_slide(slide40, tiny_encoder, tmp_path) -> None:
    far = trident_coords(tmp_path / "far.h5", np.array([[0, 0], [4096, 0]]))
    res = _extract(slide40, tiny_encoder, tmp_path / "s", far)
    assert res.status == "failed" and res.error_type == "InvalidParameterError"
    assert "start outside" in res.error
    (tmp_path / "noxy.csv").write_text("a,b\n1,2\n")
    res = _extract(slide40, tiny_encoder, tmp_path / "s", tmp_path / "noxy.csv")
    assert res.status == "failed" and "'x' and 'y'" in res.error
    res = _extract(slide40, tiny_encoder, tmp_path / "s", tmp_path / "empty_folder_missing")
    assert res.status == "failed" and "does not exist" in res.error


def test_edge_crossing_and_empty_coords(slide40, tiny_encoder, tmp_path) -> None:
    """TRIDENT's padded grid has tiles crossing the right edge (start < width): read with white padding."""
    edge = trident_coords(tmp_path / "edge.h5", np.array([[1792, 0], [0, 0]]))  # 1792 + 512 > 2048
    res = _extract(slide40, tiny_encoder, tmp_path / "s", edge)
    assert res.status == "done", res.error
    st = open_store(res.store, encoder="tiny-test")
    assert st.attrs["tiling"]["edge"] == "pad"
    empty = trident_coords(tmp_path / "empty.h5", np.zeros((0, 2), np.int64))
    res = _extract(slide40, tiny_encoder, tmp_path / "e", empty)
    assert res.status == "empty" and res.n_tiles == 0


def test_cli_extract_coords(tmp_path) -> None:
    sample = Path(__file__).resolve().parents[2] / "sample_data" / "sample_slide.tiff"
    (tmp_path / "c.csv").write_text("x,y,size_level0\n0,0,224\n224,448,224\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "slidescope",
            "-q",
            "extract",
            str(sample),
            "--encoder",
            "he-descriptor",
            "--stores",
            str(tmp_path / "s"),
            "--coords",
            str(tmp_path / "c.csv"),
            "--num-workers",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "sample_slide.tiff: done, 2 tiles" in run.stdout
    st = open_store(tmp_path / "s" / "sample_slide.zarr", encoder="he-descriptor")
    assert st.coords.tolist() == [[0, 0], [224, 448]] and st.attrs["tiling"]["coords_file"] == "c.csv"
