"""Few-shot inputs besides a slide-text model's embeddings: the slide embeddings of a registered slide
encoder (:mod:`slidescope.features.slide_encoders`; no text tower) and patient-level pooling of slide
embeddings (:func:`~slidescope.features.slide_encoders.pool_patients`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .._location import location_name
from ..errors import InvalidParameterError
from ..manifests import short_list
from ._embeddings import SlideModel, slide_embeddings, slide_name, store_locations

if TYPE_CHECKING:  # pragma: no cover
    from ..features.slide_encoders import SlideEncoder

__all__ = ["model_embedder", "slide_encoder_embedder", "pool_by_patient", "Embedder"]

#: stores (or a ready (B, E) array) -> (slide names, (B, E) embeddings)
Embedder = Callable[[Any], tuple[list[str], Tensor]]


def model_embedder(net: SlideModel, encoder: str, device: str, write: bool) -> Embedder:
    """A function giving a slide-text model's joint-space slide embeddings of stores
    (:func:`~slidescope.vlm.api.slide_embeddings`); ready arrays must be ``(B, net.dim_latents)``."""

    def embed(stores: Any) -> tuple[list[str], Tensor]:
        if isinstance(stores, Tensor | np.ndarray):
            x = torch.as_tensor(stores).float()
            if x.ndim != 2 or x.shape[1] != net.dim_latents:
                raise InvalidParameterError(
                    f"slide embeddings must have shape (B, {net.dim_latents}) to match the model, "
                    f"got {tuple(x.shape)}"
                )
            return [str(i) for i in range(len(x))], x
        paths, emb = slide_embeddings(stores, model=net, encoder=encoder, device=device, write=write)
        return [slide_name(p) for p in paths], emb

    return embed


def slide_encoder_embedder(
    slide_encoder: str | SlideEncoder,
    encoder: str | None,
    weights: str | os.PathLike[str] | None,
    trust_remote_code: bool,
    device: str,
    write: bool,
) -> Embedder:
    """A function giving the slide embeddings of stores from ``slide_encoder`` (built once, here).

    The slide encoder checks each store (patch encoder, tiling) first; a slide that cannot be embedded is an
    error naming it (few-shot needs every slide it is given). Ready arrays ``(B, E)`` pass through.
    """
    from ..features.slide_encoders import create_slide_encoder, embed_slides

    model = (
        create_slide_encoder(
            slide_encoder, weights=weights, device=device, trust_remote_code=trust_remote_code
        )
        if isinstance(slide_encoder, str)
        else slide_encoder
    )

    def embed(stores: Any) -> tuple[list[str], Tensor]:
        if isinstance(stores, Tensor | np.ndarray):
            x = torch.as_tensor(stores).float()
            if x.ndim != 2:
                raise InvalidParameterError(f"slide embeddings must have shape (B, E), got {tuple(x.shape)}")
            return [str(i) for i in range(len(x))], x
        res = embed_slides(store_locations(stores), model, encoder=encoder, write=write)
        if res.failed:
            path, why = next(iter(res.failed.items()))
            raise InvalidParameterError(
                f"{len(res.failed)} slide(s) could not be embedded with slide encoder {model.config.name!r} "
                f"(first: {location_name(path)}: {why}); few-shot needs every slide it is given"
            )
        return [slide_name(p) for p in res.paths], torch.from_numpy(res.embeddings)

    return embed


def pool_by_patient(
    names: list[str],
    x: Tensor,
    labels: Sequence[str] | None,
    patients: Mapping[str, str],
    what: str,
) -> tuple[list[str], Tensor, list[str] | None]:
    """One row per patient: the mean of its slides' embeddings, and its label.

    Parameters
    ----------
    names : list of str
        The slide name of each row of ``x``.
    x : Tensor (B, E)
        Slide embeddings.
    labels : list of str, optional
        The class of each slide; every slide of a patient must have the same.
    patients : mapping
        Slide name -> patient.
    what : str
        Which slides these are (``"support"``, ``"test"``...), for the messages.

    Returns
    -------
    ids : list of str
        The patients, in order of first appearance.
    pooled : Tensor (P, E)
    labels : list of str or None
        The class of each patient.

    Raises
    ------
    InvalidParameterError
        A slide without a patient, or a patient whose slides have different labels.
    """
    from ..features.slide_encoders import pool_patients

    missing = [n for n in names if n not in patients]
    if missing:
        raise InvalidParameterError(
            f"{what} slide(s) {short_list(missing)} have no patient: give every slide's patient "
            f"(the manifests' patient column)"
        )
    owner = [str(patients[n]) for n in names]
    if labels is not None and len(labels) != len(names):
        raise InvalidParameterError(f"{len(labels)} {what} labels for {len(names)} {what} slides")
    ids, pooled = pool_patients(x.detach().cpu().numpy(), owner)
    if labels is None:
        return ids, torch.from_numpy(pooled), None
    seen: dict[str, set[str]] = {}
    for p, lab in zip(owner, labels, strict=True):
        seen.setdefault(p, set()).add(str(lab))
    mixed = sorted(p for p, labs in seen.items() if len(labs) > 1)
    if mixed:
        raise InvalidParameterError(
            f"patient(s) {short_list(mixed)} have {what} slides with different labels; a patient-level "
            f"classification needs one label per patient: correct the labels, or classify slides "
            f"(without --patient-level / patients=)"
        )
    return ids, torch.from_numpy(pooled), [next(iter(seen[p])) for p in ids]
