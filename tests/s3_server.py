"""Object-store locations for tests: moto's S3 server on 127.0.0.1 and fsspec's in-memory file system.

``s3_server()`` starts the server (a module fixture holds it); ``remote_root(kind, ...)`` gives an empty
folder URL on it or in ``memory://``, with fsspec configured for the endpoint the way a user would
(fsspec's config), and cleans up afterwards.
"""

from __future__ import annotations

import contextlib
import gc
import uuid
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """moto's threaded S3 server; yields its endpoint URL."""
    import moto.server

    server = moto.server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def remote_root(kind: str, monkeypatch, endpoint: str | None = None) -> Iterator[tuple[str, object]]:
    """An empty folder URL (``memory://...`` or ``s3://<new bucket>/...``) and its fsspec file system."""
    import fsspec

    name = f"b{uuid.uuid4().hex[:12]}"
    if kind == "memory":
        fs = fsspec.filesystem("memory")
        try:
            yield f"memory://{name}/data", fs
        finally:
            with contextlib.suppress(FileNotFoundError):
                fs.rm(f"/{name}", recursive=True)
        return
    import boto3
    import s3fs

    assert endpoint is not None
    options = {
        "endpoint_url": endpoint,
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
    }
    monkeypatch.setitem(fsspec.config.conf, "s3", options)
    s3fs.S3FileSystem.clear_instance_cache()
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=name)
    try:
        yield f"s3://{name}/data", s3fs.S3FileSystem()
    finally:
        # zarr's async S3 file systems hold aiohttp sessions that only the garbage collector closes
        s3fs.S3FileSystem.clear_instance_cache()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
