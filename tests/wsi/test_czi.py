"""Zeiss CZI through pylibCZIrw: scenes, the pyramid, the pixel size, refusals, ``slidescope info``.

Files are written by pylibCZIrw's own writer from synthetic RGB images (tests/wsi/czi_files.py); the
pixels read back are compared with those images, and the pyramid also with fastslide's own CZI reader
(another implementation of the format).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slidescope.errors import InvalidParameterError, MissingDependencyError, UnsupportedSlideError
from slidescope.wsi import open_slide

from czi_files import write_czi

pytest.importorskip("pylibCZIrw", reason="the czi extra (pylibCZIrw) is not installed")


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """A CZI of three scenes without pyramid: 450x300 (scene 0), 200x120 and 260x180 beside it."""
    path = tmp_path_factory.mktemp("czi") / "scenes.czi"
    images = [_rgb(300, 450, 1), _rgb(120, 200, 2), _rgb(180, 260, 3)]
    write_czi(path, images[0], 0.5, scenes=tuple(images[1:]))
    return path, images


def test_first_scene_by_default_and_another_by_environment(scenes, monkeypatch) -> None:
    path, images = scenes
    for index, image in enumerate(images):
        if index:
            monkeypatch.setenv("SLIDESCOPE_CZI_SCENE", str(index))
        with open_slide(path) as slide:
            assert slide.backend == "czi" and slide.properties["czi.scene"] == str(index)
            assert slide.properties["czi.scene-count"] == "3"
            h, w = image.shape[:2]
            assert slide.dimensions == (w, h) and slide.level_count == 1  # no pyramid: no invented levels
            np.testing.assert_array_equal(slide.read_region((0, 0), 0, (w, h)), image)
            np.testing.assert_array_equal(slide.read_region((17, 9), 0, (40, 30)), image[9:39, 17:57])
            edge = slide.read_region((w - 5, h - 4), 0, (12, 10))  # the rest of the box is not this scene
            np.testing.assert_array_equal(edge[:4, :5], image[h - 4 :, w - 5 :])
            assert (edge[4:] == 255).all() and (edge[:, 5:] == 255).all()
            assert slide.mpp == (0.5, 0.5) and slide.mpp_source == "CZI metadata (Scaling/Distance)"
    monkeypatch.setenv("SLIDESCOPE_CZI_SCENE", "3")
    with pytest.raises(InvalidParameterError, match=r"scenes \[0, 1, 2\]"):
        open_slide(path)
    monkeypatch.setenv("SLIDESCOPE_CZI_SCENE", "first")
    with pytest.raises(InvalidParameterError, match="SLIDESCOPE_CZI_SCENE"):
        open_slide(path)


def test_coarser_reads_of_a_flat_czi_are_area_averaged(scenes) -> None:
    path, images = scenes
    with open_slide(path) as slide:
        thumb = slide.get_thumbnail((225, 150))
    assert thumb.shape == (150, 225, 3)
    from czi_files import box_mean

    assert np.abs(thumb.astype(int) - box_mean(images[0], 2)).max() <= 1


def test_pyramid_equals_fastslides_czi_reader(tmp_path: Path) -> None:
    fastslide = pytest.importorskip("fastslide")
    path = tmp_path / "p.czi"
    levels = write_czi(path, _rgb(480, 640, 4), 0.3, factors=(2, 4))
    reference = fastslide.FastSlide.from_file_path(str(path))
    with open_slide(path) as slide:
        assert slide.level_dimensions == tuple(tuple(d) for d in reference.level_dimensions)
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        for level, pixels in enumerate(levels):
            w, h = slide.level_dimensions[level]
            theirs = reference.read_region((0, 0), level, (w, h)).numpy()[..., :3]
            ours = slide.read_region((0, 0), level, (w, h))
            np.testing.assert_array_equal(ours, theirs)
            np.testing.assert_array_equal(ours, pixels)
            # a region away from the origin: level pixel (13, 7) at level 0 location (13 d, 7 d)
            d = int(slide.level_downsamples[level])
            np.testing.assert_array_equal(
                slide.read_region((13 * d, 7 * d), level, (50, 30)), pixels[7:37, 13:63]
            )


def test_grey_and_16_bit_czi_are_refused(tmp_path: Path) -> None:
    from pylibCZIrw import czi

    grey = tmp_path / "grey.czi"
    with czi.create_czi(str(grey), exist_ok=True) as writer:
        writer.write(np.zeros((64, 64, 1), np.uint8))
    with pytest.raises(UnsupportedSlideError, match="greyscale CZI"):
        open_slide(grey)
    two = tmp_path / "two-channels.czi"
    with czi.create_czi(str(two), exist_ok=True) as writer:
        for c in range(2):
            writer.write(np.full((64, 64, 1), 10 * c, np.uint16), plane={"C": c})
    with pytest.raises(UnsupportedSlideError, match="multiplex/fluorescence image \\(2 channels") as info:
        open_slide(two)
    assert "\n" not in str(info.value) and "pale" not in str(info.value)
    deep = tmp_path / "bgr48.czi"
    with czi.create_czi(str(deep), exist_ok=True) as writer:
        writer.write(np.zeros((32, 32, 3), np.uint16))
    with pytest.raises(UnsupportedSlideError, match="Bgr48"):
        open_slide(deep)


def test_not_a_czi(tmp_path: Path) -> None:
    path = tmp_path / "fake.czi"
    path.write_bytes(b"ZISRAWFILE" + bytes(200))
    with pytest.raises(UnsupportedSlideError, match="cannot open fake.czi"):
        open_slide(path)


def test_without_pylibczirw_the_error_names_the_extra(scenes, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pylibCZIrw", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'slidescope\[czi\]'"):
        open_slide(scenes[0], backend="czi")


def test_info_opens_a_czi(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from slidescope.cli import app

    path = tmp_path / "slide.czi"
    write_czi(path, _rgb(300, 400, 5), 0.25, factors=(2,))
    result = CliRunner().invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["backend"] == "czi" and report["dimensions"] == [400, 300]
    assert report["mpp"] == [0.25, 0.25] and report["mpp_source"] == "CZI metadata (Scaling/Distance)"
    assert report["level_dimensions"] == [[400, 300], [200, 150]]


def test_regions_across_subblocks(tmp_path: Path) -> None:
    """pylibCZIrw stores an image over 10 MB as subblocks of at most 1800 px: reads across their seams."""
    path = tmp_path / "big.czi"
    rgb = _rgb(1900, 2000, 6)  # 11.4 MB: 2 x 2 subblocks of about 1000 x 950 px
    write_czi(path, rgb, 0.5)
    with open_slide(path) as slide:
        assert slide.dimensions == (2000, 1900) and slide.tile_shape(0) is not None
        for x, y in ((900, 850), (990, 940), (0, 1800), (1950, 0)):
            np.testing.assert_array_equal(
                slide.read_region((x, y), 0, (50, 100)), rgb[y : y + 100, x : x + 50]
            )
