"""open_slide and Slide: both backends, mpp resolution, pixels, padding, bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from slidescope.errors import (
    InvalidParameterError,
    MissingMppError,
    SlideNotFoundError,
    SlideReadError,
    UnsupportedSlideError,
)
from slidescope.wsi import open_slide

# Measured on the real slides: both backends decode through libjpeg-turbo and agree exactly (max abs
# difference 0). We allow 2 grey levels for a reader built against another JPEG decoder.
JPEG_TOLERANCE = 2


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs"])
def test_backends_agree_on_real_svs(shared_data: Path, name: str) -> None:
    path = shared_data / "slides" / name
    a = open_slide(path, backend="openslide")
    b = open_slide(path, backend="tiffslide")
    assert a.dimensions == b.dimensions == (2220, 2967)
    assert a.level_count == b.level_count
    assert a.level_dimensions == b.level_dimensions
    assert a.level_downsamples == b.level_downsamples
    assert a.mpp == b.mpp == (0.499, 0.499)
    assert a.mpp_source == b.mpp_source == "Aperio ImageDescription (MPP)"
    assert a.magnification == b.magnification == 20.0
    assert set(a.associated_images) == set(b.associated_images) == {"label", "macro", "thumbnail"}
    assert a.associated_images["label"].shape == b.associated_images["label"].shape
    rng = np.random.default_rng(0)
    for _ in range(10):
        x, y = int(rng.integers(0, 2000)), int(rng.integers(0, 2700))
        ra = a.read_region((x, y), 0, (256, 256))
        rb = b.read_region((x, y), 0, (256, 256))
        assert ra.dtype == np.uint8 and ra.shape == (256, 256, 3)
        assert np.abs(ra.astype(int) - rb).max() <= JPEG_TOLERANCE


def test_ome_tiff_opens_with_tiffslide_and_auto(ome_detail: Path) -> None:
    with pytest.raises(UnsupportedSlideError):
        open_slide(ome_detail, backend="openslide")
    s = open_slide(ome_detail)
    assert s.backend == "tiffslide"
    assert s.dimensions == (1101, 1101)
    assert s.mpp_source == "OME-XML PhysicalSizeX/Y"
    assert s.mpp == pytest.approx((0.2271, 0.2271), abs=1e-4)
    # no objective power in the file: estimated from mpp and labelled as such
    assert s.magnification == pytest.approx(10 / 0.2271, rel=1e-3)
    assert s.magnification_source == "estimated as 10 / mpp"
    tile = s.read_region((500, 500), 0, (64, 64))
    assert tile.shape == (64, 64, 3) and tile.std() > 5  # real tissue, not blank


def test_synthetic_pyramid_backends_agree(pyramid) -> None:
    path = pyramid(2048, 1536, mpp=0.25, levels=3)
    a, b = open_slide(path, backend="openslide"), open_slide(path, backend="tiffslide")
    assert a.level_dimensions == b.level_dimensions == ((2048, 1536), (1024, 768), (512, 384))
    assert a.mpp == b.mpp == (0.25, 0.25)
    for level in range(3):
        ra = a.read_region((300, 200), level, (200, 150))
        rb = b.read_region((300, 200), level, (200, 150))
        assert np.abs(ra.astype(int) - rb).max() <= JPEG_TOLERANCE
    assert a.best_level_for_mpp(0.25) == 0
    assert a.best_level_for_mpp(0.5) == 1
    assert a.best_level_for_mpp(0.499) == 1  # level 1 (0.5) is within the 1% tolerance
    assert a.best_level_for_mpp(0.49) == 0
    assert a.best_level_for_mpp(8.0) == 2
    assert a.level_mpp(2) == (1.0, 1.0)


def test_outside_reads_are_white_padding(cmu_small: Path) -> None:
    for backend in ("openslide", "tiffslide"):
        s = open_slide(cmu_small, backend=backend)
        w, h = s.dimensions
        region = s.read_region((w - 50, h - 30), 0, (100, 100))
        assert region.shape == (100, 100, 3)
        assert (region[40:, :] == 255).all() and (region[:, 60:] == 255).all()
        inside = s.read_region((w - 50, h - 30), 0, (50, 30))
        assert np.array_equal(region[:30, :50], inside)
        assert (s.read_region((-500, -500), 0, (100, 100)) == 255).all()


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    import tifffile

    rgba = np.zeros((512, 512, 4), np.uint8)
    rgba[..., :3] = 40
    rgba[:, 256:, 3] = 255  # left half transparent
    path = tmp_path / "alpha.tiff"
    tifffile.imwrite(
        path,
        rgba,
        tile=(256, 256),
        photometric="rgb",
        extrasamples=[2],
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    s = open_slide(path, backend="openslide")
    region = s.read_region((0, 0), 0, (512, 512))
    assert (region[:, :256] == 255).all()
    assert (region[:, 256:] == 40).all()


def test_get_thumbnail_fits_and_keeps_aspect(cmu_small: Path) -> None:
    s = open_slide(cmu_small)
    thumb = s.get_thumbnail((256, 256))
    assert thumb.dtype == np.uint8 and thumb.ndim == 3
    assert max(thumb.shape[:2]) == 256
    assert thumb.shape[1] / thumb.shape[0] == pytest.approx(2220 / 2967, rel=0.02)


def test_properties_are_strings_with_openslide_keys(cmu_small: Path) -> None:
    for backend in ("openslide", "tiffslide"):
        props = open_slide(cmu_small, backend=backend).properties
        assert all(isinstance(v, str) for v in props.values())
        assert float(props["openslide.mpp-x"]) == 0.499


def test_slide_pickles_and_reopens(cmu_small: Path) -> None:
    s = open_slide(cmu_small, backend="tiffslide", force_slide_mpp=0.5)
    s2 = pickle.loads(pickle.dumps(s))
    assert s2.backend == "tiffslide" and s2.mpp == (0.5, 0.5) and s2.mpp_source == "user"
    assert np.array_equal(s.read_region((10, 10), 0, (32, 32)), s2.read_region((10, 10), 0, (32, 32)))


# -- bad input ------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SlideNotFoundError, match="no such slide"):
        open_slide(tmp_path / "nope.svs")


def test_directory_is_not_a_slide(tmp_path: Path) -> None:
    with pytest.raises(SlideNotFoundError, match="is a directory"):
        open_slide(tmp_path)


def test_text_file_named_svs(fixtures_dir: Path) -> None:
    with pytest.raises(UnsupportedSlideError, match="not-a-tiff.svs") as info:
        open_slide(fixtures_dir / "not-a-tiff.svs")
    assert "Supported:" in str(info.value)


def test_unopenable_tiff(fixtures_dir: Path) -> None:
    with pytest.raises(UnsupportedSlideError, match="unopenable.tiff"):
        open_slide(fixtures_dir / "unopenable.tiff")


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_corrupt_tile_names_slide_and_region(fixtures_dir: Path, backend: str) -> None:
    with open_slide(fixtures_dir / "unreadable.svs", backend=backend) as s:
        assert s.dimensions == (16, 16)  # it opens
        with pytest.raises(SlideReadError, match=r"unreadable\.svs.*x=0, y=0.*16x16"):
            s.read_region((0, 0), 0, (16, 16))


def test_missing_mpp_tells_what_to_do(pyramid) -> None:
    path = pyramid(512, 512, mpp=None, levels=1)
    s = open_slide(path)
    with pytest.raises(MissingMppError, match=r"slide_mpp=0\.25.*--slide-mpp"):
        _ = s.mpp
    assert not s.has_mpp
    assert open_slide(path, force_slide_mpp=0.3).mpp == (0.3, 0.3)


def test_software_dpi_is_not_an_mpp(fixtures_dir: Path) -> None:
    s = open_slide(fixtures_dir / "boxes.tiff")
    with pytest.raises(MissingMppError, match="72 dpi"):
        _ = s.mpp
    assert open_slide(fixtures_dir / "boxes.tiff", force_slide_mpp=(0.5, 0.5)).mpp == (0.5, 0.5)


@pytest.mark.parametrize("mpp", [0, -1, float("nan"), (0.5,), "x"])
def test_bad_mpp_override(cmu_small: Path, mpp) -> None:
    with pytest.raises((InvalidParameterError, TypeError)):
        open_slide(cmu_small, force_slide_mpp=mpp)


def test_unknown_backend(cmu_small: Path) -> None:
    with pytest.raises(InvalidParameterError, match="unknown backend"):
        open_slide(cmu_small, backend="cucim")


def test_bad_region_arguments(cmu_small: Path) -> None:
    s = open_slide(cmu_small)
    with pytest.raises(InvalidParameterError):
        s.read_region((0, 0), 0, (0, 10))
    with pytest.raises(InvalidParameterError, match="level 3 does not exist"):
        s.read_region((0, 0), 3, (10, 10))
