"""fastslide as an alternative reader (``--backend fastslide``), against OpenSlide on the real files.

The bounds are the ones stated in slidescope/wsi/_fastslide.py: another JPEG decoder, at most 2 grey
levels from OpenSlide on CMU-1-Small-Region.svs; TIFFs tagged RGB with JFIF (YCbCr) JPEG tiles, which it
returns unconverted, refused with the reader to use instead.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from slidescope.errors import MissingDependencyError, UnsupportedSlideError
from slidescope.wsi import open_slide

from realdata import real_file

pytest.importorskip("fastslide", reason="the fastslide extra is not installed")


def test_real_svs_within_two_grey_levels_of_openslide() -> None:
    path = real_file("slides/CMU-1-Small-Region.svs")
    with open_slide(path, backend="fastslide") as fast, open_slide(path, backend="openslide") as ref:
        assert fast.dimensions == ref.dimensions and fast.level_count == ref.level_count
        assert fast.mpp == ref.mpp and fast.mpp_source == "fastslide Aperio metadata"
        w, h = ref.dimensions
        ours = fast.read_region((0, 0), 0, (w, h)).astype(np.int16)
        theirs = ref.read_region((0, 0), 0, (w, h)).astype(np.int16)
        diff = np.abs(ours - theirs)
        assert diff.max() <= 2 and diff.mean() < 1.0  # measured: max 2, mean 0.60
        region = fast.read_region((1000, 1500), 0, (300, 200)).astype(np.int16)
        assert np.abs(region - theirs[1500:1700, 1000:1300]).max() <= 2
        assert set(fast.associated_images) == set(ref.associated_images)
        for name in ("label", "macro"):
            a, b = fast.associated_images[name], ref.associated_images[name]
            assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 2, name


def test_rgb_jpeg_tiff_is_refused_with_the_reader_to_use() -> None:
    path = real_file("slides/OS-1-detail.ome.tif")
    with pytest.raises(UnsupportedSlideError, match=r"wrong colours\).*--backend tiffslide"):
        open_slide(path, backend="fastslide")
    import fastslide
    from PIL import Image

    raw = fastslide.FastSlide.from_file_path(str(path)).read_region((0, 0), 0, (512, 512)).numpy()[..., :3]
    with open_slide(path, backend="tiffslide") as slide:  # libjpeg's decode (equal to Pillow's)
        rgb = slide.read_region((0, 0), 0, (512, 512))
    ycc = np.asarray(Image.fromarray(rgb).convert("YCbCr")).astype(int)
    assert np.abs(raw.astype(int) - ycc).mean() < 1.5  # what it returns is the YCbCr, unconverted
    assert np.abs(raw.astype(int) - rgb.astype(int)).mean() > 20


def test_auto_never_picks_fastslide_for_a_file_another_reader_claims() -> None:
    for name in ("slides/CMU-1-Small-Region.svs", "slides/OS-1-detail.ome.tif"):
        with open_slide(real_file(name)) as slide:
            assert slide.backend != "fastslide"


def test_cli_backend_fastslide() -> None:
    from typer.testing import CliRunner

    from slidescope.cli import app

    path = real_file("slides/CMU-1-Small-Region.svs")
    result = CliRunner().invoke(app, ["info", str(path), "--backend", "fastslide", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["backend"] == "fastslide" and report["dimensions"] == [2220, 2967]


def test_without_fastslide_the_error_names_the_extra(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "fastslide", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'slidescope\[fastslide\]'"):
        open_slide(real_file("slides/CMU-1-Small-Region.svs"), backend="fastslide")
