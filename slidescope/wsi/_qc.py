"""Classic (weight-free) per-tile quality control: focus, brightness, saturation, folds, pen and bubbles.

Every measure is computed on the uint8 RGB tiles at the tile's own mpp, as the encoder sees them,
vectorised over a batch (:func:`tile_qc`, torch on the CPU): focus, brightness, dark and bright fractions
on the full tile; saturation, density and pen on the tile averaged 4 x 4 (2 µm/px at 0.5 µm/px: areas,
not single pixels, and 16 x cheaper). :func:`qc_tiles` reads the tiles of a grid once (in spatial blocks,
like the extraction) and returns the grid with the measures and, with ``policy="exclude"``, without the
flagged tiles (:class:`QCGrid`), before anything is embedded.

Measures (one float per tile):

* ``focus``: the mean squared 4-neighbour Laplacian of the grey tile (Pech-Pacheco's variance of the
  Laplacian about zero) over its non-glass pixels. The Laplacian, not Tenengrad: one 3x3 stencil
  instead of two Sobel filters, and it weighs the finest frequencies most, which are what a Gaussian
  blur of a few pixels removes first. A mean per pixel, so tiles of any size compare; over the tissue
  only (pixels darker than :data:`GLASS_LUMINANCE`), so a tile half on glass is not taken for a blurred
  one. It depends on the tile's mpp (a finer mpp sees more blur per pixel): compare values of one mpp.
* ``brightness``: mean luminance (Rec. 601 grey, 0-255) of the whole tile.
* ``saturation``: mean HSV saturation ((max - min) / max) of the non-glass pixels (0-1), 4 x 4 averaged.
* ``density``: median optical density (log10 of glass over grey) of the tile's tissue, on the tile
  averaged 4 x 4. Where tissue folds over itself it is about twice the slide's usual density.
* ``dark_fraction``: fraction of the tile darker than :data:`DARK_LUMINANCE` (dark spots, debris).
* ``pen_fraction``: fraction of the tile that the classic detector's pen rule
  (:func:`slidescope.wsi._pen.pen_mask`, the one tissue detection removes ink with, without its margin)
  takes for ink, on the tile averaged 4 x 4 (2 µm/px at 0.5 µm/px): marker strokes, and dye specks too.
* ``bright_fraction``: fraction of the tile brighter than the glass by :data:`BRIGHT_MARGIN` grey levels
  (the bright rims of air bubbles and refraction edges; nothing on a scanner that clips glass to white).

Flags (checks): ``blur`` (focus < :data:`FOCUS_MIN`), ``fold`` (density > :data:`FOLD_RATIO` x the
median density of the slide's tiles: relative, so pale and dark stainings alike), ``dark``
(dark_fraction > :data:`DARK_MAX`), ``pen`` (pen_fraction > :data:`PEN_MAX`), ``bubble``
(bright_fraction > :data:`BRIGHT_MAX`). The defaults were set on synthetic slides with injected artefacts
(:func:`slidescope.synthetic.make_artefact_slide`) and checked on the tiles of the real H&E test slides;
they are not calibrated on a labelled real cohort.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np

from ..errors import InvalidParameterError
from ._grid import TileGrid
from ._pen import pen_mask
from ._slide import Slide

__all__ = [
    "QC_POLICIES",
    "QC_MEASURES",
    "QC_CHECKS",
    "FOCUS_MIN",
    "FOLD_RATIO",
    "DARK_LUMINANCE",
    "DARK_MAX",
    "PEN_MAX",
    "BRIGHT_MARGIN",
    "BRIGHT_MAX",
    "GLASS_LUMINANCE",
    "QCGrid",
    "tile_qc",
    "qc_flags",
    "qc_tiles",
    "qc_summary",
]

#: values of the ``qc`` option: no QC (the default: stores and caches as before), measure and record, or
#: measure, record and drop the flagged tiles before embedding
QC_POLICIES = ("off", "flag", "exclude")
#: the per-tile measures, in the order they are stored
QC_MEASURES = (
    "focus",
    "brightness",
    "saturation",
    "density",
    "dark_fraction",
    "pen_fraction",
    "bright_fraction",
)
#: the checks (flags) and the measure each one reads
QC_CHECKS = {
    "blur": "focus",
    "fold": "density",
    "dark": "dark_fraction",
    "pen": "pen_fraction",
    "bubble": "bright_fraction",
}
#: ``blur`` below this focus (mean squared Laplacian, grey levels²) at 0.5 µm/px. Clean synthetic H&E tiles
#: give 90-1000 (median ~600), the real H&E test slides 5 %-95 % quantiles 690-3100; synthetic tiles blurred
#: with sigma 3 px give 5-13. Other mpps or very pale stains may need another value (``thresholds=``).
FOCUS_MIN = 60.0
#: ``fold`` where a tile's tissue density exceeds this multiple of the slide's median tile density. A fold
#: doubles the density of the tissue under it, so it is found where that tissue is not much paler than the
#: slide's usual (injected folds on synthetic slides: 1.6-4.7 x; clean tissue up to 1.65 x, tiles mostly on
#: glass with a dark edge more)
FOLD_RATIO = 1.7
#: a pixel darker than this luminance counts as dark (black spots, debris)
DARK_LUMINANCE = 30.0
#: ``dark`` above this dark fraction
DARK_MAX = 0.10
#: ``pen`` above this ink fraction (injected synthetic strokes: 0.03-0.08; CMU-1-Small-Region, which has
#: green dye specks on its tissue: 14 % of its tiles above it)
PEN_MAX = 0.02
#: a pixel brighter than the glass by this many grey levels counts as bright (bubble rims)
BRIGHT_MARGIN = 8.0
#: ``bubble`` above this bright fraction
BRIGHT_MAX = 0.02
#: pixels at least this bright (and nearly neutral) are glass, left out of focus and saturation
GLASS_LUMINANCE = 215.0
#: the default thresholds, as recorded with the stored values and in the cache key of ``exclude``
THRESHOLDS = {
    "focus_min": FOCUS_MIN,
    "fold_ratio": FOLD_RATIO,
    "dark_luminance": DARK_LUMINANCE,
    "dark_max": DARK_MAX,
    "pen_max": PEN_MAX,
    "bright_margin": BRIGHT_MARGIN,
    "bright_max": BRIGHT_MAX,
}


_SQUARE = np.ones((3, 3), bool)


@functools.lru_cache(maxsize=1)
def _luma() -> Any:
    """The Rec. 601 luma weights as a torch tensor (3,)."""
    import torch

    return torch.tensor([0.299, 0.587, 0.114])


def _grey(images: np.ndarray) -> np.ndarray:
    rgb = images.astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def tile_qc(images: Any, *, glass: Iterable[float] | None = None) -> dict[str, np.ndarray]:
    """The QC measures of a batch of tiles (see the module docstring).

    Parameters
    ----------
    images : uint8 array or tensor, shape (B, H, W, 3) (or one tile (H, W, 3)), RGB as the encoder gets it.
    glass : RGB of the empty glass (``TissueMask.params["glass_rgb"]``); None: white (255, 255, 255).

    Returns
    -------
    dict
        One float32 array (B,) per name of :data:`QC_MEASURES`.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InvalidParameterError(
            f"tile_qc needs uint8 RGB tiles (B, H, W, 3), got {images.dtype} {images.shape}"
        )
    import torch

    glass_rgb = np.asarray([255.0, 255.0, 255.0] if glass is None else list(glass), np.float32)
    glass_grey = float(0.299 * glass_rgb[0] + 0.587 * glass_rgb[1] + 0.114 * glass_rgb[2])
    luma = _luma()
    with torch.inference_mode():
        x = torch.from_numpy(np.require(images, requirements=("C", "W"))).float()  # (B, H, W, 3)
        grey = x @ luma  # (B, H, W)
        tissue = (grey < GLASS_LUMINANCE).float()
        # the 4-neighbour Laplacian (sign as scipy.ndimage.laplace), valid part: (B, H - 2, W - 2)
        c = grey[:, 1:-1, 1:-1]
        lap = grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] - 4.0 * c
        inner = tissue[:, 1:-1, 1:-1]
        n_inner = inner.sum((1, 2))
        lap2 = lap * lap
        focus_tissue = (lap2 * inner).sum((1, 2)) / n_inner.clamp(min=1.0)
        focus = torch.where(n_inner >= 0.02 * inner[0].numel(), focus_tissue, lap2.mean((1, 2)))
        values = {
            "focus": focus.numpy(),
            "brightness": grey.mean((1, 2)).numpy(),
            "dark_fraction": (grey < DARK_LUMINANCE).float().mean((1, 2)).numpy(),
            "bright_fraction": (grey > glass_grey + BRIGHT_MARGIN).float().mean((1, 2)).numpy(),
        }
        small = _shrink(x.permute(0, 3, 1, 2))
    values.update(_colour(small, glass_grey))
    values["pen_fraction"] = _pen_fraction(small, glass_rgb)
    return {name: values[name].astype(np.float32) for name in QC_MEASURES}


