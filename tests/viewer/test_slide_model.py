"""The Analyse widget's "Slide encoder + few-shot" model: a slide encoder's embedding of the open slide,
classified against a labelled support set of synthetic slides' stores.

What is checked against something we did not write into the widget: its probabilities equal those of
:func:`slidescope.vlm.api.few_shot` called directly on the same stores (whose ``mean`` slide embedding
tests/vlm/test_fewshot_slide_encoder.py checks against numpy), bit for bit; its errors are napari toasts.
"""

from __future__ import annotations

import csv
import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from slidescope.errors import InvalidParameterError

ENCODER = "he-descriptor"
WAIT_MS = 120_000  # the first analysis imports torch and lightning on a loaded 2-core machine


@dataclass(frozen=True)
class Support:
    open_slide: Path  # not in the support CSV
    labels: Path  # slide,label of the other slides
    manifest: Path  # slide,label,patient of every slide (the open one included)
    stores: Path
    rows: list[dict[str, str]]
    open_row: dict[str, str]
    rest: list[dict[str, str]]  # the rows of support.csv


def _write(path: Path, rows: list[dict[str, str]], columns: list[str]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def support(tmp_path_factory: pytest.TempPathFactory) -> Support:
    """Ten synthetic slides with he-descriptor stores: one to open in the viewer, the nine others the support."""
    from slidescope.features.extract import extract_slides
    from slidescope.synthetic import make_synthetic_cohort

    root = tmp_path_factory.mktemp("few_shot_support")
    manifest = make_synthetic_cohort(root / "cohort", n_slides=10, width=1024, height=768, seed=3)
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    # the slide to open: one of a patient with two slides (its sibling is in the support CSV without patients)
    first = next(i for i, r in enumerate(rows) if sum(q["patient"] == r["patient"] for q in rows) == 2)
    rest = rows[:first] + rows[first + 1 :]
    assert {r["label"] for r in rest} == {"tumour", "normal"}
    stores = root / "stores"
    done = extract_slides(
        [manifest.parent / r["slide"] for r in rows], ENCODER, store=stores, num_workers=0, progress=False
    )
    assert all(r.status == "done" for r in done), [(r.slide, r.error) for r in done]
    return Support(
        open_slide=manifest.parent / rows[first]["slide"],
        open_row=rows[first],
        labels=_write(manifest.parent / "support.csv", rest, ["slide", "label"]),
        manifest=manifest,
        stores=stores,
        rows=rows,
        rest=rest,
    )


def _support_stores(support: Support, rows: list[dict[str, str]]) -> list[Path]:
    from slidescope.features.store import store_path

    return [Path(store_path(support.stores, support.manifest.parent / r["slide"])) for r in rows]


# -- without Qt -----------------------------------------------------------------------------------


def test_widget_defaults_are_those_of_few_shot_and_its_cli() -> None:
    from slidescope.cli._vlm import few_shot as cli_few_shot
    from slidescope.viewer._slide_model import DEFAULT_METHOD, FEW_SHOT_METHODS, slide_encoder_names
    from slidescope.vlm import api

    assert FEW_SHOT_METHODS == api.FEW_SHOT_METHODS
    assert DEFAULT_METHOD == inspect.signature(api.few_shot).parameters["method"].default
    assert DEFAULT_METHOD == inspect.signature(cli_few_shot).parameters["method"].default.default
    names = slide_encoder_names()
    assert "mean" in names and "feather-uni2" in names and "prism" not in names  # PRISM: publisher's code


def test_the_open_slide_and_its_patient_are_left_out_of_the_support(support: Support) -> None:
    from slidescope.viewer._slide_model import FewShotRequest, prepare_support

    request = FewShotRequest("mean", labels=support.manifest, stores=support.stores)
    prepared = prepare_support(request, support.open_slide, ENCODER)
    patient = support.open_row["patient"]
    kept = [r for r in support.rows if r["patient"] != patient]
    assert prepared.stores == _support_stores(support, kept)
    assert prepared.labels == [r["label"] for r in kept]
    assert prepared.left_out == len(support.rows) - len(kept) == 2  # the open slide and its sibling
    assert prepared.patients is not None and prepared.test_patient == patient
    assert set(prepared.patients.values()) == {r["patient"] for r in kept}


def test_run_analysis_equals_few_shot_on_the_stores(support: Support, tmp_path: Path) -> None:
    """The whole path without Qt, at patient level (the manifest's patient column): extraction of the open
    slide, its mean embedding, few-shot against its patient-pooled support."""
    from slidescope.viewer._analysis import AnalysisRequest, run_analysis
    from slidescope.viewer._slide_model import FewShotRequest
    from slidescope.vlm.api import few_shot

    request = AnalysisRequest(
        slide=support.open_slide,
        encoder=ENCODER,
        store=tmp_path / "stores",
        few_shot=FewShotRequest("mean", labels=support.manifest, stores=support.stores, method="simpleshot"),
    )
    runner = run_analysis(request)
    while True:
        try:
            next(runner)
        except StopIteration as stop:
            result = stop.value
            break
    patient = support.open_row["patient"]
    kept = [r for r in support.rows if r["patient"] != patient]
    stores = _support_stores(support, kept)
    patients = {p.name.removesuffix(".zarr"): r["patient"] for p, r in zip(stores, kept, strict=True)}
    patients[result.store.name.removesuffix(".zarr")] = patient
    ref = few_shot(
        stores,
        [r["label"] for r in kept],
        [result.store],
        slide_encoder="mean",
        encoder=ENCODER,
        method="simpleshot",
        patients=patients,
    )
    assert result.probabilities == dict(zip(ref.class_names, ref.probs[0].tolist(), strict=True))
    assert result.scores == [] and "left out" in result.summary


# -- in napari --------------------------------------------------------------------------------------


def _widget(make_napari_viewer, support: Support, tmp_path: Path, **few_shot):
    from slidescope.viewer._analyse_widget import AnalyseWidget
    from slidescope.viewer._slide_model_widget import FEW_SHOT

    viewer = make_napari_viewer()
    viewer.open(str(support.open_slide), plugin="slidescope")
    widget = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Analyse")
    widget.mode.value = FEW_SHOT
    widget.store.value = tmp_path / "stores"
    widget.few_shot.labels.value = support.labels
    widget.few_shot.stores.value = support.stores
    for name, value in few_shot.items():
        getattr(widget.few_shot, name).value = value
    return viewer, widget


def _finish(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: widget.encoders_listed, timeout=WAIT_MS)
    qtbot.wait(50)


def test_widget_probabilities_equal_few_shot_on_the_same_stores(
    make_napari_viewer, qtbot, support: Support, tmp_path: Path, notifications
) -> None:
    from slidescope.features import open_store
    from slidescope.vlm.api import few_shot

    viewer, widget = _widget(make_napari_viewer, support, tmp_path)
    assert widget.few_shot.method.value == "gda" and widget.few_shot.slide_encoder.value == "mean"
    assert not widget.few_shot.slide_encoder.native.isHidden() and widget.checkpoint.native.isHidden()
    assert widget.start() is not None
    _finish(qtbot, widget)
    result = widget.last_result
    assert result is not None, (widget.status.value, notifications)
    assert not result.reused_embeddings and result.store.parent == tmp_path / "stores"
    rows = support.rest
    ref = few_shot(
        _support_stores(support, rows),
        [r["label"] for r in rows],
        [result.store],
        slide_encoder="mean",
        encoder=ENCODER,
        method="gda",
    )
    expected = dict(zip(ref.class_names, ref.probs[0].tolist(), strict=True))
    assert result.probabilities == expected  # exact: the same computation on the same stores
    best = max(expected, key=lambda k: expected[k])
    assert widget.summary.value.startswith(f"mean gda few-shot: predicted {best} (")
    assert "no per-tile map" in widget.status.value and widget.progress.value == 100
    assert not [m for s, m in notifications if s == "error"]
    # no per-tile map: the run adds the tissue and the tile grid, no heatmap
    added = [layer.name.rsplit(" · ", 1)[-1] for layer in viewer.layers if "run 1" in layer.name]
    assert added == ["tiles"], [layer.name for layer in viewer.layers]
    grid = np.asarray(viewer.layers[-1].data)  # tile i + 1 where tile i lies
    assert np.unique(grid[grid > 0]).size == len(open_store(result.store).coords)


@pytest.mark.parametrize("case", ["other-encoder", "missing-weights", "one-class"])
def test_few_shot_bad_input_is_a_notification(
    make_napari_viewer, qtbot, support: Support, tmp_path: Path, notifications, case: str
) -> None:
    viewer, widget = _widget(make_napari_viewer, support, tmp_path)
    if (
        case == "other-encoder"
    ):  # the open slide would be embedded with UNI, the support stores hold he-descriptor
        widget._require_encoder("uni")
        expected = "not 'uni'"
    elif case == "missing-weights":
        widget.few_shot.slide_encoder.value = "feather-uni2"
        assert widget.encoder.value == "uni2-h" and "Encoder set to uni2-h" in widget.few_shot.note.value
        widget.few_shot.weights.value = tmp_path / "no-such-weights.pt"
        expected = "no weights file at"
    else:
        one = [r for r in support.rest if r["label"] == "tumour"]
        widget.few_shot.labels.value = _write(tmp_path / "tumour.csv", one, ["slide", "label"])
        expected = "needs at least one slide of each of two or more classes"
    widget.start()
    _finish(qtbot, widget)
    errors = [m for s, m in notifications if s == "error"]
    assert len(errors) == 1 and errors[0].startswith("slidescope: ") and expected in errors[0], notifications
    assert widget.last_result is None and widget.run_button.enabled and "failed" in widget.status.value
    assert not (tmp_path / "stores").exists()  # refused before anything was extracted


def test_prepare_support_refusals(support: Support, tmp_path: Path) -> None:
    from slidescope.viewer._slide_model import FewShotRequest, prepare_support

    with pytest.raises(InvalidParameterError, match="choose the support set"):
        prepare_support(FewShotRequest("mean"), support.open_slide, ENCODER)
    bad = tmp_path / "bad.csv"
    bad.write_text("slide,label\nslides/x.svs,\n")
    with pytest.raises(InvalidParameterError, match="have no label"):
        prepare_support(FewShotRequest("mean", bad, support.stores), support.open_slide, ENCODER)
    with pytest.raises(InvalidParameterError, match="reads 'uni2-h' tile embeddings, not 'he-descriptor'"):
        prepare_support(
            FewShotRequest("feather-uni2", support.labels, support.stores), support.open_slide, ENCODER
        )
    with pytest.raises(InvalidParameterError, match="no store for 9 support slide"):
        prepare_support(FewShotRequest("mean", support.labels, tmp_path), support.open_slide, ENCODER)
