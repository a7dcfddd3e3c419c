"""The bad-input table: every case of the reliability sweep (issue 18) built here, run through the real command line.

For each case the table says what a user must get: the one-line error class (or the correct result), the
exit code, that nothing was deleted that slidescope did not write, and that nothing wrong was cached (a
rerun gives the same verdicts; a failed slide never leaves a complete store; a damaged store is rebuilt, not
reused). The defects' own tests (tests/wsi/test_reader_faults.py, tests/features/test_store_integrity.py,
tests/cli/test_run_reliability.py, tests/wsi/test_tissue_ihc.py, tests/cli/test_dask_defaults.py) go deeper
into each; this module is the one place that shows the whole table at once, as a user meets it.

Slide cases share one ``slidescope extract`` batch (as a user would run a folder), with default options; store
cases run ``export-h5`` (a store consumer) and ``extract`` again on stores damaged in the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import SAMPLE_SLIDE, corrupt_tile, forged_bomb, forged_offsets, write_tiff

from slidescope.features.store import open_store, slide_key, store_path
from slidescope.wsi import make_tile_grid, open_slide

ENCODER = "he-descriptor"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slidescope", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


@dataclass(frozen=True)
class Case:
    name: str  # file name in the batch
    expect: str  # "done" or the slidescope error class
    message: str  # a regular expression the one-line message must match (what is wrong / what to do)


def _ome_zarr(folder: Path) -> None:
    """A minimal OME-Zarr (v0.5 on zarr 3) that someone converted into the stores folder."""
    (folder / "0").mkdir(parents=True)
    (folder / "zarr.json").write_text(
        json.dumps(
            {
                "zarr_format": 3,
                "node_type": "group",
                "attributes": {"ome": {"version": "0.5", "multiscales": [{"datasets": [{"path": "0"}]}]}},
            }
        )
    )
    (folder / "0" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


SLIDE_CASES = [
    Case("good.tiff", "done", ""),
    Case("missing.svs", "SlideNotFoundError", r"no such slide.*Check the path"),
    Case("empty.svs", "UnsupportedSlideError", r"empty|0 bytes|cannot|not a"),
    Case("text.svs", "UnsupportedSlideError", r"."),
    Case("truncated.tiff", "UnsupportedSlideError|SlideReadError", r"."),
    Case("corrupt-tile.tiff", "SlideReadError", r"Corrupt JPEG data"),
    Case("bomb.tif", "UnsupportedSlideError|InvalidParameterError|SlideReadError", r"SLIDESCOPE_MAX"),
    Case("uint16.tif", "UnsupportedSlideError", r"16-bit.*not corrupt"),
    Case("multiplex.qptiff", "UnsupportedSlideError", r"fluorescence/multiplex"),
    Case("short-offsets.tiff", "done", ""),  # fewer tile offsets than tiles: read as OpenSlide reads it
    Case("dangling.svs", "SlideNotFoundError", r"symbolic link to .*gone.svs, which does not exist"),
    Case("foreign.tiff", "ForeignPathError", r"never deletes|another --out"),
]


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("table")
    slides, stores = root / "slides", root / "stores"
    slides.mkdir()
    shutil.copy(SAMPLE_SLIDE, slides / "good.tiff")
    (slides / "empty.svs").write_bytes(b"")
    (slides / "text.svs").write_text("PGh0bWw+IG5vdCBhIHNsaWRlIDwvaHRtbD4=\n" * 50)
    (slides / "truncated.tiff").write_bytes(SAMPLE_SLIDE.read_bytes()[: SAMPLE_SLIDE.stat().st_size * 2 // 5])
    shutil.copy(SAMPLE_SLIDE, slides / "corrupt-tile.tiff")
    with open_slide(SAMPLE_SLIDE) as slide:
        grid = make_tile_grid(slide, tile_size=224, mpp=0.5)
    x, y = (int(v) for v in grid.coords[len(grid) // 2])
    corrupt_tile(slides / "corrupt-tile.tiff", x // 256, y // 256, "eoi")
    forged_bomb(slides / "bomb.tif", 60000, 60000)
    rng = np.random.default_rng(0)
    write_tiff(
        slides / "uint16.tif", (rng.random((512, 512, 3)) * 60000).astype(np.uint16), photometric="rgb"
    )
    write_tiff(
        slides / "multiplex.qptiff",
        (rng.random((4, 512, 512)) * 200).astype(np.uint8),
        photometric="minisblack",
    )
    forged_offsets(slides / "short-offsets.tiff", 100)
    (slides / "dangling.svs").symlink_to(slides / "gone.svs")
    shutil.copy(SAMPLE_SLIDE, slides / "foreign.tiff")
    foreign = store_path(stores, slide_key(slides / "foreign.tiff"))
    _ome_zarr(foreign)
    before = _digest(foreign)

    args = [str(slides / c.name) for c in SLIDE_CASES]
    first = cli("-q", "extract", *args, "--encoder", ENCODER, "--out", str(stores))
    second = cli("-q", "extract", *args, "--encoder", ENCODER, "--out", str(stores))
    return {
        "slides": slides,
        "stores": stores,
        "first": first,
        "second": second,
        "foreign": foreign,
        "foreign_digest": before,
    }


def _verdict(output: str, name: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith(f"{name}: ")]
    assert len(lines) == 1, f"expected one line for {name}, got {lines}\n{output}"
    return lines[0]


def test_the_batch_exits_1_with_no_traceback(batch) -> None:
    for run in (batch["first"], batch["second"]):
        assert run.returncode == 1, run.stdout + run.stderr
        assert "Traceback" not in run.stdout + run.stderr


@pytest.mark.parametrize("case", SLIDE_CASES, ids=[c.name for c in SLIDE_CASES])
def test_each_slide_gets_its_verdict_and_nothing_wrong_is_cached(batch, case: Case) -> None:
    first = _verdict(batch["first"].stdout, case.name)
    second = _verdict(batch["second"].stdout, case.name)
    if case.expect == "done":
        assert re.match(rf"{re.escape(case.name)}: done", first), first
        assert re.match(rf"{re.escape(case.name)}: (done|reused|skipped)", second), second  # not re-encoded
        store = open_store(
            store_path(batch["stores"], slide_key(batch["slides"] / case.name)), encoder=ENCODER
        )
        assert store.embeddings(ENCODER).shape[0] > 0
        return
    for line in (first, second):  # the same verdict on the rerun: a failure is never cached as a success
        m = re.match(rf"{re.escape(case.name)}: failed \((\w+): (.*)\)$", line)
        assert m, line
        assert re.fullmatch(case.expect, m.group(1)), line
        assert re.search(case.message, m.group(2)), line
    if case.expect != "ForeignPathError":  # a failed slide leaves no store that claims to be complete
        path = store_path(batch["stores"], slide_key(batch["slides"] / case.name))
        if path.exists():
            with pytest.raises(Exception):  # noqa: B017 - any refusal; what matters is that nothing is served
                open_store(path, encoder=ENCODER).embeddings(ENCODER)


def test_foreign_data_in_the_stores_folder_is_untouched(batch) -> None:
    assert _digest(batch["foreign"]) == batch["foreign_digest"]
    assert batch["slides"].joinpath("dangling.svs").is_symlink()  # inputs are never touched either


def test_the_report_counts_every_case(batch) -> None:
    report = json.loads((batch["stores"] / "reports" / "extract-latest.json").read_text())
    done = sum(c.expect == "done" for c in SLIDE_CASES)
    assert report["counts"].get("failed") == len(SLIDE_CASES) - done
    assert sum(report["counts"].values()) == len(SLIDE_CASES)


# -- damaged stores: a consumer refuses them with exit 2; extract rebuilds them instead of reusing them ------


def _damage(store: Path, how: str) -> None:
    features = sorted(p for p in store.rglob("embeddings") if p.is_dir())
    assert features, f"no embeddings array under {store}"
    emb = features[0]
    if how == "missing-chunk":
        chunk = sorted(p for p in (emb / "c").rglob("*") if p.is_file())[0]
        chunk.unlink()  # what a partial rsync or S3 sync leaves
    elif how == "flipped-byte":
        chunk = sorted(p for p in (emb / "c").rglob("*") if p.is_file())[0]
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
    elif how == "edited-dtype":
        meta = json.loads((emb / "zarr.json").read_text())
        meta["data_type"] = "float32" if meta["data_type"] != "float32" else "float16"
        (emb / "zarr.json").write_text(json.dumps(meta))
    elif how == "edited-rows":
        meta = json.loads((emb / "zarr.json").read_text())
        meta["shape"][0] -= 1
        (emb / "zarr.json").write_text(json.dumps(meta))
    elif how == "truncated-metadata":
        text = (emb / "zarr.json").read_text()
        (emb / "zarr.json").write_text(text[: len(text) // 2])
    else:  # pragma: no cover
        raise AssertionError(how)


STORE_CASES = ["missing-chunk", "flipped-byte", "edited-dtype", "edited-rows", "truncated-metadata"]


@pytest.mark.parametrize("how", STORE_CASES)
def test_damaged_store_is_refused_then_rebuilt(batch, tmp_path: Path, how: str) -> None:
    stores = tmp_path / "stores"
    key = slide_key(batch["slides"] / "good.tiff")
    shutil.copytree(store_path(batch["stores"], key), store_path(stores, key))
    reference = open_store(store_path(stores, key), encoder=ENCODER).embeddings(ENCODER)
    _damage(store_path(stores, key), how)

    out = cli("export-h5", str(stores), "--encoder", ENCODER, "--out", str(tmp_path / "h5"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert re.search(r"^error: StoreCorruptError: .*extract", out.stderr, re.M), out.stderr
    assert not list((tmp_path / "h5").glob("*.h5")), "a damaged store was exported"

    again = cli(
        "-q", "extract", str(batch["slides"] / "good.tiff"), "--encoder", ENCODER, "--out", str(stores)
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"good\.tiff: done", again.stdout), again.stdout  # rebuilt, not "reused"
    rebuilt = open_store(store_path(stores, key), encoder=ENCODER).embeddings(ENCODER)
    np.testing.assert_array_equal(rebuilt, reference)