def _shrink(x: Any, factor: int = 4) -> np.ndarray:
    """(B, 3, H, W) float tiles averaged ``factor`` x ``factor`` -> uint8 (B, H / factor, W / factor, 3)."""
    import torch

    if x.shape[2] >= factor and x.shape[3] >= factor:
        x = torch.nn.functional.avg_pool2d(x, factor)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _colour(small: np.ndarray, glass_grey: float) -> dict[str, np.ndarray]:
    """Saturation and density of the tiles averaged 4 x 4 (uint8 (B, h, w, 3))."""
    b = len(small)
    grey = _grey(small).reshape(b, -1)
    vmax = small.max(axis=-1).reshape(b, -1).astype(np.float32)
    sat = (vmax - small.min(axis=-1).reshape(b, -1)) / np.maximum(vmax, 1.0)
    tissue = (grey < GLASS_LUMINANCE) | (sat > 0.15)
    n = tissue.sum(axis=1)
    od = np.log10(max(glass_grey, 1.0) / np.maximum(grey, 1.0))
    density = np.zeros(b, np.float32)
    if n.any():
        density[n > 0] = np.nanmedian(np.where(tissue, od, np.nan)[n > 0], axis=1)
    return {
        "saturation": (sat * tissue).sum(axis=1) / np.maximum(n, 1),
        "density": density,
    }


