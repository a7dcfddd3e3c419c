"""Reading CSV manifests, once for every kind: the training manifest (:func:`slidescope.mil.data.read_manifest`)
and the pretraining manifest (:func:`slidescope.vlm.pretrain.read_report_manifest`).

What they share: the file must exist, have the needed columns (header cells stripped) and at least one row;
slide paths are relative to the manifest's folder; every slide must have a store with complete embeddings of
the chosen encoder and at least one tile (all unusable slides are listed in one message, with the command
that fixes them).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import InvalidParameterError

__all__ = ["read_rows", "resolve_slide", "check_stores", "short_list"]


def short_list(items: Sequence[object], n: int = 10) -> str:
    """``"a, b, c (+7 more)"``: the first ``n`` items as text."""
    text = ", ".join(str(i) for i in items[:n])
    return text + (f" (+{len(items) - n} more)" if len(items) > n else "")


def read_rows(
    path: str | os.PathLike[str], needed: Sequence[str], *, needs: str
) -> tuple[Path, list[str], list[dict[str, str]]]:
    """``(path, columns, rows)`` of a CSV manifest; cells and header names stripped of spaces.

    Parameters
    ----------
    path : the CSV file.
    needed : the columns that must be there.
    needs : how the error names what this kind of manifest needs (``"a survival manifest needs ..."``).

    Raises
    ------
    InvalidParameterError
        No such file, a needed column missing (the columns found are listed), or no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidParameterError(f"manifest {path} does not exist")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in needed if c not in columns]
        if missing:
            raise InvalidParameterError(
                f"{path.name} lacks the column(s) {', '.join(missing)}; {needs}. "
                f"Columns found: {', '.join(columns) or 'none'}"
            )
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    if not rows:
        raise InvalidParameterError(f"{path.name} has no rows")
    return path, columns, rows


def resolve_slide(manifest: Path, slide: str) -> str:
    """A manifest's slide path: absolute as written, or relative to the manifest's folder."""
    p = Path(slide)
    return str(p if p.is_absolute() else manifest.parent / p)


def check_stores(
    manifest: Path, slides: Iterable[str], store: str | os.PathLike[str], encoder: str | None
) -> None:
    """Every slide has a store in the folder ``store`` and, with ``encoder``, complete embeddings of it and
    at least one tile.

    Raises
    ------
    InvalidParameterError
        Listing every slide that cannot be used and why, with the extract command that fixes it.
    """
    from ._location import exists, join, location_name
    from .features.store import StoreError, open_store, slide_key, store_path

    slides = list(slides)
    problems = []
    for slide in slides:
        key, sp = slide_key(slide), store_path(store, slide)
        if not exists(join(sp, "zarr.json")):
            problems.append(f"{key} (no store {location_name(sp)})")
            continue
        if encoder is None:
            continue
        try:
            s = open_store(sp, encoder=encoder)
            if encoder not in s.encoders(complete_only=True):
                problems.append(f"{key} (no complete {encoder!r} embeddings)")
            elif s.n_tiles == 0:
                problems.append(f"{key} (no tissue tiles)")
        except StoreError as err:
            problems.append(f"{key} ({err})")
    if problems:
        raise InvalidParameterError(
            f"{len(problems)} of {len(slides)} slides in {manifest.name} cannot be used from {store}: "
            f"{'; '.join(problems)}. Run `slidescope extract --encoder {encoder or 'NAME'} --stores {store}` "
            "on them or drop them from the manifest."
        )
