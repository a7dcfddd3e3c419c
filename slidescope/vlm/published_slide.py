"""PRISM and TITAN as slide encoders: :class:`PublishedSlideEncoder` adapts a loaded
:class:`~slidescope.vlm.published.PublishedSlideTextModel` to :class:`slidescope.features.slide_encoders.SlideEncoder`.

The slide embedding is the publisher's raw one (PRISM ``slide_representations(...)["image_embedding"]``,
1280-d; TITAN ``encode_slide_from_patch_features``, 768-d): the vector TRIDENT exports, before the
projection into the joint slide-text space that zero-shot uses. The slide-encoder registry names
:func:`build_published_slide_encoder` as the builder of ``prism`` and ``titan``.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..errors import InvalidParameterError
from ..features.slide_encoders import SlideEncoder, SlideEncoderConfig
from .published import PublishedSlideTextModel, get_published_config, load_published_model

__all__ = ["PublishedSlideEncoder", "build_published_slide_encoder"]


class PublishedSlideEncoder(SlideEncoder):
    """A published slide-text model's raw slide embedding behind the slide-encoder interface.

    Parameters
    ----------
    config : SlideEncoderConfig
        The registry entry (``prism`` or ``titan``).
    model : PublishedSlideTextModel
        The loaded model (:func:`~slidescope.vlm.published.load_published_model`).
    """

    def __init__(self, config: SlideEncoderConfig, model: PublishedSlideTextModel) -> None:
        super().__init__(config)
        self.published = model

    def output_dim(self, patch_dim: int) -> int:
        """The loaded model's slide width (``config.embed_dim`` at the published size)."""
        return self.published.slide_dim

    def forward(
        self, features: Tensor, coords: Tensor | None = None, patch_size: int | None = None
    ) -> Tensor:
        return self.published.embed_tiles(features, coords=coords, tile_extent=patch_size)


def build_published_slide_encoder(
    config: SlideEncoderConfig,
    *,
    weights: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
) -> PublishedSlideEncoder:
    """Load the published model ``config.name`` (see :func:`~slidescope.vlm.published.load_published_model`)."""
    pub = get_published_config(config.name)
    if (pub.tile_dim, pub.tile_size, pub.mpp) != (config.patch_dim, config.tile_size, config.mpp):
        raise InvalidParameterError(
            f"slide encoder {config.name!r} ({config.patch_dim}-d, {config.geometry()}) disagrees with the published "
            f"model's config ({pub.tile_dim}-d, {pub.tile_size} px at {pub.mpp} µm/px)"
        )
    model = load_published_model(config.name, weights, trust_remote_code=trust_remote_code, device=device)
    return PublishedSlideEncoder(config, model).eval()
