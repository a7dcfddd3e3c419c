"""Fluorescence/multiplex TIFFs in the napari reader (issue 14, item 3): one false-colour layer per channel.

The files are written with tifffile (a Vectra-like QPTIFF of uint16 channel pages with PerkinElmer XML and
a pyramid; a pyramidal OME-TIFF with named, coloured uint8 channels); what the reader shows is checked
against tifffile's own reading of them: names, colours, scale in µm, pixels of a region at every level,
and that nothing of level 0 is decoded until napari asks for it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile

from slidescope.errors import UnsupportedSlideError
from slidescope.viewer._fluorescence import FLUORESCENCE_KIND, open_fluorescence
from slidescope.viewer._reader import read_slide
from slidescope.wsi import open_slide

QPI_XML = (
    '<?xml version="1.0" encoding="utf-8"?><PerkinElmer-QPI-ImageDescription><DescriptionVersion>2'
    "</DescriptionVersion><ImageType>{kind}</ImageType><Name>{name}</Name><Color>{color}</Color>"
    "</PerkinElmer-QPI-ImageDescription>"
)
QPI_CHANNELS = [("DAPI", "0,0,255"), ("CD8", "255,255,0"), ("PD-L1", "255,0,0"), ("CK", "0,255,0")]


def _planes(count: int, height: int, width: int, dtype: type, seed: int = 0) -> np.ndarray:
    """Dark channels with bright spots (fluorescence-like), different per channel."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    planes = (rng.random((count, height, width)) * 0.05 * top).astype(dtype)
    for c in range(count):
        ys, xs = rng.integers(0, height, 40), rng.integers(0, width, 40)
        for y, x in zip(ys, xs, strict=True):
            planes[c, max(0, y - 6) : y + 6, max(0, x - 6) : x + 6] = int(top * (0.5 + 0.1 * c))
    return planes


