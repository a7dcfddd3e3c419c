"""Exports of what the viewer shows: heatmaps as pyramidal TIFFs, tiles and shapes as QuPath GeoJSON.

Every export is in the slide's own frame: level-0 pixel coordinates with the origin at the top-left
corner (QuPath's convention), and TIFF resolution tags in µm per pixel. No Qt here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ._layers import CLASS_COLOURS, TileLattice, world_to_level0
from ._reader import METADATA_KEY

__all__ = [
    "heatmap_downsample",
    "write_heatmap_tiff",
    "tiles_feature_collection",
    "shapes_feature_collection",
    "nest_rings",
    "unique_path",
    "shapes_to_level0",
    "write_shapes_geojson",
    "write_geojson",
    "render_heatmap_png",
]

#: longest side of an automatically sized heatmap TIFF (its level 0)
MAX_TIFF_SIDE = 16384
LEVEL_COLOURS = {"high": [220, 40, 30], "medium": [240, 160, 40], "low": [60, 90, 200]}


def heatmap_downsample(
    lattice: TileLattice, slide_dimensions: Sequence[int], max_side: int = MAX_TIFF_SIDE
) -> int:
    """Level-0 pixels per TIFF pixel for a heatmap TIFF aligned to the slide.

    The finest whole divisor ``f`` of the tiles' geometry (extent, stride, origin and overlap
    margins, in level-0 px) whose TIFF keeps the slide's longest side within ``max_side`` pixels
    (the coarsest divisor if none does). Every tile then covers whole TIFF pixels, and TIFF pixel
    ``(i, j)`` is exactly level-0 ``[f j, f (j + 1)) x [f i, f (i + 1))``.
    """
    base = 0
    for v in (
        *lattice.extent,
        *lattice.stride,
        *lattice.origin,
        (lattice.extent[0] - lattice.stride[0]) // 2,
        (lattice.extent[1] - lattice.stride[1]) // 2,
    ):
        base = gcd(base, int(v))
    base = max(1, base)
    divisors = [d for d in range(1, base + 1) if base % d == 0]
    longest = max(int(v) for v in slide_dimensions)
    fitting = [d for d in divisors if -(-longest // d) <= max_side]
    return fitting[0] if fitting else divisors[-1]


def _cell_index(centres: np.ndarray, origin: int, stride: int, extent: int) -> np.ndarray:
    """Lattice cell of level-0 positions: cell c spans the stride-wide band centred on tile c's centre."""
    return np.floor((centres - origin - (extent - stride) / 2) / stride).astype(np.int64)


def _tiles_of(grid: np.ndarray, lattice: TileLattice, downsample: int, shape: tuple[int, int], tile: int):
    """TIFF tiles (tile, tile) float32 in row-major order for one pyramid level."""
    rows, cols = grid.shape
    for ty in range(0, shape[0], tile):
        ys = (np.arange(ty, ty + tile) + 0.5) * downsample
        r = _cell_index(ys, lattice.origin[1], lattice.stride[1], lattice.extent[1])
        r_ok = (r >= 0) & (r < rows) & (np.arange(ty, ty + tile) < shape[0])
        for tx in range(0, shape[1], tile):
            xs = (np.arange(tx, tx + tile) + 0.5) * downsample
            c = _cell_index(xs, lattice.origin[0], lattice.stride[0], lattice.extent[0])
            c_ok = (c >= 0) & (c < cols) & (np.arange(tx, tx + tile) < shape[1])
            out = np.full((tile, tile), np.nan, np.float32)
            if r_ok.any() and c_ok.any():
                out[np.ix_(r_ok, c_ok)] = grid[np.ix_(r[r_ok], c[c_ok])]
            yield out


