"""The napari reader without Qt (``ViewerModel``): layers, µm scale, lazy levels, bad files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from slidescope.viewer import _reader
from slidescope.viewer._reader import get_reader, read_slide, slide_layer_data
from slidescope.wsi import open_slide


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Level -> level pixels read through the reader's array (every chunk napari asks for)."""
    counts: Counter = Counter()
    original = _reader.SlideLevel.read

    def counting(self, x, y, width, height):
        counts[self.level] += width * height
        return original(self, x, y, width, height)

    monkeypatch.setattr(_reader.SlideLevel, "read", counting)
    return counts


def test_get_reader_claims_slide_names_only(tmp_path: Path) -> None:
    for name in ("a.svs", "b.NDPI", "c.ome.tif", "d.tiff", "e.mrxs", "f.qptiff"):
        assert get_reader(str(tmp_path / name)) is read_slide, name
    for name in ("a.png", "b.zarr", "notes.txt"):
        assert get_reader(str(tmp_path / name)) is None, name
    assert get_reader([str(tmp_path / "a.svs"), str(tmp_path / "b.png")]) is None


@pytest.mark.parametrize("fixture", ["cmu_small", "ome_detail"])
def test_real_slides_open_in_micrometres(fixture: str, request: pytest.FixtureRequest) -> None:
    from napari.components import ViewerModel

    path = request.getfixturevalue(fixture)
    layers = read_slide(str(path))
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    with open_slide(path) as slide:
        mpp_x, mpp_y = slide.mpp
        assert kind == "image" and kwargs["rgb"] and kwargs["units"] == ("um", "um")
        assert kwargs["scale"] == pytest.approx((mpp_y, mpp_x))
        assert isinstance(data, da.Array) and data.shape == (slide.dimensions[1], slide.dimensions[0], 3)
        # chunks follow the file's tiles; a region read lazily equals read_region
        assert data.chunksize[:2] == (240, 240) if fixture == "cmu_small" else (512, 512)
        region = np.asarray(data[300:700, 200:650])
        np.testing.assert_array_equal(region, slide.read_region((200, 300), 0, (450, 400)))
    viewer = ViewerModel()
    layer = viewer.add_image(data, **kwargs)
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    np.testing.assert_allclose(layer.scale, (mpp_y, mpp_x))
    assert viewer.layers[0].metadata["slidescope"]["associated_images"] == (
        ["label", "macro", "thumbnail"] if fixture == "cmu_small" else []
    )


def test_synthetic_pyramid_is_a_lazy_multiscale(pyramid, reads: Counter) -> None:
    from napari.components import ViewerModel

    path = pyramid(4096, 3072, mpp=0.25, levels=3, tile=256)
    ((data, kwargs, _),) = read_slide(str(path))
    assert kwargs["multiscale"] and len(data) == 3
    assert [d.shape for d in data] == [(3072, 4096, 3), (1536, 2048, 3), (768, 1024, 3)]
    assert all(d.chunksize == (256, 256, 3) for d in data)
    assert kwargs["scale"] == (0.25, 0.25)
    assert reads[0] == 0  # opening reads nothing at full resolution
    with open_slide(path) as slide:
        np.testing.assert_array_equal(
            np.asarray(data[1][256:512, 512:768]), slide.read_region((1024, 512), 1, (256, 256))
        )
    reads.clear()
    viewer = ViewerModel()
    layer = viewer.add_image(data, **kwargs)
    assert layer.multiscale and layer.data_level == 2
    np.testing.assert_allclose(layer.downsample_factors[:, :2], [[1, 1], [2, 2], [4, 4]])
    # world extent in µm: 4096 px x 0.25 µm
    extent = layer.extent.world
    assert extent[1][1] - extent[0][1] == pytest.approx((4096 - 1) * 0.25)
    assert reads[0] == 0, "adding the layer must not read level 0"


def test_slide_level_serves_any_region_of_any_level(pyramid) -> None:
    path = pyramid(2048, 1536, mpp=0.5, levels=3, tile=256, compression=None)
    with open_slide(path) as slide:
        data, _, _ = slide_layer_data(slide)
        for level, array in enumerate(data):
            h, w = array.shape[:2]
            y0, x0 = h // 3 + 7, w // 5 + 3
            got = np.asarray(array[y0 : y0 + 100, x0 : x0 + 130])
            ds = slide.level_downsamples[level]
            expected = slide.read_region((int(np.ceil(x0 * ds)), int(np.ceil(y0 * ds))), level, (130, 100))
            np.testing.assert_array_equal(got, expected)


def test_slide_without_pixel_size_opens_in_pixels(fixtures_dir: Path, notifications) -> None:
    ((data, kwargs, _),) = read_slide(str(fixtures_dir / "boxes.tiff"))
    assert kwargs["scale"] == (1.0, 1.0) and kwargs["units"] == ("pixel", "pixel")
    assert kwargs["metadata"]["slidescope"]["units"] == "pixel"
    assert len(data) == 4
    assert any("slidescope" in msg and "no pixel size" in msg for _, msg in notifications)


@pytest.mark.parametrize("name", ["not-a-tiff.svs", "unopenable.tiff", "unreadable.svs"])
def test_bad_files_give_a_slidescope_notification_and_no_layer(
    fixtures_dir: Path, notifications, name: str
) -> None:
    assert read_slide(str(fixtures_dir / name)) == [(None,)]
    errors = [msg for severity, msg in notifications if severity == "error"]
    assert len(errors) == 1 and errors[0].startswith("slidescope: "), notifications
    assert name in errors[0]
    # the message says what to do next
    assert any(word in errors[0] for word in ("Supported", "re-export", "check"))


def test_importing_the_plugin_package_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, slidescope.viewer; heavy = [m for m in ('torch', 'napari', 'PyQt5', 'qtpy', 'magicgui') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
