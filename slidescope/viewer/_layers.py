"""Results -> napari layer tuples, aligned to the slide in micrometres. No Qt here.

Coordinates. A slide layer has ``scale = (mpp_y, mpp_x)`` and no translation, so napari puts the
*centre* of level-0 pixel ``(row j, column i)`` at world ``(j * mpp_y, i * mpp_x)`` µm. Slide
coordinates elsewhere in slidescope (tile coords, tissue contours, QuPath GeoJSON) are level-0
pixel *edges* with the origin at the top-left corner of the image, so edge ``x`` is world
``(x - 0.5) * mpp_x``. :func:`level0_to_world` and :func:`world_to_level0` convert.

A heatmap has one cell per tile on the tiles' lattice (origin, stride): cell ``(r, c)`` has
``scale = stride * mpp`` and its centre falls on the centre of the tile at
``origin + (c, r) * stride``, so ``translate = (origin + extent / 2 - 0.5) * mpp``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ._reader import METADATA_KEY

log = logging.getLogger(__name__)

__all__ = [
    "TileLattice",
    "level0_to_world",
    "world_to_level0",
    "heatmap_colormap",
    "heatmap_layer",
    "class_labels_layer",
    "qc_layer",
    "qc_legend_html",
    "tile_labels_layer",
    "show_tile_grid",
    "show_one_heatmap",
    "keep_read_only",
    "class_legend_html",
    "tissue_layer",
    "top_tiles",
]

#: opacity of a new heatmap layer: the tissue stays readable under it
HEATMAP_OPACITY = 0.6
#: opacity and colour of the tile grid when shown
GRID_OPACITY = 0.6
GRID_COLOR = "#1a1a1a"
#: colours of the classes (best-class labels layer, its legend and the QuPath export), with their names
CLASS_COLOURS = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [128, 128, 0],
    [0, 0, 128],
]
CLASS_COLOUR_NAMES = ["red", "green", "blue", "orange", "purple", "cyan", "magenta", "lime", "olive", "navy"]
#: colours of the tile QC flags (:data:`slidescope.wsi.QC_CHECKS`) in the QC layer and its legend
QC_COLOURS = {
    "blur": [0, 200, 255],
    "fold": [255, 140, 0],
    "dark": [90, 90, 90],
    "pen": [0, 230, 90],
    "bubble": [255, 0, 200],
}
#: opacity of the QC layer: flagged tiles stand out, the tissue under them stays visible
QC_OPACITY = 0.5
#: the tile-grid layer holds at most this many pixels (each tile drawn as k x k pixels, k <= 32)
TILE_GRID_MAX_PIXELS = 4_000_000
#: most pixels per tile side in the tile-grid layer: its outline (one pixel) is 1/k of a tile wide
TILE_GRID_MAX_SUBPIXELS = 32
#: longest side of the tile-grid layer (OpenGL's usual texture limit; napari would downsample it)
TILE_GRID_MAX_SIDE = 16384


def level0_to_world(xy: np.ndarray, mpp: Sequence[float]) -> np.ndarray:
    """Level-0 pixel-edge coordinates ``(..., 2) (x, y)`` -> napari world ``(..., 2) (row, col)`` in µm."""
    xy = np.asarray(xy, dtype=np.float64)
    return np.stack([(xy[..., 1] - 0.5) * mpp[1], (xy[..., 0] - 0.5) * mpp[0]], axis=-1)


def world_to_level0(world: np.ndarray, mpp: Sequence[float]) -> np.ndarray:
    """napari world ``(..., 2) (row, col)`` in µm -> level-0 pixel-edge coordinates ``(..., 2) (x, y)``."""
    world = np.asarray(world, dtype=np.float64)
    return np.stack([world[..., 1] / mpp[0] + 0.5, world[..., 0] / mpp[1] + 0.5], axis=-1)


@dataclass(frozen=True)
class TileLattice:
    """Where each tile sits on the regular grid its coordinates were cut from.

    Attributes
    ----------
    origin : level-0 (x, y) of lattice cell (0, 0) (the top-left-most tile position).
    stride : level-0 (x, y) step between neighbouring tiles.
    extent : level-0 (w, h) covered by one tile (larger than ``stride`` with overlap).
    shape : (rows, cols) of the lattice.
    rows, cols : (N,) int64 cell of every tile.
    """

    origin: tuple[int, int]
    stride: tuple[int, int]
    extent: tuple[int, int]
    shape: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray

    @classmethod
    def from_coords(
        cls, coords: np.ndarray, extent: Sequence[int], stride: Sequence[int] | None = None
    ) -> TileLattice:
        """The lattice of ``coords (N, 2) (x, y)`` level-0 top-left corners with tile ``extent (w, h)``.

        ``stride`` defaults to the extent (no overlap). Coordinates that do not lie on the lattice
        (tiles imported from elsewhere) are put in the nearest cell.
        """
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        ext = (int(extent[0]), int(extent[1]))
        step = (int(stride[0]), int(stride[1])) if stride is not None else ext
        if min(ext) <= 0 or min(step) <= 0:
            raise InvalidParameterError(f"tile extent and stride must be positive, got {ext} and {step}")
        if len(coords) == 0:
            return cls((0, 0), step, ext, (0, 0), np.zeros(0, np.int64), np.zeros(0, np.int64))
        x0, y0 = (int(v) for v in coords.min(axis=0))
        offset = coords - np.array([x0, y0])
        if np.any(offset % np.array(step)):
            log.warning(
                "tile coordinates are not on a %s lattice; each tile is shown in its nearest cell", step
            )
        cols = np.rint(offset[:, 0] / step[0]).astype(np.int64)
        rows = np.rint(offset[:, 1] / step[1]).astype(np.int64)
        return cls((x0, y0), step, ext, (int(rows.max()) + 1, int(cols.max()) + 1), rows, cols)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def scale(self, mpp: Sequence[float]) -> tuple[float, float]:
        """napari ``scale`` (row, col) in µm of one lattice cell."""
        return self.stride[1] * mpp[1], self.stride[0] * mpp[0]

    def translate(self, mpp: Sequence[float]) -> tuple[float, float]:
        """napari ``translate`` (row, col) in µm: cell (0, 0)'s centre on its tile's centre."""
        return (
            (self.origin[1] + self.extent[1] / 2 - 0.5) * mpp[1],
            (self.origin[0] + self.extent[0] / 2 - 0.5) * mpp[0],
        )

    def grid(self, values: np.ndarray, *, fill: float | int = np.nan, dtype: Any = np.float32) -> np.ndarray:
        """(rows, cols) image with ``values (N,)`` in the tiles' cells and ``fill`` elsewhere."""
        out = np.full(self.shape, fill, dtype=dtype)
        out[self.rows, self.cols] = np.asarray(values)
        return out

    def centres(self) -> np.ndarray:
        """(N, 2) level-0 (x, y) of every tile's centre."""
        x = self.origin[0] + self.cols * self.stride[0] + self.extent[0] / 2
        y = self.origin[1] + self.rows * self.stride[1] + self.extent[1] / 2
        return np.stack([x, y], axis=1)


