"""The "Slide encoder + few-shot" model of the Analyse widget, without Qt: support set, checks, classification.

A registered slide encoder (:mod:`slidescope.features.slide_encoders`) turns the open slide's tile embeddings
into one slide embedding, and :func:`slidescope.vlm.api.few_shot` classifies it against a labelled support set:
a CSV (``slide,label[,patient]``, slides relative to the CSV as for ``slidescope few-shot``) and the folder of
those slides' stores (the same patch encoder and tiling). A slide encoder gives one prediction for the whole
slide: there is no per-tile map.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError

__all__ = [
    "DEFAULT_METHOD",
    "FEW_SHOT_METHODS",
    "FewShotRequest",
    "Support",
    "classify",
    "prepare_support",
    "required_encoder",
    "slide_encoder_names",
    "tile_geometry",
]

#: the few-shot methods of :func:`slidescope.vlm.api.few_shot` (kept here so the widget imports no torch)
FEW_SHOT_METHODS = ("linear", "simpleshot", "simpleshot-cosine", "knn", "gda", "tip-adapter")
#: the method ``slidescope few-shot`` uses by default
DEFAULT_METHOD = "gda"


@dataclass(frozen=True)
class FewShotRequest:
    """A slide encoder and the labelled support set the open slide is classified against.

    Attributes
    ----------
    slide_encoder : a name from :func:`~slidescope.features.slide_encoders.list_slide_encoders` (``mean``...).
    labels : the support CSV: ``slide`` and ``label`` columns, optionally ``patient`` (then the support is
        pooled per patient, as ``slidescope few-shot --patient-level`` does, and the open slide is one patient).
    stores : the folder holding the support slides' stores (made with the same patch encoder and tiling).
    weights : the slide encoder's weights file or folder (``None``: its hub copy; ``mean`` needs none).
    method : the few-shot method (:data:`FEW_SHOT_METHODS`; default that of ``slidescope few-shot``).
    """

    slide_encoder: str = "mean"
    labels: Path | None = None
    stores: Path | None = None
    weights: str | None = None
    method: str = DEFAULT_METHOD


@dataclass
class Support:
    """The checked support set and the built slide encoder (what :func:`classify` needs)."""

    model: Any  # slidescope.features.slide_encoders.SlideEncoder
    stores: list[Path]
    labels: list[str]
    patients: dict[str, str] | None
    test_patient: str | None
    left_out: int  # support rows of the open slide (or of its patient), left out of the support


def slide_encoder_names() -> list[str]:
    """Registered slide encoders the widget can build (PRISM and TITAN, which run their publishers' code,
    are left to ``slidescope few-shot --trust-remote-code``). Loads no torch."""
    from ..features.slide_encoders import get_slide_encoder_config, list_slide_encoders

    return [n for n in list_slide_encoders() if not get_slide_encoder_config(n).requires_remote_code]


def required_encoder(slide_encoder: str) -> str | None:
    """The patch encoder ``slide_encoder`` was trained on (``None``: any, as for ``mean``)."""
    from ..features.slide_encoders import get_slide_encoder_config

    encoders = get_slide_encoder_config(slide_encoder).patch_encoders
    return encoders[0] if encoders else None


def tile_geometry(few_shot: FewShotRequest | None) -> dict[str, Any]:
    """``{"mpp", "tile_size"}`` of the slide encoder's tiles for the extraction (empty: the encoder's own)."""
    if few_shot is None:
        return {}
    from ..features.slide_encoders import get_slide_encoder_config

    cfg = get_slide_encoder_config(few_shot.slide_encoder)
    if cfg.tile_size is None or cfg.mpp is None:
        return {}
    return {"mpp": cfg.mpp, "tile_size": cfg.tile_size}


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise InvalidParameterError(f"the support labels CSV {path} does not exist: choose a CSV slide,label")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"slide", "label"} <= set(rows[0]):
        raise InvalidParameterError(
            f"{path.name} needs the columns slide and label (optionally patient) and at least one row, "
            "as the --train CSV of `slidescope few-shot`"
        )
    unlabelled = [r["slide"] for r in rows if not (r.get("label") or "").strip()]
    if unlabelled:
        raise InvalidParameterError(
            f"{path.name}: support slide(s) {', '.join(unlabelled[:5])} have no label: give every row its class"
        )
    return rows


def _check_classes(labels: list[str], csv_name: str, left_out: int) -> None:
    counts = Counter(labels)
    if len(counts) >= 2:
        return
    have = ", ".join(f"{k!r} ({v} slide{'s' * (v != 1)})" for k, v in counts.items()) or "no slide"
    why = f" once the open slide's own {left_out} row(s) are left out" if left_out else ""
    raise InvalidParameterError(
        f"the support set {csv_name} has {have}{why}: few-shot needs at least one slide of each of two or "
        "more classes; add labelled slides of the missing class"
    )


def _check_stores(stores: list[Path], slide_encoder: Any, encoder: str) -> None:
    """Every support store exists and holds ``encoder`` embeddings the slide encoder accepts."""
    from ..errors import SlidescopeError
    from ..features import open_store

    missing = [p.name for p in stores if not p.exists()]
    if missing:
        raise InvalidParameterError(
            f"no store for {len(missing)} support slide(s) ({', '.join(missing[:5])}) in {stores[0].parent}: "
            f"extract them first (`slidescope extract --encoder {encoder} --out {stores[0].parent} ...`) or "
            "choose the folder that holds them"
        )
    for path in stores:
        try:
            store = open_store(path, encoder=encoder)
            if encoder not in store.encoders():
                raise InvalidParameterError(
                    f"{path.name} holds embeddings of {', '.join(store.encoders()) or 'no encoder'}, not "
                    f"{encoder!r}"
                )
            slide_encoder.config.check_store(store, encoder)
        except SlidescopeError as err:
            raise InvalidParameterError(
                f"support store {err}. The support slides must be embedded as the open slide is "
                f"({encoder!r}, the same tiling): choose the Encoder they were made with, or re-extract them"
            ) from err


def prepare_support(few_shot: FewShotRequest, slide: Path, encoder: str, device: str = "cpu") -> Support:
    """Read and check the support set, and build the slide encoder, before anything is extracted.

    The open slide's own row (and, with patients, its patient's rows) are left out of the support set, so it
    is never classified by a model that saw its label.

    Raises
    ------
    InvalidParameterError
        No CSV or store folder chosen; a CSV without slide/label; a slide without a label; fewer than two
        classes; a missing support store; a support store of another patch encoder or tiling; a patch encoder
        the slide encoder was not trained on.
    WeightsError
        The slide encoder's weights are missing or do not fit it.
    """
    from ..features.encoders import WeightsError
    from ..features.slide_encoders import create_slide_encoder
    from ..features.store import store_path

    if few_shot.method not in FEW_SHOT_METHODS:
        raise InvalidParameterError(
            f"unknown few-shot method {few_shot.method!r}; use one of {FEW_SHOT_METHODS}"
        )
    if few_shot.labels is None or few_shot.stores is None:
        raise InvalidParameterError(
            "choose the support set: its labels CSV (slide,label[,patient]) and the folder of its slides' stores"
        )
    needed = required_encoder(few_shot.slide_encoder)
    if needed is not None and encoder != needed:
        raise InvalidParameterError(
            f"slide encoder {few_shot.slide_encoder!r} reads {needed!r} tile embeddings, not {encoder!r}: "
            f"choose {needed} as the Encoder"
        )
    csv_path, folder = Path(few_shot.labels).expanduser(), Path(few_shot.stores).expanduser()
    rows = _read_rows(csv_path)
    with_patients = all((r.get("patient") or "").strip() for r in rows)
    own = Path(store_path(folder, slide)).name
    names = [Path(store_path(folder, csv_path.parent / r["slide"])).name for r in rows]
    mine = {r["patient"] for r, n in zip(rows, names, strict=True) if n == own} if with_patients else set()
    keep = [i for i, n in enumerate(names) if n != own and not (with_patients and rows[i]["patient"] in mine)]
    labels = [rows[i]["label"].strip() for i in keep]
    _check_classes(labels, csv_path.name, len(rows) - len(keep))
    stores = [folder / names[i] for i in keep]
    try:
        model = create_slide_encoder(few_shot.slide_encoder, weights=few_shot.weights, device=device)
    except WeightsError as err:
        raise WeightsError(f"{err} In the Analyse widget: choose it as Slide encoder weights.") from err
    _check_stores(stores, model, encoder)
    patients = test_patient = None
    if with_patients:
        patients = {names[i].removesuffix(".zarr"): rows[i]["patient"] for i in keep}
        test_patient = next(iter(mine), f"{own.removesuffix('.zarr')} (open slide)")
    return Support(model, stores, labels, patients, test_patient, len(rows) - len(keep))


def classify(
    support: Support, store: Path, encoder: str, method: str, device: str = "cpu"
) -> tuple[dict[str, float], str]:
    """``({class: probability}, predicted class)`` of the slide whose store is ``store``, by
    :func:`~slidescope.vlm.api.few_shot` on the support set's slide embeddings."""
    from ..vlm.api import few_shot

    patients = None
    if support.patients is not None:
        patients = {**support.patients, store.name.removesuffix(".zarr"): str(support.test_patient)}
    res = few_shot(
        support.stores,
        support.labels,
        [store],
        slide_encoder=support.model,
        patients=patients,
        encoder=encoder,
        method=method,
        device=device,
    )
    probs = {name: float(p) for name, p in zip(res.class_names, res.probs[0].tolist(), strict=True)}
    return probs, max(probs, key=lambda k: probs[k])
