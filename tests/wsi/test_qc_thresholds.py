"""QC thresholds set by the user (``qc_tiles(thresholds=)``, ``--qc-thresholds``): checked, applied to the
flags, recorded with the stored QC and in the cache key of ``exclude``, and used again by what reads the store
(export-qc, the viewer's flags)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slidescope.errors import InvalidParameterError
from slidescope.synthetic import make_artefact_slide
from slidescope.wsi import (
    SETTABLE_THRESHOLDS,
    check_qc_thresholds,
    detect_tissue,
    make_tile_grid,
    open_slide,
    qc_flags,
    qc_tiles,
)
from slidescope.wsi._qc import THRESHOLDS


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    return make_artefact_slide(tmp_path_factory.mktemp("qct") / "artefacts.tiff", seed=3)


def test_thresholds_are_checked() -> None:
    assert check_qc_thresholds(None) == check_qc_thresholds("") == {}
    assert check_qc_thresholds(" focus_min = 40 ,pen_max=0.05") == {"focus_min": 40.0, "pen_max": 0.05}
    assert check_qc_thresholds({"fold_ratio": 2}) == {"fold_ratio": 2.0}
    assert set(SETTABLE_THRESHOLDS) == (set(THRESHOLDS) - {"dark_luminance", "bright_margin"}) | {
        "artefact_max"
    }
    for bad, words in [
        ("focus=40", "unknown QC threshold 'focus'"),
        ("dark_luminance=20", "acts while the tiles are measured"),
        ("focus_min", "name=value pairs"),
        ("focus_min=abc", "must be a number"),
        ("pen_max=-1", ">= 0"),
        ("fold_ratio=0", "fold_ratio > 0"),
        ("focus_min=nan", "finite"),
        (3, "a dict or"),
    ]:
        with pytest.raises(InvalidParameterError, match=words):
            check_qc_thresholds(bad)


def test_thresholds_change_flags_summary_and_exclude_key(artefacts) -> None:
    with open_slide(artefacts.path) as slide:
        mask = detect_tissue(slide)
        grid = make_tile_grid(slide, tile_size=artefacts.cell, mpp=artefacts.mpp, mask=mask)
        default = qc_tiles(slide, grid, "flag", mask=mask)
        strict = qc_tiles(slide, grid, "flag", mask=mask, thresholds="focus_min=1e9")
        kept = qc_tiles(slide, grid, "exclude", mask=mask)
        lenient = qc_tiles(slide, grid, "exclude", mask=mask, thresholds={"focus_min": 0, "pen_max": 1})
    # the same measures, other flags: every tile is "blurred" under an impossible focus_min
    assert np.array_equal(default.qc["focus"], strict.qc["focus"])
    assert (
        strict.qc_summary["flagged_fraction"]["blur"] == 1.0 > default.qc_summary["flagged_fraction"]["blur"]
    )
    assert strict.qc_summary["thresholds"] == {"focus_min": 1e9} and "thresholds" not in default.qc_summary
    assert strict.qc_thresholds == {"focus_min": 1e9} and default.qc_thresholds == {}
    # exclude: blurred and inked tiles stay when their checks are switched off; the cache key says so
    assert len(lenient) > len(kept)
    blur_or_pen = qc_flags(default.qc)["blur"] | qc_flags(default.qc)["pen"]
    assert blur_or_pen.sum() > 0
    assert kept.to_dict()["qc"]["thresholds"] == THRESHOLDS  # no override: the key is what it was
    assert lenient.to_dict()["qc"]["thresholds"] == {**THRESHOLDS, "focus_min": 0.0, "pen_max": 1.0}
    assert kept.to_dict() != lenient.to_dict()


def test_a_grid_with_qc_takes_other_thresholds_from_its_measures(artefacts) -> None:
    """qc_tiles on a QCGrid again: other thresholds are applied (they were ignored before), equal to QC of the
    plain grid with them, without reading; an exclude grid refuses them (its dropped tiles are gone)."""
    from slidescope.wsi import finish_qc

    with open_slide(artefacts.path) as slide:
        mask = detect_tissue(slide)
        grid = make_tile_grid(slide, tile_size=artefacts.cell, mpp=artefacts.mpp, mask=mask)
        default = qc_tiles(slide, grid, "flag", mask=mask)
        fresh_strict = qc_tiles(slide, grid, "flag", mask=mask, thresholds="focus_min=1e9")
        fresh_exclude = qc_tiles(slide, grid, "exclude", mask=mask, thresholds="pen_max=1")
        deferred = qc_tiles(slide, grid, "flag", mask=mask, defer=True)
        kept = qc_tiles(slide, grid, "exclude", mask=mask)
        finished = finish_qc(slide, qc_tiles(slide, deferred, "flag", thresholds="focus_min=1e9"))
    # the slide is closed: what follows reads nothing
    assert (
        qc_tiles(slide, default, "flag") is default and qc_tiles(slide, fresh_strict, "flag") is fresh_strict
    )
    again = qc_tiles(slide, default, "flag", thresholds="focus_min=1e9")
    assert again.qc_thresholds == {"focus_min": 1e9}
    assert again.qc_summary == fresh_strict.qc_summary
    for name in fresh_strict.qc:
        np.testing.assert_array_equal(again.qc[name], fresh_strict.qc[name])
    excluded = qc_tiles(slide, default, "exclude", thresholds="pen_max=1")
    assert (
        np.array_equal(excluded.coords, fresh_exclude.coords)
        and excluded.to_dict() == fresh_exclude.to_dict()
    )
    assert excluded.qc_summary == fresh_exclude.qc_summary
    # a deferred grid takes the new thresholds and applies them when its QC is completed
    assert finished.qc_summary == fresh_strict.qc_summary
    with pytest.raises(InvalidParameterError, match="already dropped its flagged tiles"):
        qc_tiles(slide, kept, "exclude", thresholds="focus_min=1")
    assert qc_tiles(slide, kept, "exclude") is kept


def test_cli_records_thresholds_and_export_uses_them(artefacts, tmp_path) -> None:
    from typer.testing import CliRunner

    from slidescope.cli import app
    from slidescope.features.store import open_store, read_qc_thresholds, store_path
    from slidescope.viewer._results import store_qc_flags

    common = [
        "extract",
        str(artefacts.path),
        "--encoder",
        "he-descriptor",
        "--device",
        "cpu",
        "--num-workers",
        "0",
    ]
    common += ["--tile-size", str(artefacts.cell), "--mpp", str(artefacts.mpp), "--qc", "flag"]
    res = CliRunner().invoke(
        app, [*common, "--stores", str(tmp_path / "st"), "--qc-thresholds", "focus_min=1e9"]
    )
    assert res.exit_code == 0, res.output
    store = open_store(store_path(tmp_path / "st", artefacts.path))
    assert (
        read_qc_thresholds(store)["focus_min"] == 1e9
        and read_qc_thresholds(store)["pen_max"] == THRESHOLDS["pen_max"]
    )
    assert store_qc_flags(store)["blur"].all()  # the viewer flags with the stored thresholds
    out = tmp_path / "qc"
    run = CliRunner().invoke(app, ["export-qc", str(tmp_path / "st"), "--out", str(out)])
    assert run.exit_code == 0, run.output
    (path,) = out.glob("*.qc.geojson")
    assert len(json.loads(path.read_text())["features"]) == store.n_tiles  # every tile is flagged blur
    # no --qc-thresholds: the defaults, recorded
    res = CliRunner().invoke(app, [*common, "--stores", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    plain = open_store(store_path(tmp_path / "d", artefacts.path))
    assert read_qc_thresholds(plain)["focus_min"] == THRESHOLDS["focus_min"]
    assert not store_qc_flags(plain)["blur"].all()
    # a store written before the thresholds were recorded: the defaults
    (qc_meta,) = (tmp_path / "d").rglob("qc/zarr.json")
    meta = json.loads(qc_meta.read_text())
    del meta["attributes"]["thresholds"]
    qc_meta.write_text(json.dumps(meta))
    old = open_store(store_path(tmp_path / "d", artefacts.path))
    assert read_qc_thresholds(old) == {}
    assert all(np.array_equal(store_qc_flags(old)[k], v) for k, v in store_qc_flags(plain).items())
    bad = CliRunner().invoke(
        app, [*common, "--stores", str(tmp_path / "x"), "--qc-thresholds", "dark_luminance=3"]
    )
    assert bad.exit_code != 0 and "acts while the tiles are measured" in (bad.output + str(bad.exception))
    assert not (tmp_path / "x").exists()
    info = CliRunner().invoke(
        app, ["info", str(artefacts.path), "--qc", "--json", "--qc-thresholds", "focus_min=1e9"]
    )
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["qc"]["flagged_fraction"]["blur"] == 1.0


def test_run_signature_records_thresholds() -> None:
    from slidescope.pipeline import resolve_config
    from slidescope.pipeline._config import result_signature as run_signature

    _, plain = resolve_config("x.svs", encoder="he-descriptor", out="o", qc="flag", validate=False)
    _, set_ = resolve_config(
        "x.svs", encoder="he-descriptor", out="o", qc="flag", qc_thresholds="focus_min=40"
    )
    assert "qc_thresholds" not in run_signature(plain)["tiling"]
    assert run_signature(set_)["tiling"]["qc_thresholds"] == {"focus_min": 40.0}
    with pytest.raises(InvalidParameterError, match="unknown QC threshold"):
        resolve_config("x.svs", encoder="he-descriptor", out="o", qc="flag", qc_thresholds="blur=1")
