"""napari plugin benchmark: opening and panning a 40k x 30k slide, and Analyse -> heatmap.

    xvfb-run -a -s "-screen 0 1280x1024x24" env QT_QPA_PLATFORM=xcb \\
        uv run --locked python benchmarks/bench_viewer.py [--passes 4 | --full] [--no-baseline]

Each case runs in its own process (so one case's memory never counts in another's) with a shown
napari window (software GL under Xvfb), and prints one JSON line; the parent prints the table.

Cases:
  * open:  ``viewer.open(slide, plugin="slidescope")`` on the 40,000 x 30,000 px synthetic slide
    (JPEG 256 px tiles, /4 pyramid; generated once into benchmarks/.cache), until the first frame
    is rendered (a canvas screenshot: the GL frame the user sees), for the first slide of the
    session (imports included) and again with the modules imported. Then the view is zoomed to full
    resolution (one screen pixel per level-0 pixel) and panned over ``--passes`` horizontal sweeps
    of the whole width (``--full``: every row, i.e. the whole slide), one rendered frame per
    window-sized step. Reported: time to first frame, peak RSS while opening, RSS after panning, and
    the level-0 pixels decoded while panning (what an eager reader would have to keep).
  * baseline: what a user without a lazy reader does: ``tifffile.imread`` of level 0 (before
    napari even gets the array), time and peak RSS.
  * analyse: the Analyse widget on the sample slide with its cached he-descriptor embeddings and an
    ABMIL checkpoint, from pressing Analyse to the heatmap layers in the viewer; the first run pays
    the imports (torch, lightning), the second is what every later run costs.

``--steps`` times instead a pathologist's work in the widget, step by step, each slide in its own process
with an empty store folder: open the slide (to the first rendered frame), Analyse with an ABMIL checkpoint
(split by the widget's own progress steps: tissue, tiles, he-descriptor embeddings, MIL heatmap), zero-shot
on the cached embeddings (a slide-text model on he-descriptor: the demo's, else a tiny untrained one; the
timing does not depend on its training), a similarity click on the tile of highest attention, a region
analysis (MIL and zero-shot) on a rectangle over the middle of the tissue. Slides: the sample (File > Open
Sample), CMU-1-Small-Region.svs (/work/shared/data/slides or $SLIDESCOPE_CMU_SMALL) and a synthetic slide of
CMU-1's size (46,000 x 32,914 px at 0.499 µm/px; the real CMU-1 is not available offline).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / ".cache"
SLIDE = (40_000, 30_000, 0.5)


def synthetic(width: int, height: int, mpp: float) -> Path:
    """The synthetic slide bench_wsi.py uses too (same parameters, same cached file)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_wsi import synthetic as make

    return make(width, height, mpp)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _app_wait(viewer, seconds: float = 0.05) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.005)


# -- cases (each in a child process) -----------------------------------------------------------------