def heatmap_colormap(name: str = "inferno") -> Any:
    """A napari colormap that is transparent at 0 and opaque from a quarter of the range up.

    Its colours are those of :func:`slidescope.mil.heatmap.colormap` (the PNG heatmaps), so the
    viewer and the exported images agree.
    """
    from napari.utils.colormaps import Colormap

    from ..mil.heatmap import colormap

    controls = np.linspace(0.0, 1.0, 17)
    rgb = colormap(controls, name).astype(np.float64) / 255.0
    alpha = np.clip(controls * 4.0, 0.0, 1.0)
    return Colormap(colors=np.column_stack([rgb, alpha]), controls=controls, name=f"slidescope-{name}")


def _score_limits(values: np.ndarray, kind: str) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if kind == "probability" or finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + (abs(lo) * 1e-3 or 1e-3)
    return lo, hi


def _base_kwargs(name: str, lattice: TileLattice, mpp: Sequence[float], units: str) -> dict[str, Any]:
    return {
        "name": name,
        "scale": lattice.scale(mpp),
        "translate": lattice.translate(mpp),
        "units": (units, units),
    }


def heatmap_layer(
    values: np.ndarray,
    lattice: TileLattice,
    mpp: Sequence[float],
    *,
    name: str,
    kind: str = "score",
    units: str = "um",
    cmap: str = "inferno",
    metadata: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any], str]:
    """One value per tile as an image layer tuple, aligned to the slide.

    Parameters
    ----------
    values : (N,) per-tile scores in the order of the lattice's tiles (raw: the status bar shows them).
    lattice : from :meth:`TileLattice.from_coords`.
    mpp : level-0 (x, y) µm per pixel of the slide.
    kind : ``"probability"`` (contrast limits 0-1), ``"attention"``, ``"similarity"``... (limits:
        the scores' range).

    Returns
    -------
    (data (rows, cols) float32 with NaN where there is no tile, kwargs, "image")
    """
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if len(values) != len(lattice):
        raise InvalidParameterError(f"{len(values)} scores for {len(lattice)} tiles")
    data = lattice.grid(values)
    limits = _score_limits(values, kind)
    kwargs = _base_kwargs(name, lattice, mpp, units)
    kwargs.update(
        {
            "colormap": heatmap_colormap(cmap),
            "contrast_limits": limits,
            "opacity": HEATMAP_OPACITY,
            "blending": "translucent",
            "interpolation2d": "nearest",
            "metadata": {  # the tile scores themselves: exports use them, whatever the display does to the grid
                METADATA_KEY: {
                    "kind": "heatmap",
                    "score_kind": kind,
                    "score": name,
                    **(metadata or {}),
                    "values": values,
                }
            },
        }
    )
    return data, kwargs, "image"


