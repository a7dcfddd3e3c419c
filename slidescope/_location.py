"""Where slides, stores and results live: a local path or an fsspec URL, decided in one place.

A *location* is either a :class:`pathlib.Path` (a local file or folder) or a normalised URL string
(``s3://bucket/stores``, ``gs://...``, ``memory://...``, ``https://...``, chained ``simplecache::s3://...``).
It is not a class of its own: :func:`as_location` turns whatever the user gave (``str``, ``os.PathLike``)
into one of the two, and everything downstream tells them apart with ``isinstance(loc, Path)`` or
:func:`is_url`. ``file://`` URLs are local paths. A ``Path`` is never a URL: ``Path("s3://b/x")`` has already
lost a slash (``s3:/b/x``), so URLs must be passed as strings (the command line does).

Reading and writing a URL goes through fsspec; endpoints and credentials come from fsspec's configuration
(e.g. ``FSSPEC_S3_ENDPOINT_URL`` plus the AWS variables for an S3-compatible server).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePath

from .errors import InvalidParameterError

__all__ = [
    "Location",
    "as_location",
    "exists",
    "expand_stores",
    "is_url",
    "join",
    "location_name",
    "require_local",
    "write_text",
]

#: a local path or the URL of a file or folder on an fsspec file system
Location = Path | str

# a scheme at the very start followed by "://", or a chained fsspec URL ("simplecache::s3://...")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*(://|::)")


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for an fsspec URL other than ``file://`` (which is a local path). A :class:`~pathlib.Path` is
    never a URL."""
    if isinstance(path, PurePath):
        return False
    text = os.fspath(path)
    return bool(_URL.match(text)) and not text.startswith("file://")


def as_location(path: str | os.PathLike[str]) -> Location:
    """``path`` as a location: a :class:`~pathlib.Path` (``~`` expanded; ``file://`` URLs included), or, for a
    URL, the URL string without trailing slashes."""
    if isinstance(path, Path):
        return path
    text = os.fspath(path)
    if text.startswith("file://"):
        return Path(text[len("file://") :]).expanduser()
    if is_url(text):
        return text.rstrip("/")
    return Path(text).expanduser()


def join(loc: str | os.PathLike[str], name: str) -> Location:
    """``loc / name`` for a path, ``loc + "/" + name`` for a URL."""
    loc = as_location(loc)
    return loc / name if isinstance(loc, Path) else f"{loc}/{name}"


def exists(loc: str | os.PathLike[str]) -> bool:
    """Whether a file or folder is at ``loc`` (a local path, or a URL asked through fsspec)."""
    loc = as_location(loc)
    if isinstance(loc, Path):
        return loc.exists()
    import fsspec

    fs, inner = fsspec.core.url_to_fs(loc)
    return bool(fs.exists(inner))


def location_name(loc: str | os.PathLike[str]) -> str:
    """The last component of a path or URL (``s3://b/stores/CMU-1.zarr`` -> ``CMU-1.zarr``)."""
    loc = as_location(loc)
    return loc.name if isinstance(loc, Path) else loc.rsplit("/", 1)[-1]


def require_local(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a local :class:`~pathlib.Path`; a URL is refused (never turned into a local folder).

    Parameters
    ----------
    path : the value given.
    what : how the user names it in the error, e.g. ``"--out of score (the predictions CSV)"``.

    Raises
    ------
    InvalidParameterError
        ``path`` is a URL.
    """
    loc = as_location(path)
    if isinstance(loc, str):
        raise InvalidParameterError(
            f"{what} must be a local path, got the URL {loc!r}: only embedding stores (--stores/--store) and slides "
            f"may be URLs. Write it to a local path and copy it over (e.g. `fsspec`, `aws s3 cp`)."
        )
    return loc


def write_text(loc: str | os.PathLike[str], text: str) -> Location:
    """Write ``text`` to the file at ``loc`` (local folders are created; a URL is written through fsspec)."""
    loc = as_location(loc)
    if isinstance(loc, Path):
        loc.parent.mkdir(parents=True, exist_ok=True)
        loc.write_text(text)
        return loc
    import fsspec

    with fsspec.open(loc, "w") as fh:
        fh.write(text)
    return loc


def expand_stores(stores: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Location]:
    """Slide stores (``<slide>.zarr``) and folders of stores (every ``*.zarr`` inside, sorted) -> store locations.

    Local paths come back as :class:`~pathlib.Path`, URLs (``s3://bucket/stores``) as URL strings.

    Raises
    ------
    InvalidParameterError
        An entry is neither a slide store nor a folder holding at least one.
    """
    items = [stores] if isinstance(stores, str | os.PathLike) else list(stores)
    found: list[Location] = []
    for s in items:
        loc = as_location(s)
        if isinstance(loc, str):
            found.extend(_expand_url(loc))
        elif (loc / "zarr.json").exists():
            found.append(loc)
        elif loc.is_dir():
            inside = sorted(q for q in loc.glob("*.zarr") if (q / "zarr.json").exists())
            if not inside:
                raise InvalidParameterError(f"{loc} is neither a slide store nor a folder of stores")
            found.extend(inside)
        else:
            raise InvalidParameterError(f"{loc} does not exist")
    return found


def _expand_url(url: str) -> list[str]:
    import fsspec

    fs, inner = fsspec.core.url_to_fs(url)
    if fs.exists(f"{inner}/zarr.json"):
        return [url]
    metadata = fs.glob(f"{inner.rstrip('/')}/*.zarr/zarr.json")  # one per slide store in the folder
    names = sorted(m[: -len("/zarr.json")].rsplit("/", 1)[-1] for m in metadata)
    if not names:
        raise InvalidParameterError(f"{url} is neither a slide store nor a folder of stores")
    return [f"{url}/{name}" for name in names]