def _pen_fraction(small: np.ndarray, glass: np.ndarray) -> np.ndarray:
    """Ink fraction per (shrunk) tile: the pen rule of tissue detection (:func:`._pen.pen_mask`)."""
    from scipy import ndimage

    levels = np.log10(np.arange(256, dtype=np.float32) + 1.0)
    out = np.empty(len(small), np.float32)
    for i, tile in enumerate(small):
        od = [np.float32(np.log10(glass[c] + 1.0)) - levels[tile[..., c]] for c in range(3)]
        # pen_mask adds a one-pixel margin; the erosion takes it off again (a closing of the ink pixels)
        out[i] = ndimage.binary_erosion(pen_mask(tile, od, glass), _SQUARE, border_value=1).mean()
    return out


def qc_flags(
    values: dict[str, np.ndarray], thresholds: dict[str, float] | None = None
) -> dict[str, np.ndarray]:
    """Boolean (N,) flags per check of :data:`QC_CHECKS` from the measures of :func:`tile_qc`.

    ``values`` are those of all the slide's tiles: ``fold`` compares each tile's density with their
    median. ``thresholds`` overrides names of :data:`THRESHOLDS` (``focus_min``, ``fold_ratio``,
    ``dark_max``, ``pen_max``, ``bright_max``; ``dark_luminance`` and ``bright_margin`` act when
    measuring, not here)."""
    t = {**THRESHOLDS, **(thresholds or {})}
    density = values["density"]
    usual = float(np.median(density)) if len(density) else 0.0
    return {
        "blur": values["focus"] < t["focus_min"],
        "fold": density > t["fold_ratio"] * usual,
        "dark": values["dark_fraction"] > t["dark_max"],
        "pen": values["pen_fraction"] > t["pen_max"],
        "bubble": values["bright_fraction"] > t["bright_max"],
    }


@dataclass(frozen=True, eq=False)
class QCGrid(TileGrid):
    """A :class:`TileGrid` with the QC measures of its tiles (``qc``: name -> (N,) float32).

    With ``policy="exclude"`` the flagged tiles are gone from it, and ``extra["qc"]`` (the policy and
    thresholds) makes it another tiling in the store's cache key. ``qc_summary`` is :func:`qc_summary` of
    all the tiles measured (before any were excluded)."""

    qc: dict[str, np.ndarray] | None = None
    qc_policy: str = "flag"
    qc_summary: dict[str, Any] | None = None

    def subset(self, index: np.ndarray) -> QCGrid:
        sub = super().subset(index)
        qc = None if self.qc is None else {k: v[index] for k, v in self.qc.items()}
        return replace(cast(QCGrid, sub), qc=qc)  # TileGrid.subset keeps the class (dataclasses.replace)


