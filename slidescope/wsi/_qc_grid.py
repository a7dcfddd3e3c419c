"""QC of a tile grid: :func:`qc_tiles` measures a grid's tiles (one read in spatial blocks, or deferred to the
extraction's read and completed by :func:`finish_qc`) and applies the policy; :class:`QCGrid` carries the
measures. The measures, checks, thresholds and summary are in :mod:`._qc`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np

from ..errors import InvalidParameterError
from ._grid import TileGrid
from ._qc import (
    LEARNED_PREFIX,
    QC_MEASURES,
    QC_POLICIES,
    THRESHOLDS,
    check_qc_thresholds,
    qc_flags,
    qc_summary,
    qc_thresholds_used,
    tile_qc,
)
from ._slide import Slide

__all__ = ["QCGrid", "check_qc_policy", "finish_qc", "qc_tiles"]


@dataclass(frozen=True, eq=False)
class QCGrid(TileGrid):
    """A :class:`TileGrid` with the QC measures of its tiles (``qc``: name -> (N,) float32).

    With ``policy="exclude"`` the flagged tiles are gone from it, and ``extra["qc"]`` (the policy and
    thresholds) makes it another tiling in the store's cache key. ``qc_summary`` is :func:`qc_summary` of
    all the tiles measured (before any were excluded)."""

    qc: dict[str, np.ndarray] | None = None
    qc_policy: str = "flag"
    qc_summary: dict[str, Any] | None = None
    #: ``qc_tiles(..., defer=True)`` with ``"flag"``: the classic measures are taken from the tiles as the
    #: extraction reads them (:meth:`measure_batch` in its readers, :meth:`record_batch` as the batches
    #: arrive) and completed by :func:`finish_qc`; ``qc`` and ``qc_summary`` are None until then
    qc_deferred: dict[str, Any] | None = None
    #: the thresholds set instead of the defaults (:func:`check_qc_thresholds`; empty: the defaults)
    qc_thresholds: dict[str, float] = field(default_factory=dict)
    #: what made the learned measures (``qc_tiles(model=)``), kept for a later policy's cache key
    qc_model: dict[str, Any] | None = None

    def measure_batch(self, images: Any) -> dict[str, np.ndarray] | None:
        """The classic measures of a batch of this grid's tiles (uint8 (B, H, W, 3)) while they are
        deferred, else None (run where the tiles are read, e.g. in a DataLoader worker)."""
        if self.qc_deferred is None:
            return None
        return tile_qc(np.asarray(images), glass=self.qc_deferred["glass"])

    def record_batch(self, index: Any, values: dict[str, Any]) -> None:
        """Keep the measures of the tiles ``index`` (from :meth:`measure_batch`) until :func:`finish_qc`."""
        if self.qc_deferred is None:
            return
        index = np.asarray(index, np.int64)
        for name, v in values.items():
            self.qc_deferred["values"][name][index] = np.asarray(v, np.float32)
        self.qc_deferred["seen"][index] = True

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
    measures: dict[str, np.ndarray] | None = None,
    model: dict[str, Any] | None = None,
    defer: bool = False,
    thresholds: Any = None,
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
        Where its detection ran without pen removal (``params["pen_used"] == "off"``: ``pen="off"``, or
        ``"auto"`` on a slide that looks like IHC, whose blue counterstain the pen rule takes for ink),
        ``pen_fraction`` is NaN (not measured) and the ``pen`` check flags nothing.
    batch_size : tiles measured at once (memory: about 40 bytes per pixel of a batch).
    measures : more measures of the tiles of ``grid``, computed elsewhere (name -> (N,)): the learned
        artefact fractions (names starting with :data:`LEARNED_PREFIX`, checked against
        :data:`ARTEFACT_MAX`), stored, flagged and summarised with the classic ones.
    model : what made ``measures`` (e.g. the model's name and weights' sha256), recorded with the policy
        (in the cache key of ``"exclude"``).
    defer : with ``"flag"``, read nothing now: the returned grid measures its tiles as the extraction reads
        them (:meth:`QCGrid.measure_batch`; :func:`~slidescope.features.extract_features` does this, and
        :func:`finish_qc` completes it), instead of a read of its own (``"exclude"`` always reads first: it
        must know which tiles to drop before any is embedded).
    thresholds : the checks' thresholds to use instead of the defaults (:func:`check_qc_thresholds`: a
        dict or ``"focus_min=40,pen_max=0.05"``), e.g. another ``focus_min`` at another mpp or for a very
        pale stain. Recorded in the summary, the stored QC and, for ``"exclude"``, the cache key. None on a
        :class:`QCGrid`: the thresholds it was made with.

    A :class:`QCGrid` given again: with the same policy and thresholds and no new ``measures`` it is returned
    as it is; a ``"flag"`` grid with other thresholds, or to ``"exclude"``, gets its flags made again from
    the measures it has (nothing read; a deferred one stays deferred with the new thresholds, or is measured
    for ``"exclude"``); its learned measures are kept unless new ones are given. An ``"exclude"`` grid has
    already dropped its flagged tiles: other thresholds or measures on it are an
    :class:`InvalidParameterError` (give the grid from before QC); another policy measures its tiles again
    with its thresholds.

    Returns
    -------
    TileGrid
        ``grid`` for ``"off"`` (or a :class:`QCGrid` of this policy and these thresholds already), else a
        :class:`QCGrid`.
    """

    policy = check_qc_policy(policy)
    overrides = check_qc_thresholds(thresholds)
    if policy == "off":
        return grid
    n = len(grid)
    for name, value in (measures or {}).items():
        if np.shape(value) != (n,):
            raise InvalidParameterError(
                f"QC measure {name!r} has shape {np.shape(value)}, the grid {n} tiles"
            )
    if isinstance(grid, QCGrid):
        again = _qc_again(grid, policy, overrides if thresholds is not None else None, measures, model)
        if again is not None:
            return again
        # measured as a new grid, with what the grid's QC was made with unless given
        overrides = overrides if thresholds is not None else dict(grid.qc_thresholds)
        if not measures and grid.qc_deferred is not None:
            measures, model = grid.qc_deferred["measures"], grid.qc_deferred["model"]
        elif not measures and grid.qc is not None:
            measures = {k: v for k, v in grid.qc.items() if k.startswith(LEARNED_PREFIX)}
            model = grid.qc_model
    params = getattr(mask, "params", None) or {}
    state: dict[str, Any] = {
        "glass": params.get("glass_rgb"),
        # as tissue detection: no pen rule where it would take the counterstain for ink
        "pen_off": params.get("pen_used") == "off",
        "tissue_mm2": _mm2(mask),
        "measures": dict(measures or {}),
        "model": model,
        "thresholds": overrides,
    }
    if defer and policy == "flag":
        state["values"] = {name: np.full(n, np.nan, np.float32) for name in QC_MEASURES}
        state["seen"] = np.zeros(n, bool)
        fields = {f: getattr(grid, f) for f in TileGrid.__dataclass_fields__}
        return QCGrid(**fields, qc_policy=policy, qc_deferred=state, qc_thresholds=overrides, qc_model=model)
    values = _measure_tiles(slide, grid, state["glass"], batch_size)
    return _qc_grid(grid, values, policy, state)