def class_labels_layer(
    classes: np.ndarray,
    names: Sequence[str],
    lattice: TileLattice,
    mpp: Sequence[float],
    *,
    name: str,
    units: str = "um",
    metadata: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any], str]:
    """A categorical output (class index per tile) as a labels layer: label ``k + 1`` is class ``names[k]``."""
    import pandas as pd

    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if len(classes) != len(lattice):
        raise InvalidParameterError(f"{len(classes)} classes for {len(lattice)} tiles")
    if len(classes) and (classes.min() < 0 or classes.max() >= len(names)):
        raise InvalidParameterError(f"class indices must lie in 0..{len(names) - 1}")
    from napari.utils.colormaps import DirectLabelColormap

    data = lattice.grid(classes + 1, fill=0, dtype=np.int32)
    kwargs = _base_kwargs(name, lattice, mpp, units)
    colours: dict[int | None, Any] = {0: "transparent", None: "transparent"}
    for k in range(len(names)):
        colours[k + 1] = np.array([*CLASS_COLOURS[k % len(CLASS_COLOURS)], 255]) / 255.0
    kwargs.update(
        {
            "opacity": 0.35,
            "colormap": DirectLabelColormap(color_dict=colours),
            "features": pd.DataFrame(
                {"index": np.arange(len(names) + 1), "class": ["(no tile)", *map(str, names)]}
            ),
            "metadata": {
                METADATA_KEY: {"kind": "classes", "classes": list(map(str, names)), **(metadata or {})}
            },
        }
    )
    return data, kwargs, "labels"


def qc_layer(
    flags: Mapping[str, np.ndarray],
    lattice: TileLattice,
    mpp: Sequence[float],
    *,
    name: str,
    units: str = "um",
    metadata: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any], str]:
    """The tile QC flags (``{check: (N,) bool}``, :func:`slidescope.wsi.qc_flags`) as a labels layer.

    Label ``k + 1`` is the k-th check of ``flags`` (a tile with several flags shows the first of them; the
    tile layer's hover text lists all), 0 an unflagged tile; colours from :data:`QC_COLOURS`.
    """
    import pandas as pd
    from napari.utils.colormaps import DirectLabelColormap

    checks = list(flags)
    n = len(lattice)
    label = np.zeros(n, np.int32)
    for k in reversed(range(len(checks))):  # the first check wins
        hit = np.asarray(flags[checks[k]], dtype=bool).reshape(-1)
        if len(hit) != n:
            raise InvalidParameterError(f"{len(hit)} {checks[k]} flags for {n} tiles")
        label[hit] = k + 1
    colours: dict[int | None, Any] = {0: "transparent", None: "transparent"}
    for k, check in enumerate(checks):
        colours[k + 1] = np.array([*QC_COLOURS.get(check, [255, 255, 255]), 255]) / 255.0
    kwargs = _base_kwargs(name, lattice, mpp, units)
    kwargs.update(
        {
            "opacity": QC_OPACITY,
            "colormap": DirectLabelColormap(color_dict=colours),
            "features": pd.DataFrame({"index": np.arange(len(checks) + 1), "QC flag": ["none", *checks]}),
            "metadata": {
                METADATA_KEY: {
                    "kind": "qc",
                    "checks": checks,
                    "flagged": {c: int(np.count_nonzero(flags[c])) for c in checks},
                    **(metadata or {}),
                }
            },
        }
    )
    return lattice.grid(label, fill=0, dtype=np.int32), kwargs, "labels"


