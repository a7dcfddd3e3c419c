"""Session fixtures for slide-text tests: a 32-slide synthetic cohort with he-descriptor embeddings, a
patient-level held-out split (pretraining sees the training reports only) and one pretrained model."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ENCODER = "he-descriptor"


@dataclass(frozen=True)
class VlmCohort:
    root: Path
    manifest: Path
    train_manifest: Path
    test_manifest: Path
    store: Path
    rows: list[dict[str, str]]
    train_rows: list[dict[str, str]]
    test_rows: list[dict[str, str]]

    def store_of(self, row: dict[str, str]) -> Path:
        from slidescope.features.store import store_path

        return store_path(self.store, self.manifest.parent / row["slide"])


@dataclass(frozen=True)
class Pretrained:
    result: object  # slidescope.vlm.pretrain.PretrainResult
    model_dir: Path
    seconds: float


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def vlm_cohort(tmp_path_factory: pytest.TempPathFactory) -> VlmCohort:
    from slidescope.features.extract import extract_slides
    from slidescope.wsi import make_synthetic_cohort

    root = tmp_path_factory.mktemp("vlm_cohort")
    manifest = make_synthetic_cohort(root / "cohort", n_slides=32, width=1536, height=1152, seed=1)
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    store = root / "store"
    results = extract_slides([manifest.parent / r["slide"] for r in rows], ENCODER, store=store, num_workers=0,
                             progress=False)
    assert all(r.status == "done" for r in results), [(r.slide, r.error) for r in results]
    # held out: every third patient of each label (patients never straddle the split)
    label_of = {r["patient"]: r["label"] for r in rows}
    test_patients = set()
    for label in ("tumour", "normal"):
        test_patients.update(sorted(p for p, lab in label_of.items() if lab == label)[::3])
    train_rows = [r for r in rows if r["patient"] not in test_patients]
    test_rows = [r for r in rows if r["patient"] in test_patients]
    cohort_dir = manifest.parent
    return VlmCohort(root=root, manifest=manifest, store=store, rows=rows, train_rows=train_rows,
                     test_rows=test_rows, train_manifest=_write(cohort_dir / "train.csv", train_rows),
                     test_manifest=_write(cohort_dir / "test.csv", test_rows))


@pytest.fixture(scope="session")
def pretrained(vlm_cohort: VlmCohort) -> Pretrained:
    from slidescope.vlm.pretrain import pretrain

    t0 = time.perf_counter()
    result = pretrain(vlm_cohort.train_manifest, store=vlm_cohort.store, encoder=ENCODER,
                      out=vlm_cohort.root / "pretrain", epochs=60, seed=0, accelerator="cpu")
    return Pretrained(result=result, model_dir=result.model_dir, seconds=time.perf_counter() - t0)
