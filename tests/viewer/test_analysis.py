"""The Analyse job without Qt: cached embeddings, scores in the store, bad inputs, cancel and resume."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from realdata import real_file

from slidescope.errors import InvalidParameterError, SlidescopeError
from slidescope.features import open_store
from slidescope.viewer._analysis import AnalysisRequest, AnalysisResult, Progress, run_analysis


def drive(
    request: AnalysisRequest, cancel: threading.Event | None = None, on_progress=None
) -> tuple[list[Progress], AnalysisResult]:
    """Run the job generator to the end, as the widget's worker does; returns (progress steps, result)."""
    steps: list[Progress] = []
    job = run_analysis(request, cancel=cancel)
    while True:
        try:
            step = next(job)
        except StopIteration as stop:
            return steps, stop.value
        steps.append(step)
        if on_progress is not None:
            on_progress(step)


@pytest.fixture
def private_store(sample, tmp_path: Path) -> Path:
    """A copy of the sample's store folder (tests write scores into it)."""
    return Path(shutil.copytree(sample.stores, tmp_path / "stores"))


def test_mil_on_cached_embeddings_writes_attention(sample, checkpoint: Path, private_store: Path) -> None:
    steps, result = drive(AnalysisRequest(slide=sample.slide, checkpoint=checkpoint, store=private_store))
    assert [s.step for s in steps] == [
        "checking the inputs",
        "finding the tissue",
        "scoring",
    ]  # no extraction
    assert result.reused_embeddings and not result.cancelled
    assert result.scores == ["abmil/attention"] and set(result.probabilities) == {"normal", "tumour"}
    assert "abmil: predicted" in result.summary
    store = open_store(private_store / "sample_slide.zarr")
    attention = store.scores("abmil/attention")
    assert attention.shape == (store.n_tiles,) and np.isclose(attention.sum(), 1.0, atol=1e-3)
    assert not result.tissue.is_empty and result.mpp == (0.5, 0.5)


def test_zero_shot_with_typed_prompts_writes_one_map_per_class(
    sample, slide_text_model: Path, private_store: Path
) -> None:
    request = AnalysisRequest(
        slide=sample.slide,
        store=private_store,
        slide_text_model=slide_text_model,
        prompts="tumour: invasive carcinoma; sheets of atypical cells\nnormal: benign stroma",
    )
    _, result = drive(request)
    assert result.classes == ["tumour", "normal"]
    assert result.scores == ["zero-shot/tumour", "zero-shot/normal"]
    store = open_store(private_store / "sample_slide.zarr")
    sims = np.stack([store.scores(s) for s in result.scores], axis=1)
    assert sims.shape == (store.n_tiles, 2) and np.all(np.abs(sims) <= 1 + 1e-5)
    assert sum(result.probabilities.values()) == pytest.approx(1.0)


def test_bad_inputs_raise_slidescope_errors_that_say_what_to_do(
    sample, checkpoint, uni_checkpoint, slide_text_model, cmu_small: Path
) -> None:
    from slidescope.features.store import StoreError
    from slidescope.mil.task import EncoderMismatchError

    with pytest.raises(EncoderMismatchError, match=r"trained on 'uni' 1024-d.*extract with --encoder uni"):
        drive(AnalysisRequest(slide=sample.slide, checkpoint=uni_checkpoint))
    with pytest.raises(InvalidParameterError, match="one class per line"):
        drive(AnalysisRequest(slide=sample.slide, prompts="   ", slide_text_model=slide_text_model))
    with pytest.raises(InvalidParameterError, match="needs a slide-text model"):
        drive(AnalysisRequest(slide=sample.slide, prompts="a: x\nb: y"))
    # the sample's store, given for another slide
    with pytest.raises(
        StoreError, match=r"made from sample_slide.tiff .* not from CMU-1-Small-Region.svs: choose"
    ):
        drive(AnalysisRequest(slide=cmu_small, checkpoint=checkpoint, store=sample.store))
    with pytest.raises(SlidescopeError, match="cannot open"):
        drive(AnalysisRequest(slide=real_file("fixtures/not-a-tiff.svs"), checkpoint=checkpoint))


def _dark_slide(path: Path) -> Path:
    """A small fluorescence-like slide stored as 8-bit RGB (near-black field, blue nuclei): a JPEG pyramid."""
    import tifffile

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 12, (1024, 1024, 3)).astype(np.uint8)
    for cy, cx in rng.integers(200, 824, (150, 2)):
        rgb[cy - 6 : cy + 6, cx - 6 : cx + 6, 2] = 220
    desc = "Aperio Image Library v12.0.0\r\n1024x1024 [0,0 1024x1024] (256x256) JPEG/RGB Q=90|MPP = 0.5"
    with tifffile.TiffWriter(path) as tw:
        for level in range(3):
            img = rgb[:: 2**level, :: 2**level]
            tw.write(
                img,
                photometric="rgb",
                tile=(256, 256),
                compression="jpeg",
                description=desc if not level else None,
                metadata=None,
            )
    return path


