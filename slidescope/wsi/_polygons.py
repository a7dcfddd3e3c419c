"""Tissue polygons: contours of a mask in level-0 pixels, and the rings of GeoJSON polygons.

Used by :class:`~slidescope.wsi.TissueMask` (its ``contours``, ``to_geojson`` and ``from_geojson``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["signed_area", "ring_area_um2", "ring_to_list", "drop_collinear", "mask_contours", "iter_polygons"]


def signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def ring_area_um2(ring: np.ndarray, mpp: tuple[float, float], ds: tuple[float, float]) -> float:
    # ring is in level-0 px; level-0 µm/px = mask mpp / downsample
    return abs(signed_area(ring)) * (mpp[0] / ds[0]) * (mpp[1] / ds[1])


def ring_to_list(ring: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 2), round(float(y), 2)] for x, y in ring]


def drop_collinear(rc: np.ndarray) -> np.ndarray:
    """Remove the middle points of straight runs of a closed contour (exact, cheap)."""
    if len(rc) < 4:
        return rc
    pts = rc[:-1] if np.array_equal(rc[0], rc[-1]) else rc
    prev = pts - np.roll(pts, 1, axis=0)
    nxt = np.roll(pts, -1, axis=0) - pts
    cross = prev[:, 0] * nxt[:, 1] - prev[:, 1] * nxt[:, 0]
    keep = np.abs(cross) > 1e-9
    if keep.sum() < 3:
        return rc
    out = pts[keep]
    return np.vstack([out, out[:1]])


def mask_contours(
    mask: np.ndarray, ds: tuple[float, float]
) -> tuple[tuple[np.ndarray, ...], tuple[tuple[np.ndarray, ...], ...]]:
    """Outer ring and holes of every 8-connected component, level-0 (x, y), closed, simplified."""
    from scipy import ndimage
    from skimage.measure import approximate_polygon, find_contours

    if not mask.any():
        return (), ()
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    objects = ndimage.find_objects(labels)
    outers: list[np.ndarray] = []
    holes_all: list[tuple[np.ndarray, ...]] = []
    order: list[tuple[int, int]] = []
    for i, sl in enumerate(objects):
        if sl is None:
            continue
        comp = labels[sl] == i + 1
        padded = np.pad(comp, 1).astype(np.float32)
        rings = []
        for rc in find_contours(padded, 0.5, fully_connected="high"):
            if len(rc) < 3:
                continue
            rc = approximate_polygon(drop_collinear(rc), tolerance=0.5)
            if not np.array_equal(rc[0], rc[-1]):
                rc = np.vstack([rc, rc[:1]])
            # padded (row, col) index -> mask edge coordinates -> level-0 (x, y)
            x = (rc[:, 1] - 1.0 + 0.5 + sl[1].start) * ds[0]
            y = (rc[:, 0] - 1.0 + 0.5 + sl[0].start) * ds[1]
            ring = np.column_stack([x, y]).astype(np.float64)
            if len(ring) >= 4:
                rings.append(ring)
        if not rings:
            continue
        areas = [abs(signed_area(r)) for r in rings]
        k = int(np.argmax(areas))
        outer = rings[k]
        if signed_area(outer) < 0:  # outer counter-clockwise in (x, y) numbers, holes clockwise
            outer = outer[::-1].copy()
        holes = []
        for j, r in enumerate(rings):
            if j != k:
                holes.append(r[::-1].copy() if signed_area(r) > 0 else r)
        outers.append(outer)
        holes_all.append(tuple(holes))
        order.append((sl[0].start, sl[1].start))
    idx = sorted(range(len(outers)), key=lambda j: order[j])
    return tuple(outers[j] for j in idx), tuple(holes_all[j] for j in idx)


def iter_polygons(data: Any):
    """Yield the rings (list of (x, y) lists) of every Polygon in a GeoJSON-like object."""
    if isinstance(data, list):
        for item in data:
            yield from iter_polygons(item)
        return
    if not isinstance(data, dict):
        return
    kind = data.get("type")
    if kind == "FeatureCollection":
        yield from iter_polygons(data.get("features", []))
    elif kind == "Feature":
        yield from iter_polygons(data.get("geometry"))
    elif kind == "GeometryCollection":
        yield from iter_polygons(data.get("geometries", []))
    elif kind == "Polygon":
        yield data.get("coordinates", [])
    elif kind == "MultiPolygon":
        yield from data.get("coordinates", [])
    else:
        log.debug("from_geojson: ignoring a %s", kind)
