"""`slidescope report` (PRISM's decoder, a seeded toy of its published code) on stores in ``memory://`` and
on moto's S3 server gives the reports it gives on the same stores in a local folder (the other store commands:
tests/cli/test_locations.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from s3_server import remote_root, s3_server


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    with s3_server() as endpoint:
        yield endpoint


@pytest.mark.parametrize("kind", ["memory", "s3"])
def test_report_on_url_stores_equals_local(
    kind, prism_dir: Path, store_writer, tmp_path, monkeypatch, request
) -> None:
    from slidescope.cli import app

    endpoint = request.getfixturevalue("s3_endpoint") if kind == "s3" else None
    local = tmp_path / "stores"
    for i in range(2):
        tiles = np.random.default_rng(70 + i).normal(size=(10, 2560)).astype(np.float32)
        store_writer(local / f"r{i}.zarr", tiles, encoder="virchow")

    def report(stores: str, out: Path) -> bytes:
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            res = CliRunner().invoke(
                app,
                [
                    "report",
                    "--stores",
                    stores,
                    "--weights",
                    str(prism_dir),
                    "--trust-remote-code",
                    "--num-beams",
                    "1",
                    "--max-length",
                    "6",
                    "--out",
                    str(out),
                ],
            )
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
        assert res.exit_code == 0, res.output
        return out.read_bytes()

    expected = report(str(local), tmp_path / "local.csv")
    assert expected.count(b"\n") == 3  # header and two slides
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with remote_root(kind, monkeypatch, endpoint) as (url, fs):
        inner = url.split("://", 1)[1]
        for i in range(2):
            fs.put(str(local / f"r{i}.zarr"), f"{inner}/stores/r{i}.zarr", recursive=True)
        assert report(f"{url}/stores", tmp_path / "remote.csv") == expected
    assert list(cwd.iterdir()) == []
