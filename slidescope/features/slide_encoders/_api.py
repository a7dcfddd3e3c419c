"""Slide embeddings of stores (:func:`embed_slides`) and patient embeddings from slides (:func:`pool_patients`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._location import Location, as_location, expand_stores, location_name
from ...errors import InvalidParameterError, SlidescopeError
from ..store import SlideStore, open_store
from ._config import SlideEncoderConfig
from ._registry import create_slide_encoder

if TYPE_CHECKING:  # pragma: no cover
    from ._base import SlideEncoder

log = logging.getLogger(__name__)

__all__ = ["SlideEmbeddings", "embed_slides", "embed_patients", "pool_patients", "stored_name", "describe"]


@dataclass
class SlideEmbeddings:
    """What :func:`embed_slides` made.

    Attributes
    ----------
    paths : list
        The stores embedded, in order (rows of ``embeddings``).
    embeddings : ndarray (B, E) float32
        One slide embedding per store.
    name : str
        The name each was written under in its store (``slide_embeddings/<name>``).
    encoders : list of str
        The patch encoder read in each store.
    failed : dict
        Store -> ``"ErrorClass: message"`` for the stores that could not be embedded (the batch went on).
    """

    paths: list[Location]
    embeddings: np.ndarray
    name: str
    encoders: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def stored_name(config: SlideEncoderConfig, encoder: str) -> str:
    """The store name of a slide embedding: the slide encoder's (``mean-<encoder>`` for mean pooling)."""
    return config.name if config.patch_encoders else f"{config.name}-{encoder}"


def _pick_encoder(config: SlideEncoderConfig, store: SlideStore, encoder: str | None) -> str:
    if encoder is not None:
        return encoder
    have = store.encoders()
    usable = [e for e in config.patch_encoders if e in have] if config.patch_encoders else have
    if len(usable) == 1 or (config.patch_encoders and usable):
        return usable[0]
    if not usable and config.patch_encoders:
        return config.patch_encoders[0]  # check_store says which extraction is missing
    raise InvalidParameterError(
        f"{store.name} holds embeddings of {', '.join(have) or 'no encoder'}: pass encoder= (CLI --encoder) to "
        f"say which ones slide encoder {config.name!r} pools"
    )


def _open(path: Location, config: SlideEncoderConfig, encoder: str | None) -> tuple[SlideStore, str]:
    wanted = encoder or (config.patch_encoders[0] if config.patch_encoders else None)
    store = open_store(path, encoder=wanted)
    enc = _pick_encoder(config, store, encoder)
    if enc != wanted:
        store = open_store(path, encoder=enc)
    config.check_store(store, enc)
    return store, enc


def embed_slides(
    stores: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    slide_encoder: str | SlideEncoder,
    *,
    encoder: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    write: bool = True,
    name: str | None = None,
) -> SlideEmbeddings:
    """The slide embedding of every store, from its tile embeddings, optionally written into the store.

    Parameters
    ----------
    stores : path, URL or list of them
        Slide stores (``<slide>.zarr``) or folders of stores.
    slide_encoder : str or SlideEncoder
        A name from :func:`list_slide_encoders` (built with ``weights``, ``trust_remote_code``) or a built one.
    encoder : str, optional
        The stores' tile embeddings to read; default the one the slide encoder was trained on (``mean``: the
        store's only encoder).
    write : bool
        Write each as ``slide_embeddings/<name>`` into the store's tiling that was read (attributes: the slide
        encoder's config, the patch encoder, the weights digest), for ``zero-shot``/``few-shot`` and exports.
    name : str, optional
        The stored name (default :func:`stored_name`: ``feather-uni2``, ``mean-uni``...).

    Returns
    -------
    SlideEmbeddings
        The stores embedded and their embeddings ``(B, E)``; stores that failed (wrong patch encoder or tiling,
        damaged, missing) are in ``failed`` with the reason, and the others go on.

    Raises
    ------
    InvalidParameterError
        Every store failed (the first reason is in the message), or no stores.
    """
    model = (
        create_slide_encoder(
            slide_encoder, weights=weights, device=device, trust_remote_code=trust_remote_code
        )
        if isinstance(slide_encoder, str)
        else slide_encoder
    )
    config = model.config
    paths = expand_stores(stores if isinstance(stores, str | os.PathLike) else list(stores))
    done: list[Location] = []
    rows: list[np.ndarray] = []
    encoders: list[str] = []
    failed: dict[str, str] = {}
    key = name
    for path in paths:
        try:
            store, enc = _open(path, config, encoder)
            z = model.embed(store.embeddings(enc), store.coords, store.tile_extent[0])
            key = name or stored_name(config, enc)
            if write:
                attrs: dict[str, Any] = {
                    "slide_encoder": config.to_dict(),
                    "encoder": enc,
                    "weights_digest": model.weights_digest,
                    "space": "slide",
                    "dim": int(z.shape[0]),
                }
                SlideStore.open(path, mode="r+", tiling=store.tiling_key).write_slide_embedding(
                    key, z.numpy(), attrs=attrs
                )
        except SlidescopeError as err:
            failed[str(path)] = f"{type(err).__name__}: {err}"
            log.warning("%s: no slide embedding: %s", location_name(path), err)
            continue
        done.append(path)
        rows.append(z.numpy())
        encoders.append(enc)
    if not rows:
        first = next(iter(failed.values()), "no stores")
        raise InvalidParameterError(f"no slide could be embedded with {config.name!r}: {first}")
    return SlideEmbeddings(done, np.stack(rows).astype(np.float32), key or config.name, encoders, failed)