def test_dark_background_refused_unless_the_box_is_ticked(tmp_path: Path, checkpoint: Path) -> None:
    """The widget's "Dark background" box is the viewer's --allow-darkfield: a slide that tissue detection
    refuses as fluorescence stored as RGB is analysed with it."""
    from slidescope.errors import UnsupportedSlideError

    slide = _dark_slide(tmp_path / "dark.svs")
    with pytest.raises(UnsupportedSlideError, match="fluorescence image stored as 8-bit RGB"):
        drive(AnalysisRequest(slide=slide, checkpoint=checkpoint, store=tmp_path / "stores"))
    _, result = drive(
        AnalysisRequest(slide=slide, checkpoint=checkpoint, store=tmp_path / "stores", allow_darkfield=True)
    )
    assert result.tissue is not None and result.tissue.mask.any() and result.scores


def test_cancel_stops_extraction_between_batches_and_the_next_run_finishes(
    checkpoint: Path, sample_copy: Path, tmp_path: Path
) -> None:
    slide = sample_copy
    stores = tmp_path / "stores"
    request = AnalysisRequest(slide=slide, checkpoint=checkpoint, store=stores, batch_size=8)
    cancel = threading.Event()
    seen: list[Progress] = []

    def stop_after_first_batch(step: Progress) -> None:
        seen.append(step)
        if step.step == "extracting embeddings" and step.done > 0:
            cancel.set()

    _, result = drive(request, cancel, stop_after_first_batch)
    assert result.cancelled and not result.scores
    done = max(s.done for s in seen if s.step == "extracting embeddings")
    total = max(s.total for s in seen if s.step == "extracting embeddings")
    assert 0 < done < total
    store = open_store(stores / "sample_slide.zarr")
    assert "he-descriptor" not in store.encoders()  # incomplete: never mistaken for cached
    assert store.encoders(complete_only=False) == ["he-descriptor"]
    # the sample's 93 tiles are one chunk of 1024: nothing is kept, and the message says so
    assert result.kept_tiles == (0, total) and result.chunk_tiles == 1024
    assert "nothing is kept" in result.cancel_message() and "from tile 0" in result.cancel_message()
    # the next run finishes the embeddings (resuming from the last whole chunk) and scores
    _, again = drive(request)
    assert not again.cancelled and not again.reused_embeddings and again.scores == ["abmil/attention"]
    assert "he-descriptor" in open_store(stores / "sample_slide.zarr").encoders()


def test_a_run_folder_scores_exactly_as_slidescope_run(
    sample, private_store: Path, tmp_path: Path, save_abmil
) -> None:
    """All folds averaged, as ``slidescope run --model RUN`` does (was: one fold's checkpoint)."""
    import pandas as pd

    from slidescope.pipeline import run

    folder = tmp_path / "runs" / "abmil2"
    for k in range(3):  # three different folds: their average differs from any one of them
        save_abmil(folder / f"fold{k}" / "best.ckpt", encoder="he-descriptor", in_dim=98, seed=k)
    store = open_store(private_store / "sample_slide.zarr")
    _, result = drive(AnalysisRequest(slide=sample.slide, checkpoint=folder, store=private_store))
    assert result.scores == ["abmil2/attention"]
    viewer_attention = np.asarray(store.scores("abmil2/attention")).copy()
    _, one = drive(
        AnalysisRequest(slide=sample.slide, checkpoint=folder / "fold0" / "best.ckpt", store=private_store)
    )
    fold0 = np.asarray(open_store(private_store / "sample_slide.zarr").scores("abmil2/attention")).copy()
    assert not np.allclose(fold0, viewer_attention, atol=1e-6)  # the ensemble is not one fold

    out = tmp_path / "out"
    done = run(
        [sample.slide],
        out=out,
        encoder="he-descriptor",
        model=[str(folder)],
        stores=str(private_store),
        heatmaps=False,
        progress=False,
    )
    assert done.exit_code == 0
    batch_attention = np.asarray(open_store(private_store / "sample_slide.zarr").scores("abmil2/attention"))
    np.testing.assert_allclose(viewer_attention, batch_attention, rtol=1e-6, atol=1e-9)
    row = pd.read_csv(out / "predictions.csv").iloc[0]
    for name, p in result.probabilities.items():
        assert row[f"mil_prob_{name}"] == pytest.approx(p, abs=1e-6)
    assert one.probabilities != result.probabilities


def test_a_cancel_reports_exactly_the_tiles_the_next_run_does_not_recompute(
    sample_copy: Path, tmp_path: Path
) -> None:
    from slidescope.features import extract_features
    from slidescope.viewer._analysis import kept_embeddings
    from slidescope.wsi import make_tile_grid, open_slide

    slide = open_slide(sample_copy)
    grid = make_tile_grid(slide, tile_size=224, mpp=0.5)
    batches = iter(range(100))

    def after_ten_batches() -> bool:
        return next(batches) >= 10

    common = {"store": tmp_path, "num_workers": 0, "progress": False, "chunk_rows": 16, "batch_size": 8}
    first = extract_features(slide, grid, "he-descriptor", should_stop=after_ten_batches, **common)
    assert first.status == "cancelled"
    (kept, total), chunk = kept_embeddings(Path(first.store), "he-descriptor")
    assert chunk == 16 and total == len(grid) and 0 < kept < total and kept % 16 == 0
    message = AnalysisResult(
        slide=sample_copy,
        store=Path(first.store),
        mpp=(0.5, 0.5),
        tissue=None,
        kept_tiles=(kept, total),
        chunk_tiles=16,
    ).cancel_message()
    assert f"{kept} of {total} tiles are kept" in message
    again = extract_features(slide, grid, "he-descriptor", **common)
    assert again.status == "done" and again.computed == total - kept  # the extractor's own resume agrees
