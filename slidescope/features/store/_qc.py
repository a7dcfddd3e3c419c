"""Per-tile QC measures in a tiling: ``tilings/<key>/qc/<measure>`` (N,) float32, beside ``tissue_fraction``.

Written by the extraction when the tile QC is on (``--qc flag`` or ``exclude``; see
:func:`slidescope.wsi.qc_tiles`), replaced whenever it is measured again; absent from stores made without
it (then :meth:`SlideStore.qc` is empty). The group's attrs say which measures and when.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._fastread import _EVERY_CHUNK, _checksummed, _read
from ._keys import _now


def write_qc(store: Any, values: dict[str, np.ndarray], thresholds: dict[str, float] | None = None) -> None:
    """Write (replace) the QC measures of ``store``'s tiling: one (N,) float32 array per measure, and in the
    group's attrs the thresholds its flags use (the defaults, with ``thresholds`` set instead of them)."""
    from ...wsi import qc_thresholds_used

    n = store.n_tiles
    group = store._container(store._group, "qc")
    for name, value in values.items():
        value = np.asarray(value, np.float32)
        if value.shape != (n,):
            raise ValueError(f"QC measure {name!r} has shape {value.shape}, the tiling has {n} tiles")
        store._remove_child(group, name)
        array = group.create_array(
            name,
            shape=(n,),
            chunks=(max(n, 1),),
            dtype="float32",
            compressors=_checksummed(),
            fill_value=0,
            config=_EVERY_CHUNK,
        )
        if n:
            array[:] = value
    used = qc_thresholds_used(thresholds)
    group.update_attributes({"measures": sorted(values), "written": _now(), "thresholds": used})


def read_qc_thresholds(store: Any) -> dict[str, float]:
    """The thresholds the stored QC measures were flagged with (``write_qc``); empty (the defaults) for a
    store written before they were recorded, or without QC."""
    if store.tiling_key is None:
        return {}
    with store._guard("the QC measures"):
        group = store._group.get("qc")
        stored = group.attrs.get("thresholds") if group is not None else None
    return {str(k): float(v) for k, v in stored.items()} if isinstance(stored, dict) else {}


def read_qc(store: Any) -> dict[str, np.ndarray]:
    """The QC measures of ``store``'s tiling (name -> (N,) float32); empty when none were stored."""
    if store.tiling_key is None:
        return {}
    with store._guard("the QC measures"):
        group = store._group.get("qc")
        names = sorted(k for k, _ in group.arrays()) if group is not None else []
    out = {}
    for name in names:
        array = store._node(group, name)
        store._expect(array, (store.n_tiles,), "float32", f"{store.n_tiles} tiles")
        out[name] = _read(array)
    return out


#: QuPath colours (RGB) of the QC checks in the GeoJSON export; a learned check (``grandqc_*``) is purple
QC_COLOURS = {
    "blur": (70, 130, 230),
    "fold": (240, 150, 30),
    "dark": (40, 40, 40),
    "pen": (30, 170, 60),
    "bubble": (40, 200, 210),
}
_LEARNED_COLOUR = (150, 60, 200)


def qc_geojson(store: Any, *, flagged_only: bool = True) -> dict[str, Any]:
    """The QC of a store's tiling as a QuPath GeoJSON FeatureCollection: one square per tile.

    Each feature is the tile's square in level-0 px (top-left origin, as QuPath reads it), ``objectType``
    ``"tile"``; its ``measurements`` are the tile's QC measures and a 0/1 ``flag_<check>`` per check
    (:func:`slidescope.wsi.qc_flags`, with the thresholds stored with the measures), its ``classification`` the first check that
    flags it (in the order blur, fold, dark, pen, bubble, then the learned ones; coloured per check) and its
    ``name`` every check that does.

    Parameters
    ----------
    store : an open :class:`~slidescope.features.store.SlideStore` whose tiling has QC measures.
    flagged_only : only the tiles some check flags (default); False: every tile (unflagged ones without a
        classification).

    Raises
    ------
    InvalidParameterError
        The tiling has no QC measures (extracted without ``--qc flag`` or ``exclude``).
    """
    from ...errors import InvalidParameterError
    from ...wsi import qc_flags

    values = read_qc(store)
    if "focus" not in values:
        raise InvalidParameterError(
            f"{store.path} (tiling {store.tiling_key}) has no QC measures: extract the slide with --qc flag "
            "(or exclude) first"
        )
    flags = qc_flags(values, read_qc_thresholds(store))
    w, h = (int(v) for v in store.tile_extent)
    names = list(flags)
    table = np.column_stack([flags[k] for k in names]) if names else np.zeros((store.n_tiles, 0), bool)
    features = []
    for i, (x, y) in enumerate(np.asarray(store.coords).tolist()):
        hits = [k for k, f in zip(names, table[i], strict=True) if f]
        if flagged_only and not hits:
            continue
        # NaN (a measure not taken, e.g. pen on IHC) is left out: JSON has no NaN
        measurements = {k: float(v[i]) for k, v in values.items() if np.isfinite(v[i])}
        measurements.update({f"flag_{k}": float(f) for k, f in zip(names, table[i], strict=True)})
        props: dict[str, Any] = {"objectType": "tile", "name": ", ".join(hits) or f"tile {i}"}
        if hits:
            colour = QC_COLOURS.get(hits[0], _LEARNED_COLOUR)
            props["classification"] = {"name": hits[0], "color": list(colour)}
        props.update({"measurements": measurements, "tile_index": i})
        square = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
        features.append(
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]}, "properties": props}
        )
    return {"type": "FeatureCollection", "features": features}


def open_qc_store(path: Any) -> Any:
    """The slide's store at ``path`` opened on the tiling whose QC measures were written last.

    Raises
    ------
    InvalidParameterError
        No tiling of the store has QC measures.
    """
    from ...errors import InvalidParameterError
    from ._store import open_store

    store = open_store(path)
    best, when = None, ""
    keys: list[str | None] = [*store.tilings()] or [store.tiling_key]
    for key in keys:
        candidate = store if key is None or key == store.tiling_key else open_store(path, tiling=key)
        group = candidate._group.get("qc") if candidate.tiling_key is not None else None
        written = str(group.attrs.get("written", "")) if group is not None else None
        if written is not None and (best is None or written > when):
            best, when = candidate, written
    if best is None:
        raise InvalidParameterError(
            f"{path} has no QC measures in any tiling: extract the slide with --qc flag (or exclude) first"
        )
    return best


def settle_qc(store: Any, slide: Any, grid: Any) -> dict[str, Any] | None:
    """After an extraction into ``store``: complete a deferred tile QC (:func:`slidescope.wsi.finish_qc`,
    reusing the store's complete measures of this tiling for the tiles not read now), write the measures
    and return the QC summary; for a grid measured before (``exclude``) its summary; None without QC."""
    from ...wsi import finish_qc

    if getattr(grid, "qc_deferred", None) is None:
        return getattr(grid, "qc_summary", None)
    done = finish_qc(slide, grid, known=read_qc(store))
    write_qc(store, done.qc, done.qc_thresholds)  # type: ignore[attr-defined]  # a QCGrid
    return done.qc_summary  # type: ignore[attr-defined]