@pytest.fixture(scope="module")
def qptiff(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """4 uint16 channels, 1536 x 1024 at 0.5 µm/px (resolution tags in cm), 3 levels, an RGB thumbnail."""
    path = tmp_path_factory.mktemp("qpi") / "vectra.qptiff"
    base = _planes(4, 1024, 1536, np.uint16)
    with tifffile.TiffWriter(path) as tw:
        for level in range(3):
            f = 2**level
            for (name, color), plane in zip(QPI_CHANNELS, base[:, ::f, ::f], strict=True):
                tw.write(
                    plane,
                    photometric="minisblack",
                    tile=(256, 256),
                    description=QPI_XML.format(
                        kind="FullResolution" if level == 0 else "ReducedResolution", name=name, color=color
                    ),
                    software="PerkinElmer-QPI",
                    resolution=(1e4 / (0.5 * f), 1e4 / (0.5 * f)),
                    resolutionunit="CENTIMETER",
                    metadata=None,
                )
            if level == 0:  # QPTIFF layout: the thumbnail after the full-resolution channels
                thumb = QPI_XML.format(kind="Thumbnail", name="", color="")
                tw.write(np.zeros((64, 96, 3), np.uint8), photometric="rgb", description=thumb, metadata=None)
    return path, base


@pytest.fixture(scope="module")
def ome(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A pyramidal OME-TIFF (sub-IFDs): 3 named uint8 channels, Hoechst without a colour, 0.325 µm/px."""
    path = tmp_path_factory.mktemp("ome") / "if.ome.tif"
    base = _planes(3, 768, 1024, np.uint8, seed=1)
    meta = {
        "axes": "CYX",
        "PhysicalSizeX": 0.325,
        "PhysicalSizeY": 0.325,
        # OME colours are signed RGBA integers: -1 white (the default), 0x00FF00FF green, 0xFF0000FF red
        "Channel": {"Name": ["Hoechst", "CD3", "CD20"], "Color": [-1, 0x00FF00FF, 0xFF0000FF - 2**32]},
    }
    options = {"photometric": "minisblack", "tile": (256, 256), "compression": "zlib"}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(base, subifds=2, metadata=meta, **options)
        for f in (2, 4):
            tw.write(base[:, ::f, ::f], subfiletype=1, metadata=None, **options)
    return path, base


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """(height, width) of the page of every TIFF tile tifffile decodes -> count."""
    counts: Counter = Counter()
    original = tifffile.TiffPage.decode  # a cached_property returning the page's decode function

    def decode_of(page: tifffile.TiffPage):
        decode = original.func(page)

        def counting(*args, **kwargs):
            counts[tuple(page.shape[:2])] += 1
            return decode(*args, **kwargs)

        return counting

    monkeypatch.setattr(tifffile.TiffPage, "decode", property(decode_of))
    return counts


def test_open_slide_still_refuses_them(qptiff, ome) -> None:
    for path, _ in (qptiff, ome):
        with pytest.raises(UnsupportedSlideError, match="multiplex/fluorescence"):
            open_slide(path)


@pytest.mark.parametrize("which", ["qptiff", "ome"])
def test_channels_become_lazy_false_colour_layers(
    which: str, request, decoded: Counter, notifications
) -> None:
    from napari.components import ViewerModel

    path, base = request.getfixturevalue(which)
    layers = read_slide(str(path))
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image" and kwargs["channel_axis"] == 0 and kwargs["multiscale"]
    # lazy: dask arrays per level over the file's tiles, nothing of level 0 decoded to open it
    assert all(isinstance(level, da.Array) for level in data)
    assert [level.shape for level in data] == [base[:, :: 2**k, :: 2**k].shape for k in range(3)]
    assert data[0].chunksize == (1, 256, 256)
    assert decoded[base.shape[1:]] == 0
    infos = [msg for severity, msg in notifications if severity == "info"]
    assert any("fluorescence/multiplex" in m and "analysis needs a brightfield slide" in m for m in infos)

    viewer = ViewerModel()
    added = viewer.add_image(data, **kwargs)
    assert decoded[base.shape[1:]] == 0, "adding the layers must not read level 0"
    expected_names = ["DAPI", "CD8", "PD-L1", "CK"] if which == "qptiff" else ["Hoechst", "CD3", "CD20"]
    # colours: the file's own; the OME Hoechst channel has none (-1 is white: no choice) and gets blue
    expected_colours = (
        [(0, 0, 1), (1, 1, 0), (1, 0, 0), (0, 1, 0)]
        if which == "qptiff"
        else [(0, 0, 1), (0, 1, 0), (1, 0, 0)]
    )
    mpp = 0.5 if which == "qptiff" else 0.325
    assert [layer.name for layer in added] == [f"{path.name} [{n}]" for n in expected_names]
    for layer, name, colour, plane in zip(added, expected_names, expected_colours, base, strict=True):
        assert isinstance(layer.data[0], da.Array) and layer.multiscale
        np.testing.assert_allclose(layer.colormap.colors[-1], [*colour, 1.0])
        np.testing.assert_allclose(layer.colormap.colors[0], [0, 0, 0, 1])
        assert layer.blending == "additive"
        np.testing.assert_allclose(layer.scale, (mpp, mpp))
        assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
        lo, hi = layer.contrast_limits
        assert 0 <= lo < plane.max() * 0.06 and plane.max() * 0.4 < hi <= plane.max()
        meta = layer.metadata["slidescope"]
        assert meta["kind"] == FLUORESCENCE_KIND and meta["channel_name"] == name
        assert "multiplex/fluorescence" in meta["refusal"] and "pale" not in meta["refusal"]
    # the pixels napari reads are tifffile's own, at every level; a region decodes only its own tiles
    region = np.asarray(data[0][:, 100:300, 200:456])
    assert decoded[base.shape[1:]] == 4 * len(expected_names)  # 2 x 2 tiles of 256 px, per channel
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(region, tif.series[0].levels[0].asarray()[:, 100:300, 200:456])
        for k in (1, 2):
            expected = tif.series[0].levels[k].asarray()
            np.testing.assert_array_equal(np.asarray(data[k][:, 50:150, 60:200]), expected[:, 50:150, 60:200])


def test_grey_planes_without_metadata_get_a_palette_and_pixel_units(tmp_path: Path) -> None:
    path = tmp_path / "planes.tif"
    tifffile.imwrite(
        path, _planes(3, 300, 400, np.uint8, seed=2), photometric="minisblack", metadata={"axes": "QYX"}
    )
    image = open_fluorescence(path)
    assert image is not None and image.mpp is None and len(image.levels) == 1
    assert image.names == ["channel 1", "channel 2", "channel 3"]
    assert image.colors == [(0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (1.0, 0.0, 1.0)]
    image.close()
    ((data, kwargs, _),) = read_slide(str(path))
    assert kwargs["units"] == ("pixel", "pixel") and kwargs["scale"] == (1.0, 1.0)
    assert not kwargs["multiscale"] and isinstance(data, da.Array) and data.shape == (3, 300, 400)


def test_rgb_slides_and_broken_files_are_not_fluorescence(
    cmu_small: Path, fixtures_dir: Path, notifications
) -> None:
    assert open_fluorescence(cmu_small) is None  # 8-bit RGB: a slide
    assert open_fluorescence(fixtures_dir / "not-a-tiff.svs") is None
    assert read_slide(str(fixtures_dir / "unopenable.tiff")) == [(None,)]  # still the error, no channel layer
    assert [severity for severity, _ in notifications] == ["error"]


def test_the_napari_viewer_opens_a_qptiff_with_the_plugin(qptiff, make_napari_viewer) -> None:
    path, base = qptiff
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="slidescope")
    assert [layer.name for layer in layers] == [f"{path.name} [{n}]" for n, _ in QPI_CHANNELS]
    assert all(layer.metadata["slidescope"]["kind"] == FLUORESCENCE_KIND for layer in layers)


def test_analyse_widget_does_not_analyse_fluorescence(
    qptiff, make_napari_viewer, qtbot, notifications
) -> None:
    """No slide to analyse, no crash, no "pale"; the message for the analysis widgets says why."""
    from slidescope.viewer._analyse_widget import AnalyseWidget
    from slidescope.viewer._fluorescence import analysis_refusal

    path, _ = qptiff
    viewer = make_napari_viewer()
    assert analysis_refusal(viewer) is None
    viewer.open(str(path), plugin="slidescope")
    widget = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Analyse")
    assert widget.slide.value is None  # channel layers are not offered as slides
    assert widget.request() is None
    assert not any("pale" in message for _, message in notifications)
    message = analysis_refusal(viewer)
    assert any(text == f"slidescope: {message}" for _, text in notifications)  # the toast says why
    assert message is not None and message.startswith(f"{path.name} is a fluorescence/multiplex image")
    assert "analysis needs a brightfield slide" in message and "\n" not in message
    qtbot.waitUntil(lambda: widget.encoders_listed, timeout=120_000)  # its background listing, before closing


def test_a_16_bit_rgb_tiff_is_shown_as_three_channels_not_called_fluorescence(
    tmp_path: Path, notifications
) -> None:
    path = tmp_path / "rgb16.tif"
    rgb = (np.random.default_rng(3).random((200, 300, 3)) * 65535).astype(np.uint16)
    tifffile.imwrite(
        path, rgb, photometric="rgb", resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER"
    )
    ((data, kwargs, _),) = read_slide(str(path))
    assert data.shape == (3, 200, 300) and kwargs["scale"] == pytest.approx((0.25, 0.25))
    np.testing.assert_array_equal(np.asarray(data[1]), rgb[..., 1])
    assert kwargs["name"] == [f"rgb16.tif [{c}]" for c in ("red", "green", "blue")]
    assert [tuple(c.colors[-1][:3]) for c in kwargs["colormap"]] == [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    (info,) = [m for s, m in notifications if s == "info"]
    assert info.startswith("slidescope: rgb16.tif is not a brightfield scan: shown for viewing only")
    assert kwargs["metadata"][0]["slidescope"]["refusal"].startswith("rgb16.tif stores 16-bit")
