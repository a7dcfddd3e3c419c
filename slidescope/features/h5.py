"""h5 interchange in the TRIDENT/CLAM layout, so our embeddings feed their tools and theirs feed ours.

One file per slide::

    features   (N, D) float32
    coords     (N, 2) int64, level-0 top-left (x, y)

The attributes on ``coords`` are what the two toolkits' readers use to find a tile's pixels again, and
they give ``patch_size`` different meanings:

* TRIDENT (``WSIPatcher`` via ``WSI.extract_patch_features``): ``patch_size`` px at
  ``target_magnification``; a tile covers ``round(patch_size * level0_magnification /
  target_magnification)`` level-0 px; ``patch_size_level0`` is that footprint (slide encoders read it).
* CLAM (``Whole_Slide_Bag_FP``): ``read_region(coord, patch_level, (patch_size, patch_size))``, so a tile
  covers ``patch_size * level_downsample[patch_level]`` level-0 px. Files without ``level0_magnification``
  / ``target_magnification`` are read this way by TRIDENT too (its "legacy" reader).

The two meanings agree only where the slide has a pyramid level at the tiles' resolution. So
:func:`export_h5` writes one of two flavours, each read correctly by the tool it is named after:

``"trident"`` (default)
    ``patch_size`` (px at the target resolution), ``patch_size_level0``, ``level0_magnification``,
    ``target_magnification`` (= 10 / µm per px), ``overlap``, ``level0_width``, ``level0_height``, ``name``.
    ``patch_level`` is added only when CLAM's reading of it covers the same level-0 footprint (the tiles
    were read, without resizing, from a level at their resolution); otherwise it is left out, so CLAM's
    reader stops with a ``KeyError`` instead of reading the wrong region.
``"clam"``
    ``patch_level = 0`` and ``patch_size`` = the level-0 footprint (CLAM reads exactly the tile's region
    at full resolution and resizes it itself), ``patch_size_level0``, the slide size and name; no
    magnification attributes, so TRIDENT reads it with the same CLAM semantics.

Both add slidescope provenance (``slidescope.*`` attrs: tile size, effective mpp, encoder, weights
digest, store schema). :func:`import_h5` reads either layout, CLAM feature files without attributes
(the footprint and pixel size then come from the caller) and empty files; it builds a normal store
whose attrs say it was imported, so MIL and the viewer use it like any other.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from .store import CacheKey, SlideStore, claim, open_store, slide_fingerprint, slide_key, store_path

log = logging.getLogger(__name__)

__all__ = ["export_h5", "import_h5", "read_h5_coords", "h5_extent", "h5_footprint", "H5_FLAVORS"]

#: the attribute layouts :func:`export_h5` writes (see the module docstring)
H5_FLAVORS = ("trident", "clam")


def export_h5(
    store: str | os.PathLike[str] | SlideStore,
    encoder: str,
    out: str | os.PathLike[str],
    *,
    flavor: str = "trident",
) -> Path:
    """Write ``encoder``'s embeddings of one slide store as a TRIDENT or CLAM h5 file.

    Parameters
    ----------
    store : a slide store (``<slide>.zarr``) or an open one.
    encoder : which embeddings to export.
    out : the h5 file to write (written whole, then renamed into place).
    flavor : {"trident", "clam"}
        The attribute layout on ``coords`` (module docstring): ``"trident"`` for TRIDENT's readers (and
        CLAM's where the slide has a level at the tiles' resolution), ``"clam"`` for CLAM's patch reader.
    """
    import h5py

    if flavor not in H5_FLAVORS:
        raise InvalidParameterError(f"flavor must be one of {', '.join(H5_FLAVORS)}, got {flavor!r}")
    st = store if isinstance(store, SlideStore) else open_store(store, encoder=encoder)
    feats = st.embeddings(encoder).astype(np.float32)
    attrs = st.attrs
    enc = st.encoder_attrs(encoder)
    coord_attrs = h5_coords_attrs(attrs["tiling"], attrs["slide"], flavor)
    coord_attrs.update(
        {
            "slidescope.flavor": flavor,
            "slidescope.tile_size": int(attrs["tiling"]["tile_size"]),
            "slidescope.effective_mpp": np.asarray(attrs["tiling"]["effective_mpp"], np.float64),
            "slidescope.mpp": float(attrs["tiling"]["mpp"]),
            "slidescope.encoder": encoder,
            "slidescope.weights_digest": str(enc.get("weights_digest")),
            "slidescope.schema_version": int(attrs["schema_version"]),
        }
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=feats)
        coords = f.create_dataset("coords", data=st.coords.astype(np.int64).reshape(-1, 2))
        coords.attrs.update(coord_attrs)
    os.replace(tmp, out)
    return out


def h5_coords_attrs(tiling: dict[str, Any], slide: dict[str, Any], flavor: str) -> dict[str, Any]:
    """The TRIDENT/CLAM attributes of ``coords`` for a store's tiling (see the module docstring)."""
    extent = int(tiling["extent"][0])
    tile_size = int(tiling["tile_size"])
    common = {
        "patch_size_level0": extent,
        "level0_width": int(slide["dimensions"][0]),
        "level0_height": int(slide["dimensions"][1]),
        "name": slide_key(slide["name"]),
    }
    if flavor == "clam":
        return {"patch_level": 0, "patch_size": extent, **common}
    mag0 = 10.0 / float(np.mean(slide["mpp"]))
    target = 10.0 / float(tiling["mpp"])
    if round(tile_size * mag0 / target) != extent:  # TRIDENT's rounding of the requested mpp differs
        target = mag0 * tile_size / extent  # the magnification the tiles were really cut at
    out: dict[str, Any] = {
        "patch_size": tile_size,
        "level0_magnification": mag0,
        "target_magnification": target,
        "overlap": int(tiling.get("overlap", 0)),
        **common,
    }
    level = int(tiling.get("level", 0))
    ds = tiling.get("level_downsample") or ([1.0, 1.0] if level == 0 else None)  # unknown for imports
    if ds and abs(tile_size * float(ds[0]) - extent) < 0.5 and abs(tile_size * float(ds[1]) - extent) < 0.5:
        out["patch_level"] = level  # CLAM's read_region(coord, level, patch_size) covers the tile
    return out