def check_qc_policy(policy: Any) -> str:
    """The checked ``qc`` value."""
    if policy not in QC_POLICIES:
        raise InvalidParameterError(f"qc must be one of {', '.join(QC_POLICIES)}, got {policy!r}")
    return str(policy)


def qc_tiles(
    slide: Slide,
    grid: TileGrid,
    policy: str = "flag",
    *,
    mask: Any = None,
    batch_size: int = 64,
) -> TileGrid:
    """Measure every tile of ``grid`` (one read, in spatial blocks) and apply the QC ``policy``.

    Parameters
    ----------
    slide : the open slide the grid was made on.
    grid : the tiles.
    policy : ``"off"`` (``grid`` itself, nothing read), ``"flag"`` (a :class:`QCGrid` with the same tiles
        and their measures) or ``"exclude"`` (a :class:`QCGrid` without the tiles any check flags).
    mask : the slide's :class:`TissueMask`; its ``params["glass_rgb"]`` sets the glass colour (None: white,
        so that ``bright_fraction`` and the ``bubble`` check find nothing), its area goes in the summary.
    batch_size : tiles measured at once (memory: about 40 bytes per pixel of a batch).

    Returns
    -------
    TileGrid
        ``grid`` for ``"off"`` (or a :class:`QCGrid` of this policy already), else a :class:`QCGrid`.
    """
    from ._stream import iter_tiles

    policy = check_qc_policy(policy)
    if policy == "off" or isinstance(grid, QCGrid) and grid.qc_policy == policy:
        return grid
    params = getattr(mask, "params", None) or {}
    glass = params.get("glass_rgb")
    n = len(grid)
    values = {name: np.zeros(n, np.float32) for name in QC_MEASURES}
    size = grid.tile_size
    buf = np.empty((min(batch_size, max(n, 1)), size, size, 3), np.uint8)
    idx: list[int] = []

    def flush() -> None:
        for name, v in tile_qc(buf[: len(idx)], glass=glass).items():
            values[name][idx] = v
        idx.clear()

    for index, tile in iter_tiles(slide, grid):
        buf[len(idx)] = tile
        idx.append(index)
        if len(idx) == len(buf):
            flush()
    if idx:
        flush()
    flags = qc_flags(values)
    meta = {"policy": policy, "thresholds": THRESHOLDS, "measures": list(QC_MEASURES)}
    extra = {**grid.extra, "qc": meta} if policy == "exclude" else dict(grid.extra)
    fields = {f: getattr(grid, f) for f in TileGrid.__dataclass_fields__ if f != "extra"}
    summary = qc_summary(values, tissue_mm2=_mm2(mask), policy=policy)
    out = QCGrid(**fields, extra=extra, qc=values, qc_policy=policy, qc_summary=summary)
    if policy == "exclude":
        bad = np.zeros(n, bool)
        for f in flags.values():
            bad |= f
        out = out.subset(~bad)
    return out


def _mm2(mask: Any) -> float | None:
    area = getattr(mask, "area_um2", None)
    return None if area is None else round(float(area) / 1e6, 4)


def qc_summary(
    values: dict[str, np.ndarray] | None, *, tissue_mm2: float | None = None, policy: str | None = None
) -> dict[str, Any]:
    """A slide's QC in a few numbers: tiles, the fraction flagged per check, focus quantiles.

    ``values`` are the measures of the tiles (:func:`tile_qc`, a store's ``qc()``); None or empty: only
    ``tissue_mm2`` and ``policy``."""
    out: dict[str, Any] = {"policy": policy, "tissue_mm2": tissue_mm2}
    if not values or "focus" not in values:
        return out
    n = len(values["focus"])
    flags = qc_flags(values)
    out["n_tiles"] = n
    out["flagged_fraction"] = {k: round(float(v.mean()), 4) if n else 0.0 for k, v in flags.items()}
    any_flag = np.zeros(n, bool)
    for f in flags.values():
        any_flag |= f
    out["flagged_any"] = round(float(any_flag.mean()), 4) if n else 0.0
    out["excluded"] = int(any_flag.sum()) if policy == "exclude" else 0
    focus = values["focus"]
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    out["focus_quantiles"] = (
        {f"q{int(q * 100):02d}": round(float(np.quantile(focus, q)), 2) for q in qs} if n else {}
    )
    for name in ("brightness", "saturation"):
        if name in values and n:
            v = float(np.mean(values[name]))
            out[f"mean_{name}"] = round(v, 4) if math.isfinite(v) else None
    return out