def embed_patients(
    stores: Sequence[str | os.PathLike[str]],
    patients: Sequence[str],
    slide_encoder: str | SlideEncoder,
    *,
    encoder: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """One embedding per patient from the slides' stores.

    A slide encoder that defines patients (``config.patient_level``: MOOZY's case transformer over its slide
    tokens) computes it; any other averages the patient's slide embeddings (:func:`pool_patients`).

    Parameters
    ----------
    stores : list of paths
        One store per slide.
    patients : list of str
        The patient of each store (same order).
    slide_encoder, encoder, weights, device, trust_remote_code
        As in :func:`embed_slides`.

    Returns
    -------
    ids : list of str
        The patients with at least one usable slide, in order of first appearance.
    embeddings : ndarray (P, E) float32
    failed : dict
        Store -> reason, for the slides left out (the patient keeps its other slides).
    """
    if isinstance(stores, str | os.PathLike) or len(stores) != len(patients):
        raise InvalidParameterError("give a list of stores and one patient per store")
    model = (
        create_slide_encoder(
            slide_encoder, weights=weights, device=device, trust_remote_code=trust_remote_code
        )
        if isinstance(slide_encoder, str)
        else slide_encoder
    )
    slides: dict[str, list[tuple[Any, Any, int]]] = {}
    failed: dict[str, str] = {}
    for path, patient in zip(stores, patients, strict=True):
        try:
            store, enc = _open(as_location(path), model.config, encoder)
            slides.setdefault(str(patient), []).append(
                (store.embeddings(enc), store.coords, store.tile_extent[0])
            )
        except SlidescopeError as err:
            failed[str(path)] = f"{type(err).__name__}: {err}"
            log.warning("%s: left out of patient %s: %s", location_name(path), patient, err)
    if not slides:
        raise InvalidParameterError(
            f"no slide could be read for {model.config.name!r}: {next(iter(failed.values()))}"
        )
    rows = [model.embed_patient(s).numpy() for s in slides.values()]
    return list(slides), np.stack(rows).astype(np.float32), failed


def pool_patients(embeddings: np.ndarray, patients: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Patient embeddings as the mean of their slides' embeddings.

    Parameters
    ----------
    embeddings : ndarray (B, E)
        One slide embedding per row (e.g. ``embed_slides(...).embeddings``).
    patients : sequence of str
        The patient of each row.

    Returns
    -------
    ids : list of str
        The patients, in order of first appearance.
    pooled : ndarray (P, E) float32
        The mean of each patient's slide embeddings.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(patients):
        raise InvalidParameterError(
            f"embeddings must be (B, E) with one patient per row; got {emb.shape} and {len(patients)} patients"
        )
    ids = list(dict.fromkeys(str(p) for p in patients))
    index = {p: i for i, p in enumerate(ids)}
    rows = np.array([index[str(p)] for p in patients])
    pooled = np.zeros((len(ids), emb.shape[1]), np.float64)
    np.add.at(pooled, rows, emb)
    pooled /= np.bincount(rows, minlength=len(ids))[:, None]
    return ids, pooled.astype(np.float32)


_LAYOUT_LABELS = {"publisher's code (trust_remote_code)": "remote code", "no weights": "-"}


def _layout_label(layout: str) -> str:
    """One word for ``slidescope encoders`` (the legend it prints): a layout checked against the publisher's
    code run outside slidescope (tests/golden) is ``ref-run``, as for the patch encoders."""
    head = layout.split(":")[0]
    if head == "derived" and "tests/golden" in layout:
        return "ref-run"
    return _LAYOUT_LABELS.get(head, head)


def describe(config: SlideEncoderConfig) -> dict[str, Any]:
    """One row of ``slidescope encoders`` for a slide encoder."""
    return {
        "name": config.name,
        "patch": ", ".join(config.patch_encoders) or "any",
        "geometry": config.geometry(),
        "dim": config.embed_dim if config.embed_dim is not None else "= patch",
        "params": "-" if config.n_params is None else f"{config.n_params / 1e6:.2f}M",
        "licence": config.license + (" (gated)" if config.gated else ""),
        "layout": _layout_label(config.layout),
    }