def _h5_attrs(coords) -> dict[str, Any]:
    """``coords``' attributes as Python values; TRIDENT writes a missing value as the text ``'None'``."""
    out: dict[str, Any] = {}
    for k, v in coords.attrs.items():
        v = v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v
        v = v.decode() if isinstance(v, bytes) else v
        if not (isinstance(v, str) and v == "None"):
            out[k] = v
    return out


def read_h5_coords(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any], np.ndarray | None]:
    """``(coords (N, 2) int64, coords attributes, features or None)`` of a TRIDENT/CLAM h5 file
    (a patch file has no ``features``)."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise InvalidParameterError(f"{path} cannot be read as an h5 file ({err})") from err
    with f:
        if "coords" not in f:
            raise InvalidParameterError(
                f"{path} is not a TRIDENT/CLAM coordinates or feature file: it has no 'coords' dataset "
                f"(it has: {', '.join(f.keys()) or 'nothing'})"
            )
        coords = np.asarray(f["coords"])
        attrs = _h5_attrs(f["coords"])
        feats = np.asarray(f["features"]) if "features" in f else None
    if coords.size == 0:
        coords = coords.reshape(0, 2)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InvalidParameterError(
            f"{path}: coords has shape {coords.shape}; expected (N, 2) level-0 (x, y)"
        )
    if not np.issubdtype(coords.dtype, np.integer):
        if not np.allclose(coords, np.round(coords)):
            raise InvalidParameterError(f"{path}: coords are not whole level-0 pixels")
        coords = np.round(coords)
    return coords.astype(np.int64), attrs, feats


def h5_footprint(
    attrs: dict[str, Any],
    *,
    level_downsamples: list[float] | None,
    slide_mpp: float | None,
    patch_size_level0: int | None = None,
    patch_size: int | None = None,
    patch_mpp: float | None = None,
    what: str = "the h5 file",
) -> tuple[int, int, int]:
    """``(level-0 px per tile, px per tile handed to the encoder, level)`` of a TRIDENT/CLAM file.

    In order: the file's ``patch_size_level0``; TRIDENT's ``patch_size`` x ``level0_magnification`` /
    ``target_magnification``; CLAM's ``patch_size`` at ``patch_level`` (needs the slide's downsamples for a
    level above 0); else the caller's ``patch_size_level0``, or ``patch_size`` px at ``patch_mpp`` µm/px
    (needs ``slide_mpp``). A caller's value that contradicts the file is an error."""
    size = _number(attrs.get("patch_size"))
    level = int(_number(attrs.get("patch_level")) or 0)
    extent = h5_extent(attrs, level_downsamples, what=what)
    given = patch_size_level0
    if given is None and patch_size and patch_mpp:
        if not slide_mpp:
            raise InvalidParameterError(
                f"{what}: --patch-mpp needs the slide's pixel size (--slides or --slide-mpp)"
            )
        given = round(patch_size * patch_mpp / slide_mpp)
    if extent is None and given is None:
        raise InvalidParameterError(
            f"{what} does not say how large a tile is (no patch_size_level0, no patch_size with "
            f"magnifications or patch_level): give --patch-size-level0 N (level-0 px per tile), or "
            f"--patch-size N with --patch-mpp M (N px at M µm/px)"
        )
    if extent is not None and given is not None and abs(int(extent) - int(given)) > 1:
        raise InvalidParameterError(
            f"{what} says a tile covers {int(extent)} level-0 px but the options give {int(given)}; "
            f"leave the options out to use the file's"
        )
    extent = int(extent if extent is not None else given)  # type: ignore[arg-type]
    tile = int(patch_size or size or extent)
    if extent <= 0 or tile <= 0:
        raise InvalidParameterError(f"{what}: a tile of {extent} level-0 px ({tile} px) is not a tile")
    return extent, tile, level


