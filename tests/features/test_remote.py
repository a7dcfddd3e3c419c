"""Slides and stores on an S3-compatible object store (moto's server on 127.0.0.1), through fsspec."""

from __future__ import annotations

import gc
import json
import socket
import warnings

import numpy as np
import pytest

from slidescope.features.extract import extract_features
from slidescope.features.store import SlideClaimedError, claim, is_remote, open_store, store_path
from slidescope.synthetic import make_synthetic_slide
from slidescope.wsi import expand_slides, make_tile_grid, open_slide

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch, tmp_path):
    """An empty bucket; fsspec configured for the endpoint the way a user would (fsspec config)."""
    import boto3
    import fsspec
    import s3fs

    options = {
        "endpoint_url": s3_endpoint,
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
    }
    monkeypatch.setitem(fsspec.config.conf, "s3", options)
    monkeypatch.setenv("SLIDESCOPE_CACHE", str(tmp_path / "cache"))
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"b{abs(hash(tmp_path)) % 10**8}"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    yield s3fs.S3FileSystem(), bucket
    # zarr's async S3 file systems hold aiohttp sessions that only the garbage collector closes; collect
    # them here, where their "unclosed session" ResourceWarning is expected, not at interpreter exit
    s3fs.S3FileSystem.clear_instance_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def test_remote_slide_and_store_equal_the_local_ones(s3, tmp_path) -> None:
    fs, bucket = s3
    local_slide = make_synthetic_slide(tmp_path / "remote-1.tiff", width=1024, height=768, seed=3).path
    fs.put(str(local_slide), f"{bucket}/slides/remote-1.tiff")
    url = f"s3://{bucket}/slides/remote-1.tiff"
    assert expand_slides([url]) == [url]

    slide = open_slide(url)  # read through the slide cache
    assert slide.path.name == "remote-1.tiff" and str(tmp_path / "cache") in str(slide.path)
    grid = make_tile_grid(slide, tile_size=128, mpp=1.0)
    remote_root = f"s3://{bucket}/stores"
    res = extract_features(
        slide, grid, "he-descriptor", store=remote_root, num_workers=0, chunk_rows=8, progress=False
    )
    assert res.status == "done" and res.store == f"{remote_root}/remote-1.zarr" and is_remote(res.store)
    assert fs.exists(f"{bucket}/stores/remote-1.zarr/zarr.json")
    assert not fs.exists(f"{bucket}/stores/remote-1.zarr.lock")  # the claim is released

    here = extract_features(
        open_slide(local_slide),
        make_tile_grid(open_slide(local_slide), tile_size=128, mpp=1.0),
        "he-descriptor",
        store=tmp_path / "stores",
        num_workers=0,
        chunk_rows=8,
        progress=False,
    )
    remote, local = open_store(res.store), open_store(here.store)
    assert remote.name == local.name == "remote-1.zarr"
    assert np.array_equal(remote.coords, local.coords)
    assert np.array_equal(remote.embeddings("he-descriptor"), local.embeddings("he-descriptor"))
    assert remote.attrs["slide"]["fingerprint"] == local.attrs["slide"]["fingerprint"]

    again = extract_features(
        open_slide(url), grid, "he-descriptor", store=remote_root, num_workers=0, chunk_rows=8, progress=False
    )
    assert again.status == "reused"


def test_remote_claim_is_exclusive(s3) -> None:
    fs, bucket = s3
    path = store_path(f"s3://{bucket}/stores", "x.svs")
    with claim(path):
        assert fs.exists(f"{bucket}/stores/x.zarr.lock")
        with pytest.raises(SlideClaimedError, match="being written by another run"):
            with claim(path):
                pass
    assert not fs.exists(f"{bucket}/stores/x.zarr.lock")
    # a claim left by a process that is gone on this host is taken over; one from another host is not
    fs.pipe(
        f"{bucket}/stores/x.zarr.lock", json.dumps({"host": socket.gethostname(), "pid": 2**22 + 7}).encode()
    )
    with claim(path):
        pass
    fs.pipe(f"{bucket}/stores/x.zarr.lock", json.dumps({"host": "elsewhere", "pid": 1}).encode())
    with pytest.raises(SlideClaimedError, match="delete s3://"):
        with claim(path):
            pass