def _qc_again(
    grid: QCGrid,
    policy: str,
    overrides: dict[str, float] | None,
    measures: dict[str, np.ndarray] | None,
    model: dict[str, Any] | None,
) -> QCGrid | None:
    """:func:`qc_tiles` of a grid that has QC already: ``policy`` and ``overrides`` (None: the grid's) applied
    to the measures it has, none read again; None where its tiles must be measured as a new grid's (another
    policy after ``"exclude"``, ``"exclude"`` after a deferred ``"flag"``)."""
    over = dict(grid.qc_thresholds) if overrides is None else overrides
    same = over == grid.qc_thresholds and not measures and model is None
    if same and grid.qc_policy == policy:
        return grid
    if grid.qc_policy == "exclude":
        if not same:
            raise InvalidParameterError(
                f"this grid's QC (policy 'exclude', thresholds {grid.qc_thresholds or 'the defaults'}) has "
                f"already dropped its flagged tiles; to apply thresholds {over or 'the defaults'} or new "
                "measures, give qc_tiles the grid from before QC (make_tile_grid's)"
            )
        return None
    fields = {f: getattr(grid, f) for f in TileGrid.__dataclass_fields__}
    if grid.qc_deferred is not None:  # measured as the extraction reads the tiles
        if policy != "flag":
            return None
        later = {**grid.qc_deferred, "thresholds": over}
        if measures:
            later["measures"], later["model"] = dict(measures), model
        return QCGrid(
            **fields, qc_policy=policy, qc_deferred=later, qc_thresholds=over, qc_model=later["model"]
        )
    assert grid.qc is not None
    values = {k: np.array(v, np.float32) for k, v in grid.qc.items() if not k.startswith(LEARNED_PREFIX)}
    learned = {k: v for k, v in grid.qc.items() if k.startswith(LEARNED_PREFIX)}
    state: dict[str, Any] = {
        "pen_off": False,  # a pen fraction not measured before is NaN already
        "tissue_mm2": (grid.qc_summary or {}).get("tissue_mm2"),
        "measures": dict(measures) if measures else learned,
        "model": model if measures else grid.qc_model,
        "thresholds": over,
    }
    return _qc_grid(TileGrid(**fields), values, policy, state)


