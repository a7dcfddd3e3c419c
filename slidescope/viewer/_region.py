"""Ask about a region: a MIL model or a zero-shot prompt set on the tiles inside a drawn shape only. No Qt here.

The tiles whose centre lies inside the shape make the bag. MIL: each checkpoint of the model (a run folder's
folds, resolved as ``slidescope run --model`` resolves them) predicts it and the predictions and the tile
attention are averaged, as :func:`slidescope.mil.score` does for a whole slide. Zero-shot: the tiles' cosines
with each class (``zero-shot/<class>``, written by tile-level :func:`slidescope.vlm.zero_shot`) are pooled over
the region's tiles only, with the same MI-Zero top-k mean and softmax as for the whole slide. Embeddings and
cosines come from the slide's store (the Analyse widget computes them first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ._export import _inside

__all__ = [
    "RegionScore",
    "tiles_in_region",
    "score_region",
    "zero_shot_region",
    "region_layer",
    "region_summary",
    "regions_feature_collection",
    "write_region_tiles_csv",
]

#: tiles pooled per class for a zero-shot region (as the Analyse widget's whole-slide zero-shot)
ZERO_SHOT_K = 10


@dataclass
class RegionScore:
    """What a MIL model says about one region.

    Attributes
    ----------
    inside : (N,) bool, the slide's tiles in the region (centre inside the shape).
    probs : class -> probability for the region's bag (classification, zero-shot; else empty).
    predicted : the predicted class (classification, zero-shot) or the prediction / risk as text.
    tile_scores : (N,) float32 per-tile map within the region, NaN outside: MIL the tile attention (sums to 1
        over the region per ABMIL fold); zero-shot the cosine of each tile with the predicted class.
    measure : what ``tile_scores`` are (``"attention"``, ``"cosine with tumour"``).
    """

    inside: np.ndarray
    probs: dict[str, float]
    predicted: str
    tile_scores: np.ndarray
    measure: str = "attention"

    @property
    def n_tiles(self) -> int:
        return int(np.count_nonzero(self.inside))

    @property
    def attention(self) -> np.ndarray:
        """``tile_scores`` of a MIL region (the tile attention)."""
        return self.tile_scores


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


def zero_shot_region(
    cosines: np.ndarray,
    classes: Sequence[str],
    inside: np.ndarray,
    *,
    logit_scale: float,
    k: int = ZERO_SHOT_K,
) -> RegionScore:
    """Zero-shot on the tiles ``inside`` only: MI-Zero top-``k`` mean pooling of the tiles' cosines with each
    class over the region, then ``softmax(logit_scale * pooled)``, as tile-level
    :func:`slidescope.vlm.zero_shot` (``pooling="mean"``) does over a whole slide (``k`` capped at the region's
    tile count).

    Parameters
    ----------
    cosines : (N, C) cosine of every tile with each class (the store's ``zero-shot/<class>`` scores).
    classes : the C class names, in column order.
    logit_scale : the slide-text model's multiplier of the cosines.
    """
    sims = np.asarray(cosines, dtype=np.float64)
    inside = np.asarray(inside, dtype=bool).reshape(-1)
    if sims.ndim != 2 or sims.shape != (len(inside), len(classes)):
        raise InvalidParameterError(
            f"cosines of shape {sims.shape} for {len(inside)} tiles and {len(classes)} classes"
        )
    if not inside.any():
        raise InvalidParameterError("no tile centre lies inside the region: draw it over tiles of the slide")
    region = sims[inside]
    pooled = -np.sort(-region, axis=0)[: max(1, min(int(k), len(region)))].mean(axis=0)
    logits = float(logit_scale) * pooled
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    best = int(probs.argmax())
    tiles = np.full(len(inside), np.nan, np.float32)
    tiles[inside] = region[:, best]
    by_class = {str(c): float(v) for c, v in zip(classes, probs, strict=True)}
    return RegionScore(inside, by_class, str(classes[best]), tiles, f"cosine with {classes[best]}")


def region_layer(
    shapes: Any,
    tiles_meta: dict[str, Any],
    model: str | Path | None = None,
    *,
    device: str = "cpu",
    zero_shot: dict[str, Any] | None = None,
    run: str | None = None,
) -> tuple[list[tuple[int, RegionScore]], tuple[np.ndarray, dict[str, Any], str]]:
    """Score every shape of a shapes layer (``data``, ``scale``, ``translate``: world µm) that covers tiles of
    the slide a tile layer shows (its slidescope metadata: ``store``, ``mpp``, ``slide``).

    ``model``: a MIL model (:func:`score_region`); or ``zero_shot``: ``{"classes", "cosines" (N, C),
    "logit_scale", "label"}`` (:func:`zero_shot_region`). ``run`` names the layer (``<slide>: <run> · ...``).

    Returns
    -------
    ``([(shape index, RegionScore)...], heatmap layer tuple)``: the tile scores within the regions (NaN
    elsewhere); the layer's metadata keep each region's polygon (level-0 px), scores and tiles for the export.

    Raises
    ------
    InvalidParameterError
        No shape covers a tile centre.
    """
    from ..features import open_store
    from ._export import shapes_to_level0
    from ._layers import heatmap_layer
    from ._results import store_lattice

    if model is None and zero_shot is None:
        raise InvalidParameterError("region analysis needs a MIL model or a zero-shot run's tile scores")
    mpp = tuple(float(v) for v in tiles_meta["mpp"])
    store = open_store(tiles_meta["store"])
    coords, lattice = store_lattice(store)
    polygons = shapes_to_level0(shapes.data, {"scale": shapes.scale, "translate": shapes.translate}, mpp=mpp)
    results = []
    for k, polygon in enumerate(polygons):
        inside = tiles_in_region(coords, lattice.extent, polygon)
        if not inside.any():
            continue
        if zero_shot is not None:
            results.append(
                (
                    k,
                    zero_shot_region(
                        zero_shot["cosines"],
                        zero_shot["classes"],
                        inside,
                        logit_scale=zero_shot["logit_scale"],
                    ),
                )
            )
        elif model is not None:
            results.append((k, score_region(model, store, inside, device=device)))
    if not results:
        raise InvalidParameterError(
            "no tile centre lies inside the shapes: draw them over the tissue's tiles"
        )
    values = np.full(len(coords), np.nan, np.float32)
    for _, region in results:
        values[region.inside] = region.tile_scores[region.inside]
    if zero_shot is not None:
        what, kind = str(zero_shot.get("label", "zero-shot")), "similarity"
    else:
        from ..mil.score import run_name
        from ._analysis import checkpoints_of

        what, kind = run_name(checkpoints_of(model)[0]), "attention"  # the name `slidescope run` gives it
    score = "region cosine" if zero_shot is not None else "region attention"
    stem = Path(tiles_meta["slide"]).stem
    name = f"{stem}: {run} · {what} {score}" if run else f"{stem}: {what} {score}"
    meta: dict[str, Any] = {k: tiles_meta[k] for k in ("slide", "store", "mpp")}
    meta.update({"score": f"{what} {score}", "model": what, **({"run": run} if run else {})})
    layer = heatmap_layer(values, lattice, mpp, name=name, kind=kind, metadata=meta)
    layer[1]["metadata"]["slidescope"]["regions"] = [
        {
            "region": k + 1,
            "polygon": np.round(polygons[k], 3).tolist(),
            "probs": r.probs,
            "predicted": r.predicted,
            "measure": r.measure,
            "tiles": np.flatnonzero(r.inside).tolist(),
            "tile_scores": [float(v) for v in r.tile_scores[r.inside]],
        }
        for k, r in results
    ]
    return results, layer


def region_summary(results: Sequence[tuple[int, RegionScore]]) -> str:
    """One line per region: ``region 1: tumour (normal 0.08, tumour 0.92) over 12 tiles``."""
    lines = []
    for k, r in results:
        probs = "(" + ", ".join(f"{c} {v:.2f}" for c, v in r.probs.items()) + ") " if r.probs else ""
        lines.append(f"region {k + 1}: {r.predicted} {probs}over {r.n_tiles} tiles")
    return "; ".join(lines)


def regions_feature_collection(
    regions: Sequence[dict[str, Any]], model: str, *, mpp: Sequence[float]
) -> dict[str, Any]:
    """QuPath GeoJSON of analysed regions (the ``regions`` a region layer's metadata keep): one annotation
    per region, its polygon in level-0 pixels, classified as its predicted class, with measurements named after
    the model (``<model>: p(<class>)``, ``<model>: tiles``) and its area in µm²."""
    from ._export import shapes_feature_collection

    features = []
    for region in regions:
        (feature,) = shapes_feature_collection([np.asarray(region["polygon"])], mpp=mpp)["features"]
        props = feature["properties"]
        props["name"] = f"region {region['region']}"
        props["classification"] = {"name": str(region["predicted"]), "color": [0, 200, 220]}
        props["measurements"].update({f"{model}: p({c})": float(v) for c, v in region["probs"].items()})
        props["measurements"][f"{model}: tiles"] = len(region["tiles"])
        features.append(feature)
    return {"type": "FeatureCollection", "features": features}


def write_region_tiles_csv(path: str | Path, regions: Sequence[dict[str, Any]], coords: np.ndarray) -> Path:
    """One row per tile of each analysed region: ``region, predicted, tile, x, y, measure, score`` (level-0
    top-left x, y; the score is the tile's attention or cosine within its region); returns the path."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["region", "predicted", "tile", "x", "y", "measure", "score"])
        for region in regions:
            for tile, value in zip(region["tiles"], region["tile_scores"], strict=True):
                x, y = (int(v) for v in coords[tile])
                writer.writerow(
                    [region["region"], region["predicted"], tile, x, y, region["measure"], f"{value:.6g}"]
                )
    return path