def test_missing_remote_slide_is_a_clear_error(s3) -> None:
    from slidescope.errors import SlideNotFoundError

    _, bucket = s3
    with pytest.raises(SlideNotFoundError, match="no such slide: s3://"):
        open_slide(f"s3://{bucket}/nothing.svs")


def test_score_reads_and_writes_remote_stores(s3, tmp_path) -> None:
    """MIL scoring on stores in a bucket: the folder URL expands to its stores, attention is written there."""
    import torch

    from slidescope.mil.score import score
    from slidescope.mil.task import MILTask

    fs, bucket = s3
    slide = make_synthetic_slide(tmp_path / "remote-2.tiff", width=1024, height=768, seed=4).path
    s = open_slide(slide)
    root = f"s3://{bucket}/stores"
    extract_features(
        s,
        make_tile_grid(s, tile_size=128, mpp=1.0),
        "he-descriptor",
        store=root,
        num_workers=0,
        progress=False,
    )
    torch.manual_seed(0)
    task = MILTask(
        "abmil",
        {"embed_dim": 16, "attn_dim": 8},
        in_dim=98,
        num_classes=2,
        class_names=["normal", "tumour"],
        encoder="he-descriptor",
    )
    ckpt = tmp_path / "abmil" / "best.ckpt"
    ckpt.parent.mkdir()
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict()}, ckpt)
    (row,) = score([ckpt], [root], out_csv=tmp_path / "p.csv", name="abmil")
    assert row.slide == "remote-2" and row.store == f"{root}/remote-2.zarr"
    assert np.array_equal(open_store(row.store).scores("abmil/attention"), row.attention)
    from slidescope.mil.heatmap import heatmap

    heatmap(slide, root, scores="abmil/attention", out_png=tmp_path / "h.png")  # the store folder is a URL
    assert (tmp_path / "h.png").stat().st_size > 0


def test_run_with_remote_slides_and_stores(s3, tmp_path) -> None:
    """`slidescope run` end to end with the slide and the stores in a bucket (results folder local)."""
    import torch

    import slidescope as ss
    from slidescope.mil.task import MILTask

    fs, bucket = s3
    local = make_synthetic_slide(tmp_path / "remote-3.tiff", width=1024, height=768, seed=6).path
    fs.put(str(local), f"{bucket}/slides/remote-3.tiff")
    torch.manual_seed(0)
    task = MILTask(
        "abmil",
        {"embed_dim": 16, "attn_dim": 8},
        in_dim=98,
        num_classes=2,
        class_names=["normal", "tumour"],
        encoder="he-descriptor",
    )
    ckpt = tmp_path / "runs" / "abmil" / "fold0" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict()}, ckpt)
    kwargs = dict(
        out=tmp_path / "results",
        stores=f"s3://{bucket}/stores",
        encoder="he-descriptor",
        model=[str(ckpt.parents[1])],
        num_workers=0,
        progress=False,
        heatmap_size=128,
    )
    res = ss.run([f"s3://{bucket}/slides/remote-3.tiff"], **kwargs)
    assert res.exit_code == 0, [(o.error_class, o.error_message) for o in res.outcomes]
    assert fs.glob(f"{bucket}/stores/remote-3.zarr/tilings/*/features/he-descriptor/zarr.json")
    assert list((tmp_path / "results" / "heatmaps").glob("remote-3.*.png"))
    again = ss.run([f"s3://{bucket}/slides/remote-3.tiff"], **kwargs)
    assert again.counts == {"skipped": 1}
