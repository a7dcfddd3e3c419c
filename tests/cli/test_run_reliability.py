"""`slidescope run` reliability (issue 18): a pixel size given on the command line only fills in a missing one
(#3), DICOM-WSI series folders are one slide named after the folder (#5), dangling links are failures,
concurrent runs keep each other's predictions and a full disk is a clear per-slide/per-run error (#15)."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ENCODER = "he-descriptor"


def cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from slidescope.cli import app

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        res = CliRunner().invoke(app, list(args))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The real entry point (``python -m slidescope``'s), in this process: exit code and stderr."""
    from slidescope.cli import main as entry

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(sys, "argv", ["slidescope", *args])
    try:
        with pytest.raises(SystemExit) as exc:
            entry()
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return int(exc.value.code or 0), capsys.readouterr().err


def slide_without_mpp(path: Path, seed: int) -> Path:
    """A synthetic SVS whose description carries no ``MPP`` (the key is renamed in place)."""
    from slidescope.synthetic import make_synthetic_slide

    make_synthetic_slide(path, width=2048, height=1536, mpp=0.499, seed=seed)
    data = path.read_bytes()
    assert data.count(b"|MPP = 0.499") >= 1
    path.write_bytes(data.replace(b"|MPP = 0.499", b"|XYZ = 0.499"))
    return path


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from slidescope.synthetic import make_synthetic_slide

    root = tmp_path_factory.mktemp("reliability_slides")
    out = {}
    for k in range(4):
        out[f"s{k}"] = make_synthetic_slide(
            root / f"s{k}.svs", width=1024, height=768, mpp=0.5, seed=10 + k
        ).path
    out["fine"] = make_synthetic_slide(root / "fine.svs", width=2048, height=1536, mpp=0.499, seed=1).path
    out["nompp"] = slide_without_mpp(root / "nompp.svs", seed=2)
    return out


def base_args(out: Path) -> list[str]:
    return ["--encoder", ENCODER, "--out", str(out), "--num-workers", "0", "--no-heatmaps", "--no-progress"]


# -- #3 --slide-mpp fills in, --force-slide-mpp overrides ---------------------------------------------------


def test_slide_mpp_only_fills_in_a_missing_pixel_size(slides: dict[str, Path], tmp_path: Path) -> None:
    from slidescope.features import open_store
    from slidescope.features.encoders import get_encoder_config

    tile = get_encoder_config(ENCODER).tile_size
    out = tmp_path / "r"
    pair = [str(slides["fine"]), str(slides["nompp"])]
    code, text = cli("run", *pair, *base_args(out), "--slide-mpp", "0.25")
    assert code == 0, text
    by_key = {s["key"]: s for s in json.loads((out / "report.json").read_text())["slides"]}
    fine, nompp = by_key["fine"], by_key["nompp"]
    # the file's 0.499 µm/px wins: a tile covers tile_size level-0 px (not twice as many)
    assert fine["slide_mpp"] == [0.499, 0.499] and fine["mpp_source"].startswith("file metadata")
    assert open_store(out / "stores" / "fine.zarr").tile_extent == (tile, tile)
    # the slide without one gets 0.25: twice as many level-0 px per tile
    assert nompp["slide_mpp"] == [0.25, 0.25] and nompp["mpp_source"] == "filled in (--slide-mpp)"
    assert open_store(out / "stores" / "nompp.zarr").tile_extent == (2 * tile, 2 * tile)
    assert "filled in (--slide-mpp)" in (out / "report.md").read_text()

    # another --slide-mpp redoes only the slide whose pixel size was filled in
    code, text = cli("run", *pair, *base_args(out), "--slide-mpp", "0.3", "--dry-run")
    assert code == 0, text
    assert f"skip   {slides['fine']}" in text and f"do     {slides['nompp']}" in text, text
    assert "filled in as 0.25" in text

    # --force-slide-mpp overrides every slide (and so redoes them), and says so
    code, text = cli("run", *pair, *base_args(out), "--force-slide-mpp", "0.4")
    assert code == 0 and "2 slides done, 0 skipped" in text, text
    by_key = {s["key"]: s for s in json.loads((out / "report.json").read_text())["slides"]}
    assert (
        by_key["fine"]["slide_mpp"] == [0.4, 0.4]
        and by_key["fine"]["mpp_source"] == "forced (--force-slide-mpp)"
    )
    extent = round(tile * 0.5 / 0.4)
    assert open_store(out / "stores" / "fine.zarr").tile_extent == (extent, extent)

    # both at once is ambiguous: refused before any slide
    from slidescope.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="not both"):
        cli("run", *pair, *base_args(out), "--slide-mpp", "0.25", "--force-slide-mpp", "0.25")


