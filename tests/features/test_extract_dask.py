"""`slidescope extract --executor dask`: one task per slide on a real 2-process LocalCluster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("distributed")


@pytest.mark.slow
def test_extract_on_dask_equals_local_and_reports_bad_slides(tmp_path: Path) -> None:
    from slidescope.cli import app
    from slidescope.features.store import open_store
    from slidescope.synthetic import make_synthetic_slide

    slides = [
        make_synthetic_slide(tmp_path / f"s{i}.tiff", width=1536, height=1024, seed=i).path for i in range(3)
    ]
    missing = tmp_path / "gone.svs"
    args = [*map(str, slides), str(missing), "--encoder", "he-descriptor", "--num-workers", "0"]
    local = CliRunner().invoke(app, ["extract", *args, "--out", str(tmp_path / "local")])
    dask = CliRunner().invoke(
        app, ["extract", *args, "--out", str(tmp_path / "dask"), "--executor", "dask", "--dask-workers", "2"]
    )
    assert local.exit_code == dask.exit_code == 1, (local.output, dask.output)  # the missing slide failed
    assert "gone.svs: failed (SlideNotFoundError" in dask.output and "3 of 4 slides ok" in dask.output
    for s in slides:
        name = s.stem + ".zarr"
        ours, theirs = open_store(tmp_path / "dask" / name), open_store(tmp_path / "local" / name)
        assert np.array_equal(ours.embeddings("he-descriptor"), theirs.embeddings("he-descriptor"))
        assert np.array_equal(ours.coords, theirs.coords)
    report = json.loads((tmp_path / "dask" / "reports" / "extract-latest.json").read_text())
    assert [Path(r["slide"]).name for r in report["slides"]] == [
        *(s.name for s in slides),
        "gone.svs",
    ]  # input order
    assert [r["extra"].get("attempts") for r in report["slides"][:3]] == [1, 1, 1]

    # a rerun on the cluster reuses the stores
    again = CliRunner().invoke(
        app,
        [
            "extract",
            *map(str, slides),
            "--encoder",
            "he-descriptor",
            "--num-workers",
            "0",
            "--out",
            str(tmp_path / "dask"),
            "--executor",
            "dask",
            "--dask-workers",
            "2",
        ],
    )
    assert again.exit_code == 0 and again.output.count(": reused") == 3, again.output


def test_dask_options_need_the_dask_executor(tmp_path: Path) -> None:
    from slidescope.cli import app

    res = CliRunner().invoke(
        app,
        [
            "extract",
            str(tmp_path / "x.svs"),
            "--scheduler",
            "tcp://127.0.0.1:1",
            "--out",
            str(tmp_path / "s"),
        ],
    )
    assert res.exit_code != 0 and "only apply with executor: dask" in str(res.exception or res.output)
