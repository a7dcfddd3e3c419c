"""Turning what a user types (files, folders, globs, CSV manifests) into a list of slide paths."""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import InvalidParameterError, SlideNotFoundError
from ._remote import is_url

__all__ = ["expand_slides", "SLIDE_SUFFIXES"]

#: file endings treated as slides when a folder is given (lower case)
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".svslide", ".qptiff",
    ".btf", ".dcm",
)


def _is_slide_name(path: Path) -> bool:
    return path.name.lower().endswith(SLIDE_SUFFIXES)


def _from_csv(path: Path) -> list[Path | str]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise InvalidParameterError(f"{path} has no rows")
    column = next((c for c in ("slide", "path", "slide_path", "filename") if c in rows[0]), None)
    if column is None:
        raise InvalidParameterError(
            f"{path}: a manifest needs a 'slide' (or 'path') column with slide file paths; found {list(rows[0])}"
        )
    out: list[Path | str] = []
    for row in rows:
        value = (row[column] or "").strip()
        if value and is_url(value):
            out.append(value)
        elif value:
            p = Path(value).expanduser()
            out.append(p if p.is_absolute() else path.parent / p)
    return out


def expand_slides(inputs: Iterable[str | os.PathLike[str]]) -> list[Path | str]:
    """Slide paths from files, folders (their slide files, not recursive), glob patterns and CSV
    manifests (column ``slide`` or ``path``, relative to the CSV). Order is kept, duplicates dropped.

    Missing files are kept in the list (the batch reports them as failures); a pattern or folder
    that matches nothing raises :class:`SlideNotFoundError`. fsspec URLs (``s3://...``, given directly
    or in a manifest) are kept as strings; :func:`~slidescope.wsi.open_slide` reads them through a
    local copy.
    """
    out: list[Path | str] = []
    for item in inputs:
        text = str(item)
        if is_url(text):
            out.append(text)
            continue
        path = Path(text).expanduser()
        if path.suffix.lower() == ".csv" and path.is_file():
            out.extend(_from_csv(path))
        elif path.is_dir() and not any(path.glob("*.dcm")):
            found = sorted(p for p in path.iterdir() if p.is_file() and _is_slide_name(p))
            found += sorted(p for p in path.iterdir() if p.is_dir() and any(p.glob("*.dcm")))
            if not found:
                raise SlideNotFoundError(f"no slide files in {path} (looked for {', '.join(SLIDE_SUFFIXES)})")
            out.extend(found)
        elif any(ch in text for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
            if not found:
                raise SlideNotFoundError(f"the pattern {text!r} matches no file")
            out.extend(found)
        else:
            out.append(path)
    seen: set[Path | str] = set()
    unique = []
    for p in out:
        key = p if isinstance(p, str) else (p.resolve() if p.exists() else p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique
