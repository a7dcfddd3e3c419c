"""Fluorescence stored as 8-bit RGB (issue 14, item 3): a dark background is refused at tissue detection.

Both directions: a synthetic dark-field image (black background, blue nuclei, green and red signal, written
with tifffile) is refused with the fluorescence message and never told its tissue may be "pale"; the real
H&E slides, synthetic H&E and IHC slides and an H&E slide with black ink are never refused, with the margin
to the rule stated. The slide still opens (the napari viewer shows it); ``allow_darkfield`` /
``SLIDESCOPE_ALLOW_DARKFIELD`` is the way out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slidescope.errors import UnsupportedSlideError
from slidescope.synthetic import make_artefact_slide, make_synthetic_ihc_slide, make_synthetic_slide
from slidescope.wsi import make_tile_grid, open_slide
from slidescope.wsi._darkfield import (
    ALLOW_ENV,
    DARK_FRACTION,
    LIGHT_FRACTION,
    MIDTONE_FRACTION,
    darkfield_stats,
    is_darkfield,
)
from slidescope.wsi._downsample import read_downsampled
from slidescope.wsi._tissue import detect_tissue


def write_rgb_pyramid(path: Path, rgb: np.ndarray, mpp: float, levels: int = 3) -> Path:
    """``rgb`` as an Aperio-style tiled JPEG pyramid (downsample 2 per level) with its pixel size."""
    import tifffile
    from PIL import Image

    h, w = rgb.shape[:2]
    desc = f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90|MPP = {mpp}"
    with tifffile.TiffWriter(path) as tw:
        for level in range(levels):
            img = rgb if level == 0 else np.asarray(Image.fromarray(rgb).reduce(2**level))
            tw.write(
                img,
                photometric="rgb",
                tile=(256, 256),
                compression="jpeg",
                compressionargs={"level": 95},
                description=desc if level == 0 else None,
                metadata=None,
            )
    return path


def darkfield_rgb(height: int = 1536, width: int = 2048, seed: int = 0, full: bool = False) -> np.ndarray:
    """A fluorescence composite as 8-bit RGB: near-black background with faint autofluorescence, an
    elliptic section (``full``: the whole field) whose nuclei are blue (DAPI), with green and red marker
    signal around some of them."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 12, (height, width, 3)).astype(np.float32)  # camera noise on black
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    section = ((xx - width * 0.45) / (width * 0.3)) ** 2 + ((yy - height * 0.5) / (height * 0.35)) ** 2 < 1
    if full:
        section[12:-12, 12:-12] = True
    img[section] += (14, 18, 10)  # autofluorescence of the tissue: still dark
    ys, xs = np.nonzero(section[::24, ::24])
    for k, (cy, cx) in enumerate(zip(ys * 24 + 12, xs * 24 + 12, strict=True)):
        nucleus = (yy[cy - 12 : cy + 12, cx - 12 : cx + 12] - cy) ** 2 + (
            xx[cy - 12 : cy + 12, cx - 12 : cx + 12] - cx
        ) ** 2
        img[cy - 12 : cy + 12, cx - 12 : cx + 12, 2][nucleus < 36] = 220  # DAPI
        marker = (nucleus >= 36) & (nucleus < 100)
        if k % 3 == 0:
            img[cy - 12 : cy + 12, cx - 12 : cx + 12, 1][marker] = 200  # a green membrane marker
        elif k % 5 == 0:
            img[cy - 12 : cy + 12, cx - 12 : cx + 12, 0][marker] = 230  # a red one
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def darkfield_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dark") / "fluo_rgb.svs"
    return write_rgb_pyramid(path, darkfield_rgb(), mpp=0.5)


def _coarse_stats(path: Path, mpp: float = 32.0) -> dict[str, float]:
    """The statistics on the image the check reads (default mask 8 µm/px, 4x coarser)."""
    with open_slide(path, slide_mpp=0.5) as slide:
        w0, h0 = slide.dimensions
        ds = mpp / slide.mpp[0]
        size = (max(1, round(w0 / ds)), max(1, round(h0 / ds)))
        return darkfield_stats(read_downsampled(slide, slide.best_level_for_mpp(mpp), size))


def _tissue_fraction(path: Path) -> float:
    with open_slide(path) as slide:
        return detect_tissue(slide).tissue_fraction


def test_darkfield_rgb_is_refused_as_fluorescence_never_pale(darkfield_slide: Path) -> None:
    stats = _coarse_stats(darkfield_slide)
    assert stats["dark_fraction"] > 0.6 and stats["light_fraction"] == 0.0 and is_darkfield(stats)
    with open_slide(darkfield_slide) as slide:  # opening (and viewing) it is fine
        for call in (lambda: detect_tissue(slide), lambda: make_tile_grid(slide, mpp=0.5, tile_size=256)):
            with pytest.raises(UnsupportedSlideError) as info:
                call()
            message = str(info.value)
            assert message.startswith("fluo_rgb.svs looks like a fluorescence image stored as 8-bit RGB")
            assert "pale" not in message and "\n" not in message
            assert "allow_darkfield=True" in message and ALLOW_ENV in message


