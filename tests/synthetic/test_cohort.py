"""The labelled synthetic cohort: manifest, patients, ground truth, reports."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from slidescope.errors import InvalidParameterError
from slidescope.synthetic import make_synthetic_cohort
from slidescope.wsi import open_slide


def test_cohort(tmp_path) -> None:
    manifest = make_synthetic_cohort(tmp_path, n_slides=8, width=1024, height=768, seed=3)
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    assert sorted({r["label"] for r in rows}) == ["normal", "tumour"]
    assert sum(r["label"] == "tumour" for r in rows) == 4
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        by_patient.setdefault(r["patient"], set()).add(r["label"])
    assert len(by_patient) < 8  # some patients have two slides
    assert all(len(labels) == 1 for labels in by_patient.values())
    for r in rows:
        slide = open_slide(tmp_path / r["slide"])
        assert slide.mpp == (0.5, 0.5)
        mask = np.asarray(Image.open(tmp_path / r["tumour_mask"])) > 0
        assert mask.any() == (r["label"] == "tumour")
        words = r["report"].lower()
        if r["label"] == "tumour":
            assert any(w in words for w in ("carcinoma", "tumour", "malignant", "neoplastic"))
        else:
            assert any(
                w in words
                for w in (
                    "benign",
                    "no tumour",
                    "negative",
                    "no evidence",
                    "no neoplasm",
                    "unremarkable",
                    "non-neoplastic",
                    "without malignancy",
                )
            )
    assert len({r["report"] for r in rows}) > 4  # varied wording


def test_cohort_bad_parameters(tmp_path) -> None:
    with pytest.raises(InvalidParameterError):
        make_synthetic_cohort(tmp_path, n_slides=1)
    with pytest.raises(InvalidParameterError):
        make_synthetic_cohort(tmp_path, tumour_fraction=1.0)
