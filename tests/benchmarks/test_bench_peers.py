"""benchmarks/bench_peers.py on the real CMU-1-Small-Region: every arm installed here reads the same tiles,
ours and fastslide's within their stated differences from OpenSlide, and the rows for run_all are formed.
No timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_peers

        yield bench_peers
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_arms_read_the_same_tiles(bench, cmu_small, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(bench, "CACHE", tmp_path)
    plan = bench.grid_file(cmu_small, 0.499)
    tiles = dict(np.load(plan))
    assert len(tiles["l0"]) > 0 and int(tiles["size"]) == 224
    rows = {}
    for arm in ("ours", "ours 1 thread", "openslide", "fastslide+cache", "cucim+cache"):
        if bench.missing(arm):
            continue
        rows[arm] = bench.time_arm(arm, cmu_small, plan)
        assert rows[arm]["n"] == len(tiles["l0"]) and rows[arm]["tiles_s"] > 0
    assert rows["ours"]["diff"] == rows["ours 1 thread"]["diff"] == 0  # OpenSlide's pixels
    if "fastslide+cache" in rows:
        assert rows["fastslide+cache"]["diff"] <= 2  # its JPEG decoder (README, Formats)
    if "cucim+cache" in rows:
        assert rows["cucim+cache"]["diff"] == 0
    result = {"cases": {"CMU small": rows}, "skipped": {}, "rounds": 1}
    got = bench.rows_from(result)
    if "fastslide+cache" in rows or "cucim+cache" in rows:
        assert len(got) == 1 and got[0]["unit"] == "tiles/s" and got[0]["ours"] == rows["ours"]["tiles_s"]


def test_ours_against_the_best_peer_round_by_round(bench) -> None:
    """The ratio run_all prints is the median of ours / the best peer (highest median) within each round."""
    runs = {
        "ours": [{"tiles_s": t, "round": k} for k, t in enumerate([100.0, 90.0, 120.0])],
        "cucim batch": [{"tiles_s": t, "round": k} for k, t in enumerate([50.0, 100.0, 100.0])],
        "cucim+cache": [{"tiles_s": t, "round": k} for k, t in enumerate([80.0, 80.0, 80.0])],
    }
    medians = {a: {"tiles_s": float(np.median([r["tiles_s"] for r in rs])), "n": 7} for a, rs in runs.items()}
    got = bench.round_ratios(runs, medians)
    assert got["peer"] == "cucim batch"  # median 100 against 80
    assert got["per_round"] == [2.0, 0.9, 1.2] and got["median"] == 1.2
    result = {"cases": {"x": {**medians, "ours": {**medians["ours"], "diff": 0}}}, "ratios": {"x": got}}
    (row,) = bench.rows_from(result)
    assert row["ratio"] == 1.2 and "median of 3 per-round ratios (0.90-2.00x)" in row["stage"]
    assert row["ours"] == 100.0 and row["baseline"] == 100.0  # the medians, as before


def test_the_jpeg_dct_arm_reads_within_its_bound_and_gets_its_row(
    bench, cmu_small, tmp_path, monkeypatch
) -> None:
    """``ours jpeg-dct`` (a whole factor: CMU read 448 px, halved) differs from OpenSlide's halved pixels by
    at most the README's bound, and run_all gets a row of its own beside the exact one."""
    monkeypatch.setattr(bench, "CACHE", tmp_path)
    plan = bench.grid_file(cmu_small, 0.998)
    assert [int(v) for v in np.load(plan)["read"]] == [448, 448]
    dct = bench.time_arm("ours jpeg-dct", cmu_small, plan)
    exact = bench.time_arm("ours", cmu_small, plan)
    assert exact["diff"] == 0 and 0 < dct["diff"] <= 24
    medians = {
        "ours": {**exact, "n": exact["n"]},
        "ours jpeg-dct": dct,
        "cucim batch": {"tiles_s": 1.0, "diff": 0, "n": exact["n"]},
    }
    runs = {a: [{"tiles_s": v["tiles_s"], "round": 0}] for a, v in medians.items()}
    result = {
        "cases": {"x": medians},
        "ratios": {"x": bench.round_ratios(runs, medians)},
        "dct_ratios": {"x": bench.round_ratios(runs, medians, "ours jpeg-dct")},
    }
    exact_row, dct_row = bench.rows_from(result)
    assert dct_row["ours"] == dct["tiles_s"] and dct_row["ratio"] == dct["tiles_s"] / 1.0
    assert f"max abs diff vs OpenSlide {dct['diff']}" in dct_row["stage"]