def finish_qc(
    slide: Slide, grid: TileGrid, *, known: dict[str, np.ndarray] | None = None, batch_size: int = 64
) -> TileGrid:
    """Complete a grid's deferred QC (``qc_tiles(..., defer=True)``): the tiles the extraction did not
    read (all of them when its embeddings were reused, those done before a resumed run) are taken from
    ``known`` (the store's measures of this tiling, when complete) or measured now (one read of those
    tiles). Any other grid is returned as it is.

    Returns
    -------
    TileGrid
        A :class:`QCGrid` with ``qc`` and ``qc_summary`` as :func:`qc_tiles` without ``defer`` gives them.
    """
    if not isinstance(grid, QCGrid) or grid.qc_deferred is None:
        return grid
    state = grid.qc_deferred
    values, seen = {k: v.copy() for k, v in state["values"].items()}, state["seen"].copy()
    n = len(grid)
    if known and all(k in known and np.shape(known[k]) == (n,) for k in QC_MEASURES):
        usable = ~seen & np.isfinite(np.asarray(known["focus"], np.float32))
        for name in QC_MEASURES:
            values[name][usable] = np.asarray(known[name], np.float32)[usable]
        seen |= usable
    missing = np.flatnonzero(~seen)
    if len(missing):
        for name, v in _measure_tiles(slide, grid, state["glass"], batch_size, missing).items():
            values[name][missing] = v[missing]
    fields = {f: getattr(grid, f) for f in TileGrid.__dataclass_fields__}
    return _qc_grid(TileGrid(**fields), values, grid.qc_policy, state)


def _measure_tiles(
    slide: Slide, grid: TileGrid, glass: Any, batch_size: int, indices: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The classic measures of the tiles ``indices`` of ``grid`` (None: all), read in spatial blocks; (N,)
    arrays over the whole grid (zero where not measured)."""
    from ._stream import iter_tiles

    n = len(grid)
    values = {name: np.zeros(n, np.float32) for name in QC_MEASURES}
    size = grid.tile_size
    todo = n if indices is None else len(indices)
    buf = np.empty((min(batch_size, max(todo, 1)), size, size, 3), np.uint8)
    idx: list[int] = []

    def flush() -> None:
        for name, v in tile_qc(buf[: len(idx)], glass=glass).items():
            values[name][idx] = v
        idx.clear()

    for index, tile in iter_tiles(slide, grid, indices=indices):
        buf[len(idx)] = tile
        idx.append(index)
        if len(idx) == len(buf):
            flush()
    if idx:
        flush()
    return values


def _qc_grid(grid: TileGrid, values: dict[str, np.ndarray], policy: str, state: dict[str, Any]) -> QCGrid:
    """The :class:`QCGrid` of ``grid`` with the classic ``values`` and ``state``'s learned measures."""
    measures, model = state["measures"], state["model"]
    if state["pen_off"]:
        values["pen_fraction"][:] = np.nan  # not measured: the pen check flags nothing
    for name, value in measures.items():
        values[name] = np.asarray(value, np.float32)
    over = state.get("thresholds") or {}
    classic = {k: v for k, v in over.items() if k in THRESHOLDS}
    meta: dict[str, Any] = {
        "policy": policy,
        "thresholds": {**THRESHOLDS, **classic},
        "measures": list(QC_MEASURES),
    }
    if measures:  # absent without a model: the cache keys of classic QC stay what they were
        meta.update(
            thresholds=qc_thresholds_used(over),
            measures=list(values),
            model=model,
        )
    extra = {**grid.extra, "qc": meta} if policy == "exclude" else dict(grid.extra)
    fields = {f: getattr(grid, f) for f in TileGrid.__dataclass_fields__ if f != "extra"}
    summary = qc_summary(values, tissue_mm2=state["tissue_mm2"], policy=policy, thresholds=over)
    out = QCGrid(
        **fields,
        extra=extra,
        qc=values,
        qc_policy=policy,
        qc_summary=summary,
        qc_thresholds=over,
        qc_model=model,
    )
    if policy == "exclude":
        bad = np.zeros(len(grid), bool)
        for f in qc_flags(values, over).values():
            bad |= f
        out = out.subset(~bad)
    return out


def _mm2(mask: Any) -> float | None:
    area = getattr(mask, "area_um2", None)
    return None if area is None else round(float(area) / 1e6, 4)
