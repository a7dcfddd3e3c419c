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


def write_qc(store: Any, values: dict[str, np.ndarray]) -> None:
    """Write (replace) the QC measures of ``store``'s tiling: one (N,) float32 array per measure."""
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
    group.attrs.update({"measures": sorted(values), "written": _now()})


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