def test_signal_over_the_whole_field_is_refused_too(tmp_path: Path) -> None:
    """No black background left (a crop inside the section): nothing reaches a mid-tone."""
    path = write_rgb_pyramid(tmp_path / "crop.svs", darkfield_rgb(full=True), mpp=0.5)
    stats = _coarse_stats(path)
    assert stats["dark_fraction"] < DARK_FRACTION and stats["midtone_fraction"] < MIDTONE_FRACTION
    with pytest.raises(UnsupportedSlideError, match="fluorescence image stored as 8-bit RGB"):
        _tissue_fraction(path)


def test_the_way_out_analyses_it_anyway(darkfield_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_slide(darkfield_slide) as slide:
        forced = detect_tissue(slide, allow_darkfield=True)
        assert forced.mask.shape == (96, 128)  # 2048 x 1536 px at 0.5 µm, mask at 8 µm
        monkeypatch.setenv(ALLOW_ENV, "1")
        assert np.array_equal(detect_tissue(slide).mask, forced.mask)
        monkeypatch.setenv(ALLOW_ENV, "0")
        with pytest.raises(UnsupportedSlideError):
            detect_tissue(slide)


def test_real_brightfield_slides_are_never_refused(cmu_small: Path, ome_detail: Path) -> None:
    """The real H&E scans: 0 % near-black (rule: >= 50 %), >= 40 % light (rule: < 5 %), >= 90 % mid-tone
    (rule: < 1 %)."""
    for path in (cmu_small, ome_detail):
        for mpp in (8.0, 32.0):
            stats = _coarse_stats(path, mpp)
            assert not is_darkfield(stats)
            assert stats["dark_fraction"] <= 0.001 and stats["light_fraction"] >= 0.4
            assert stats["midtone_fraction"] >= 0.9
        assert _tissue_fraction(path) > 0.05  # no error


def test_synthetic_brightfield_slides_are_never_refused(tmp_path: Path) -> None:
    """H&E, IHC (blue counterstain over the whole field) and H&E with black ink strokes."""
    slides = [
        make_synthetic_slide(tmp_path / "he.svs", width=4096, height=3072).path,
        make_synthetic_ihc_slide(tmp_path / "ihc.tiff").path,
        make_artefact_slide(tmp_path / "ink.tiff", per_kind=3).path,
    ]
    for path in slides:
        stats = _coarse_stats(path)
        assert stats["dark_fraction"] <= 0.001 and stats["midtone_fraction"] >= 0.7, (path.name, stats)
        assert _tissue_fraction(path) > 0.05


def test_black_fill_around_a_brightfield_scan_is_not_darkfield(cmu_small: Path) -> None:
    """Some scanners fill the unscanned area black: 70 % black around a real H&E scan keeps its glass."""
    with open_slide(cmu_small) as slide:
        rgb = read_downsampled(slide, 0, (69, 93))
    h, w = rgb.shape[:2]
    filled = np.zeros((h * 2, int(w * 2.4), 3), np.uint8)
    filled[:h, :w] = rgb
    stats = darkfield_stats(filled)
    assert stats["dark_fraction"] >= 0.7 and stats["light_fraction"] > 2 * LIGHT_FRACTION
    assert not is_darkfield(stats)


def test_a_batch_goes_on_past_a_darkfield_slide(darkfield_slide: Path, tmp_path: Path) -> None:
    from slidescope.features.extract import extract_slides

    sample = Path(__file__).resolve().parents[2] / "sample_data" / "sample_slide.tiff"
    results = extract_slides(
        [darkfield_slide, sample],
        "he-descriptor",
        store=tmp_path / "s",
        device="cpu",
        num_workers=0,
        progress=False,
    )
    assert [r.status for r in results][0] == "failed" and results[1].status != "failed"
    error = results[0].error or ""
    assert "fluorescence image stored as 8-bit RGB" in error and "pale" not in error


def test_the_way_out_on_the_command_line(darkfield_slide: Path, tmp_path: Path, monkeypatch) -> None:
    """``--allow-darkfield`` on extract (and tile, info --qc): the option, not only the environment variable."""
    from typer.testing import CliRunner

    from slidescope.cli import app
    from slidescope.features.store import open_store, store_path

    monkeypatch.delenv(ALLOW_ENV, raising=False)
    common = ["extract", str(darkfield_slide), "--encoder", "he-descriptor", "--device", "cpu"]
    common += ["--num-workers", "0", "--min-tissue", "0"]
    refused = CliRunner().invoke(app, [*common, "--stores", str(tmp_path / "a")])
    assert "fluorescence image stored as 8-bit RGB" in refused.output + str(refused.exception)
    assert not store_path(tmp_path / "a", darkfield_slide).exists()
    allowed = CliRunner().invoke(app, [*common, "--stores", str(tmp_path / "b"), "--allow-darkfield"])
    assert allowed.exit_code == 0, allowed.output
    assert open_store(store_path(tmp_path / "b", darkfield_slide)).n_tiles > 0
    tile = ["tile", str(darkfield_slide), "--out", str(tmp_path / "t"), "--min-tissue", "0"]
    refused = CliRunner().invoke(app, tile)
    assert refused.exit_code != 0 and "fluorescence" in refused.output + str(refused.exception)
    tiled = CliRunner().invoke(app, [*tile, "--allow-darkfield"])
    assert tiled.exit_code == 0, tiled.output
    info = CliRunner().invoke(app, ["info", str(darkfield_slide), "--qc", "--json", "--allow-darkfield"])
    assert info.exit_code == 0, info.output
