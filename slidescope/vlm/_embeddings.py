"""Slide models and the embeddings they make from the stores, for :mod:`slidescope.vlm.api`.

* :func:`load_slide_model` (and :func:`resolve_model`, which also takes patch-level CLIP text towers): a model
  object from a name, a saved folder or an object;
* :func:`slide_embeddings`, :func:`stored_slide_embeddings`, :func:`tile_embeddings`: joint-space embeddings
  of slides or tiles;
* :func:`store_locations`, :func:`slide_name`: the stores behind a store / path / folder argument.

The public functions are re-exported by :mod:`slidescope.vlm.api`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .._location import Location, expand_stores, location_name
from ..errors import InvalidParameterError
from ..features.encoders.clip import ClipTextTower, create_clip_text_tower, list_clip_text_towers
from ..features.store import SlideStore, open_store
from .model import SlideTextModel
from .published import PublishedSlideTextModel, is_published_model, load_published_model

__all__ = [
    "StoreLike",
    "SlideModel",
    "ModelLike",
    "resolve_model",
    "load_model",
    "load_slide_model",
    "default_encoder",
    "store_locations",
    "slide_name",
    "slide_embeddings",
    "stored_slide_embeddings",
    "tile_embeddings",
]

StoreLike = str | os.PathLike[str] | SlideStore
SlideModel = SlideTextModel | PublishedSlideTextModel
ModelLike = str | os.PathLike[str] | SlideTextModel | PublishedSlideTextModel | ClipTextTower


def resolve_model(
    model: ModelLike | None, *, weights: str | os.PathLike[str] | None, trust_remote_code: bool, device: str
) -> SlideTextModel | PublishedSlideTextModel | ClipTextTower | None:
    """``model`` as a loaded object: a registered name (published slide model or patch-level CLIP text tower), a
    saved :class:`SlideTextModel` folder, or an already loaded model (moved to ``device``, eval mode)."""
    if model is None:
        return None
    if isinstance(model, (SlideTextModel, PublishedSlideTextModel, ClipTextTower)):
        return model.to(device).eval()
    if is_published_model(model):
        return load_published_model(str(model), weights, trust_remote_code=trust_remote_code, device=device)
    if isinstance(model, str) and model in list_clip_text_towers():
        return create_clip_text_tower(model, weights=weights, device=device)
    if weights is not None:
        raise InvalidParameterError(
            f"weights= is for named models ({', '.join(model_names())}); a saved "
            f"SlideTextModel folder ({model}) carries its own weights"
        )
    return SlideTextModel.load(model, map_location=device)


def model_names() -> list[str]:
    from .published import list_published_models

    return list_published_models() + list_clip_text_towers()


def load_model(
    model: ModelLike,
    device: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
) -> SlideModel:
    net = resolve_model(model, weights=weights, trust_remote_code=trust_remote_code, device=device)
    if isinstance(net, ClipTextTower) or net is None:
        raise InvalidParameterError(
            f"{getattr(net, 'name', model)!r} is a patch-level CLIP model: it has no slide "
            "encoder. Use zero_shot(..., level='tile') (MI-Zero) with it"
        )
    return net


def load_slide_model(
    model: ModelLike,
    *,
    weights: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
    device: str = "cpu",
) -> SlideModel:
    """A slide-level text-aligned model, loaded: a :class:`SlideTextModel` (object or saved folder) or a published
    one by name (``"prism"``, ``"titan"``; ``weights`` and ``trust_remote_code`` as in
    :func:`~slidescope.vlm.published.load_published_model`).

    Returns
    -------
    SlideTextModel or PublishedSlideTextModel
        In eval mode on ``device``; both have ``encode_slide``, ``encode_text``, ``similarity`` and ``scale``.
    """
    return load_model(model, device, weights=weights, trust_remote_code=trust_remote_code)


def default_encoder(net: object, encoder: str | None) -> str:
    if encoder is not None:
        return encoder
    if isinstance(net, PublishedSlideTextModel):
        return net.config.tile_encoders[0]
    if isinstance(net, ClipTextTower):
        return net.name
    raise InvalidParameterError(
        "give encoder=: the name of the tile embeddings in the stores that the model was "
        "pretrained on (e.g. encoder='he-descriptor')"
    )


def store_locations(stores_or_paths: StoreLike | Sequence[StoreLike]) -> list[Location]:
    """Store locations (local paths or fsspec URL strings, folders expanded) of stores, paths or URLs."""
    items = (
        [stores_or_paths]
        if isinstance(stores_or_paths, (str, os.PathLike, SlideStore))
        else list(stores_or_paths)
    )
    if not items:
        raise InvalidParameterError("no stores given")
    return expand_stores([s.path if isinstance(s, SlideStore) else s for s in items])


def slide_name(path: Location) -> str:
    name = location_name(path)
    return name[: -len(".zarr")] if name.endswith(".zarr") else name


def tile_matrix(store: SlideStore, encoder: str, context_dim: int) -> np.ndarray:
    emb = store.embeddings(encoder).astype(np.float32)
    if emb.ndim != 2 or emb.shape[1] != context_dim:
        raise InvalidParameterError(
            f"{store.name}: {encoder!r} embeddings have {emb.shape[-1]} dimensions but "
            f"the model expects {context_dim}; use the encoder the model was pretrained on"
        )
    if len(emb) == 0:
        raise InvalidParameterError(f"{store.name} has no tiles for {encoder!r}")
    return emb


def slide_embeddings(
    stores_or_paths: StoreLike | Sequence[StoreLike],
    *,
    model: ModelLike,
    encoder: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
    device: str = "cpu",
    write: bool = True,
    name: str | None = None,
) -> tuple[list[Location], Tensor]:
    """Joint-space slide embeddings of every store.

    Parameters
    ----------
    stores_or_paths : store, path or list of them
        Slide stores (``<slide>.zarr``) or folders of stores.
    model : SlideTextModel, saved folder, or a published name (``"prism"``, ``"titan"``)
        The slide model; ``weights`` and ``trust_remote_code`` go to
        :func:`~slidescope.vlm.published.load_published_model` for a name.
    encoder : str, optional
        The stores' tile embeddings to use (default for a published model: the one it was trained on).
    write : bool
        Write each slide embedding into its store as ``slide_embeddings/<name>``: a SlideTextModel's joint-space
        embedding (default name ``slidetext-<encoder>``), a published model's own (raw) slide embedding (default
        name: the model's, e.g. ``prism``: 1280-d, the vector TRIDENT exports and linear probes use).

    Returns
    -------
    paths : list of Path or str
        The stores, folders expanded, in order.
    embeddings : Tensor (B, dim_latents)
        L2-normalised joint-space embeddings (what zero-shot compares with text).
    """
    net = load_model(model, device, weights=weights, trust_remote_code=trust_remote_code)
    encoder = default_encoder(net, encoder)
    paths = store_locations(stores_or_paths)
    joint, raw = [], []
    tiling_keys: list[str | None] = []  # the tiling of each store read (written back into the same one)
    with torch.inference_mode():
        for p in paths:
            store = open_store(p, encoder=encoder)
            tiling_keys.append(store.tiling_key)
            if isinstance(net, PublishedSlideTextModel):
                raw.append(net.embed_store(store, encoder))
            else:
                tiles = torch.from_numpy(
                    tile_matrix(store, encoder, net.slide_encoder.config.context_dim)
                ).to(device)
                joint.append(net.encode_slide(tiles[None]).squeeze(0).float().cpu())
        if isinstance(net, PublishedSlideTextModel):
            stacked = torch.stack(raw)
            emb = net.project(stacked).float().cpu()
        else:
            stacked = emb = torch.stack(joint)
    if write:
        if isinstance(net, PublishedSlideTextModel):
            key = name or net.name
            attrs = {"encoder": encoder, "model": net.name, "hub_id": net.config.hub_id, "space": "slide"}
        else:
            key = name or f"slidetext-{encoder}"
            attrs = {"encoder": encoder, "model": "SlideTextModel", "space": "joint"}
        for p, v, tkey in zip(paths, stacked, tiling_keys, strict=True):
            SlideStore.open(p, mode="r+", tiling=tkey).write_slide_embedding(
                key, v.numpy(), attrs={**attrs, "dim": int(v.shape[0])}
            )
    return paths, emb


def stored_slide_embeddings(
    stores_or_paths: StoreLike | Sequence[StoreLike], name: str, *, model: SlideModel | None = None
) -> tuple[list[Location], Tensor]:
    """The slide embeddings ``slide_embeddings/<name>`` already in the stores, stacked: (B, D).

    With a published ``model`` the stored (raw) embeddings are projected into its joint space; a SlideTextModel's
    are stored in the joint space already. Re-scoring with new prompts then costs no slide encoding.
    """
    paths = store_locations(stores_or_paths)
    emb = torch.from_numpy(
        np.stack([open_store(p, slide_embedding=name).slide_embedding(name) for p in paths]).astype(
            np.float32
        )
    )
    if isinstance(model, PublishedSlideTextModel):
        if emb.shape[1] != model.slide_dim:
            raise InvalidParameterError(
                f"slide embeddings {name!r} have {emb.shape[1]} dimensions but "
                f"{model.config.title} makes {model.slide_dim}"
            )
        with torch.inference_mode():
            emb = model.project(emb).float().cpu()
    elif isinstance(model, SlideTextModel) and emb.shape[1] != model.dim_latents:
        raise InvalidParameterError(
            f"slide embeddings {name!r} have {emb.shape[1]} dimensions but the model's joint "
            f"space has {model.dim_latents}; embed the slides with this model"
        )
    return paths, emb


def tile_embeddings(
    store: SlideStore | StoreLike,
    *,
    model: str | os.PathLike[str] | SlideTextModel,
    encoder: str,
    batch_size: int = 256,
    device: str = "cpu",
) -> Tensor:
    """Each tile encoded alone (a one-tile bag) by a SlideTextModel's slide encoder, into the joint space.

    Returns
    -------
    Tensor (N, dim_latents)
        L2-normalised, one row per tile in store order.
    """
    net = load_model(model, device)
    if not isinstance(net, SlideTextModel):
        raise InvalidParameterError("tile_embeddings needs a SlideTextModel")
    st = store if isinstance(store, SlideStore) else open_store(store, encoder=encoder)
    tiles = torch.from_numpy(tile_matrix(st, encoder, net.slide_encoder.config.context_dim))
    out = []
    with torch.inference_mode():
        for i in range(0, len(tiles), batch_size):
            out.append(net.encode_slide(tiles[i : i + batch_size, None].to(device)).float().cpu())
    return torch.cat(out)
