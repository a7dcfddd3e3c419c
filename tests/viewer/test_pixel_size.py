"""A slide without a pixel size: the Analyse widget's Pixel size field (Qt, under Xvfb; issue 15, defect 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


WAIT_MS = 120_000


@pytest.fixture
def slide_without_mpp(tmp_path: Path) -> Path:
    """The sample slide's pixels in a tiled TIFF without resolution tags."""
    import tifffile

    from slidescope.viewer._paths import sample_slide_path

    path = tmp_path / "slides" / "no_mpp.tiff"
    path.parent.mkdir()
    tifffile.imwrite(path, tifffile.imread(sample_slide_path()), tile=(256, 256), photometric="rgb")
    return path


def test_a_slide_without_pixel_size_is_analysed_at_the_entered_one(
    make_napari_viewer, qtbot, checkpoint: Path, slide_without_mpp: Path, tmp_path: Path, notifications
) -> None:
    from slidescope.features import open_store
    from slidescope.viewer._analyse_widget import AnalyseWidget

    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(slide_without_mpp), plugin="slidescope")
    assert tuple(layer.scale) == (1.0, 1.0)
    widget = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Analyse")
    widget.slide.value = layer
    widget.checkpoint.value = checkpoint
    widget.store.value = tmp_path / "stores"
    assert widget.request() is None  # no pixel size: the notification names the field
    assert any(s == "error" and "Pixel size field" in m for s, m in notifications)
    # an empty field reads "from slide" (not 0.0000, which looked like a pixel size of zero)
    assert widget.pixel_size.value == 0 and widget.pixel_size.native.text() == "from slide"

    widget.pixel_size.value = 0.5
    assert widget.pixel_size.native.text() == "0.5000"
    # the "Dark background" box is the request's allow_darkfield (off by default)
    assert widget.request().allow_darkfield is False
    widget.dark_background.value = True
    assert widget.request().allow_darkfield is True
    widget.dark_background.value = False
    widget.start()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: widget.encoders_listed, timeout=WAIT_MS)
    assert widget.last_result is not None, widget.status.value
    # the slide is now in µm, and the heatmap's hottest tile lies on that tile of the slide
    assert tuple(layer.scale) == (0.5, 0.5) and tuple(str(u) for u in layer.units) == ("micrometer",) * 2
    assert widget.last_result.mpp == (0.5, 0.5)
    store = open_store(tmp_path / "stores" / "no_mpp.zarr")
    assert store.tile_extent == (224, 224)  # he-descriptor's 224 px at 0.5 µm/px: cut at the entered size
    (heat,) = [lay for lay in viewer.layers if lay.name.endswith("attention")]
    attention = store.scores(widget.last_result.scores[0])
    i = int(np.argmax(attention))
    x, y = store.coords[i]
    centre = ((y + 112 - 0.5) * 0.5, (x + 112 - 0.5) * 0.5)
    assert heat.get_value(centre, world=True) == pytest.approx(attention[i])
    assert layer.get_value(centre, world=True) is not None  # the same world point lies on the slide
