"""benchmarks/gpu_check.sh -> gpu_check.py, CPU fallback: every row is measured and the files are written.

Runs the prepared GPU command as it is run on a GPU machine (``OUT=... bash benchmarks/gpu_check.sh``),
here with ``--quick`` (a tiny ViT with UNI's config, two small synthetic slides): the same code paths as the
GPU run. No timing is asserted; the rows must all be there with positive rates, and the GPU-decode call must
give the same pixels as the CPU decoder slidescope reads with.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # ~40 s on 2 cores (imports, two small slides written once, 4 extractions)


@pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout"
)
def test_gpu_check_cpu_fallback(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "GPU_CHECK_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--quick", "--budget-s", "600"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = (tmp_path / "gpu_check.log").read_text() if (tmp_path / "gpu_check.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["complete"] is True
    gpu = doc["gpu"]
    assert ("no GPU: CPU fallback" in doc["header"][0]) is not gpu

    rows = {r["row"]: r for r in doc["rows"]}
    threads = os.cpu_count() or 1
    where = "GPU" if gpu else "CPU"
    expected = [
        "model-only, batch 32",
        "model-only, batch 64",
        "end-to-end 20x native, 0 readers",
        "end-to-end 20x native, 2 readers",
        "end-to-end 40x -> 20x, 0 readers",
        "end-to-end 40x -> 20x, 2 readers",
        "JPEG decode, CPU (tifffile/libjpeg-turbo), 1 thread",
        f"JPEG decode, CPU, {threads} threads",
        f"JPEG decode, {where} torchvision.io.decode_jpeg, batch 256",
    ]
    assert [r for r in expected if r not in rows] == [], list(rows)
    for name in expected:
        row = rows[name]
        assert row["rate"] is not None and row["rate"] > 0, row
        assert row["tiles"] > 0, row
        assert "failed" not in row.get("note", "") and "skipped" not in row.get("note", ""), row
        if "ratio_to" in row:
            assert row["ratio"] > 0, row
    # the extraction rows embedded every tile of their grid: 200 native tiles, fewer on the 40x slide's
    assert rows["end-to-end 20x native, 0 readers"]["tiles"] == 200
    assert (
        rows["end-to-end 40x -> 20x, 2 readers"]["tiles"] == rows["end-to-end 40x -> 20x, 0 readers"]["tiles"]
    )
    assert "resized to 256" in rows["end-to-end 40x -> 20x, 0 readers"]["note"]
    # e2e / model-only at extraction's batch: the "how reader-bound" ratio
    model = rows["model-only, batch 32"]["rate"]
    e2e = rows["end-to-end 20x native, 0 readers"]
    assert e2e["ratio"] == pytest.approx(e2e["rate"] / model)
    # torchvision's decode of the spliced file tiles gives the CPU decoder's pixels (libjpeg-turbo on both
    # sides on a CPU; the GPU's nvJPEG may differ by a rounding step)
    note = rows[f"JPEG decode, {where} torchvision.io.decode_jpeg, batch 256"]["note"]
    max_diff = float(note.split("max abs diff ")[1].split(",")[0])
    assert max_diff <= (2 if where == "CPU" else 8), note

    table = (tmp_path / "gpu_check.md").read_text()
    assert table.strip() in proc.stdout
    for name in expected:
        assert f"| {name} |" in table
    assert "slidescope GPU check" in log
