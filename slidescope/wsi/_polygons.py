"""Tissue polygons: contours of a mask in level-0 pixels, and the rings of GeoJSON polygons.

Used by :class:`~slidescope.wsi.TissueMask` (its ``contours``, ``to_geojson`` and ``from_geojson``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "signed_area",
    "ring_area_um2",
    "ring_to_list",
    "drop_collinear",
    "simplify_chain",
    "mask_contours",
    "iter_polygons",
]


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


def simplify_chain(rc: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker: the points of the chain ``rc`` (K, 2) kept so that every dropped point lies within
    ``tolerance`` of the simplified chain; the first and last points are always kept.

    A point's distance to a segment is the perpendicular one when it projects strictly inside the segment,
    else the distance to the nearer end (so a closed ring, whose ends coincide, splits at its farthest
    point). The same rule as :func:`skimage.measure.approximate_polygon` (tests/wsi/test_polygons_simplify.py
    compares the two), without importing it: its module loads ``scipy.signal``, which costs more than
    tracing the contours of a slide.
    """
    n = len(rc)
    if tolerance <= 0 or n < 3:
        return rc
    pts = np.asarray(rc, dtype=np.float64)
    keep = np.zeros(n, dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    while stack:
        start, end = stack.pop()
        if end - start < 2:
            continue
        a, b = pts[start], pts[end]
        seg = b - a
        inner = pts[start + 1 : end]
        to_a, to_b = inner - a, inner - b
        # projects strictly inside the segment: perpendicular distance, else to the nearer end
        along_a = to_a[:, 0] * seg[0] + to_a[:, 1] * seg[1]
        along_b = to_b[:, 0] * seg[0] + to_b[:, 1] * seg[1]
        perp = (along_a > 0) & (along_b < 0)
        dist = np.sqrt(np.minimum(to_a[:, 0] ** 2 + to_a[:, 1] ** 2, to_b[:, 0] ** 2 + to_b[:, 1] ** 2))
        # the line in Hesse normal form, r cos(t) + c sin(t) = d, its unit normal at angle t
        t = -np.arctan2(seg[0], seg[1])
        cos, sin = np.cos(t), np.sin(t)
        d = a[0] * cos + a[1] * sin
        dist[perp] = np.abs(inner[perp, 0] * cos + inner[perp, 1] * sin - d)
        k = int(np.argmax(dist))
        if dist[k] > tolerance:
            mid = start + 1 + k
            keep[mid] = True
            stack.append((start, mid))
            stack.append((mid, end))
    return rc[keep]


def mask_contours(
    mask: np.ndarray, ds: tuple[float, float]
) -> tuple[tuple[np.ndarray, ...], tuple[tuple[np.ndarray, ...], ...]]:
    """Outer ring and holes of every 8-connected component, level-0 (x, y), closed, simplified."""
    from scipy import ndimage
    from skimage.measure import find_contours

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
            rc = simplify_chain(drop_collinear(rc), 0.5)
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
