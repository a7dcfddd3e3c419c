"""Names and keys: where a slide's store lives, and what identifies a slide, a tiling and cached embeddings."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._location import Location, as_location, is_url
from ..._location import join as _join


def _now() -> str:
    """UTC now, ISO 8601 to the microsecond: ``open`` takes the most recently updated of several tilings, and
    two extractions of a small slide can finish within one second (at seconds, the tie went to the first key
    in sorted order, not to the newer tiling). The strings still sort in time order against older stores'
    second-resolution ones (same prefix, and ``+`` sorts before ``.``)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def _package_version() -> str:
    from ... import __version__

    return __version__


def slide_fingerprint(path: str | os.PathLike[str], *, samples: int = 8, sample_bytes: int = 1 << 16) -> str:
    """``"<size>:<sha256 of sampled bytes>"``: first and last MiB plus ``samples`` evenly spaced blocks.

    Cheap for multi-GB slides, and changes when the file is replaced, truncated or re-exported. A folder
    slide (an OME-Zarr image) gets ``"dir:<files>:<sha256>"`` from :func:`_folder_fingerprint`."""
    p = Path(path)
    if p.is_dir():
        return _folder_fingerprint(p, samples=samples, sample_bytes=sample_bytes)
    size = p.stat().st_size
    h = hashlib.sha256()
    h.update(str(size).encode())
    with open(p, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            for k in range(1, samples + 1):
                fh.seek(int(size * k / (samples + 1)))
                h.update(fh.read(sample_bytes))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return f"{size}:{h.hexdigest()[:32]}"


def _folder_fingerprint(folder: Path, *, samples: int, sample_bytes: int) -> str:
    """A folder slide's fingerprint: every file's relative name and size, the whole of its small metadata
    files (``.zattrs``, ``.zarray``, ``zarr.json``...: under 64 KiB) and the first ``sample_bytes`` of
    ``samples`` evenly spaced larger files (chunks). Cheap for thousands of chunks."""
    files = sorted(q for q in folder.rglob("*") if q.is_file())
    h = hashlib.sha256()
    big = []
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(folder).as_posix()}:{size};".encode())
        if size < 1 << 16:
            h.update(f.read_bytes())
        else:
            big.append(f)
    for f in big[:: max(1, len(big) // samples)][:samples]:
        with open(f, "rb") as fh:
            h.update(fh.read(sample_bytes))
    return f"dir:{len(files)}:{h.hexdigest()[:32]}"


def slide_key(path: str | os.PathLike[str]) -> str:
    """The store name of a slide: its file name without the slide extension(s).

    A DICOM-WSI series is one slide in a folder of ``.dcm`` files (one per level): it is named after that
    folder, whether the folder or one of its ``.dcm`` files is given (OpenSlide opens the series through
    any of them), so ``extract``, ``run`` and ``score`` all find the same store."""
    from ...wsi import dicom_series_name

    series = dicom_series_name(path)
    if series is not None:
        return series
    name = Path(path).name
    for ext in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for an fsspec URL other than ``file://`` (the same test as :func:`slidescope._location.is_url`)."""
    return is_url(path)


def store_path(root: str | os.PathLike[str], slide: str | os.PathLike[str]) -> Location:
    """Where the store of ``slide`` lives under ``root`` (a folder or an fsspec URL)."""
    return _join(as_location(root), f"{slide_key(slide)}.zarr")


@dataclass(frozen=True)
class CacheKey:
    """What must match for stored embeddings to be reused."""

    encoder: dict[str, Any]
    weights_digest: str | None
    precision: str
    dtype: str
    package_version: str

    def as_attrs(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder,
            "weights_digest": self.weights_digest,
            "precision": self.precision,
            "dtype": self.dtype,
            "package_version": self.package_version,
        }


def tiling_key(tiling: dict[str, Any], slide: dict[str, Any] | None = None) -> str:
    """The name of a tiling's sub-group: ``<tile size>px_<mpp>mpp_<8 hex digits>``.

    The digits are the start of the SHA-256 of the tiling parameters and the slide's reader and pixel
    size (all that decides which pixels a tile holds), so two tilings that differ in anything get two
    sub-groups side by side, and the same tiling always finds its own."""
    t = _jsonify(tiling)
    payload = json.dumps({"tiling": t, "slide": _jsonify(slide or {})}, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
    size, mpp = t.get("tile_size"), t.get("mpp")
    size_text = f"{size}px" if isinstance(size, int) else "tile"
    mpp_text = f"{mpp:g}mpp" if isinstance(mpp, int | float) else "native"
    return f"{size_text}_{mpp_text}_{digest}"


def _jsonify(value: Any) -> Any:
    """Round-trip through JSON so comparisons with stored attrs are like for like (tuples -> lists)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
