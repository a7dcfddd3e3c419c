"""A slide's store (tiles + per-tile scores) -> the napari layers that show it. No Qt here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._layers import TileLattice, class_labels_layer, heatmap_layer, qc_layer, tile_labels_layer, tissue_layer

__all__ = ["score_kind", "store_lattice", "read_scores", "store_qc_flags", "result_layers"]


def score_kind(name: str) -> str:
    """How to scale a score from its name: ``"probability"`` (0-1), ``"attention"``, ``"similarity"`` or ``"score"``.

    ``<run>/attention`` (written by :func:`slidescope.mil.score`) is attention, ``zero-shot/<class>``
    (:func:`slidescope.vlm.zero_shot` at tile level) a cosine similarity, names ending in
    ``probability`` or ``fraction`` lie in 0-1.
    """
    leaf = name.rsplit("/", 1)[-1].lower()
    if leaf.endswith(("probability", "fraction")):
        return "probability"
    if leaf == "attention":
        return "attention"
    if name.startswith("zero-shot/"):
        return "similarity"
    return "score"


def store_lattice(store: Any) -> tuple[np.ndarray, TileLattice]:
    """``(coords (N, 2), lattice)`` of a :class:`~slidescope.features.SlideStore`'s tiles."""
    coords = store.coords
    tiling = store.attrs.get("tiling", {})
    extent = store.tile_extent
    stride = tiling.get("stride") or extent
    return coords, TileLattice.from_coords(coords, extent, stride)


def read_scores(store: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """``{layer name: (N,) float}``; an (N, K) score becomes K entries ``<name>[k]``."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        values = np.asarray(store.scores(name), dtype=np.float64)
        if values.ndim == 1:
            out[name] = values
        else:
            for k in range(values.shape[1]):
                out[f"{name}[{k}]"] = values[:, k]
    return out


def store_qc_flags(store: Any) -> dict[str, np.ndarray]:
    """``{check: (N,) bool}`` from the QC measures the store keeps (``--qc flag|exclude``), with the
    thresholds stored with them (:func:`slidescope.wsi.qc_flags`); ``{}`` for a store made without QC."""
    values = store.qc()
    if not values:
        return {}
    from ..features.store import read_qc_thresholds
    from ..wsi import qc_flags

    return {k: np.asarray(v, dtype=bool) for k, v in qc_flags(values, read_qc_thresholds(store)).items()}


def result_layers(
    store: Any,
    names: Sequence[str],
    mpp: Sequence[float],
    *,
    slide_path: str | Path,
    classes: Sequence[str] | None = None,
    tissue: Any = None,
    units: str = "um",
    run: str | None = None,
) -> list[tuple[Any, dict[str, Any], str]]:
    """Layer tuples for the scores ``names`` of ``store``, on a slide of level-0 pixel size ``mpp`` (x, y).

    Parameters
    ----------
    store : the slide's :class:`~slidescope.features.SlideStore`.
    names : score names in the store (``store.scores()`` lists them).
    classes : zero-shot class names: their scores ``zero-shot/<class>`` also give a labels layer of
        the best-matching class per tile.
    tissue : a :class:`~slidescope.wsi.TissueMask` for the tissue-outline layer.
    run : the analysis run the layers belong to (:func:`~slidescope.viewer._display.run_label`): the heatmaps,
        the class labels and the tile grid are named ``<slide>: <run> · <score>`` and carry it in their
        metadata; tissue and QC flags belong to the slide (``<slide>: tissue``), whatever the run.

    Returns
    -------
    list of (data, kwargs, layer type)
        Tissue outlines (if given), one heatmap per score, the class labels (if ``classes``), the tile
        QC flags (if the store has QC measures: ``--qc flag``), and the tile grid whose features carry
        every score and flag (last, so selecting it shows them on hover).
    """
    stem = Path(slide_path).stem
    common: dict[str, Any] = {
        "slide": str(slide_path),
        "store": str(store.path),
        "mpp": [float(mpp[0]), float(mpp[1])],
    }
    ran = {**common, "run": run} if run else common
    prefix = f"{stem}: {run} · " if run else f"{stem}: "
    coords, lattice = store_lattice(store)
    scores = read_scores(store, names)
    layers: list[tuple[Any, dict[str, Any], str]] = []
    if tissue is not None:
        data, kwargs, kind = tissue_layer(
            tissue.contours, mpp, name=f"{stem}: tissue", units=units, holes=tissue.holes
        )
        kwargs["metadata"]["slidescope"].update(common)
        layers.append((data, kwargs, kind))
    for name, values in scores.items():
        layers.append(
            heatmap_layer(
                values,
                lattice,
                mpp,
                name=f"{prefix}{name}",
                kind=score_kind(name),
                units=units,
                metadata={**ran, "score": name},
            )
        )
    if classes:
        columns = [scores[f"zero-shot/{c}"] for c in classes if f"zero-shot/{c}" in scores]
        if len(columns) == len(classes) and len(classes) > 1:
            best = np.argmax(np.stack(columns, axis=1), axis=1)
            layers.append(
                class_labels_layer(
                    best,
                    classes,
                    lattice,
                    mpp,
                    name=f"{prefix}best class",
                    units=units,
                    metadata={**ran, "scores": [f"zero-shot/{c}" for c in classes]},
                )
            )
    flags = store_qc_flags(store)
    if flags:
        layers.append(qc_layer(flags, lattice, mpp, name=f"{stem}: QC flags", units=units, metadata=common))
    layers.append(
        tile_labels_layer(
            lattice,
            coords,
            scores,
            mpp,
            name=f"{prefix}tiles",
            units=units,
            metadata={**ran, "scores": list(scores)},
            qc=flags,
        )
    )
    return layers
