"""Slide encoders: one slide's tile embeddings (with their positions) -> one slide embedding.

One interface (:class:`SlideEncoder`: ``embed(features (N, D), coords (N, 2), patch_size) -> (E,)``) and one
registry (:func:`register_slide_encoder`, :func:`list_slide_encoders`, :func:`get_slide_encoder_config`,
:func:`create_slide_encoder`; built-ins registered on first use, then the ``slidescope.slide_encoders`` entry
points). Each :class:`SlideEncoderConfig` names the patch encoder and tile geometry the model was trained on,
and :func:`embed_slides` refuses a store made another way; :func:`embed_patients` gives one embedding per patient. Built in: ``mean`` (any patch encoder), FEATHER
(``feather-conch-v1.5``, ``feather-uni2``, ``feather-uni``), ``madeleine``, ``chief`` (modules in ``_models``),
``moozy`` (slide and patient level, ``_moozy``), ``gigapath-slide`` (Prov-GigaPath's LongNet, ``_gigapath``) and the published slide-text models ``prism`` and ``titan`` (loaded by :mod:`slidescope.vlm.published`).
Listing and reading configs load no torch.

Examples
--------
>>> from slidescope.features.slide_encoders import get_slide_encoder_config, list_slide_encoders
>>> "feather-uni2" in list_slide_encoders()
True
>>> cfg = get_slide_encoder_config("feather-uni2")
>>> cfg.patch_encoders, cfg.patch_dim, cfg.geometry(), cfg.embed_dim
(('uni2-h',), 1536, '256 px at 0.5 µm/px', 512)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

_EXPORTS = {
    "SlideEncoder": "._base",
    "SlideEncoderConfig": "._config",
    "MPP_TOLERANCE": "._config",
    "register_slide_encoder": "._registry",
    "list_slide_encoders": "._registry",
    "get_slide_encoder_config": "._registry",
    "create_slide_encoder": "._registry",
    "SlideEmbeddings": "._api",
    "embed_slides": "._api",
    "embed_patients": "._api",
    "pool_patients": "._api",
    "stored_name": "._api",
    "describe": "._api",
    "GatedAttention": "._models",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from ._api import (
        SlideEmbeddings as SlideEmbeddings,
        describe as describe,
        embed_patients as embed_patients,
        embed_slides as embed_slides,
        pool_patients as pool_patients,
        stored_name as stored_name,
    )
    from ._base import SlideEncoder as SlideEncoder
    from ._config import MPP_TOLERANCE as MPP_TOLERANCE, SlideEncoderConfig as SlideEncoderConfig
    from ._models import GatedAttention as GatedAttention
    from ._registry import (
        create_slide_encoder as create_slide_encoder,
        get_slide_encoder_config as get_slide_encoder_config,
        list_slide_encoders as list_slide_encoders,
        register_slide_encoder as register_slide_encoder,
    )

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
