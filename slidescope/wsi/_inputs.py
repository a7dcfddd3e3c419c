"""Turning what a user types (files, folders, globs, CSV manifests) into a list of slide paths.

DICOM WSI: a series is a folder of ``.dcm`` files (one per level, plus label/overview); OpenSlide opens
the whole series through any one of them. A series is **one slide named after its folder**
(:func:`dicom_series_name`; chosen over the SeriesInstanceUID, which would need a DICOM reader and
gives unreadable names). A folder given as input is a series when its only slide files are ``.dcm``
files; otherwise it is a folder of slides: its other slide files, each subfolder holding ``.dcm`` files
(one series each) and, if it also holds loose ``.dcm`` files, those as one more series named after the
folder.
"""

from __future__ import annotations

import csv
import errno
import glob
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import InvalidParameterError, SlideNotFoundError
from ._remote import is_url

log = logging.getLogger(__name__)

__all__ = [
    "expand_slides",
    "manifest_slide_mpp",
    "MPP_COLUMNS",
    "slide_suffixes",
    "dicom_series_name",
    "broken_link_message",
]


def slide_suffixes() -> tuple[str, ...]:
    """File endings treated as slides when a folder is given (lower case): the ``extensions`` of every
    registered whole-slide backend (plugins included; plain PNG/JPEG images are not collected from
    folders), longest first."""
    from ._backends import registered_backends

    found = {
        e.lower() for cls in registered_backends().values() if cls.whole_slide_format for e in cls.extensions
    }
    return tuple(sorted(found, key=lambda e: (-len(e), e)))


def __getattr__(name: str) -> tuple[str, ...]:
    """``SLIDE_SUFFIXES``: :func:`slide_suffixes`, computed on use (the registry loads plugins when asked)."""
    if name == "SLIDE_SUFFIXES":
        return slide_suffixes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _is_slide_name(path: Path) -> bool:
    """A whole-slide file name: an extension that a registered whole-slide backend claims
    (:func:`slide_suffixes`)."""
    from ._backends import claims_by_name

    return claims_by_name(path)


def _is_dcm(path: Path | str) -> bool:
    return str(path).lower().endswith(".dcm")


def _dcm_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_dcm(p.name) and p.is_file())


def dicom_series_name(path: str | os.PathLike[str]) -> str | None:
    """The slide name of a DICOM-WSI series given as its folder or one of its ``.dcm`` files: the folder's
    name. None when ``path`` is not DICOM (a ``.dcm`` file, or a local folder holding ``.dcm`` files)."""
    text = os.fspath(path)
    p = Path(text)
    if _is_dcm(p.name):
        parent = p.parent if p.parent.name else Path(os.path.abspath(text)).parent
        return parent.name or p.stem
    if not is_url(text) and p.is_dir() and any(_is_dcm(q.name) for q in p.iterdir()):
        return p.name
    return None