def test_open_slide_slide_mpp_is_a_fallback(slides: dict[str, Path]) -> None:
    """The slide-level API under every command's ``--slide-mpp`` (extract, tile, info, heatmap, viewer)."""
    import pickle

    from slidescope.wsi import open_slide

    with open_slide(slides["fine"], slide_mpp=0.25) as s:
        assert s.mpp == (0.499, 0.499) and s.mpp_source.startswith("Aperio")
    with open_slide(slides["nompp"], slide_mpp=0.25) as s:
        assert s.mpp == (0.25, 0.25) and s.mpp_source == "filled in"
        again = pickle.loads(pickle.dumps(s))  # reader workers reopen it with the same fallback
        assert again.mpp == (0.25, 0.25) and again.mpp_source == "filled in"
        again.close()
    with open_slide(slides["fine"], force_slide_mpp=0.25) as s:
        assert s.mpp == (0.25, 0.25) and s.mpp_source == "user"


def test_info_slide_mpp_fills_in_force_overrides(slides: dict[str, Path]) -> None:
    code, text = cli("info", str(slides["fine"]), "--slide-mpp", "0.25")
    assert code == 0 and "0.499" in text, text
    code, text = cli("info", str(slides["fine"]), "--force-slide-mpp", "0.25")
    assert code == 0 and "0.499" not in text and "0.25" in text, text


# -- #5 DICOM-WSI folders ----------------------------------------------------------------------------------


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_dicom_folders_expand_to_one_slide_each(tmp_path: Path) -> None:
    """Expansion and naming only look at names: the ``.dcm`` files here are empty (no DICOM WSI fixture in
    shared/data, and neither pydicom nor wsidicom is installed to write one)."""
    from slidescope.features.store import slide_key, store_path
    from slidescope.pipeline._slide import record_path
    from slidescope.wsi import expand_slides

    series = tmp_path / "case.01"
    _touch(*(series / f"level{k}.dcm" for k in range(3)))
    assert expand_slides([series]) == [series]  # a series folder is one slide
    # named after the folder, whether the folder or one of its files is given (open_slide hands the
    # extraction its first .dcm file): run's record and store and extract's store are the same names
    assert slide_key(series) == slide_key(series / "level0.dcm") == "case.01"
    assert store_path(tmp_path / "st", series) == store_path(tmp_path / "st", series / "level0.dcm")
    assert record_path(tmp_path, series).name == "case.01.json"
    # a finished series is recognised by a rerun: its files' sizes and times, and the fingerprint of the file
    # its store records (the one open_slide opens)
    from slidescope.features.store import slide_fingerprint
    from slidescope.pipeline._slide import _fingerprint, file_stat

    assert file_stat(series) == [0, max(p.stat().st_mtime_ns for p in series.iterdir()), 3]
    assert _fingerprint(series) == slide_fingerprint(series / "level0.dcm")
    # a glob over the files of one series is one slide too
    assert expand_slides([str(series / "*.dcm")]) == [series / "level0.dcm"]

    batch = tmp_path / "batch"
    _touch(
        batch / "a.svs",
        batch / "b.ndpi",
        batch / "loose1.dcm",
        batch / "loose2.dcm",
        batch / "sub1" / "x.dcm",
        batch / "sub2" / "y.dcm",
        batch / "notes.txt",
        batch / "empty" / "z.txt",
    )
    found = expand_slides([batch])
    assert found == [batch / "a.svs", batch / "b.ndpi", batch / "loose1.dcm", batch / "sub1", batch / "sub2"]
    assert [slide_key(p) for p in found] == ["a", "b", "batch", "sub1", "sub2"]


# -- #15 dangling links, concurrent runs, a full disk --------------------------------------------------------


