"""Render the README's napari screenshots headless into docs/img/ (PNG, each under 200 KB).

Run (Xvfb and the ``viewer`` extra; napari's screenshots come out black without a real X display)::

    xvfb-run -a -s "-screen 0 1920x1200x24" env QT_QPA_PLATFORM=xcb \\
        uv run --locked --extra viewer python docs/screenshots.py [--work /tmp/slidescope-shots]

It runs ``slidescope demo`` into the work folder first (a trained ABMIL run and a pretrained slide-text
model on a synthetic cohort, about a minute on a laptop CPU; reused when there), opens the sample slide as
File > Open Sample does, and drives the Analyse widget exactly as a user would:

* ``napari-mil-heatmap.png``: the demo's ABMIL run (its folds averaged) on the sample, attention heatmap
  with its colour bar, the widget beside it;
* ``napari-region.png``: *Analyse inside the drawn shapes* with a polygon drawn around one tumour focus:
  the region's prediction in the widget and the attention within the region only;
* ``napari-zero-shot.png``: zero-shot with the demo's prompts, the best-class layer and its legend (the run's
  default map);
* ``napari-similarity.png``: *Click a tile: similar tiles* on the sample's most tumour-laden tile (its
  cosine-similarity map and the ranked list of the tiles most like it).

The slides are synthetic (``slidescope.synthetic``); the models are the demo's, trained on such slides.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

IMG = Path(__file__).resolve().parent / "img"
#: window size of the screenshots (the canvas and the dock widget)
WINDOW = (1800, 1050)
MAX_BYTES = 200_000


def _wait(app, until, timeout: float = 600.0) -> None:
    t0 = time.perf_counter()
    while not until():
        app.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the viewer did not finish in time")


def _save(viewer, name: str) -> Path:
    """The whole window (canvas and docks) as a palette PNG small enough for the README."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    for toast in list(NapariQtNotification._instances):  # napari's own start-up notices, not ours
        toast.close()
    QApplication.instance().processEvents()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(shot[..., :3])
    path = IMG / name
    for colours in (256, 128, 64):
        image.quantize(colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size < MAX_BYTES:
            break
    print(f"{path} ({path.stat().st_size / 1e3:.0f} KB)")
    return path


def _analyse(viewer, app, widget, **fields) -> None:
    for name, value in fields.items():
        getattr(widget, name).value = value
    widget.start()
    _wait(app, lambda: not widget.busy)
    if widget.last_result is None:
        raise RuntimeError(f"the analysis failed: {widget.status.value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "slidescope-shots")
    args = parser.parse_args()
    os.environ.setdefault("SLIDESCOPE_CACHE", str(args.work / "cache"))  # not the user's cache

    import napari
    from qtpy.QtWidgets import QApplication

    from slidescope.demo import demo
    from slidescope.viewer._analyse_widget import ZERO_SHOT, AnalyseWidget

    result = demo(args.work / "demo", progress=False)
    IMG.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(show=True)
    viewer.window.resize(*WINDOW)
    app = QApplication.instance()
    viewer.open_sample("slidescope", "sample_slide")
    tiles = [layer for layer in viewer.layers if layer.name.endswith(": tiles")]
    print("tile layer editable:", [layer.editable for layer in tiles])
    widget = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Analyse")
    _wait(app, lambda: widget.encoders_listed)

    _analyse(viewer, app, widget, run_folder=result.abmil_run)  # the run's map alone (ground truth hidden)
    viewer.reset_view()
    _wait(app, lambda: True)
    app.processEvents()
    time.sleep(0.5)
    app.processEvents()
    _save(viewer, "napari-mil-heatmap.png")
    _region_shot(viewer, app, widget)

    widget.mode.value = ZERO_SHOT
    # a zero-shot run opens on its best-class map alone, with its legend
    _analyse(viewer, app, widget, slide_text_model=result.slide_text_model, prompts_file=result.prompts)
    viewer.reset_view()
    app.processEvents()
    time.sleep(0.5)
    app.processEvents()
    _save(viewer, "napari-zero-shot.png")

    _similarity_shot(viewer, app, widget)
    viewer.close()


def _region_shot(viewer, app, widget) -> None:
    """A 24-sided polygon (level-0 centre (1000, 1000), radius 650 px) drawn on the slide, then analysed."""
    import numpy as np

    from slidescope.viewer._layers import level0_to_world

    angle = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    ring = np.stack([1000 + 650 * np.cos(angle), 1000 + 650 * np.sin(angle)], axis=1)
    region = level0_to_world(ring, widget.last_result.mpp)
    shapes = viewer.add_shapes(
        [region], shape_type="polygon", name="region", edge_color="cyan", face_color="transparent", units="um"
    )
    shapes.edge_width = 8.0
    widget.analyse_regions()
    viewer.layers.selection.active = shapes
    viewer.reset_view()
    app.processEvents()
    time.sleep(0.5)
    app.processEvents()
    _save(viewer, "napari-region.png")
    shapes.visible = False


def _similarity_shot(viewer, app, widget) -> None:
    """Click (as :meth:`AnalyseWidget.similar_at` does for a click) the tile with the most tumour."""
    import numpy as np

    from slidescope.features import open_store
    from slidescope.viewer._layers import level0_to_world

    store = open_store(widget.last_result.store)  # the click's run hides the best-class map and its legend
    i = int(np.argmax(store.scores("ground-truth/tumour-fraction")))
    extent = np.asarray(store.tile_extent, dtype=np.float64)
    widget.similar.value = True
    widget.similar_at(tuple(level0_to_world(store.coords[i] + extent / 2, widget.last_result.mpp)))
    viewer.reset_view()
    app.processEvents()
    time.sleep(0.5)
    app.processEvents()
    _save(viewer, "napari-similarity.png")


if __name__ == "__main__":
    main()