def case_open(passes: int | None) -> dict:
    import napari
    import numpy as np

    from slidescope.viewer import _reader

    path = synthetic(*SLIDE)
    decoded = {"level0": 0}
    original = _reader.SlideLevel.read

    def counting(self, x, y, width, height):
        if self.level == 0:
            decoded["level0"] += width * height
        return original(self, x, y, width, height)

    _reader.SlideLevel.read = counting
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 1000)
    _app_wait(viewer, 0.5)
    before = rss_mb()
    t0 = time.perf_counter()
    (layer,) = viewer.open(str(path), plugin="slidescope")
    frame = viewer.screenshot(canvas_only=True, flash=False)
    first_frame = time.perf_counter() - t0
    peak_open = peak_mb()
    assert frame[..., :3].mean() > 40, "the first frame is black"
    after_open = rss_mb()
    # again, now that the modules are imported (this environment may compile them on every start)
    viewer.layers.clear()
    _app_wait(viewer, 0.3)
    t0 = time.perf_counter()
    (layer,) = viewer.open(str(path), plugin="slidescope")
    viewer.screenshot(canvas_only=True, flash=False)
    first_frame_warm = time.perf_counter() - t0

    camera = viewer.scene.camera
    mpp = layer.scale[-1]
    camera.zoom = 1.0 / mpp  # one screen pixel per level-0 pixel
    h_px, w_px = (int(v) for v in viewer.canvas.size)
    height, width = layer.data[0].shape[:2]
    rows = (
        list(range(h_px // 2, height, h_px))
        if passes is None
        else [int(v) for v in np.linspace(h_px / 2, height - h_px / 2, passes)]
    )
    cols = list(range(w_px // 2, width, w_px))
    positions = [(r, c) for k, r in enumerate(rows) for c in (cols if k % 2 == 0 else cols[::-1])]
    t0 = time.perf_counter()
    rss_max = 0.0
    levels = set()
    for r, c in positions:
        camera.center = (r * mpp, c * mpp)
        viewer.screenshot(canvas_only=True, flash=False)  # a rendered frame at this position
        levels.add(layer.data_level)
        rss_max = max(rss_max, rss_mb())
    pan_seconds = time.perf_counter() - t0
    _app_wait(viewer, 0.5)
    viewer.close()
    return {
        "slide": path.name,
        "size": [width, height],
        "levels": len(layer.data),
        "first_frame_s": first_frame,
        "first_frame_warm_s": first_frame_warm,
        "rss_before_open_mb": before,
        "peak_rss_open_mb": peak_open,
        "rss_after_open_mb": after_open,
        "positions": len(positions),
        "pan_s": pan_seconds,
        "levels_while_panning": sorted(levels),
        "level0_decoded_mb": decoded["level0"] * 3 / 2**20,
        "rss_max_panning_mb": rss_max,
        "rss_after_panning_mb": rss_mb(),
        "canvas": [w_px, h_px],
    }


def case_baseline() -> dict:
    import tifffile

    path = synthetic(*SLIDE)
    before = rss_mb()
    t0 = time.perf_counter()
    image = tifffile.imread(path, level=0)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "shape": list(image.shape),
        "nbytes_mb": image.nbytes / 2**20,
        "rss_before_mb": before,
        "peak_rss_mb": peak_mb(),
    }


def _checkpoint() -> Path:
    """An ABMIL checkpoint on he-descriptor embeddings: the demo's if it ran, else an untrained one."""
    demo = REPO / "slidescope-demo" / "runs" / "abmil" / "fold0" / "best.ckpt"
    if demo.is_file():
        return demo
    path = CACHE / "viewer-bench" / "abmil" / "best.ckpt"
    if not path.is_file():
        import torch

        from slidescope.mil.task import MILTask

        torch.manual_seed(0)
        task = MILTask(
            "abmil",
            {"embed_dim": 64, "attn_dim": 32, "dropout": 0.1},
            in_dim=98,
            num_classes=2,
            class_names=["normal", "tumour"],
            encoder="he-descriptor",
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict()}, path)
    return path


def case_analyse() -> dict:
    import napari

    from slidescope.viewer._analyse_widget import AnalyseWidget

    os.environ.setdefault("SLIDESCOPE_CACHE", str(CACHE / "viewer-bench"))
    checkpoint = _checkpoint()
    viewer = napari.Viewer(show=True)
    t0 = time.perf_counter()
    viewer.open_sample("slidescope", "sample_slide")  # makes (first time) or reuses the cached store
    sample_s = time.perf_counter() - t0
    widget = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Analyse")
    widget.checkpoint.value = checkpoint
    runs = []
    for _ in range(2):
        widget.start()
        while widget.busy:
            _app_wait(viewer, 0.01)
        if widget.last_result is None:
            raise RuntimeError(f"analysis failed: {widget.status.value}")
        runs.append(widget.last_seconds)
        assert widget.last_result.reused_embeddings
    while not widget.encoders_listed:
        _app_wait(viewer, 0.05)
    viewer.close()
    return {
        "open_sample_s": sample_s,
        "analyse_cold_s": runs[0],
        "analyse_warm_s": runs[1],
        "checkpoint": str(checkpoint.relative_to(REPO))
        if checkpoint.is_relative_to(REPO)
        else str(checkpoint),
    }


# -- a pathologist's steps ---------------------------------------------------------------------------------

CMU1 = (46_000, 32_914, 0.499)


def _slide_text_model() -> Path:
    """A slide-text model on 98-d he-descriptor tiles: the demo's if it ran, else a tiny untrained one."""
    demo = REPO / "slidescope-demo" / "runs" / "slidetext" / "model"
    if demo.is_dir():
        return demo
    path = CACHE / "viewer-bench" / "slidetext" / "model"
    if not path.is_dir():
        import torch

        from slidescope.vlm.model import SlideTextModel
        from slidescope.vlm.slide_encoder import PerceiverSlideEncoderConfig
        from slidescope.vlm.text import SmallTextTower

        torch.manual_seed(0)
        tower = SmallTextTower.from_texts(
            ["invasive carcinoma sheets of atypical cells", "benign stroma collagen"],
            width=32,
            depth=1,
            heads=2,
        )
        SlideTextModel(PerceiverSlideEncoderConfig.tiny(context_dim=98), tower, dim_latents=16).save(path)
    return path


def _timed(viewer, fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    viewer.screenshot(canvas_only=True, flash=False)  # until the frame that shows it is rendered
    return time.perf_counter() - t, out


def _press_analyse(viewer, widget) -> dict[str, float]:
    """Press Analyse and wait; the seconds from the press to each progress step the widget shows, and to done."""
    seen: dict[str, float] = {}
    shown = widget._on_progress
    t0 = time.perf_counter()

    def record(progress) -> None:
        now = time.perf_counter() - t0
        seen.setdefault(progress.step, now)
        if progress.step == "extracting embeddings" and progress.total:
            seen.setdefault("tiles cut", now)  # the grid is made: extraction starts reporting counts
        shown(progress)

    widget._on_progress = record
    widget.start()
    while widget.busy:
        _app_wait(viewer, 0.01)
    widget._on_progress = shown
    if widget.last_result is None:
        raise RuntimeError(f"analysis failed: {widget.status.value}")
    viewer.screenshot(canvas_only=True, flash=False)
    seen["done"] = time.perf_counter() - t0
    return seen


def case_steps(which: str) -> dict:
    import napari
    import numpy as np

    from slidescope.features import open_store
    from slidescope.viewer._analyse_widget import ZERO_SHOT, AnalyseWidget
    from slidescope.viewer._layers import level0_to_world

    import shutil
    import tempfile

    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="viewer-steps-", dir=CACHE))  # removed at the end
    os.environ["SLIDESCOPE_CACHE"] = str(work)
    model, prompts = (
        _checkpoint(),
        "tumour: invasive carcinoma; sheets of atypical cells\nnormal: benign stroma",
    )
    slide_text = _slide_text_model()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    out: dict = {"slide": which}
    if which == "sample":
        out["open_s"], _ = _timed(viewer, lambda: viewer.open_sample("slidescope", "sample_slide"))
    else:
        path = synthetic(*CMU1) if which == "cmu1-size" else Path(which)
        out["open_s"], _ = _timed(viewer, lambda: viewer.open(str(path), plugin="slidescope"))
    widget = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Analyse")
    while not widget.encoders_listed:
        _app_wait(viewer, 0.05)
    widget.store.value = work / "stores"  # empty: tissue, tiles and embeddings are computed here
    widget.checkpoint.value = model
    steps = _press_analyse(viewer, widget)
    out["analyse_steps_s"] = steps
    result = widget.last_result
    store = open_store(result.store)
    out["tiles"] = int(store.n_tiles)
    out["dimensions"] = list(store.attrs["slide"]["dimensions"])
    widget.mode.value = ZERO_SHOT
    widget.slide_text_model.value = slide_text
    widget.prompts_text.value = prompts
    out["zero_shot_s"] = _press_analyse(viewer, widget)["done"]
    attention = np.asarray(store.scores(f"{result.scores[0]}"), dtype=np.float64)
    i = int(np.nanargmax(attention))
    centre = level0_to_world(store.coords[i] + np.asarray(store.tile_extent) / 2, result.mpp)
    widget.similar.value = True
    out["similarity_click_s"], _ = _timed(viewer, lambda: widget.similar_at(tuple(centre)))
    lo, hi = store.coords.min(axis=0), store.coords.max(axis=0) + np.asarray(store.tile_extent)
    mid, half = (lo + hi) / 2, (hi - lo) / 4
    box = np.array(
        [mid - half, [mid[0] + half[0], mid[1] - half[1]], mid + half, [mid[0] - half[0], mid[1] + half[1]]]
    )
    shapes = viewer.add_shapes(
        [level0_to_world(box, result.mpp)], shape_type="polygon", name="region", units="um"
    )
    viewer.layers.selection.active = shapes
    out["region_zero_shot_s"], regions = _timed(viewer, widget.analyse_regions)
    widget.mode.value = "MIL checkpoint"
    out["region_mil_s"], regions = _timed(viewer, widget.analyse_regions)
    out["region_tiles"] = int(regions[0].n_tiles) if regions else 0
    viewer.close()
    shutil.rmtree(work, ignore_errors=True)
    return out


def steps_table(rows: list[dict]) -> None:
    names = [
        ("open (to the first frame)", lambda r: r["open_s"]),
        ("Analyse: inputs + tissue", lambda r: r["analyse_steps_s"].get("tiling", float("nan"))),
        (
            "  tiles cut",
            lambda r: (
                r["analyse_steps_s"].get("tiles cut", float("nan")) - r["analyse_steps_s"].get("tiling", 0)
            ),
        ),
        (
            "  he-descriptor embeddings",
            lambda r: r["analyse_steps_s"]["scoring"] - r["analyse_steps_s"].get("tiles cut", 0),
        ),
        (
            "  MIL heatmap (scoring + layers)",
            lambda r: r["analyse_steps_s"]["done"] - r["analyse_steps_s"]["scoring"],
        ),
        ("  Analyse in all", lambda r: r["analyse_steps_s"]["done"]),
        ("zero-shot (cached embeddings)", lambda r: r["zero_shot_s"]),
        ("similarity click", lambda r: r["similarity_click_s"]),
        ("region, zero-shot", lambda r: r["region_zero_shot_s"]),
        ("region, MIL", lambda r: r["region_mil_s"]),
    ]
    print(f"{'step (seconds)':36}" + "".join(f"{Path(r['slide']).name[:22]:>24}" for r in rows))
    print(
        f"{'slide size (px), tiles':36}"
        + "".join(f"{'%dx%d, %d' % (*r['dimensions'], r['tiles']):>24}" for r in rows)
    )
    for name, get in names:
        print(f"{name:36}" + "".join(f"{get(r):>24.2f}" for r in rows))


# -- orchestration -------------------------------------------------------------------------------------


def child(case: str, *extra: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", case, *extra], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"case {case} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    global SLIDE
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--case", choices=["make", "open", "baseline", "analyse", "steps"], help=argparse.SUPPRESS
    )
    parser.add_argument("--slide", default="sample", help=argparse.SUPPRESS)
    parser.add_argument(
        "--steps",
        nargs="*",
        metavar="SLIDE",
        help="time a pathologist's steps instead, on these slides (default: sample, CMU-1-Small-Region, "
        "a synthetic slide of CMU-1's size; 'sample' and 'cmu1-size' name those two)",
    )
    parser.add_argument(
        "--passes", type=int, default=4, help="horizontal sweeps across the slide at full resolution"
    )
    parser.add_argument("--full", action="store_true", help="pan over the whole slide (every row)")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the tifffile.imread baseline (3.4 GB)"
    )
    parser.add_argument(
        "--size",
        default=f"{SLIDE[0]}x{SLIDE[1]}",
        help="synthetic slide W x H in px (e.g. 100000x100000; use --no-baseline for big ones)",
    )
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    SLIDE = (w, h, SLIDE[2])
    if args.case == "make":
        print(json.dumps({"slide": str(synthetic(*SLIDE))}))
        return
    if args.case == "open":
        print(json.dumps(case_open(None if args.full else args.passes)))
        return
    if args.case == "baseline":
        print(json.dumps(case_baseline()))
        return
    if args.case == "analyse":
        print(json.dumps(case_analyse()))
        return
    if args.case == "steps":
        print(json.dumps(case_steps(args.slide)))
        return
    if args.steps is not None:
        cmu = os.environ.get("SLIDESCOPE_CMU_SMALL", "/work/shared/data/slides/CMU-1-Small-Region.svs")
        measured = []
        for which in args.steps or ["sample", cmu, "cmu1-size"]:
            t = time.perf_counter()
            measured.append(child("steps", "--slide", which))
            print(
                json.dumps(measured[-1]), f"({time.perf_counter() - t:.0f} s with start-up)", file=sys.stderr
            )
        steps_table(measured)
        return

    # generated in a child: Linux carries a process's peak RSS (ru_maxrss) into the children it starts, so
    # making a 100k x 100k slide here would inflate the children's peak-memory numbers
    child("make", "--size", args.size)
    extra = ["--full"] if args.full else ["--passes", str(args.passes)]
    ours = child("open", *extra, "--size", args.size)
    base = None if args.no_baseline else child("baseline", "--size", args.size)
    analyse = child("analyse")

    w, h = ours["size"]
    grow = ours["peak_rss_open_mb"] - ours["rss_before_open_mb"]
    rows = [
        (
            "time to first frame (first slide of the session)",
            f"{ours['first_frame_s']:.2f} s",
            f"{base['seconds']:.1f} s (array only)" if base else "-",
        ),
        ("  (next slides, modules already imported)", f"{ours['first_frame_warm_s']:.2f} s", ""),
        (
            "peak RSS of the process while opening",
            f"{ours['peak_rss_open_mb']:.0f} MB",
            f"{base['peak_rss_mb']:.0f} MB" if base else "-",
        ),
        (
            "  of which opening the slide (peak - before)",
            f"{grow:.0f} MB",
            f"{base['peak_rss_mb'] - base['rss_before_mb']:.0f} MB" if base else "-",
        ),
        ("RSS after opening", f"{ours['rss_after_open_mb']:.0f} MB", ""),
        ("panning at full resolution", f"{ours['positions']} frames in {ours['pan_s']:.0f} s", ""),
        ("  level-0 pixels decoded while panning", f"{ours['level0_decoded_mb']:.0f} MB", ""),
        (
            "  RSS max while panning / after",
            f"{ours['rss_max_panning_mb']:.0f} / {ours['rss_after_panning_mb']:.0f} MB",
            "",
        ),
        (
            "Analyse -> heatmap, cached embeddings",
            f"{analyse['analyse_warm_s']:.2f} s",
            f"(first run, with imports: {analyse['analyse_cold_s']:.1f} s)",
        ),
    ]
    print(
        f"\nnapari plugin, {ours['slide']} ({w} x {h} px, {ours['levels']} levels), canvas "
        f"{ours['canvas'][0]} x {ours['canvas'][1]} px, software GL (Xvfb)"
    )
    print("-" * 118)
    print(f"{'':50}{'ours (lazy, native tiles)':>30}   {'baseline: tifffile.imread level 0':<35}")
    for name, value, other in rows:
        print(f"{name:50}{value:>30}   {other:<35}")
    print("-" * 118)
    if base:
        b_grow = base["peak_rss_mb"] - base["rss_before_mb"]
        print(
            f"ratios: the baseline needs {b_grow / max(grow, 1.0):.0f}x the memory to open the slide "
            f"({b_grow:.0f} vs {grow:.0f} MB) and {base['seconds'] / ours['first_frame_s']:.0f}x the time "
            f"({base['seconds']:.1f} s for the array alone vs {ours['first_frame_s']:.2f} s to a rendered frame)"
        )
    print(
        f"levels shown while panning: {ours['levels_while_panning']}; open sample: {analyse['open_sample_s']:.1f} s; "
        f"checkpoint: {analyse['checkpoint']}"
    )


if __name__ == "__main__":
    main()
