"""Slides on fsspec URLs (``s3://``, ``gs://``, ``https://``...): read through a local copy.

OpenSlide and tiffslide's fast paths need a local file, so a remote slide is downloaded once into the
slide cache and opened from there. The cache keeps the file name (the store key is the slide's name)
under a folder per URL; a copy is reused while the remote object's size is unchanged. Only single-file
formats can be read this way (MRXS and DICOM folders must be local).

Cache folder: ``$SLIDESCOPE_CACHE/slides`` (default ``~/.cache/slidescope/slides``). Credentials and
endpoints come from fsspec's configuration (environment variables such as ``FSSPEC_S3_ENDPOINT_URL``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from .._location import is_url
from ..errors import SlideNotFoundError, SlideReadError

log = logging.getLogger(__name__)

__all__ = ["is_url", "localize_slide", "slide_cache_dir"]  # is_url: the one test, from slidescope._location


def slide_cache_dir() -> Path:
    root = os.environ.get("SLIDESCOPE_CACHE") or Path.home() / ".cache" / "slidescope"
    return Path(root) / "slides"


def localize_slide(url: str) -> Path:
    """The local copy of the slide at ``url``, downloading it first when needed.

    Raises
    ------
    SlideNotFoundError
        No object at ``url``.
    SlideReadError
        The file system could not be reached or read (the message says which URL and why).
    """
    import fsspec

    try:
        fs, inner = fsspec.core.url_to_fs(url)
        info = fs.info(inner)
    except FileNotFoundError:
        raise SlideNotFoundError(
            f"no such slide: {url}. Check the URL (and the credentials fsspec uses)."
        ) from None
    except (
        Exception
    ) as err:  # network, credentials, unknown protocol: fsspec and its backends raise many types
        raise SlideReadError(
            f"cannot reach {url}: {type(err).__name__}: {err}. Check the URL, the network and the "
            f"credentials (fsspec configuration)."
        ) from err
    if info.get("type") == "directory":
        raise SlideNotFoundError(
            f"{url} is a folder; remote slides must be single files (copy MRXS/DICOM folders to a local disk)"
        )
    name = url.rstrip("/").rsplit("/", 1)[-1]
    local = slide_cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    size = info.get("size")
    if local.exists() and (size is None or local.stat().st_size == size):
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    part = local.with_name(f".{name}.{os.getpid()}.part")
    log.info(
        "downloading %s (%s bytes) to the slide cache %s",
        url,
        size if size is not None else "?",
        local.parent,
    )
    try:
        fs.get(inner, str(part))
        os.replace(part, local)  # a copy is either whole or absent
    except Exception as err:
        part.unlink(missing_ok=True)
        raise SlideReadError(f"cannot download {url}: {type(err).__name__}: {err}") from err
    return local
