"""DICOM WSI series made in the test by wsidicomizer (a converter we did not write).

Four series are written in a temporary folder:

- ``lossless``: the real CMU-1-Small-Region.svs through wsidicomizer's default SVS source (opentile), which
  copies the SVS's JPEG tiles into DICOM frames unchanged, so every pixel must equal OpenSlide's read of
  the SVS. opentile needs the system library libturbojpeg (Debian: ``apt-get install libturbojpeg0``);
  without it that test skips.
- ``transcoded``: the same SVS through the tiffslide source, which re-encodes the image (JPEG at
  wsidicomizer's default quality 90, 256 px frames): its pixels equal OpenSlide's read of the same
  series exactly, and the SVS's within the re-encoding bound measured on it (mean absolute difference
  3.2 grey levels, 99th percentile 26, max 119 on sharp edges).
- ``pyramid``: a two-level synthetic SVS (1500x1100 px, 256 px tiles, 0.5 µm/px) through the tiffslide
  source; both levels compared with OpenSlide's read of the same series, edges included. (wsidicomizer's
  ``add_missing_levels`` writes cropped edge frames in the levels it adds, which OpenSlide refuses:
  "Dimensional mismatch reading JPEG"; it is not used.)
- ``no_image_type``: ``pyramid`` with the ImageType attribute deleted from every instance (pydicom), the
  series OpenSlide refuses ("Couldn't get image flavor"): the wsidicom backend reads it.

Measured with wsidicomizer 0.26.1, wsidicom 0.31.0, pydicom 3.0.2, OpenSlide 4.0.1.
wsidicom and wsidicomizer are development dependencies (the ``dicom`` extra for users): without them the
tests skip with the reason, except in CI, where a skip would leave the backend untested.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slidescope.errors import UnsupportedSlideError
from slidescope.wsi import dicom_series_name, open_slide

from realdata import in_ci


def _need_wsidicomizer() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # dicomweb-client's import of old pydicom API
            import wsidicomizer
    except ImportError:
        if in_ci():
            pytest.fail("wsidicom/wsidicomizer are not installed: they are development dependencies")
        pytest.skip(
            "wsidicom and wsidicomizer are not installed (`pip install 'slidescope[dicom]' wsidicomizer`)"
        )
    return wsidicomizer


def _dicomize(svs: Path, out: Path, source: str, **kw: Any) -> Path:
    """Convert ``svs`` to a DICOM WSI series in the folder ``out`` with wsidicomizer."""
    _need_wsidicomizer()
    from wsidicomizer import WsiDicomizer
    from wsidicomizer.wsidicomizer import SourceIdentifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter's own warnings: it only makes the test file
        WsiDicomizer.convert(svs, out, preferred_source=SourceIdentifier(source), workers=1, **kw)
    return out


@pytest.fixture(scope="module")
def lossless(cmu_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dicom") / "CMU-1-lossless"
    try:
        return _dicomize(cmu_small, out, "opentile")
    except FileNotFoundError as err:
        if "turbojpeg" not in str(err):
            raise
        pytest.skip(f"opentile needs libturbojpeg for a lossless conversion ({err})")


@pytest.fixture(scope="module")
def transcoded(cmu_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dicom") / "CMU-1-transcoded"
    return _dicomize(cmu_small, out, "tiffslide", tile_size=256)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slidescope.synthetic import make_synthetic_slide

    root = tmp_path_factory.mktemp("dicom")
    svs = root / "synthetic.svs"
    make_synthetic_slide(svs, width=1500, height=1100, n_levels=2, tile_size=256, mpp=0.5, seed=5)
    return _dicomize(svs, root / "synthetic-pyramid", "tiffslide", tile_size=256)


@pytest.fixture(scope="module")
def no_image_type(pyramid: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import pydicom

    out = tmp_path_factory.mktemp("dicom") / "no-image-type"
    out.mkdir()
    for f in sorted(pyramid.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        del ds.ImageType
        ds.save_as(out / f.name)
    return out


def _openslide_levels(path: Path) -> list[np.ndarray]:
    """Every level of a DICOM series (or the SVS) as OpenSlide decodes it, RGB."""
    import openslide

    target = path if path.suffix == ".svs" else sorted(path.glob("*.dcm"))[0]
    with openslide.OpenSlide(str(target)) as slide:
        return [
            np.asarray(slide.read_region((0, 0), i, size).convert("RGB"))
            for i, size in enumerate(slide.level_dimensions)
        ]


def _whole_levels(slide: Any) -> list[np.ndarray]:
    return [slide.read_region((0, 0), i, size) for i, size in enumerate(slide.level_dimensions)]


def test_lossless_series_opens_like_the_source_svs(lossless: Path, cmu_small: Path) -> None:
    svs_pixels = _openslide_levels(cmu_small)
    with open_slide(cmu_small) as svs:
        expected = (svs.dimensions, svs.level_dimensions, svs.level_downsamples, svs.mpp)
        labels = {name: image.shape for name, image in svs.associated_images.items()}
    one_file = sorted(lossless.glob("*.dcm"))[0]
    for path, backend in ((lossless, "auto"), (lossless, "wsidicom"), (one_file, "wsidicom")):
        with open_slide(path, backend=backend) as slide:
            assert slide.backend == ("openslide" if backend == "auto" else "wsidicom")
            assert (slide.dimensions, slide.level_dimensions, slide.level_downsamples, slide.mpp) == expected
            assert slide.tile_shape(0) == (240, 240)  # the SVS's own tiles, copied
            for got, ref in zip(_whole_levels(slide), svs_pixels, strict=True):
                np.testing.assert_array_equal(got, ref)
            if backend == "wsidicom":
                assert slide.mpp_source == "DICOM PixelSpacing (Pixel Measures)"
                assert labels == {n: image.shape for n, image in slide.associated_images.items()}
    assert dicom_series_name(one_file) == dicom_series_name(lossless) == "CMU-1-lossless"


def test_transcoded_series_equals_openslide_and_the_svs_within_jpeg_bound(
    transcoded: Path, cmu_small: Path
) -> None:
    reference = _openslide_levels(transcoded)
    with open_slide(transcoded, backend="wsidicom") as slide:
        assert slide.level_dimensions == ((2220, 2967),) and slide.mpp == (0.499, 0.499)
        got = _whole_levels(slide)[0]
    np.testing.assert_array_equal(got, reference[0])
    import openslide

    with openslide.OpenSlide(str(sorted(transcoded.glob("*.dcm"))[0])) as os_slide:
        others = {n: np.asarray(im.convert("RGB")) for n, im in os_slide.associated_images.items()}
    with open_slide(transcoded, backend="wsidicom") as slide:
        assert set(slide.associated_images) == set(others) == {"label", "macro", "thumbnail"}
        for name, image in others.items():
            np.testing.assert_array_equal(slide.associated_images[name], image)
    diff = np.abs(got.astype(int) - _openslide_levels(cmu_small)[0].astype(int))
    assert diff.mean() < 4  # JPEG re-encoding at quality 90: measured 3.2
    assert np.percentile(diff, 99) <= 30  # measured 26


def test_pyramid_every_level_equals_openslide(pyramid: Path) -> None:
    reference = _openslide_levels(pyramid)
    with (
        open_slide(pyramid, backend="openslide") as os_slide,
        open_slide(pyramid, backend="wsidicom") as slide,
    ):
        assert slide.level_count == 2 and slide.level_dimensions == os_slide.level_dimensions == (
            (1500, 1100),
            (375, 275),
        )
        assert slide.level_downsamples == os_slide.level_downsamples
        assert slide.mpp == os_slide.mpp == (0.5, 0.5)
        assert [slide.tile_shape(i) for i in range(2)] == [(256, 256)] * 2
        for got, ref in zip(_whole_levels(slide), reference, strict=True):
            np.testing.assert_array_equal(got, ref)
        for level in range(slide.level_count):  # regions across edges: the inside equal, the outside white
            for loc in ((-37, -11), (1400, 1050), (700, 500)):
                np.testing.assert_array_equal(
                    slide.read_region(loc, level, (150, 90)), os_slide.read_region(loc, level, (150, 90))
                )
        assert slide.thread_safe  # several threads read one open series at once, as the viewer does
        rng = np.random.default_rng(0)
        spots = [
            (int(x), int(y))
            for x, y in zip(rng.integers(0, 1400, 48), rng.integers(0, 1000, 48), strict=True)
        ]
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(lambda loc: slide.read_region(loc, 0, (100, 100)), spots))
        for loc, got in zip(spots, parallel, strict=True):
            np.testing.assert_array_equal(got, reference[0][loc[1] : loc[1] + 100, loc[0] : loc[0] + 100, :3])


def test_series_without_image_type_is_read_by_wsidicom(no_image_type: Path, pyramid: Path) -> None:
    import openslide

    for f in no_image_type.glob("*.dcm"):  # the failure reported in the field
        with pytest.raises(openslide.OpenSlideError, match="image flavor"):
            openslide.OpenSlide(str(f))
    reference = _openslide_levels(pyramid)
    level0 = max(no_image_type.glob("*.dcm"), key=lambda p: p.stat().st_size)
    for path in (no_image_type, level0):
        with open_slide(path) as slide:
            assert slide.backend == "wsidicom"
            assert slide.level_dimensions == tuple(ref.shape[1::-1] for ref in reference)
            assert slide.mpp == (0.5, 0.5)
            for got, ref in zip(_whole_levels(slide), reference, strict=True):
                np.testing.assert_array_equal(got, ref)
            assert slide.associated_images == {}  # label/overview cannot be told apart without ImageType


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slidescope", *args], capture_output=True, text=True)


def test_info_and_extract_on_a_series_openslide_refuses(no_image_type: Path, tmp_path: Path) -> None:
    """`info` opens it; `extract` embeds it, and goes on past a corrupt series given beside it."""
    info = _run("info", str(no_image_type), "--json")
    assert info.returncode == 0, info.stderr
    report = json.loads(info.stdout)
    assert report["backend"] == "wsidicom" and report["dimensions"] == [1500, 1100]
    assert report["mpp"] == [0.5, 0.5] and report["mpp_source"] == "DICOM PixelSpacing (Pixel Measures)"
    out = _run(
        "-q",
        "extract",
        str(no_image_type),
        str(_corrupt_series(tmp_path)),
        "--encoder",
        "he-descriptor",
        "--stores",
        str(tmp_path / "stores"),
        "--num-workers",
        "1",
    )
    assert out.returncode == 1, out.stdout + out.stderr  # one slide failed
    assert "no-image-type: done" in out.stdout
    assert "broken-series: failed (UnsupportedSlideError" in out.stdout
    from slidescope.features import open_store

    store = open_store(tmp_path / "stores" / "no-image-type.zarr")  # named after the series folder
    emb = store.embeddings("he-descriptor")
    assert store.n_tiles > 10 and emb.shape == (store.n_tiles, 98)
    assert np.isfinite(emb.astype(np.float32)).all()


def test_fluorescence_series_is_refused_in_one_line(pyramid: Path, tmp_path: Path) -> None:
    import pydicom

    folder = tmp_path / "fluo"
    shutil.copytree(pyramid, folder)
    for f in folder.glob("*.dcm"):  # declared as three grey optical paths (the frames are never decoded)
        ds = pydicom.dcmread(f)
        ds.SamplesPerPixel, ds.NumberOfOpticalPaths = 1, 3
        del ds.ImageType  # OpenSlide refuses it then, so the wsidicom backend decides
        ds.save_as(f)
    with pytest.raises(UnsupportedSlideError, match="multiplex/fluorescence image \\(3 channels") as info:
        open_slide(folder)
    assert "\n" not in str(info.value) and "pale" not in str(info.value)


def _corrupt_series(tmp_path: Path) -> Path:
    folder = tmp_path / "broken-series"
    folder.mkdir()
    (folder / "level0.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 50)
    return folder


def test_corrupt_dcm_gives_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    _need_wsidicomizer()
    folder = _corrupt_series(tmp_path)
    for path in (folder, folder / "level0.dcm"):
        with pytest.raises(UnsupportedSlideError, match="corrupt .dcm file.*export the slide again"):
            open_slide(path)


def test_truncated_level_file_fails_at_the_read_with_a_slide_read_error(
    no_image_type: Path, tmp_path: Path
) -> None:
    from slidescope.errors import SlideReadError

    folder = tmp_path / "truncated"
    shutil.copytree(no_image_type, folder)
    level0 = max(folder.glob("*.dcm"), key=lambda p: p.stat().st_size)
    level0.write_bytes(level0.read_bytes()[: level0.stat().st_size // 2])  # a copy cut short
    with open_slide(folder) as slide:
        assert slide.backend == "wsidicom"
        with pytest.raises(SlideReadError, match="EOFError.*probably corrupt"):
            slide.read_region((0, 0), 0, slide.dimensions)


def test_without_wsidicom_the_error_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wsidicom", None)  # as if not installed
    folder = _corrupt_series(tmp_path)
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(folder / "level0.dcm")
    message = str(info.value)
    assert "openslide: " in message and "pip install 'slidescope[dicom]'" in message
