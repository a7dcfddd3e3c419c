"""A session-scoped synthetic cohort with he-descriptor embeddings (24 slides, ~13-20 tissue tiles each)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Cohort:
    root: Path
    manifest: Path
    store: Path
    rows: list[dict[str, str]]


@pytest.fixture(scope="session")
def mil_cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    from slidescope.features.extract import extract_slides
    from slidescope.synthetic import make_synthetic_cohort

    root = tmp_path_factory.mktemp("mil_cohort")
    manifest = make_synthetic_cohort(root / "cohort", n_slides=24, width=1536, height=1152, seed=0)
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    store = root / "store"
    results = extract_slides(
        [manifest.parent / r["slide"] for r in rows],
        "he-descriptor",
        store=store,
        num_workers=0,
        progress=False,
    )
    assert all(r.status == "done" for r in results), [(r.slide, r.error) for r in results]
    assert min(r.n_tiles for r in results) >= 12
    return Cohort(root=root, manifest=manifest, store=store, rows=rows)