def _is_broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def broken_link_message(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is a symbolic link that leads to no file (dangling, or a loop); None otherwise."""
    p = Path(os.fspath(path))
    if is_url(path) or not _is_broken_link(p):
        return None
    try:
        os.stat(p)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"{p} is a symbolic link loop (it leads back to itself); fix or remove the link"
    return f"{p} is a symbolic link to {os.readlink(p)}, which does not exist; fix or remove the link"


def _folder_slides(path: Path) -> list[Path]:
    """The slides of a folder (see the module docstring); a DICOM series folder is itself one slide.

    Dangling symbolic links and link loops with slide names are listed: the batch reports them as failed
    slides instead of dropping them silently."""
    from ._backends import registered_backends

    entries = sorted(path.iterdir())
    dcm = [p for p in entries if _is_dcm(p.name) and (p.is_file() or _is_broken_link(p))]
    if not dcm and any(cls.directory_entry(path) is not None for cls in registered_backends().values()):
        return [path]  # a folder that a reader opens as one slide (an OME-Zarr image)
    files = [
        p
        for p in entries
        if _is_slide_name(p) and not _is_dcm(p.name) and (p.is_file() or _is_broken_link(p))
    ]
    series = [p for p in entries if p.is_dir() and any(_is_dcm(q.name) for q in p.iterdir())]
    if dcm and not files and not series:
        return [path]  # a DICOM series folder: one slide
    if dcm:
        log.warning(
            "%s holds .dcm files besides other slides: they are taken as one DICOM series, named %r",
            path,
            path.name,
        )
        files.append(next((p for p in dcm if p.is_file()), dcm[0]))
    return files + series


#: manifest columns naming the slide's level-0 µm/px (``mpp`` is TRIDENT's name for it), first found wins
MPP_COLUMNS = ("slide_mpp", "mpp")


def _manifest_mpp(path: Path, line: int, column: str, raw: str | None) -> float | None:
    text = (raw or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise InvalidParameterError(
            f"{path}, line {line}: the {column} column must be a positive number of µm per pixel (or empty), "
            f"got {text!r}"
        )
    return value


def _from_csv(path: Path) -> list[tuple[Path | str, float | None]]:
    """The manifest's slides and each one's ``slide_mpp`` (None: no column, or an empty cell)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise InvalidParameterError(f"{path} has no rows")
    column = next((c for c in ("slide", "path", "slide_path", "filename") if c in rows[0]), None)
    if column is None:
        raise InvalidParameterError(
            f"{path}: a manifest needs a 'slide' (or 'path') column with slide file paths; found {list(rows[0])}"
        )
    mpp_column = next((c for c in MPP_COLUMNS if c in rows[0]), None)
    out: list[tuple[Path | str, float | None]] = []
    for line, row in enumerate(rows, start=2):
        value = (row[column] or "").strip()
        mpp = _manifest_mpp(path, line, mpp_column, row[mpp_column]) if mpp_column else None
        if value and is_url(value):
            out.append((value, mpp))
        elif value:
            p = Path(value).expanduser()
            out.append((p if p.is_absolute() else path.parent / p, mpp))
    return out


def _is_manifest(text: str) -> bool:
    path = Path(text).expanduser()
    return not is_url(text) and path.suffix.lower() == ".csv" and path.is_file()


def manifest_slide_mpp(inputs: Iterable[str | os.PathLike[str]]) -> dict[str, float]:
    """Per-slide level-0 µm/px from the ``slide_mpp`` (or ``mpp``) column of the CSV manifests among ``inputs``.

    Keys are ``str()`` of the slide paths as :func:`expand_slides` returns them; slides with an empty cell,
    and slides not from a manifest, are absent. The value is used like ``--slide-mpp`` for that slide alone
    (filled in when the file has no plausible pixel size; the file's own wins; ``--force-slide-mpp``
    overrides both), and recorded as mpp source ``"manifest"``.
    """
    out: dict[str, float] = {}
    for item in inputs:
        text = str(item)
        if _is_manifest(text):
            for slide, mpp in _from_csv(Path(text).expanduser()):
                if mpp is not None:
                    out[str(slide)] = mpp
    return out


def expand_slides(inputs: Iterable[str | os.PathLike[str]]) -> list[Path | str]:
    """Slide paths from files, folders (their slide files, not recursive), glob patterns and CSV
    manifests (column ``slide`` or ``path``, relative to the CSV; an optional ``slide_mpp`` column is read by
    :func:`manifest_slide_mpp`). Order is kept, duplicates dropped
    (the ``.dcm`` files of one folder are one DICOM series: the first stands for it).

    A folder whose only slide files are ``.dcm`` files is one DICOM-WSI slide; a folder of slides also
    lists each subfolder of ``.dcm`` files and, as one more slide, its own ``.dcm`` files (see the module
    docstring). Dangling links and link loops with slide names are kept, like missing files.

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
        if _is_manifest(text):
            out.extend(slide for slide, _ in _from_csv(path))
        elif path.is_dir():
            found = _folder_slides(path)
            if not found:
                raise SlideNotFoundError(
                    f"no slide files in {path} (looked for {', '.join(slide_suffixes())})"
                )
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
        if isinstance(key, Path) and _is_dcm(key.name):  # the files of one DICOM series are one slide
            key = key.parent
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique
