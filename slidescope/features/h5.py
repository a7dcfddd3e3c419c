"""h5 interchange in the TRIDENT/CLAM layout, so our embeddings feed their tools and theirs feed ours.

One file per slide::

    features   (N, D) float32
    coords     (N, 2) int64, level-0 top-left (x, y)
        attrs: patch_size (px at the target resolution), patch_size_level0 (level-0 px), patch_level,
               level0_magnification, target_magnification, overlap, level0_width, level0_height, name
               (TRIDENT's names; CLAM files carry patch_level + patch_size and are read too)

Export adds slidescope provenance (``slidescope.*`` attrs on ``coords``: effective mpp, encoder,
weights digest, store schema). Import builds a normal store whose attrs say it was imported, so
MIL and the viewer use it like any other.
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

__all__ = ["export_h5", "import_h5"]


def export_h5(store: str | os.PathLike[str] | SlideStore, encoder: str, out: str | os.PathLike[str]) -> Path:
    """Write ``encoder``'s embeddings of one slide store as a TRIDENT/CLAM h5 file."""
    import h5py

    st = store if isinstance(store, SlideStore) else open_store(store, encoder=encoder)
    feats = st.embeddings(encoder).astype(np.float32)
    attrs = st.attrs
    tiling, slide = attrs["tiling"], attrs["slide"]
    enc = st.encoder_attrs(encoder)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    mpp0 = float(np.mean(slide["mpp"]))
    with h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=feats)
        coords = f.create_dataset("coords", data=st.coords.astype(np.int64))
        coords.attrs.update(
            {
                "patch_size": int(tiling["tile_size"]),
                "patch_size_level0": int(tiling["extent"][0]),
                "patch_level": 0,
                "level0_magnification": float(10.0 / mpp0),
                "target_magnification": float(10.0 / tiling["mpp"]),
                "overlap": int(tiling["overlap"]),
                "level0_width": int(slide["dimensions"][0]),
                "level0_height": int(slide["dimensions"][1]),
                "name": slide_key(slide["name"]),
                "slidescope.effective_mpp": np.asarray(tiling["effective_mpp"], np.float64),
                "slidescope.mpp": float(tiling["mpp"]),
                "slidescope.encoder": encoder,
                "slidescope.weights_digest": str(enc.get("weights_digest")),
                "slidescope.schema_version": int(attrs["schema_version"]),
            }
        )
    os.replace(tmp, out)
    return out


def _h5_attrs(coords) -> dict[str, Any]:
    return {k: (v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v) for k, v in coords.attrs.items()}


def import_h5(
    path: str | os.PathLike[str],
    *,
    encoder: str,
    store: str | os.PathLike[str],
    slide: str | os.PathLike[str] | None = None,
    slide_mpp: float | None = None,
    dtype: str = "float16",
) -> Path | str:
    """Build a slidescope store from a TRIDENT or CLAM h5 file (``features`` + ``coords``).

    Parameters
    ----------
    path : the h5 file.
    encoder : the name the embeddings get in the store (e.g. ``"uni"``); if it is a registered
        encoder its config is recorded, and its ``embed_dim`` must match.
    store : the store folder (``<store>/<slide>.zarr`` is written).
    slide : the slide file, for its fingerprint, mpp and dimensions (recommended); without it the
        store records what the h5 says and marks the slide as not verified.
    slide_mpp : level-0 µm/px when neither the slide nor the h5 gives it.
    """
    import h5py

    path = Path(path)
    with h5py.File(path, "r") as f:
        if "features" not in f or "coords" not in f:
            raise InvalidParameterError(
                f"{path} is not a TRIDENT/CLAM feature file (needs 'features' and 'coords')"
            )
        feats = np.asarray(f["features"])
        coords = np.asarray(f["coords"]).astype(np.int64)
        hattrs = _h5_attrs(f["coords"])
    if feats.ndim == 3 and feats.shape[0] == 1:  # some tools keep a batch axis
        feats = feats[0]
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(feats):
        raise InvalidParameterError(
            f"{path}: coords {coords.shape} and features {feats.shape} do not describe the same tiles"
        )
    level = int(hattrs.get("patch_level", 0))
    if slide is not None:
        from ..wsi import open_slide

        with open_slide(slide, slide_mpp=slide_mpp) as s:
            dims, mpp, fp, reader = list(s.dimensions), list(s.mpp), slide_fingerprint(s.path), s.reader
            ds = s.level_downsamples[level] if level < s.level_count else 2.0**level
            name = s.path.name
    else:
        dims = [int(hattrs.get("level0_width", 0)), int(hattrs.get("level0_height", 0))]
        mag0 = hattrs.get("level0_magnification")
        mpp_value = slide_mpp or (10.0 / float(mag0) if mag0 and float(mag0) > 0 else None)
        if mpp_value is None:
            raise InvalidParameterError(
                f"{path} does not say the slide's pixel size; pass slide=... (recommended) or slide_mpp=..."
            )
        mpp, fp, reader, ds = (
            [mpp_value, mpp_value],
            "unverified (imported without the slide)",
            "unknown",
            2.0**level,
        )
        name = str(hattrs.get("name", path.stem))
    extent = int(hattrs.get("patch_size_level0") or round(int(hattrs["patch_size"]) * ds))
    tile_size = int(hattrs.get("patch_size", extent))
    target_mpp = float(np.mean(mpp)) * extent / tile_size
    tiling = {
        "tile_size": tile_size,
        "mpp": target_mpp,
        "effective_mpp": [mpp[0] * extent / tile_size, mpp[1] * extent / tile_size],
        "extent": [extent, extent],
        "stride": [extent, extent],
        "overlap": int(hattrs.get("overlap", 0)),
        "level": level,
        "slide_mpp": mpp,
        "slide_dimensions": dims,
        "n_tiles": len(coords),
        "imported_from": str(path.resolve()),
    }
    slide_attrs = {
        "name": name,
        "path": str(slide) if slide else None,
        "fingerprint": fp,
        "reader": reader,
        "backend": None,
        "mpp": mpp,
        "mpp_source": "imported h5" if slide is None else "slide",
        "dimensions": dims,
    }
    try:
        from .encoders import get_encoder_config

        config = get_encoder_config(encoder).to_dict()
        if config["embed_dim"] != feats.shape[1]:
            raise InvalidParameterError(
                f"{path} holds {feats.shape[1]}-d features but encoder {encoder!r} makes {config['embed_dim']}-d ones: "
                f"name the encoder that really made them."
            )
    except InvalidParameterError as err:
        if "unknown encoder" not in str(err):
            raise
        config = {"name": encoder}
    config = {**config, "name": encoder, "stain": None, "imported": True}
    out = store_path(store, name)  # a local folder or an fsspec URL
    with claim(out):
        st = SlideStore.create_or_open(
            out,
            slide_attrs=slide_attrs,
            tiling=tiling,
            coords=coords,
            tissue_fraction=np.ones(len(coords), np.float32),
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
