"""The extraction engine and the store: correct rows, reuse, invalidation, resume, corruption, claims."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from slidescope.errors import EmptyTissueError
from slidescope.features.extract import extract_features, extract_slides
from slidescope.features.store import (
    IncompleteStoreError,
    SlideClaimedError,
    StoreCorruptError,
    claim,
    open_store,
    store_path,
)
from slidescope.wsi import iter_tiles, make_tile_grid, open_slide


@pytest.fixture
def cmu_grid(cmu_small):
    slide = open_slide(cmu_small)
    return slide, make_tile_grid(slide, tile_size=224, mpp=0.5)


def expected(encoder, slide, grid) -> np.ndarray:
    tiles = dict(iter_tiles(slide, grid))
    batch = torch.from_numpy(np.stack([tiles[i] for i in range(len(grid))]))
    with torch.inference_mode():
        return encoder(batch).numpy()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_rows_match_grid_order(cmu_grid, tiny_encoder, tmp_path, num_workers) -> None:
    slide, grid = cmu_grid
    enc = tiny_encoder()
    res = extract_features(
        slide, grid, enc, store=tmp_path, num_workers=num_workers, batch_size=8, chunk_rows=16, progress=False
    )
    assert res.status == "done" and res.computed == len(grid)
    store = open_store(res.store)
    emb = store.embeddings("tiny-test")
    assert emb.shape == (len(grid), 16) and emb.dtype == np.float16
    np.testing.assert_allclose(emb.astype(np.float32), expected(enc, slide, grid), rtol=2e-3, atol=2e-3)
    assert np.array_equal(store.coords, grid.coords)
    attrs = store.attrs
    assert attrs["schema_version"] == 2 and attrs["slide"]["mpp"] == [0.499, 0.499]
    assert attrs["tiling"]["effective_mpp"] == [0.499, 0.499]
    enc_attrs = store.encoder_attrs("tiny-test")
    assert enc_attrs["weights_digest"] == "sha256:tiny-0" and enc_attrs["complete"] is True
    assert torch.is_tensor(store.embeddings("tiny-test", as_="torch"))


def test_reuse_and_invalidation(cmu_grid, tiny_encoder, tmp_path) -> None:
    slide, grid = cmu_grid
    first = extract_features(slide, grid, tiny_encoder(), store=tmp_path, num_workers=0, progress=False)
    again = extract_features(slide, grid, tiny_encoder(), store=tmp_path, num_workers=0, progress=False)
    assert first.status == "done" and again.status == "reused" and again.computed == 0
    # other weights: recomputed, never mixed
    other = tiny_encoder(seed=1)
    res = extract_features(slide, grid, other, store=tmp_path, num_workers=0, progress=False)
    assert res.status == "done" and res.computed == len(grid)
    np.testing.assert_allclose(
        open_store(res.store).embeddings("tiny-test").astype(np.float32),
        expected(other, slide, grid),
        rtol=2e-3,
        atol=2e-3,
    )
    # float32 on request is another cache entry
    res = extract_features(slide, grid, other, store=tmp_path, num_workers=0, dtype="float32", progress=False)
    assert res.computed == len(grid) and open_store(res.store).embeddings("tiny-test").dtype == np.float32
    # another tiling: a second tiling sub-group beside the first, which is kept
    grid2 = make_tile_grid(slide, tile_size=112, mpp=1.0)
    res = extract_features(slide, grid2, other, store=tmp_path, num_workers=0, progress=False)
    assert res.computed == len(grid2) and open_store(res.store).n_tiles == len(grid2)
    assert len(open_store(res.store).tilings()) == 2


def test_interrupted_run_resumes_to_the_same_result(cmu_grid, tiny_encoder, tmp_path) -> None:
    slide, grid = cmu_grid
    with pytest.raises(KeyboardInterrupt):
        extract_features(
            slide,
            grid,
            tiny_encoder(fail_after=3),
            store=tmp_path,
            num_workers=0,
            batch_size=8,
            chunk_rows=8,
            progress=False,
        )
    store = open_store(store_path(tmp_path, slide.path))
    with pytest.raises(IncompleteStoreError, match="resumes"):
        store.embeddings("tiny-test")
    res = extract_features(
        slide, grid, tiny_encoder(), store=tmp_path, num_workers=0, batch_size=8, chunk_rows=8, progress=False
    )
    assert 0 < res.computed < len(grid)
    clean = extract_features(
        slide, grid, tiny_encoder(), store=tmp_path / "clean", num_workers=0, progress=False
    )
    assert np.array_equal(
        open_store(res.store).embeddings("tiny-test"), open_store(clean.store).embeddings("tiny-test")
    )


KILL_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import TinyEncoder
from slidescope.features.extract import extract_features
from slidescope.wsi import open_slide, make_tile_grid
slide = open_slide({slide!r})
grid = make_tile_grid(slide, tile_size=224, mpp=0.5)
extract_features(slide, grid, TinyEncoder(delay=0.15), store={store!r}, num_workers=0, batch_size=4, chunk_rows=8,
                 progress=False)
"""


