"""Ask about a region: a MIL model run on the tiles inside a drawn shape only. No Qt here.

The tiles whose centre lies inside the shape make the bag; each checkpoint of the model (a run folder's
folds, resolved as ``slidescope run --model`` resolves them) predicts it and the predictions and the tile
attention are averaged, as :func:`slidescope.mil.score` does for a whole slide. Embeddings come from the
slide's store (the Analyse widget extracts them first). Zero-shot on a region is not built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ._export import _inside

__all__ = ["RegionScore", "tiles_in_region", "score_region", "region_layer", "region_summary"]


@dataclass
class RegionScore:
    """What a MIL model says about one region.

    Attributes
    ----------
    inside : (N,) bool, the slide's tiles in the region (centre inside the shape).
    probs : class -> probability for the region's bag (classification; else empty).
    predicted : the predicted class (classification) or the prediction / risk as text.
    attention : (N,) float32 tile attention within the region (sums to 1 over it per ABMIL fold), NaN
        outside.
    """

    inside: np.ndarray
    probs: dict[str, float]
    predicted: str
    attention: np.ndarray

    @property
    def n_tiles(self) -> int:
        return int(np.count_nonzero(self.inside))


def tiles_in_region(coords: np.ndarray, extent: Sequence[int], polygon: np.ndarray) -> np.ndarray:
    """(N,) bool: tiles (level-0 top-left ``coords`` (N, 2), ``extent`` (w, h)) whose centre lies inside the
    level-0 ``(x, y)`` polygon (closed or not; even-odd rule)."""
    ring = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if len(ring) < 3:
        raise InvalidParameterError(
            "a region needs at least 3 vertices: draw a polygon, rectangle or ellipse"
        )
    if not np.array_equal(ring[0], ring[-1]):
        ring = np.vstack([ring, ring[:1]])
    centres = np.asarray(coords, dtype=np.float64).reshape(-1, 2) + np.asarray(extent, dtype=np.float64) / 2
    return _inside(centres, ring)


def score_region(model: str | Path, store: Any, inside: np.ndarray, *, device: str = "cpu") -> RegionScore:
    """Run a MIL model (``best.ckpt`` or a run folder: all folds averaged) on the tiles ``inside`` only.

    Raises
    ------
    InvalidParameterError
        No tile in the region.
    EncoderMismatchError, StoreError
        The store lacks embeddings of the model's encoder (the message says which to extract).
    """
    import torch

    from ..features import open_store
    from ..mil import load_task
    from ._analysis import checkpoints_of

    inside = np.asarray(inside, dtype=bool).reshape(-1)
    if not inside.any():
        raise InvalidParameterError("no tile centre lies inside the region: draw it over tiles of the slide")
    tasks = [load_task(c, map_location=device) for c in checkpoints_of(model)]
    first = tasks[0]
    opened = open_store(store, encoder=first.encoder_name) if isinstance(store, (str, Path)) else store
    emb = np.asarray(opened.embeddings(first.encoder_name), dtype=np.float32)
    if len(emb) != len(inside):
        raise InvalidParameterError(f"{len(inside)} region flags for {len(emb)} tiles")
    probs, attention = [], []
    with torch.no_grad():
        for task in tasks:
            p, s = task.predict_bag(emb[inside])
            probs.append(p.numpy())
            attention.append(s.numpy())
    prob = np.mean(probs, axis=0)
    att = np.full(len(inside), np.nan, np.float32)
    att[inside] = np.mean(attention, axis=0)
    if first.task == "classification":
        classes = list(first.class_names)
        by_class = {c: float(v) for c, v in zip(classes, prob, strict=True)}
        return RegionScore(inside, by_class, classes[int(prob.argmax())], att)
    return RegionScore(inside, {}, f"{float(prob[0]):.6g}", att)


def region_layer(
    shapes: Any, tiles_meta: dict[str, Any], model: str | Path, *, device: str = "cpu"
) -> tuple[list[tuple[int, RegionScore]], tuple[np.ndarray, dict[str, Any], str]]:
    """Score every shape of a shapes layer (``data``, ``scale``, ``translate``: world µm) that covers tiles of
    the slide a tile layer shows (its slidescope metadata: ``store``, ``mpp``, ``slide``).

    Returns
    -------
    ``([(shape index, RegionScore)...], heatmap layer tuple)``: the attention within the regions (NaN elsewhere).

    Raises
    ------
    InvalidParameterError
        No shape covers a tile centre.
    """
    from ..features import open_store
    from ._export import shapes_to_level0
    from ._layers import heatmap_layer
    from ._results import store_lattice

    mpp = tuple(float(v) for v in tiles_meta["mpp"])
    store = open_store(tiles_meta["store"])
    coords, lattice = store_lattice(store)
    polygons = shapes_to_level0(shapes.data, {"scale": shapes.scale, "translate": shapes.translate}, mpp=mpp)
    results = []
    for k, polygon in enumerate(polygons):
        inside = tiles_in_region(coords, lattice.extent, polygon)
        if inside.any():
            results.append((k, score_region(model, store, inside, device=device)))
    if not results:
        raise InvalidParameterError(
            "no tile centre lies inside the shapes: draw them over the tissue's tiles"
        )
    attention = np.full(len(coords), np.nan, np.float32)
    for _, region in results:
        attention[region.inside] = region.attention[region.inside]
    from ..mil.score import run_name
    from ._analysis import checkpoints_of

    run = run_name(checkpoints_of(model)[0])  # the name Analyse and `slidescope run` give the model's scores
    name = f"{Path(tiles_meta['slide']).stem}: {run} region attention"
    meta = {k: tiles_meta[k] for k in ("slide", "store", "mpp")}
    layer = heatmap_layer(attention, lattice, mpp, name=name, kind="attention", metadata=meta)
    layer[1]["metadata"]["slidescope"]["regions"] = [k + 1 for k, _ in results]
    return results, layer


def region_summary(results: Sequence[tuple[int, RegionScore]]) -> str:
    """One line per region: ``region 1: tumour (normal 0.08, tumour 0.92) over 12 tiles``."""
    lines = []
    for k, r in results:
        probs = "(" + ", ".join(f"{c} {v:.2f}" for c, v in r.probs.items()) + ") " if r.probs else ""
        lines.append(f"region {k + 1}: {r.predicted} {probs}over {r.n_tiles} tiles")
    return "; ".join(lines)