def h5_extent(attrs: dict[str, Any], level_downsamples: list[float] | None, *, what: str) -> int | None:
    """The level-0 px per tile a TRIDENT/CLAM ``coords`` says, as their readers compute it; None when the
    attributes do not say (CLAM feature files). See :func:`h5_footprint`."""
    size = _number(attrs.get("patch_size"))
    mag0, target = _number(attrs.get("level0_magnification")), _number(attrs.get("target_magnification"))
    level = int(_number(attrs.get("patch_level")) or 0)
    extent = _number(attrs.get("patch_size_level0"))
    if extent is not None:
        return int(round(extent))
    if size and mag0 and target:
        return round(size * mag0 / target)  # TRIDENT's WSIPatcher rounding
    if size and "patch_level" in attrs:
        if level and not level_downsamples:
            raise InvalidParameterError(
                f"{what} gives patch_size at patch_level {level}; give the slide (--slides) for that "
                f"level's downsample, or the footprint with --patch-size-level0"
            )
        if level_downsamples and level >= len(level_downsamples):
            raise InvalidParameterError(f"{what} reads at patch_level {level}, which the slide does not have")
        return round(size * (level_downsamples[level] if level_downsamples else 1.0))  # CLAM's read_region
    return None


def _number(value: Any) -> float | None:
    """A numeric attribute (h5 may hold numpy scalars or text), None when absent or not a number."""
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) and out > 0 else None


