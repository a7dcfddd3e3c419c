"""Similarity search from cached embeddings: which tiles look like this one, in this slide and in others.

Cosine similarity of tile embeddings, read from the stores (nothing is recomputed). No Qt here; the Analyse
widget calls these when you click a tile, and they work from Python on any store folder::

    from slidescope.viewer import tile_similarity, similar_tiles

    sims = tile_similarity("stores/slide.zarr", "uni", 15)              # (N,): 1.0 at tile 15
    best = similar_tiles("stores", "uni", ("stores/slide.zarr", 15), k=5)  # top 5 tiles of every slide
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidParameterError

__all__ = ["SimilarTile", "cosine_to", "tile_similarity", "similar_tiles"]


@dataclass(frozen=True)
class SimilarTile:
    """One tile found by :func:`similar_tiles`: its slide's store, index, level-0 top-left and similarity."""

    store: Path
    slide: str
    index: int
    x: int
    y: int
    similarity: float


def _store(store: Any) -> Any:
    from ..features import open_store

    return open_store(store) if isinstance(store, (str, os.PathLike)) else store


def cosine_to(embeddings: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(N,) cosine similarity of each row of ``embeddings`` (N, D) to ``query`` (D,), in float64.

    A zero row (or a zero query) has similarity 0."""
    emb = np.asarray(embeddings, dtype=np.float64)
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    if emb.ndim != 2 or emb.shape[1] != q.shape[0]:
        raise InvalidParameterError(
            f"embeddings of shape {emb.shape} cannot be compared with a {q.shape[0]}-d tile: "
            "use stores of the same encoder"
        )
    norms = np.linalg.norm(emb, axis=1) * np.linalg.norm(q)
    dots = emb @ q
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def tile_similarity(store: Any, encoder: str, index: int) -> np.ndarray:
    """(N,) cosine similarity of every tile of a slide to its tile ``index`` (1.0 there), from the store.

    Parameters
    ----------
    store : a slide's store (path or :class:`~slidescope.features.SlideStore`).
    encoder : whose cached embeddings to compare (``store.encoders()`` lists them).
    index : the tile (0-based, the store's tile order).
    """
    opened = _store(store)
    emb = np.asarray(opened.embeddings(encoder), dtype=np.float64)
    if not 0 <= int(index) < len(emb):
        raise InvalidParameterError(f"tile {index} is not one of the {len(emb)} tiles of {opened.name}")
    return cosine_to(emb, emb[int(index)])


def similar_tiles(
    stores: str | os.PathLike[str],
    encoder: str,
    query: tuple[Any, int] | np.ndarray,
    *,
    k: int = 5,
) -> list[SimilarTile]:
    """The ``k`` tiles most similar to ``query`` in every slide store of a folder, most similar first.

    Parameters
    ----------
    stores : a folder of slide stores (``<slide>.zarr``).
    encoder : the encoder whose cached embeddings are compared; stores without them are skipped.
    query : ``(store, tile index)`` or an embedding vector (D,).
    k : tiles per slide.

    Returns
    -------
    list of SimilarTile
        ``k`` per slide (fewer for a slide with fewer tiles), sorted by similarity, highest first.
    """
    from ..features.store import StoreError

    if isinstance(query, tuple):
        source, index = query
        vector = np.asarray(_store(source).embeddings(encoder), dtype=np.float64)[int(index)]
    else:
        vector = np.asarray(query, dtype=np.float64)
    folder = Path(stores)
    if not folder.is_dir():
        raise InvalidParameterError(f"{folder} is not a folder of stores")
    found: list[SimilarTile] = []
    for path in sorted(folder.glob("*.zarr")):
        try:
            store = _store(path)
            if encoder not in store.encoders():
                continue
            sims = cosine_to(store.embeddings(encoder), vector)
        except StoreError:
            continue  # another slide's incomplete or damaged store: the others still count
        coords = store.coords
        order = np.lexsort((np.arange(len(sims)), -sims))[: max(0, int(k))]
        name = str(store.attrs.get("slide", {}).get("name", path.stem))
        found += [
            SimilarTile(path, name, int(i), int(coords[i][0]), int(coords[i][1]), float(sims[i]))
            for i in order
        ]
    return sorted(found, key=lambda t: -t.similarity)
