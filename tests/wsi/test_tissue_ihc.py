"""Pen removal on IHC slides (issue 18, defect 6): the ``pen`` option (on / off / auto) of tissue detection.

The blued haematoxylin counterstain of an IHC slide is blue with red absorbed most, which the pen rules
take for blue ink: on a section that fills the field, pen removal used to leave 0 % tissue. ``pen="auto"``
(the default) turns pen removal off when the slide looks like IHC (DAB-brown in the tissue), and keeps it
on H&E, where a real marker stroke must still go.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from slidescope.errors import InvalidParameterError
from slidescope.synthetic import make_synthetic_ihc_slide, make_synthetic_slide
from slidescope.wsi import open_slide
from slidescope.wsi._tissue import DAB_IHC_FRACTION, detect_tissue, pen_hint, tissue_mask_from_rgb

MPP = 8.0  # µm/px of the crafted images (the default mask resolution)
# unit optical densities (log10) per R, G, B: Ruifrok H&E, and marker inks
OD_HAEM = np.array([0.65, 0.70, 0.29])
OD_EOSIN = np.array([0.07, 0.99, 0.11])
OD_BLUE_INK = np.array([0.90, 0.60, 0.15])
OD_GREEN_INK = np.array([0.80, 0.25, 0.70])


@pytest.fixture(scope="module")
def ihc(tmp_path_factory: pytest.TempPathFactory):
    """2048 x 1536 px at 0.5 µm/px: blue counterstain over the whole field, brown DAB patches."""
    return make_synthetic_ihc_slide(tmp_path_factory.mktemp("ihc") / "ihc.tiff", seed=3)


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_ihc_slide_keeps_its_tissue_unless_pen_removal_is_forced(ihc, backend: str) -> None:
    slide = open_slide(ihc.path, backend=backend)
    assert 0.05 < ihc.dab_mask.mean() < 0.6  # brown patches, and a lot of blue counterstain around them
    default = detect_tissue(slide)  # pen="auto"
    off = detect_tissue(slide, pen="off")
    on = detect_tissue(slide, pen="on")
    # the whole field is tissue: auto and off keep (nearly) all of it, forced pen removal loses it
    assert default.tissue_fraction >= 0.9 and off.tissue_fraction >= 0.9
    assert on.tissue_fraction < 0.1  # what every IHC slide got before the option existed
    assert default.params["pen"] == "auto" and default.params["pen_used"] == "off"
    assert default.params["dab_fraction"] >= DAB_IHC_FRACTION
    assert on.params["pen_used"] == "on" and on.params["pen_removed_fraction"] > 0.5
    # the error advice: only where pen removal took most of the candidate
    assert "--pen off" in pen_hint(on) and pen_hint(default) == "" and pen_hint(off) == ""


def _stroke(
    shape: tuple[int, int], p0: tuple[float, float], p1: tuple[float, float], width: float
) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    (y0, x0), (y1, x1) = p0, p1
    d = np.array([y1 - y0, x1 - x0])
    t = np.clip(((yy - y0) * d[0] + (xx - x0) * d[1]) / (d @ d), 0, 1)
    return np.hypot(yy - (y0 + t * d[0]), xx - (x0 + t * d[1])) <= width / 2


def test_he_with_blue_and_green_marker_still_loses_the_ink_under_auto() -> None:
    rng = np.random.default_rng(21)
    shape = (240, 320)
    yy, xx = np.mgrid[0:240, 0:320]
    truth = (np.hypot(yy - 120, xx - 110) < 80) | (np.hypot(yy - 130, xx - 240) < 60)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    field = (field - field.min()) / np.ptp(field)
    od = ((0.2 + 0.5 * field)[..., None] * OD_HAEM + 0.4 * OD_EOSIN) * truth[..., None]
    blue = _stroke(shape, (20, 10), (110, 310), 20)  # over tissue and glass
    green = _stroke(shape, (230, 100), (150, 315), 20)
    for ink, vec in ((blue, OD_BLUE_INK), (green, OD_GREEN_INK)):
        od = od + ndimage.gaussian_filter(ink.astype(float), 0.7)[..., None] * vec
    glass = np.array([236.0, 237.0, 240.0]) + rng.normal(0.0, 1.5, (*shape, 3))
    rgb = np.clip(np.rint(glass * 10.0 ** (-od)), 0, 255).astype(np.uint8)

    auto = tissue_mask_from_rgb(rgb, mpp=MPP)
    assert np.array_equal(auto, tissue_mask_from_rgb(rgb, mpp=MPP, pen="on"))  # H&E: auto is "on"
    for name, ink in (("blue", blue), ("green", green)):
        core = ndimage.binary_erosion(ink, iterations=2)
        assert (core & ~truth).sum() > 50 and (core & truth).sum() > 50
        assert auto[core].mean() < 0.01, f"{name} marker taken for tissue"
    away = truth & ~ndimage.binary_dilation(blue | green, iterations=3)
    assert auto[away].mean() > 0.97
    # pen="off" keeps the ink on the glass as "tissue": the option is what removes it
    off = tissue_mask_from_rgb(rgb, mpp=MPP, pen="off")
    assert off[blue & ~truth].mean() > 0.5


def test_he_slides_keep_pen_removal_under_auto(tmp_path: Path, cmu_small: Path) -> None:
    synthetic = make_synthetic_slide(tmp_path / "he.svs", width=3072, height=2304, seed=4)
    for path in (synthetic.path, cmu_small):
        tm = detect_tissue(open_slide(path))
        assert tm.params["pen_used"] == "on", (path.name, tm.params)
        assert tm.params["dab_fraction"] < DAB_IHC_FRACTION / 10, (path.name, tm.params["dab_fraction"])
        assert tm.tissue_fraction > 0.2


def test_pen_option_is_checked_and_remove_pen_still_works(ihc) -> None:
    slide = open_slide(ihc.path)
    with pytest.raises(InvalidParameterError, match="pen must be one of on, off, auto"):
        detect_tissue(slide, pen="yes")
    with pytest.raises(InvalidParameterError, match="pen must be one of"):
        tissue_mask_from_rgb(np.full((8, 8, 3), 200, np.uint8), mpp=MPP, pen=True)  # type: ignore[arg-type]
    # the older bool spelling maps onto on / off
    assert detect_tissue(slide, remove_pen=True).params["pen_used"] == "on"
    assert detect_tissue(slide, remove_pen=False).params["pen_used"] == "off"


def _cli(*args: str):
    from slidescope.cli import app

    return CliRunner().invoke(app, list(args))


def test_tile_command_on_ihc(ihc, tmp_path: Path) -> None:
    ok = _cli("tile", str(ihc.path), "--out", str(tmp_path / "auto"))
    assert ok.exit_code == 0, ok.output
    rows = (tmp_path / "auto" / "tiles.csv").read_text().splitlines()[1:]
    assert len(rows) >= 0.9 * (2048 // 224) * (1536 // 224)  # the field is tissue: (nearly) every tile
    forced = _cli("tile", str(ihc.path), "--pen", "on", "--out", str(tmp_path / "on"))
    assert forced.exit_code != 0
    message = str(forced.exception) + forced.output
    assert "no tissue was found" in message and "--pen off" in message


def test_run_pen_option_in_config_signature_and_results(ihc, tmp_path: Path) -> None:
    import slidescope as ss
    from slidescope.pipeline import RunConfig, result_signature

    sig = {
        p: result_signature(RunConfig(out="x", encoder="he-descriptor", pen=p)) for p in ("auto", "on", "off")
    }
    assert len({json.dumps(s, sort_keys=True) for s in sig.values()}) == 3  # changing pen redoes the slides
    with pytest.raises(InvalidParameterError, match="pen must be one of auto, on, off"):
        ss.run([ihc.path], out=tmp_path / "bad", encoder="he-descriptor", pen="maybe", progress=False)

    out = tmp_path / "run"
    forced = ss.run([ihc.path], out=out, encoder="he-descriptor", pen="on", num_workers=0, progress=False)
    (o,) = forced.outcomes
    assert o.status == "failed" and o.error_class == "EmptyTissueError" and "--pen off" in o.error_message
    again = ss.run(
        [ihc.path], out=out, encoder="he-descriptor", num_workers=0, progress=False
    )  # default auto
    (o,) = again.outcomes
    assert again.exit_code == 0 and o.status == "done", (o.status, o.error_message)
    assert o.n_tiles >= 0.9 * (2048 // 224) * (1536 // 224) and o.tissue_mm2 > 0.9 * (2048 * 1536 * 0.25e-6)
    # a finished slide is redone when pen changes (here to the same tiles: the embeddings are reused), then skipped
    (o,) = ss.run(
        [ihc.path], out=out, encoder="he-descriptor", pen="off", num_workers=0, progress=False
    ).outcomes
    assert o.status == "done"
    (o,) = ss.run(
        [ihc.path], out=out, encoder="he-descriptor", pen="off", num_workers=0, progress=False
    ).outcomes
    assert o.status == "skipped"