def import_h5(
    path: str | os.PathLike[str],
    *,
    encoder: str,
    store: str | os.PathLike[str],
    slide: str | os.PathLike[str] | None = None,
    slide_mpp: float | None = None,
    patch_size_level0: int | None = None,
    patch_size: int | None = None,
    patch_mpp: float | None = None,
    dtype: str = "float16",
) -> Path | str:
    """Build a slidescope store from a TRIDENT or CLAM h5 file (``features`` + ``coords``).

    A file without tiles (TRIDENT writes one for a slide without tissue) gives an empty store, as
    ``extract`` does for such a slide. CLAM's feature files carry no attributes: then give the tile
    footprint (``patch_size_level0``, or ``patch_size`` px at ``patch_mpp``) and the pixel size (``slide``
    or ``slide_mpp``).

    Parameters
    ----------
    path : the h5 file.
    encoder : the name the embeddings get in the store (e.g. ``"uni"``); if it is a registered
        encoder its config is recorded, and its ``embed_dim`` must match.
    store : the store folder (``<store>/<slide>.zarr`` is written).
    slide : the slide file, for its fingerprint, mpp and dimensions (recommended); without it the
        store records what the h5 says and marks the slide as not verified.
    slide_mpp : level-0 µm/px when neither the slide nor the h5 gives it.
    patch_size_level0 : level-0 px per tile, for files that do not say it.
    patch_size, patch_mpp : px per tile and their µm/px, for files that do not say the footprint;
        ``patch_size`` is also recorded as the tile size handed to the encoder.

    Raises
    ------
    InvalidParameterError
        Not a feature file, features and coords that disagree, or what is missing (the message names the
        option that supplies it).
    """
    path = Path(path)
    coords, hattrs, feats = read_h5_coords(path)
    if feats is None:
        raise InvalidParameterError(
            f"{path} has coordinates but no 'features': it is a patch file (use it with extract --coords)"
        )
    config = _encoder_config(encoder)
    feats = _feature_matrix(path, feats, len(coords), config.get("embed_dim"))
    info = _slide_info(path, hattrs, slide, slide_mpp)
    extent, tile_size, level = h5_footprint(
        hattrs,
        level_downsamples=info.pop("level_downsamples"),
        slide_mpp=info["mpp"][0] if info["mpp"] else None,
        patch_size_level0=patch_size_level0,
        patch_size=patch_size,
        patch_mpp=patch_mpp,
        what=str(path),
    )
    if config.get("embed_dim") not in (None, feats.shape[1]):
        raise InvalidParameterError(
            f"{path} holds {feats.shape[1]}-d features but encoder {encoder!r} makes {config['embed_dim']}-d "
            f"ones: name the encoder that really made them."
        )
    mpp = info["mpp"]
    if mpp is None:
        raise InvalidParameterError(
            f"{path} does not say the slide's pixel size: give the slide (--slides, recommended) or --slide-mpp"
        )
    tiling = {
        "tile_size": tile_size,
        "mpp": float(np.mean(mpp)) * extent / tile_size,
        "effective_mpp": [mpp[0] * extent / tile_size, mpp[1] * extent / tile_size],
        "extent": [extent, extent],
        "stride": [extent, extent],
        "overlap": int(_number(hattrs.get("overlap")) or 0),
        "level": level,
        "slide_mpp": mpp,
        "slide_dimensions": info["dimensions"],
        "n_tiles": len(coords),
        "imported_from": str(path.resolve()),
    }
    slide_attrs = {**info, "path": str(slide) if slide else None, "backend": None}
    config = {**config, "name": encoder, "stain": None, "imported": True}
    out = store_path(store, info["name"])  # a local folder or an fsspec URL
    with claim(out):
        st = SlideStore.create_or_open(
            out,
            slide_attrs=slide_attrs,
            tiling=tiling,
            coords=coords,
            tissue_fraction=np.full(len(coords), np.nan, np.float32),  # not in the file: unknown
        )
        key = CacheKey(
            encoder=config,
            weights_digest=str(hattrs.get("slidescope.weights_digest", "unknown")),
            precision="unknown",
            dtype=dtype,
            package_version=st.attrs["package_version"],
        )
        writer = st.prepare_embeddings(key, embed_dim=int(feats.shape[1]))
        if not writer.complete:
            for chunk in range(-(-len(feats) // writer.chunk_rows)):
                rows = feats[chunk * writer.chunk_rows : (chunk + 1) * writer.chunk_rows].astype(dtype)
                writer.write_chunk(chunk, rows)
            writer.finish(imported_from=str(path.resolve()))
    log.info("imported %s -> %s (%d tiles, %d-d)", path.name, out, len(coords), feats.shape[1])
    return out


def _encoder_config(encoder: str) -> dict[str, Any]:
    """The registered encoder's config, or just its name for an encoder slidescope does not know."""
    from .encoders import get_encoder_config

    try:
        return get_encoder_config(encoder).to_dict()
    except InvalidParameterError as err:
        if "unknown encoder" not in str(err):
            raise
        return {"name": encoder}


def _feature_matrix(path: Path, feats: np.ndarray, n: int, embed_dim: int | None) -> np.ndarray:
    """``features`` as (N, D): a batch axis dropped; an empty file's (0,) shaped with the encoder's width."""
    if feats.ndim == 3 and feats.shape[0] == 1:  # some tools keep a batch axis
        feats = feats[0]
    if feats.size == 0 and n == 0:
        if feats.ndim == 2:
            return feats.astype(np.float32)
        if embed_dim is None:  # TRIDENT writes (0,) when it does not know the width
            raise InvalidParameterError(
                f"{path} has no tiles and does not say the embedding width; name a registered encoder "
                f"(--encoder, see `slidescope encoders`) so the empty store gets its width"
            )
        return np.zeros((0, int(embed_dim)), np.float32)
    if feats.ndim != 2 or len(feats) != n:
        raise InvalidParameterError(
            f"{path}: coords ({n}, 2) and features {feats.shape} do not describe the same tiles"
        )
    return feats


def _slide_info(
    path: Path, hattrs: dict[str, Any], slide: str | os.PathLike[str] | None, slide_mpp: float | None
) -> dict[str, Any]:
    """Name, fingerprint, reader, mpp, dimensions and level downsamples: from the slide when it is given,
    else from the file (mpp from ``slide_mpp`` or ``level0_magnification``; None when neither says)."""
    if slide is not None:
        from ..wsi import open_slide

        with open_slide(slide, slide_mpp=slide_mpp) as s:
            return {
                "name": s.path.name,
                "fingerprint": slide_fingerprint(s.path),
                "reader": s.reader,
                "mpp": list(s.mpp),
                "mpp_source": "slide",
                "dimensions": list(s.dimensions),
                "level_downsamples": list(s.level_downsamples),
            }
    mag0 = _number(hattrs.get("level0_magnification"))
    mpp_value = slide_mpp or (10.0 / mag0 if mag0 else None)
    return {
        "name": str(hattrs.get("name") or path.stem),
        "fingerprint": "unverified (imported without the slide)",
        "reader": "unknown",
        "mpp": [mpp_value, mpp_value] if mpp_value else None,
        "mpp_source": "--slide-mpp" if slide_mpp else "imported h5",
        "dimensions": [int(_number(hattrs.get(k)) or 0) for k in ("level0_width", "level0_height")],
        "level_downsamples": None,
    }
