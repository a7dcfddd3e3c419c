"""Few-shot on the slide embeddings of a registered slide encoder (no slide-text model), slide and patient
level, through the API and ``slidescope few-shot --slide-encoder``, on the synthetic cohort's stores.

What is checked against something we did not write: the slide embeddings equal numpy's mean of each store's
tile embeddings (read with zarr through the store), the patient embeddings numpy's mean of those, and the
AUROC scikit-learn's on the returned probabilities.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from slidescope.errors import InvalidParameterError

ENCODER = "he-descriptor"


def _stores(cohort, rows) -> list[Path]:
    return [cohort.store_of(r) for r in rows]


def _numpy_means(paths: list[Path]) -> np.ndarray:
    from slidescope.features.store import open_store

    return np.stack(
        [open_store(p, encoder=ENCODER).embeddings(ENCODER).astype(np.float64).mean(0) for p in paths]
    )


def test_slide_encoder_few_shot_equals_numpy_means_and_classifies(vlm_cohort) -> None:
    from slidescope.vlm.api import few_shot

    train, test = vlm_cohort.train_rows, vlm_cohort.test_rows
    labels, test_labels = [r["label"] for r in train], [r["label"] for r in test]
    res = few_shot(
        _stores(vlm_cohort, train),
        labels,
        _stores(vlm_cohort, test),
        slide_encoder="mean",
        encoder=ENCODER,
        method="linear",
        test_labels=test_labels,
        n_bootstrap=50,
    )
    assert res.slides == [vlm_cohort.store_of(r).name.removesuffix(".zarr") for r in test]
    # the same classifier fitted on numpy's means of the stores' tiles gives the same probabilities
    ref = few_shot(
        _numpy_means(_stores(vlm_cohort, train)).astype(np.float32),
        labels,
        _numpy_means(_stores(vlm_cohort, test)).astype(np.float32),
        slide_encoder="mean",
        method="linear",
    )
    np.testing.assert_allclose(res.probs.numpy(), ref.probs.numpy(), atol=1e-5)
    y = np.array([res.class_names.index(v) for v in test_labels])
    auroc = roc_auc_score(y, res.probs.numpy()[:, 1])
    assert res.metrics["auroc"].estimate == pytest.approx(auroc)
    assert auroc >= 0.9, auroc  # tumour vs normal from mean he-descriptor tiles on the synthetic cohort


def test_patient_level_few_shot_pools_slides_and_refuses_mixed_labels(vlm_cohort) -> None:
    from slidescope.vlm.api import few_shot

    train, test = vlm_cohort.train_rows, vlm_cohort.test_rows
    patients = {vlm_cohort.store_of(r).name.removesuffix(".zarr"): r["patient"] for r in vlm_cohort.rows}
    assert len(set(patients.values())) < len(patients)  # some patients have two slides
    kw = {"slide_encoder": "mean", "encoder": ENCODER, "method": "simpleshot"}
    res = few_shot(
        _stores(vlm_cohort, train),
        [r["label"] for r in train],
        _stores(vlm_cohort, test),
        patients=patients,
        test_labels=[r["label"] for r in test],
        n_bootstrap=50,
        **kw,
    )
    test_patients = list(dict.fromkeys(r["patient"] for r in test))
    assert res.slides == test_patients

    # reference: numpy's mean over each patient's slide means, classified by the same method from arrays
    def pooled(rows):
        ids = list(dict.fromkeys(r["patient"] for r in rows))
        means = _numpy_means(_stores(vlm_cohort, rows))
        owner = np.array([ids.index(r["patient"]) for r in rows])
        x = np.stack([means[owner == k].mean(0) for k in range(len(ids))])
        lab = [next(r["label"] for r in rows if r["patient"] == p) for p in ids]
        return x.astype(np.float32), lab

    x_train, y_train = pooled(train)
    x_test, _ = pooled(test)
    ref = few_shot(x_train, y_train, x_test, slide_encoder="mean", method="simpleshot")
    np.testing.assert_allclose(res.probs.numpy(), ref.probs.numpy(), atol=1e-5)
    # a patient whose slides have different labels is an error that says what to do
    two = next(
        p for p in dict.fromkeys(r["patient"] for r in train) if sum(r["patient"] == p for r in train) == 2
    )
    labels = [r["label"] for r in train]
    first = next(i for i, r in enumerate(train) if r["patient"] == two)
    labels[first] = "normal" if labels[first] == "tumour" else "tumour"
    with pytest.raises(InvalidParameterError, match="different labels.*one label per patient"):
        few_shot(_stores(vlm_cohort, train), labels, _stores(vlm_cohort, test), patients=patients, **kw)
    with pytest.raises(InvalidParameterError, match="both the support and the test"):
        few_shot(
            _stores(vlm_cohort, train),
            [r["label"] for r in train],
            _stores(vlm_cohort, train[:4]),
            patients=patients,
            **kw,
        )


def test_slide_encoder_few_shot_refusals(vlm_cohort, tmp_path: Path) -> None:
    from slidescope.vlm.api import few_shot

    stores = _stores(vlm_cohort, vlm_cohort.train_rows[:4])
    labels = [r["label"] for r in vlm_cohort.train_rows[:4]]
    with pytest.raises(InvalidParameterError, match="no text tower"):
        few_shot(
            stores, labels, stores, slide_encoder="mean", classes={"tumour": ["tumour"], "normal": ["normal"]}
        )
    with pytest.raises(InvalidParameterError, match=r"give model= \(--model\) or slide_encoder="):
        few_shot(stores, labels, stores)
    # the patch encoder a slide encoder needs is checked against every store (random weights: no download)
    from slidescope.features.slide_encoders import create_slide_encoder

    feather = create_slide_encoder("feather-uni2", pretrained=False)
    with pytest.raises(InvalidParameterError, match="feather-uni2.*uni2-h"):
        few_shot(stores, labels, stores, slide_encoder=feather)


def test_cli_few_shot_with_slide_encoder_slide_and_patient_level(vlm_cohort, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from slidescope.cli import app

    base = [
        "few-shot",
        "--slide-encoder",
        "mean",
        "--encoder",
        ENCODER,
        "--train",
        str(vlm_cohort.train_manifest),
        "--test",
        str(vlm_cohort.test_manifest),
        "--stores",
        str(vlm_cohort.store),
        "--method",
        "simpleshot",
    ]
    runner = CliRunner()
    res = runner.invoke(app, [*base, "--shots", "3", "--out", str(tmp_path / "slides.csv")])
    assert res.exit_code == 0, res.output
    assert "6 support slides" in res.output and "auroc:" in res.output
    with open(tmp_path / "slides.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(vlm_cohort.test_rows) and {"prob_normal", "prob_tumour"} <= set(table[0])
    res = runner.invoke(
        app, [*base, "--patient-level", "--shots", "3", "--out", str(tmp_path / "patients.csv")]
    )
    assert res.exit_code == 0, res.output
    with open(tmp_path / "patients.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["slide"] for r in table] == list(dict.fromkeys(r["patient"] for r in vlm_cohort.test_rows))
    # 3 patients per class: their slides (some patients have two) are the support set
    drawn = int(res.output.split(" support slides")[0].rsplit(" ", 1)[-1])
    assert 6 <= drawn <= 12, res.output
    prompts = tmp_path / "p.yaml"
    prompts.write_text("classes:\n  tumour: [tumour]\n  normal: [normal]\n")
    res = runner.invoke(app, [*base, "--prompts", str(prompts)])
    assert isinstance(res.exception, InvalidParameterError) and "no text tower" in str(res.exception)