def test_kill_9_then_rerun_equals_uninterrupted(cmu_grid, tiny_encoder, tmp_path) -> None:
    slide, grid = cmu_grid
    script = KILL_SCRIPT.format(
        tests=str(Path(__file__).parent), slide=str(slide.path), store=str(tmp_path / "s")
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    tilings = store_path(tmp_path / "s", slide.path) / "tilings"
    deadline = time.time() + 60
    while time.time() < deadline and not any(
        len(list(done.iterdir())) >= 2 for done in tilings.glob("*/features/tiny-test/done/c")
    ):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    store = open_store(store_path(tmp_path / "s", slide.path))
    with pytest.raises(IncompleteStoreError):
        store.embeddings("tiny-test")
    # the dead run's claim is stale: the rerun takes it over and finishes
    res = extract_features(
        slide,
        grid,
        tiny_encoder(),
        store=tmp_path / "s",
        num_workers=0,
        batch_size=4,
        chunk_rows=8,
        progress=False,
    )
    assert res.status == "done" and 0 < res.computed < len(grid)
    clean = extract_features(
        slide, grid, tiny_encoder(), store=tmp_path / "clean", num_workers=0, progress=False
    )
    assert np.array_equal(
        open_store(res.store).embeddings("tiny-test"), open_store(clean.store).embeddings("tiny-test")
    )


def test_corrupt_chunk_is_detected(cmu_grid, tiny_encoder, tmp_path) -> None:
    slide, grid = cmu_grid
    res = extract_features(
        slide, grid, tiny_encoder(), store=tmp_path, num_workers=0, chunk_rows=16, progress=False
    )
    (chunk,) = Path(res.store).glob("tilings/*/features/tiny-test/embeddings/c/1/0")
    data = bytearray(chunk.read_bytes())
    data[10] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError, match="checksum"):
        open_store(res.store).embeddings("tiny-test")