def qc_legend_html(layers: Sequence[Any]) -> str:
    """Rich-text legend of the QC layer among ``layers``: colour, check and number of tiles flagged."""
    for layer in layers:
        meta = layer.metadata.get(METADATA_KEY, {})
        if meta.get("kind") == "qc":
            items = []
            for check in meta.get("checks", []):
                r, g, b = QC_COLOURS.get(check, [255, 255, 255])
                count = meta.get("flagged", {}).get(check, 0)
                items.append(f'<span style="color:rgb({r},{g},{b})">&#9632;</span> {check} ({count})')
            return "QC flags: " + " &nbsp; ".join(items)
    return ""


def tile_labels_layer(
    lattice: TileLattice,
    coords: np.ndarray,
    scores: Mapping[str, np.ndarray],
    mpp: Sequence[float],
    *,
    name: str = "tiles",
    units: str = "um",
    visible_grid: bool = False,
    metadata: Mapping[str, Any] | None = None,
    qc: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, Any], str]:
    """The tile grid as a labels layer (label = tile index + 1) whose features hold every score.

    With this layer selected, napari's status bar shows the hovered tile's index, level-0 position
    and scores (in words once :func:`~slidescope.viewer._readout.attach_tile_readout` is applied).
    Each tile is drawn as k x k pixels (k <= :data:`TILE_GRID_MAX_SUBPIXELS`, bounded by
    :data:`TILE_GRID_MAX_PIXELS` and :data:`TILE_GRID_MAX_SIDE`) so that, outlined
    (:func:`show_tile_grid`), it draws the grid with lines 1/k of a tile wide; it starts transparent
    unless ``visible_grid``.
    """
    import pandas as pd
    from napari.utils.colormaps import DirectLabelColormap

    n = len(lattice)
    rows, cols = lattice.shape
    by_pixels = np.floor(np.sqrt(TILE_GRID_MAX_PIXELS / max(1, (rows + 2) * (cols + 2))))
    k = int(max(1, min(TILE_GRID_MAX_SUBPIXELS, by_pixels, TILE_GRID_MAX_SIDE // (max(rows, cols) + 2))))
    # one empty cell around the lattice, so the outline of a tile on its border is closed too
    index = np.pad(lattice.grid(np.arange(1, n + 1), fill=0, dtype=np.int32), 1)
    data = np.kron(index, np.ones((k, k), np.int32)) if k > 1 else index
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    table: dict[str, Any] = {
        "index": np.arange(n + 1),
        "tile": np.arange(-1, n),
        "x": np.concatenate([[-1], coords[:, 0]]),
        "y": np.concatenate([[-1], coords[:, 1]]),
    }
    for key, values in scores.items():
        table[key] = np.concatenate([[np.nan], np.asarray(values, dtype=np.float64).reshape(-1)])
    if qc:  # the QC flags of each tile, in words ("" when none)
        hits = [np.asarray(v, dtype=bool).reshape(-1) for v in qc.values()]
        words = [", ".join(c for c, hit in zip(qc, hits, strict=True) if hit[i]) for i in range(n)]
        table["qc"] = ["", *words]
    scale = lattice.scale(mpp)
    cell = (scale[0] / k, scale[1] / k)
    centre = lattice.translate(mpp)  # of lattice cell (0, 0), which is padded cell (1, 1)
    kwargs = {
        "name": name,
        "scale": cell,
        # sub-pixel (0, 0) of a k x k block sits half a block minus half a sub-pixel before the cell centre
        "translate": (
            centre[0] - scale[0] - (k - 1) / 2 * cell[0],
            centre[1] - scale[1] - (k - 1) / 2 * cell[1],
        ),
        "units": (units, units),
        "colormap": DirectLabelColormap(color_dict={0: "transparent", None: GRID_COLOR}),
        "opacity": GRID_OPACITY if visible_grid else 0.0,
        "features": pd.DataFrame(table),
        "metadata": {
            METADATA_KEY: {
                "kind": "tiles",
                "subpixels": k,
                "mpp": [float(mpp[0]), float(mpp[1])],
                "units": units,
                **(metadata or {}),
            }
        },
    }
    return data, kwargs, "labels"


def show_tile_grid(layer: Any, show: bool = True) -> None:
    """Show (outlines, :data:`GRID_OPACITY`) or hide (transparent) a layer made by :func:`tile_labels_layer`.

    The layer stays visible either way, so the status bar keeps showing the hovered tile's scores.
    """
    k = int(layer.metadata.get(METADATA_KEY, {}).get("subpixels", 1))
    layer.contour = 1 if (show and k > 1) else 0
    layer.opacity = GRID_OPACITY if show else 0.0


_READ_ONLY: weakref.WeakSet[Any] = weakref.WeakSet()


def keep_read_only(layer: Any) -> None:
    """Make a layer (the tile grid, invisible but hovered for its scores) not editable, and keep it so:
    napari makes a labels layer editable again whenever its data change, and one stray paint click
    would change which tile the status bar names."""

    def relock(_event: Any = None) -> None:
        if layer.editable:
            layer.editable = False

    relock()
    if layer not in _READ_ONLY:
        _READ_ONLY.add(layer)
        layer.events.editable.connect(relock)


def show_one_heatmap(viewer: Any, added: Sequence[Any]) -> Any:
    """After a run: show its first heatmap with a colour bar, hide every other heatmap; returns the shown one.

    The run's other heatmaps (zero-shot: one per class) get a colour bar too, shown when made visible.
    """
    new = [layer for layer in added if layer.metadata.get(METADATA_KEY, {}).get("kind") == "heatmap"]
    for layer in new:
        if hasattr(layer, "colorbar"):  # napari >= 0.5.5
            layer.colorbar.visible = True
    shown = new[0] if new else None
    for layer in viewer.layers:
        if layer.metadata.get(METADATA_KEY, {}).get("kind") == "heatmap":
            layer.visible = layer is shown
    return shown


def class_legend_html(layers: Sequence[Any]) -> str:
    """Rich-text legend of the best-class layer among ``layers``: a coloured square and the class name
    per class (empty without one)."""
    for layer in layers:
        meta = layer.metadata.get(METADATA_KEY, {})
        if meta.get("kind") == "classes":
            items = []
            for k, name in enumerate(meta.get("classes", [])):
                r, g, b = CLASS_COLOURS[k % len(CLASS_COLOURS)]
                items.append(f'<span style="color:rgb({r},{g},{b})">&#9632;</span> {name}')
            return "best class: " + " &nbsp; ".join(items)
    return ""


def tissue_layer(
    contours: Sequence[np.ndarray],
    mpp: Sequence[float],
    *,
    name: str = "tissue",
    units: str = "um",
    holes: Sequence[Sequence[np.ndarray]] = (),
    edge_width_um: float = 12.0,
) -> tuple[list[np.ndarray], dict[str, Any], str]:
    """Tissue outlines (level-0 (x, y) pixel-edge polygons, e.g. ``TissueMask.contours``) as a shapes layer.

    The shapes' data are level-0 pixel-edge coordinates (row, col) = (y, x), the QuPath convention;
    ``scale`` and a half-pixel ``translate`` put them on the slide in µm. Each outline and each hole is
    a closed ring drawn as a path (a polygon's face is triangulated by napari even when transparent:
    about 5 s for one 5,000-vertex outline, 0.02 s as a path), ``edge_width_um`` wide until
    :func:`~slidescope.viewer._readout.watch_viewer` keeps it a screen pixel or two at every zoom.
    """
    rings = [np.asarray(c, dtype=np.float64) for c in contours if len(c) >= 3]
    rings += [np.asarray(h, dtype=np.float64) for hs in holes for h in hs if len(h) >= 3]
    polygons = [(r if np.array_equal(r[0], r[-1]) else np.vstack([r, r[:1]]))[:, ::-1].copy() for r in rings]
    kwargs = {
        "name": name,
        "shape_type": "path",
        "scale": (mpp[1], mpp[0]),
        "translate": (-0.5 * mpp[1], -0.5 * mpp[0]),
        "units": (units, units),
        "edge_color": "#00a03c",
        "face_color": "transparent",
        "edge_width": float(edge_width_um / min(mpp)),
        "metadata": {METADATA_KEY: {"kind": "tissue", "mpp": list(map(float, mpp))}},
    }
    return polygons, kwargs, "shapes"


def top_tiles(values: np.ndarray, k: int = 10) -> np.ndarray:
    """Indices of the ``k`` highest finite scores, highest first (ties: lower index first)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.lexsort((np.arange(len(values)), -np.where(np.isfinite(values), values, -np.inf)))
    order = order[np.isfinite(values[order])]
    return order[: max(0, int(k))]