def write_heatmap_tiff(
    path: str | os.PathLike[str],
    values: np.ndarray,
    coords: np.ndarray,
    extent: Sequence[int],
    *,
    slide_dimensions: Sequence[int],
    mpp: Sequence[float],
    stride: Sequence[int] | None = None,
    downsample: int | None = None,
    name: str = "score",
    tile: int = 256,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write per-tile scores as a pyramidal float32 TIFF aligned to the slide.

    Parameters
    ----------
    path : the ``.tif`` to write.
    values : (N,) scores of the tiles at ``coords (N, 2)`` (level-0 top-left (x, y), tile ``extent`` (w, h)).
    slide_dimensions : level-0 (width, height) of the slide.
    mpp : level-0 (x, y) µm per pixel of the slide.
    downsample : level-0 pixels per TIFF pixel (default :func:`heatmap_downsample`); TIFF pixel
        ``(row i, col j)`` covers level-0 ``[f j, f (j + 1)) x [f i, f (i + 1))``.

    Returns
    -------
    Path
        The file: tiled (``tile`` px, zlib), NaN where there is no tile, sub-resolutions halving
        down to 1024 px in SubIFDs, resolution tags in pixels per cm (``1e4 / µm per pixel``) and a
        JSON ImageDescription with the score name, downsample, mpp and slide size.
    """
    import tifffile

    lattice = TileLattice.from_coords(coords, extent, stride)
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if len(values) != len(lattice):
        raise InvalidParameterError(f"{len(values)} scores for {len(lattice)} tiles")
    f = int(downsample) if downsample else heatmap_downsample(lattice, slide_dimensions)
    if f < 1:
        raise InvalidParameterError(f"downsample must be a positive whole number, got {downsample!r}")
    w0, h0 = (int(v) for v in slide_dimensions)
    grid = lattice.grid(values)
    levels = [(f, (-(-h0 // f), -(-w0 // f)))]
    while max(levels[-1][1]) > 1024:
        d = levels[-1][0] * 2
        levels.append((d, (-(-h0 // d), -(-w0 // d))))
    description = json.dumps(
        {
            "slidescope": "heatmap",
            "score": name,
            "downsample": f,
            "mpp": [float(mpp[0]), float(mpp[1])],
            "slide_dimensions": [w0, h0],
            "pixel": "TIFF pixel (i, j) covers level-0 [f*j, f*(j+1)) x [f*i, f*(i+1))",
            **(extra or {}),
        }
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=w0 * h0 // (f * f) > 2**28) as tw:
        for k, (d, shape) in enumerate(levels):
            tw.write(
                _tiles_of(grid, lattice, d, shape, tile),
                shape=shape,
                dtype=np.float32,
                tile=(tile, tile),
                photometric="minisblack",
                compression="zlib",
                metadata=None,
                resolution=(1e4 / (d * mpp[0]), 1e4 / (d * mpp[1])),
                resolutionunit="CENTIMETER",
                subifds=len(levels) - 1 if k == 0 else None,
                subfiletype=1 if k else 0,
                description=description if k == 0 else None,
            )
    return path


def _levels(normalized: np.ndarray) -> list[str]:
    return ["high" if v >= 2 / 3 else "medium" if v >= 1 / 3 else "low" for v in normalized.tolist()]


def tiles_feature_collection(
    coords: np.ndarray,
    extent: Sequence[int],
    scores: Mapping[str, np.ndarray],
    *,
    main: str | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """QuPath GeoJSON of scored tiles: one ``Polygon`` per tile, level-0 pixels, top-left origin.

    Built on :func:`slidescope.mil.heatmap.tiles_geojson` (``measurements``: the ``main`` score and
    its rank-normalised value), with every other score added to the measurements and a
    classification: with ``classes`` (zero-shot), the best-matching class among the
    ``zero-shot/<class>`` scores; otherwise the tertile of the main score (``"<score> high"``,
    ``medium``, ``low``).
    """
    from ..mil.heatmap import normalize_scores, tiles_geojson

    if not scores:
        raise InvalidParameterError("no scores to export")
    main = main or next(iter(scores))
    values = np.asarray(scores[main], dtype=np.float64)
    normalized = normalize_scores(values)
    collection = tiles_geojson(
        coords, extent, values, normalized=normalized, object_type="detection", name=main
    )
    if classes:
        sims = np.stack([np.asarray(scores[f"zero-shot/{c}"], dtype=np.float64) for c in classes], axis=1)
        best = sims.argmax(axis=1).tolist()
        names = [str(classes[b]) for b in best]
        colours = [CLASS_COLOURS[b % len(CLASS_COLOURS)] for b in best]
    else:
        leaf = main.rsplit("/", 1)[-1]
        names = [f"{leaf} {lv}" for lv in _levels(normalized)]
        colours = [LEVEL_COLOURS[n.rsplit(" ", 1)[-1]] for n in names]
    for i, feature in enumerate(collection["features"]):
        props = feature["properties"]
        for key, column in scores.items():
            if key != main:
                props["measurements"][key] = float(column[i])
        props["classification"] = {"name": names[i], "color": colours[i]}
    return collection


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _ring_area(ring: np.ndarray) -> float:
    return abs(_signed_area(ring))


def _inside(points: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Even-odd rule: which ``points (M, 2)`` lie strictly inside the closed ``ring (K, 2)``."""
    x, y = points[:, :1], points[:, 1:]
    x0, y0 = ring[None, :-1, 0], ring[None, :-1, 1]
    x1, y1 = ring[None, 1:, 0], ring[None, 1:, 1]
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return np.count_nonzero(crosses & (x < at), axis=1) % 2 == 1


def nest_rings(rings: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """Closed rings that do not cross (tissue outlines and their holes, in any order) -> polygons
    ``[outer, *holes]``, by nesting depth: a ring inside an even number of others is an outer ring, one
    inside an odd number is a hole of the smallest ring around it (an island in a hole is an outer ring
    again). Outer rings get a positive shoelace area in ``(x, y)`` numbers, holes a negative one.

    A ring counts as inside another when most of its vertices are (vertices shared by touching
    rings then do not decide).
    """
    rings = [np.asarray(r, dtype=np.float64) for r in rings]
    areas = [_ring_area(r) for r in rings]
    parents: list[list[int]] = []
    for i, ring in enumerate(rings):
        around = [
            j
            for j, other in enumerate(rings)
            if j != i and areas[j] > areas[i] and _inside(ring[:-1], other).mean() > 0.5
        ]
        parents.append(around)
    polygons: dict[int, list[np.ndarray]] = {}
    for i in sorted(range(len(rings)), key=lambda k: len(parents[k])):
        depth = len(parents[i])
        ring = rings[i] if _signed_area(rings[i]) >= 0 else rings[i][::-1].copy()
        if depth % 2 == 0:
            polygons[i] = [ring]
            continue
        owner = min((j for j in parents[i] if len(parents[j]) == depth - 1), key=lambda j: areas[j])
        polygons[owner].append(ring[::-1].copy())
    return [polygons[i] for i in sorted(polygons)]


def shapes_feature_collection(
    polygons: Sequence[np.ndarray],
    *,
    mpp: Sequence[float] | None = None,
    classification: str | None = None,
    color: Sequence[int] = (0, 160, 60),
    names: Sequence[str] | None = None,
    nest: bool = False,
) -> dict[str, Any]:
    """QuPath GeoJSON annotations from polygons in level-0 pixel-edge ``(x, y)`` coordinates.

    Each ring is closed; with ``mpp`` every feature gets ``measurements.area_um2`` (outer ring less
    its holes), as :meth:`slidescope.wsi.TissueMask.to_geojson` writes them. With ``nest``, rings
    inside others are holes (:func:`nest_rings`): one ``Polygon [outer, *holes]`` per tissue piece, as
    the tissue outline layer holds outer rings and holes as separate shapes; without, one polygon
    per ring (shapes drawn by hand).
    """
    rings = []
    for poly in polygons:
        ring = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(ring) < 3:
            continue
        rings.append(ring if np.array_equal(ring[0], ring[-1]) else np.vstack([ring, ring[:1]]))
    grouped = nest_rings(rings) if nest else [[r] for r in rings]
    features = []
    for i, group in enumerate(grouped):
        name = names[i] if names else f"{classification or 'shape'} {i + 1}"
        props: dict[str, Any] = {"objectType": "annotation", "name": name, "isLocked": False}
        if classification:
            props["classification"] = {"name": classification, "color": list(map(int, color))}
        if mpp is not None:
            area = _ring_area(group[0]) - sum(_ring_area(h) for h in group[1:])
            props["measurements"] = {"area_um2": round(area * mpp[0] * mpp[1], 2)}
        geometry = {"type": "Polygon", "coordinates": [np.round(r, 3).tolist() for r in group]}
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    return {"type": "FeatureCollection", "features": features}


def unique_path(path: str | os.PathLike[str]) -> Path:
    """``path``, or when it exists the first free ``<name>-2<suffix>``, ``-3``...: exports never overwrite."""
    path = Path(path)
    k = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        k += 1
    return candidate


def write_geojson(path: str | os.PathLike[str], collection: Mapping[str, Any]) -> Path:
    """Write a GeoJSON object as UTF-8 JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(collection), encoding="utf-8")
    return path


def shapes_to_level0(
    data: Sequence[np.ndarray], attributes: Mapping[str, Any], *, mpp: Sequence[float] | None = None
) -> list[np.ndarray]:
    """Shapes layer data (data coordinates) -> polygons in level-0 pixel-edge ``(x, y)`` coordinates.

    The vertices go to world µm through the layer's ``scale`` and ``translate``, then to level-0
    pixels with ``mpp`` (the slide's level-0 (x, y) µm per pixel). With ``mpp=None`` the world
    coordinates are taken to be level-0 pixels already.
    """
    scale = np.asarray(attributes.get("scale", (1.0, 1.0)), dtype=np.float64)[-2:]
    translate = np.asarray(attributes.get("translate", (0.0, 0.0)), dtype=np.float64)[-2:]
    polygons = []
    for shape in data:
        world = np.asarray(shape, dtype=np.float64)[:, -2:] * scale + translate
        polygons.append(world_to_level0(world, mpp) if mpp is not None else world[:, ::-1].copy())
    return polygons


def _slide_mpp(attributes: Mapping[str, Any]) -> list[float] | None:
    """The slide mpp for a shapes layer: its own slidescope metadata, else the slide open in the viewer."""
    meta = (attributes.get("metadata") or {}).get(METADATA_KEY, {})
    if meta.get("mpp") is not None:
        return [float(v) for v in meta["mpp"]]
    try:
        from napari import current_viewer

        viewer = current_viewer()
    except ImportError:  # pragma: no cover - napari is what calls this writer
        viewer = None
    for layer in viewer.layers if viewer is not None else []:
        slide = layer.metadata.get(METADATA_KEY, {})
        if slide.get("kind") == "slide" and slide.get("units") == "um":
            return [float(v) for v in slide["mpp"]]
    return None


def write_shapes_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 writer: a shapes layer as QuPath GeoJSON annotations (level-0 pixels, top-left origin).

    The slide's pixel size comes from the layer's slidescope metadata (the tissue outline) or from
    the slide open in the viewer (shapes drawn on it).
    """
    mpp = _slide_mpp(attributes)
    polygons = shapes_to_level0(data, attributes, mpp=mpp)
    kind = (attributes.get("metadata") or {}).get(METADATA_KEY, {}).get("kind")
    tissue = kind == "tissue"
    collection = shapes_feature_collection(
        polygons, mpp=mpp, classification="Tissue" if tissue else None, nest=tissue
    )
    return [str(write_geojson(path, collection))]


def render_heatmap_png(
    path: str | os.PathLike[str],
    slide_path: str | os.PathLike[str],
    values: np.ndarray,
    coords: np.ndarray,
    extent: Sequence[int],
    *,
    limits: Sequence[float],
    name: str,
    size: int = 1024,
    alpha: float = 0.6,
    slide_mpp: float | None = None,
) -> Path:
    """A heatmap drawn from per-tile scores over the slide's thumbnail (whole slide, longest side ``size`` px),
    with a colour bar labelled in the scores' own units; not a screenshot of the canvas.

    Tile ``i`` (level-0 top-left ``coords[i]``, ``extent`` (w, h)) is painted with the viewer's colours
    (:func:`slidescope.mil.heatmap.colormap`) for ``values[i]`` scaled linearly from ``limits`` (lo, hi: the
    layer's contrast limits) with the viewer's opacity ramp (:func:`~slidescope.viewer._layers.heatmap_colormap`:
    transparent at ``lo``, ``alpha`` from a quarter of the range up); tiles with a NaN score (outside a
    region) are not painted.
    """
    from PIL import Image, ImageDraw

    from ..mil.heatmap import colormap
    from ..wsi import open_slide

    values = np.asarray(values, dtype=np.float64).reshape(-1)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if len(values) != len(coords):
        raise InvalidParameterError(f"{len(values)} scores for {len(coords)} tiles")
    lo, hi = float(limits[0]), float(limits[1])
    scaled = np.clip((values - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
    with open_slide(slide_path, slide_mpp=slide_mpp) as slide:
        w0, h0 = slide.dimensions
        thumb = slide.get_thumbnail((size, size))
    sx, sy = thumb.shape[1] / w0, thumb.shape[0] / h0
    base = Image.fromarray(thumb).convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    finite = np.isfinite(values)
    colours = colormap(np.where(finite, scaled, 0.0))
    # the viewer's ramp (heatmap_colormap): transparent at the bottom, fully ``alpha`` from a quarter up
    opacity = np.rint(255 * float(np.clip(alpha, 0.0, 1.0)) * np.clip(4.0 * scaled, 0.0, 1.0)).astype(int)
    tw, th = (int(v) for v in extent)
    for (x, y), c, a, ok in zip(
        coords.tolist(), colours.tolist(), opacity.tolist(), finite.tolist(), strict=True
    ):
        if ok:
            box = (round(x * sx), round(y * sy), round((x + tw) * sx) - 1, round((y + th) * sy) - 1)
            draw.rectangle(box, fill=(*c, a))
    painted = Image.alpha_composite(base, overlay).convert("RGB")
    from PIL import ImageFont

    bar_w, pad = max(14, painted.height // 25), 12
    label_w = max(60, int(ImageFont.load_default().getlength(name)) - bar_w + 2 * pad)
    canvas = Image.new(
        "RGB", (painted.width + pad + bar_w + label_w, max(painted.height, 120)), (255, 255, 255)
    )
    canvas.paste(painted, (0, 0))
    bar_h = canvas.height - 2 * pad - 16
    ramp = colormap(np.linspace(1.0, 0.0, bar_h))
    bx = painted.width + pad
    canvas.paste(Image.fromarray(np.repeat(ramp[:, None, :], bar_w, axis=1)), (bx, pad + 16))
    d = ImageDraw.Draw(canvas)
    d.rectangle((bx - 1, pad + 15, bx + bar_w, pad + 16 + bar_h), outline=(0, 0, 0))
    d.text((bx, 2), name, fill=(0, 0, 0))
    d.text((bx + bar_w + 4, pad + 16), f"{hi:.3g}", fill=(0, 0, 0))
    d.text((bx + bar_w + 4, pad + 4 + bar_h), f"{lo:.3g}", fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
