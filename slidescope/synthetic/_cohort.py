"""A labelled synthetic cohort: slides with and without tumour, ground truth, patients, sites, reports.

It is what the MIL and slide-text tests, the benchmarks and the demo train on, built from
:func:`~slidescope.synthetic.make_synthetic_slide`. Everything is synthetic and says so.

``manifest.csv`` columns:

* ``slide`` - path relative to the manifest;
* ``label`` - ``tumour`` or ``normal``;
* ``patient`` - patient id (some patients have two slides, so patient-level splits matter);
* ``site`` - the "hospital" (A, B, C...), for site-preserving folds;
* ``tumour_mask`` - PNG of the ground-truth tumour mask at ``mask_mpp`` µm/px (255 = tumour);
* ``mask_mpp``, ``tumour_fraction`` (of the tissue);
* ``report`` - a short free-text description in varied words (for slide-text pretraining).
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import InvalidParameterError
from ._slide import make_synthetic_slide

log = logging.getLogger(__name__)

__all__ = ["make_synthetic_cohort", "synthetic_report"]

_TUMOUR_FINDINGS = (
    "Sections show {where} invasive carcinoma with crowded, enlarged, hyperchromatic nuclei.",
    "There is {where} malignant epithelial proliferation: sheets of pleomorphic cells with dark nuclei.",
    "The biopsy contains {where} tumour composed of densely packed atypical cells.",
    "Neoplastic cells forming {where} cellular nests with nuclear pleomorphism are identified.",
    "Carcinoma is present {where}, with high cellularity and scant intervening stroma.",
)
_TUMOUR_WHERE = ("a focus of", "a small area of", "a nodule of", "an area of", "foci of")
_NORMAL_FINDINGS = (
    "Sections show benign fibrous stroma with scattered bland spindle cells.",
    "The tissue consists of unremarkable collagenous stroma; no atypia is seen.",
    "Benign connective tissue with sparse, regular nuclei.",
    "Fibrous tissue with low cellularity and wavy collagen bundles, without malignancy.",
    "Non-neoplastic stroma; the cells are small and evenly spaced.",
)
_NEGATIVE = (
    "No tumour is identified.",
    "Negative for malignancy.",
    "There is no evidence of carcinoma.",
    "No neoplasm seen.",
)
_FAT = (
    "Mature adipose tissue is also present.",
    "Some fat lobules are included.",
    "Adipocytes are seen at the periphery.",
)
_SIZE = (
    "{n} tissue fragments are examined.",
    "The specimen consists of {n} pieces of tissue.",
    "{n} fragments of tissue are submitted.",
)


def synthetic_report(
    *, has_tumour: bool, tumour_fraction: float, n_islands: int, rng: np.random.Generator, fat: bool = True
) -> str:
    """A pathology-report-like sentence or three that says what the synthetic slide contains."""
    parts = [str(rng.choice(_SIZE)).format(n=n_islands)]
    if has_tumour:
        where = (
            _TUMOUR_WHERE[min(len(_TUMOUR_WHERE) - 1, int(tumour_fraction * 10))]
            if tumour_fraction
            else "a focus of"
        )
        parts.append(str(rng.choice(_TUMOUR_FINDINGS)).format(where=where))
    else:
        parts.append(str(rng.choice(_NORMAL_FINDINGS)))
        parts.append(str(rng.choice(_NEGATIVE)))
    if fat and rng.random() < 0.5:
        parts.append(str(rng.choice(_FAT)))
    order = [0, *rng.permutation(np.arange(1, len(parts))).tolist()]
    return " ".join(parts[i] for i in order)


def make_synthetic_cohort(
    out: str | os.PathLike[str],
    *,
    n_slides: int = 24,
    width: int = 2048,
    height: int = 1536,
    mpp: float = 0.5,
    tumour_fraction: float = 0.5,
    sites: tuple[str, ...] = ("A", "B", "C"),
    seed: int = 0,
) -> Path:
    """Write ``n_slides`` synthetic slides, their masks and ``manifest.csv`` into ``out``.

    Half the slides (``tumour_fraction``) carry tumour. Every third patient has two slides of the
    same label.

    Returns
    -------
    Path of the manifest.
    """
    from PIL import Image

    if n_slides < 2:
        raise InvalidParameterError(f"a cohort needs at least 2 slides, got {n_slides}")
    if not 0.0 < tumour_fraction < 1.0:
        raise InvalidParameterError(
            f"tumour_fraction must be between 0 and 1 (exclusive), got {tumour_fraction}"
        )
    out = Path(out)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_tumour = int(round(n_slides * tumour_fraction))
    labels = np.array([1] * n_tumour + [0] * (n_slides - n_tumour))
    rng.shuffle(labels)
    patients = _assign_patients(labels)
    rows = []
    for i in range(n_slides):
        has_tumour = bool(labels[i])
        name = f"synth_{i:03d}_{'T' if has_tumour else 'N'}"
        path = out / "slides" / f"{name}.svs"
        islands = int(rng.integers(2, 4))
        slide_seed = seed * 1000 + i
        site = sites[i % len(sites)]
        s = make_synthetic_slide(
            path, width=width, height=height, mpp=mpp, tumour=has_tumour, n_islands=islands, seed=slide_seed
        )
        mask_path = out / "masks" / f"{name}.tumour.png"
        Image.fromarray(s.tumour_mask.astype(np.uint8) * 255).save(mask_path)
        tissue = max(int(s.tissue_mask.sum()), 1)
        frac = float((s.tumour_mask & s.tissue_mask).sum() / tissue)
        rows.append(
            {
                "slide": os.path.relpath(path, out),
                "label": "tumour" if has_tumour else "normal",
                "patient": patients[i],
                "site": site,
                "tumour_mask": os.path.relpath(mask_path, out),
                "mask_mpp": s.mask_mpp,
                "tumour_fraction": round(frac, 4),
                "report": synthetic_report(
                    has_tumour=has_tumour, tumour_fraction=frac, n_islands=islands, rng=rng
                ),
            }
        )
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    log.info("synthetic cohort of %d slides (%d with tumour) in %s", n_slides, n_tumour, out)
    return manifest


def _assign_patients(labels: np.ndarray) -> list[str]:
    """Patient id of every slide: every third patient contributes two slides of the same label."""
    pid = 0
    by_label: dict[int, list[int]] = {0: [], 1: []}
    for i, lab in enumerate(labels):
        by_label[int(lab)].append(i)
    assignment = np.empty(len(labels), dtype=object)
    for idx in by_label.values():
        k = 0
        while k < len(idx):
            take = 2 if (pid % 3 == 2 and k + 1 < len(idx)) else 1
            for j in idx[k : k + take]:
                assignment[j] = f"P{pid:03d}"
            pid += 1
            k += take
    return list(assignment)