def test_dangling_links_and_loops_are_reported_failures(slides: dict[str, Path], tmp_path: Path) -> None:
    from slidescope.wsi import expand_slides

    folder = tmp_path / "slides"
    folder.mkdir()
    os.symlink(slides["s0"], folder / "good.svs")
    os.symlink(tmp_path / "gone.svs", folder / "dangling.svs")
    os.symlink(folder / "loop_b.svs", folder / "loop_a.svs")
    os.symlink(folder / "loop_a.svs", folder / "loop_b.svs")
    assert [p.name for p in expand_slides([folder])] == [
        "dangling.svs",
        "good.svs",
        "loop_a.svs",
        "loop_b.svs",
    ]

    out = tmp_path / "r"
    code, text = cli("run", str(folder), *base_args(out))
    assert code == 1, text
    by_key = {s["key"]: s for s in json.loads((out / "report.json").read_text())["slides"]}
    assert by_key["good"]["status"] == "done"
    assert by_key["dangling"]["error_class"] == "SlideNotFoundError"
    assert (
        "symbolic link to" in by_key["dangling"]["error_message"]
        and "gone.svs" in by_key["dangling"]["error_message"]
    )
    for key in ("loop_a", "loop_b"):
        assert by_key[key]["status"] == "failed" and "symbolic link loop" in by_key[key]["error_message"]


def test_runs_sharing_a_folder_keep_each_others_predictions(slides: dict[str, Path], tmp_path: Path) -> None:
    """Two runs on the two halves of a cohort, into one results folder: the table has every slide, whichever
    run finished last (each rebuilds it from all finished records, under a lock)."""
    out = tmp_path / "r"
    first, second = [str(slides["s0"]), str(slides["s1"])], [str(slides["s2"]), str(slides["s3"])]
    assert cli("run", *first, *base_args(out))[0] == 0
    assert cli("run", *second, *base_args(out))[0] == 0
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["slide"] for r in rows] == ["s2", "s3", "s0", "s1"]  # this run's, then the others by name
    assert all(int(r["n_tiles"]) > 0 for r in rows)
    # a rerun of the first half gives the same four rows
    assert cli("run", *first, *base_args(out))[0] == 0
    with open(out / "predictions.csv", newline="") as fh:
        assert sorted(r["slide"] for r in csv.DictReader(fh)) == ["s0", "s1", "s2", "s3"]


def test_two_concurrent_runs_on_one_folder(slides: dict[str, Path], tmp_path: Path) -> None:
    """Two real ``slidescope run`` processes at the same time on the two halves, into one results folder."""
    out = tmp_path / "r"
    halves = [[str(slides["s0"]), str(slides["s1"])], [str(slides["s2"]), str(slides["s3"])]]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "slidescope", "run", *half, *base_args(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for half in halves
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    with open(out / "predictions.csv", newline="") as fh:
        assert sorted(r["slide"] for r in csv.DictReader(fh)) == ["s0", "s1", "s2", "s3"]


def test_predictions_rewrite_waits_for_the_folder_lock(tmp_path: Path) -> None:
    """While another process holds the results folder's lock, rebuilding predictions.csv waits for it."""
    from slidescope.pipeline._report import write_predictions

    out = tmp_path / "r"
    (out / "slides").mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.readline()",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        writer = threading.Thread(target=write_predictions, args=(out, [], {"encoder": ENCODER}))
        writer.start()
        writer.join(timeout=2)
        assert writer.is_alive() and not (out / "predictions.csv").exists()  # waiting for the lock
        holder.communicate("\n", timeout=30)
        writer.join(timeout=30)
        assert not writer.is_alive() and (out / "predictions.csv").is_file()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def _full_disk(monkeypatch: pytest.MonkeyPatch, under: Path) -> None:
    """``Path.write_text`` raises ENOSPC for every file under ``under`` (the outputs, the records, the report)."""
    real = Path.write_text

    def write_text(self: Path, *args, **kwargs):
        if str(self).startswith(str(under)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def test_full_disk_on_a_slide_output_fails_that_slide(
    slides: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "r"
    _full_disk(monkeypatch, out / "tissue" / ".s0.")  # only s0's tissue GeoJSON
    code, text = cli("run", str(slides["s0"]), str(slides["s1"]), *base_args(out))
    assert code == 1, text
    by_key = {s["key"]: s for s in json.loads((out / "report.json").read_text())["slides"]}
    assert by_key["s1"]["status"] == "done"
    s0 = by_key["s0"]
    assert s0["status"] == "failed" and s0["error_class"] == "DiskFullError", s0
    assert "no space left" in s0["error_message"] and "run the same command again" in s0["error_message"]


def test_full_disk_everywhere_stops_with_one_clear_line(
    slides: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "r"
    out.mkdir()
    _full_disk(monkeypatch, out)  # nothing can be written: outputs, records, report
    code, err = main(monkeypatch, capsys, "run", str(slides["s0"]), *base_args(out))
    assert code == 2, err
    assert "DiskFullError" in err and "no space left" in err and "Traceback" not in err