def test_claims(cmu_grid, tmp_path) -> None:
    slide, _ = cmu_grid
    path = store_path(tmp_path, slide.path)
    with claim(path):
        with pytest.raises(SlideClaimedError, match="being written by another run"):
            with claim(path):
                pass
    lock = path.with_name(path.name + ".lock")
    assert not lock.exists()
    import socket

    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 12345, "since": "x"}))
    with claim(path):  # stale: that pid does not exist
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_empty_grid_gives_valid_empty_store(tmp_path, tiny_encoder) -> None:
    import tifffile

    blank = np.full((1024, 1024, 3), 243, np.uint8)
    path = tmp_path / "blank.tiff"
    tifffile.imwrite(
        path,
        blank,
        tile=(256, 256),
        photometric="rgb",
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    slide = open_slide(path)
    with pytest.raises(EmptyTissueError):
        make_tile_grid(slide, tile_size=224, mpp=0.5)
    results = extract_slides([path], tiny_encoder(), store=tmp_path / "s", num_workers=0, progress=False)
    assert results[0].status == "empty"
    store = open_store(results[0].store)
    assert store.n_tiles == 0 and store.embeddings("tiny-test").shape == (0, 16)


def test_batch_goes_on_past_bad_slides(cmu_small, fixtures_dir, tiny_encoder, tmp_path) -> None:
    slides = [
        fixtures_dir / "not-a-tiff.svs",
        cmu_small,
        tmp_path / "missing.svs",
        fixtures_dir / "boxes.tiff",
    ]
    results = extract_slides(slides, tiny_encoder(), store=tmp_path / "s", num_workers=0, progress=False)
    by_name = {Path(r.slide).name: r for r in results}
    assert by_name["CMU-1-Small-Region.svs"].status == "done"
    assert by_name["not-a-tiff.svs"].error_type == "UnsupportedSlideError"
    assert by_name["missing.svs"].error_type == "SlideNotFoundError"
    assert by_name["boxes.tiff"].error_type == "MissingMppError"


def test_h5_round_trip(cmu_grid, tiny_encoder, tmp_path) -> None:
    import h5py

    from slidescope.features import export_h5, import_h5

    slide, grid = cmu_grid
    res = extract_features(slide, grid, tiny_encoder(), store=tmp_path / "s", num_workers=0, progress=False)
    h5 = export_h5(res.store, "tiny-test", tmp_path / "h5" / "CMU-1-Small-Region.h5")
    with h5py.File(h5) as f:
        assert f["features"].shape == (len(grid), 16) and f["features"].dtype == np.float32
        assert np.array_equal(f["coords"][:], grid.coords)
        assert f["coords"].attrs["patch_size_level0"] == 224 and f["coords"].attrs["patch_size"] == 224
        assert f["coords"].attrs["level0_width"] == 2220
    back = import_h5(h5, encoder="tiny-test", store=tmp_path / "imported", slide=slide.path)
    st = open_store(back)
    assert np.array_equal(st.coords, grid.coords)
    assert np.array_equal(st.embeddings("tiny-test"), open_store(res.store).embeddings("tiny-test"))
    assert st.attrs["slide"]["fingerprint"] == open_store(res.store).attrs["slide"]["fingerprint"]
    assert st.tile_extent == (224, 224)


def test_import_clam_style_h5_without_slide(tmp_path) -> None:
    import h5py

    from slidescope.features import import_h5

    path = tmp_path / "clam.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32))
        c = f.create_dataset("coords", data=np.arange(10).reshape(5, 2) * 512)
        c.attrs["patch_level"] = 0
        c.attrs["patch_size"] = 512
    with pytest.raises(Exception, match="pixel size"):
        import_h5(path, encoder="clam-r50", store=tmp_path / "s")
    out = import_h5(path, encoder="clam-r50", store=tmp_path / "s", slide_mpp=0.25)
    st = open_store(out)
    assert st.embeddings("clam-r50").shape == (5, 8) and st.tile_extent == (512, 512)
    assert st.attrs["slide"]["fingerprint"].startswith("unverified")


def test_one_process_per_device(cmu_small, tmp_path) -> None:
    """``devices`` spawns one process per device; on this CPU machine two 'cpu' devices stand in for GPUs."""
    sample = Path(__file__).resolve().parents[2] / "sample_data" / "sample_slide.tiff"
    results = extract_slides(
        [cmu_small, sample],
        "he-descriptor",
        store=tmp_path,
        devices=["cpu", "cpu"],
        num_workers=0,
        progress=False,
    )
    assert [r.status for r in results] == ["done", "done"]
    assert [Path(r.slide).name for r in results] == ["CMU-1-Small-Region.svs", "sample_slide.tiff"]
    single = extract_slides(
        [cmu_small], "he-descriptor", store=tmp_path / "one", num_workers=0, progress=False
    )
    assert np.array_equal(
        open_store(results[0].store).embeddings("he-descriptor"),
        open_store(single[0].store).embeddings("he-descriptor"),
    )


def test_out_of_memory_lowers_the_batch(cmu_grid, tiny_encoder, tmp_path) -> None:
    from slidescope.features.extract import _encode_adaptive

    enc = tiny_encoder()
    real = enc.embed

    def picky(x):
        if len(x) > 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x)

    enc.embed = picky
    images = torch.randint(0, 255, (10, 64, 64, 3), dtype=torch.uint8)
    state: dict[str, int] = {}
    out = _encode_adaptive(enc, images, torch.device("cpu"), state)
    enc.embed = real
    assert out.shape == (10, 16) and state["limit"] == 2  # halved 10 -> 5 -> 2, then every part fits
    np.testing.assert_allclose(out.numpy(), enc(images).detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("output_dim", [32, 8])
def test_encoder_whose_output_disagrees_with_embed_dim_is_refused(
    cmu_grid, tiny_encoder, tmp_path, output_dim
) -> None:
    """A config saying embed_dim=16 over a model returning 32 (or 8) values per tile: zarr 3 would keep the first 16
    columns without a word and the store would be trusted from cache. Extraction must fail and complete nothing."""
    from slidescope.errors import InvalidParameterError
    from slidescope.features.store import CacheKey, SlideStore, StoreError

    slide, grid = cmu_grid
    enc = tiny_encoder(dim=16)
    enc.proj = torch.nn.Linear(48, output_dim)  # the model's real output size differs from its config
    with pytest.raises(InvalidParameterError, match=rf"shape \(\d+, {output_dim}\).*embed_dim=16"):
        extract_features(
            slide, grid, enc, store=tmp_path, num_workers=0, batch_size=8, chunk_rows=16, progress=False
        )
    assert "tiny-test" not in open_store(store_path(tmp_path, slide.path)).encoders()
    # the store's writer refuses rows of the wrong width on its own, whoever calls it (defence in depth)
    st = SlideStore.create_or_open(
        store_path(tmp_path, slide.path),
        slide_attrs=open_store(store_path(tmp_path, slide.path)).attrs["slide"],
        tiling=grid.to_dict(),
        coords=grid.coords,
        tissue_fraction=grid.tissue_fraction,
    )
    key = CacheKey(
        encoder={**enc.config.to_dict(), "stain": None},
        weights_digest="x",
        precision="fp32",
        dtype="float16",
        package_version=st.attrs["package_version"],
    )
    writer = st.prepare_embeddings(key, embed_dim=16, chunk_rows=16)
    with pytest.raises(StoreError, match="do not fit"):
        writer.add(np.arange(4), np.zeros((4, output_dim), np.float32))
    with pytest.raises(StoreError, match="nothing was written"):
        writer.write_chunk(0, np.zeros((16, output_dim), np.float32))
