"""`extract` and `run` on the newer formats (OME-Zarr, CZI) and with a manifest's per-slide pixel size.

The slides are cut from the repository's synthetic sample (tissue at 0.5 µm/px) and written as a plain PNG
(no pixel size: the manifest gives it), an OME-Zarr image (NGFF 0.4) and a CZI (pylibCZIrw's writer).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from slidescope.features.store import open_store, store_path
from slidescope.wsi import open_slide

from realdata import REPO

sys.path.insert(0, str(REPO / "tests" / "wsi"))  # the CZI writer helper

SAMPLE = REPO / "sample_data" / "sample_slide.tiff"


def _crop(x: int, y: int, size: int = 1536) -> np.ndarray:
    with open_slide(SAMPLE) as slide:
        return slide.read_region((x, y), 0, (size, size))


def _ome_zarr(path: Path, rgb: np.ndarray, mpp: float) -> Path:
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", data=np.moveaxis(rgb, 2, 0).copy(), chunks=(3, 256, 256))
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "yx"
    ]
    scale = [{"type": "scale", "scale": [1, mpp, mpp]}]
    group.attrs["multiscales"] = [
        {"version": "0.4", "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": scale}]}
    ]
    return path


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one.png and two.png (same pixels), zslide.ome.zarr, cslide.czi and a manifest of all
    four."""
    pytest.importorskip("pylibCZIrw", reason="the czi extra is not installed")
    from czi_files import write_czi

    root = tmp_path_factory.mktemp("formats")
    rgb = _crop(1024, 512)
    Image.fromarray(rgb).save(root / "one.png")
    Image.fromarray(rgb).save(root / "two.png")
    _ome_zarr(root / "zslide.ome.zarr", _crop(2048, 1024), 0.5)
    write_czi(root / "cslide.czi", _crop(512, 1536), 0.5, factors=(2,))
    (root / "manifest.csv").write_text(
        "slide,mpp\none.png,0.25\ntwo.png,0.5\nzslide.ome.zarr,\ncslide.czi,\n"
    )
    return root


def _stored(stores: Path, slide: Path) -> dict:
    return dict(open_store(store_path(stores, str(slide))).attrs["slide"])


def test_extract_reads_each_slides_manifest_mpp_and_the_new_formats(slides: Path, tmp_path: Path) -> None:
    from slidescope.cli import app

    stores = tmp_path / "stores"
    args = ["extract", str(slides / "manifest.csv"), "--encoder", "he-descriptor", "--stores", str(stores)]
    result = CliRunner().invoke(app, [*args, "--num-workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "4 of 4 slides ok" in result.output
    one, two = _stored(stores, slides / "one.png"), _stored(stores, slides / "two.png")
    assert one["mpp_source"] == "manifest" and one["mpp"] == [0.25, 0.25]
    assert two["mpp_source"] == "manifest" and two["mpp"] == [0.5, 0.5]
    n_one = open_store(store_path(stores, str(slides / "one.png"))).n_tiles
    n_two = open_store(store_path(stores, str(slides / "two.png"))).n_tiles
    assert 0 < n_one < n_two  # the same pixels at half the pixel size: a quarter of the area
    zarr_attrs = _stored(stores, slides / "zslide.ome.zarr")
    assert zarr_attrs["backend"] == "ome-zarr" and zarr_attrs["mpp"] == [0.5, 0.5]
    assert zarr_attrs["mpp_source"] == "OME-NGFF multiscales (scale transformation)"
    czi_attrs = _stored(stores, slides / "cslide.czi")
    assert czi_attrs["backend"] == "czi" and czi_attrs["mpp_source"] == "CZI metadata (Scaling/Distance)"
    for name in ("zslide.ome.zarr", "cslide.czi"):
        store = open_store(store_path(stores, str(slides / name)))
        emb = store.embeddings("he-descriptor")
        assert store.n_tiles > 5 and np.isfinite(emb.astype(np.float32)).all(), name


def test_extract_slides_api_takes_the_per_slide_mpp(slides: Path, tmp_path: Path) -> None:
    from slidescope.features.extract import extract_slides

    png = slides / "one.png"
    results = extract_slides(
        [png],
        "he-descriptor",
        store=tmp_path / "s",
        slide_mpp=0.5,  # the batch value, replaced for this slide by the manifest's
        slide_mpps={str(png): 0.25},
        device="cpu",
        num_workers=0,
        progress=False,
    )
    assert results[0].status == "done"
    assert _stored(tmp_path / "s", png)["mpp_source"] == "manifest"


def test_run_on_ome_zarr_and_czi(slides: Path, tmp_path: Path) -> None:
    from slidescope.pipeline import run

    result = run(
        [slides / "zslide.ome.zarr", slides / "cslide.czi"],
        encoder="he-descriptor",
        out=tmp_path / "out",
        device="cpu",
        num_workers=0,
        progress=False,
    )
    by_name = {Path(o.slide).name: o for o in result.outcomes}
    assert by_name["zslide.ome.zarr"].status == "done" and by_name["cslide.czi"].status == "done"
    assert by_name["cslide.czi"].mpp_source == "file metadata: CZI metadata (Scaling/Distance)"
    assert by_name["zslide.ome.zarr"].n_tiles > 5 and by_name["cslide.czi"].n_tiles > 5


def test_extract_job_carries_the_per_slide_mpp(slides: Path, tmp_path: Path) -> None:
    """The executor path (``--executor dask``): each task's job holds the manifest's values."""
    from slidescope.features.extract import ExtractJob, extract_job

    png = slides / "two.png"
    job = ExtractJob(
        out=str(tmp_path / "s"),
        encoder="he-descriptor",
        device="cpu",
        num_workers=0,
        slide_mpps=((str(png), 0.4),),
    )
    assert extract_job(str(png), job).status == "done"
    attrs = _stored(tmp_path / "s", png)
    assert attrs["mpp_source"] == "manifest" and attrs["mpp"] == [0.4, 0.4]


def test_an_ome_zarr_folder_has_a_fingerprint_that_follows_its_content(tmp_path: Path) -> None:
    from slidescope.features.store import slide_fingerprint

    path = _ome_zarr(tmp_path / "a.ome.zarr", _crop(0, 0, 600), 0.5)
    first = slide_fingerprint(path)
    assert first.startswith("dir:") and slide_fingerprint(path) == first
    _ome_zarr(path, _crop(600, 600, 600), 0.5)  # other pixels, same layout
    assert slide_fingerprint(path) != first
    _ome_zarr(path, _crop(0, 0, 600), 0.25)  # the same pixels, another pixel size
    assert slide_fingerprint(path) not in (first,)
