"""CLIP-family pathology encoders: PLIP (transformers ``CLIPModel``) and QuiltNet (open_clip ``CLIP``).

Both publish the whole vision-language model in one file. The encoders keep the image tower and its
projection into the joint space (512-d), with the published key names; the text parts are split off
by :func:`split_hf_clip_state_dict` / :func:`split_open_clip_state_dict` (the zero-shot code loads the
text towers from the same files).

Embeddings are the **projected** image features (``CLIPModel.get_image_features`` for PLIP,
``CLIP.encode_image(normalize=False)`` for QuiltNet), **not** L2-normalised; zero-shot scoring
normalises them before the cosine similarity.

Both models were trained on images of varying magnification (PLIP: OpenPath, pathology images shared
on Twitter; QuiltNet: Quilt-1M, frames of educational YouTube videos plus other sources), so no native
mpp exists; the presets tile 224 px at 0.5 µm/px (20x), the common setting of the CONCH/MI-Zero
benchmarks. Preprocessing is CLIP's: bicubic resize to 224 + centre crop, OpenAI CLIP mean/std.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._base import Encoder, EncoderConfig
from ._registry import register_encoder

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "HFClipImageEncoder",
    "OpenClipImageEncoder",
    "split_hf_clip_state_dict",
    "split_open_clip_state_dict",
    "PLIP",
    "QUILTNET",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_HF_IMAGE_PREFIXES = ("vision_model.", "visual_projection.")


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def split_hf_clip_state_dict(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a transformers ``CLIPModel`` state dict into ``(image, text)`` parts.

    ``image``: ``vision_model.*`` and ``visual_projection.*``; ``text``: everything else
    (``text_model.*``, ``text_projection.*``, ``logit_scale``). The ``*.position_ids`` buffers that
    transformers < 4.31 saved are dropped from both (they are constants, rebuilt by the model).
    """
    image: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    for key, value in _strip_prefix(state, "module.").items():
        if key.endswith(".position_ids"):
            continue
        (image if key.startswith(_HF_IMAGE_PREFIXES) else text)[key] = value
    return image, text


def split_open_clip_state_dict(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split an open_clip ``CLIP`` state dict into ``(image, text)`` parts.

    ``image``: ``visual.*``; ``text``: everything else (``token_embedding``, ``positional_embedding``,
    ``transformer.*``, ``ln_final``, ``text_projection``, ``logit_scale``, or ``text.*`` for custom
    text towers).
    """
    image: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    for key, value in _strip_prefix(state, "module.").items():
        (image if key.startswith("visual.") else text)[key] = value
    return image, text


class HFClipImageEncoder(Encoder):
    """The image half of a transformers ``CLIPModel``: vision transformer + ``visual_projection``.

    ``uint8 (B, H, W, 3)`` -> ``(B, projection_dim)`` projected, un-normalised image features
    (``CLIPModel.get_image_features``). ``config.kwargs`` are ``CLIPVisionConfig`` keyword arguments
    (including ``projection_dim``). :meth:`checkpoint_module` has the published keys
    ``vision_model.*`` + ``visual_projection.weight``.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        self.clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**config.kwargs))

    def checkpoint_module(self) -> nn.Module:
        return self.clip

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keep the image parts of a full ``CLIPModel`` checkpoint (text parts and position_ids dropped)."""
        return split_hf_clip_state_dict(state)[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, 224, 224)`` -> ``(B, 512)`` projected image embedding."""
        return self.clip(pixel_values=x).image_embeds


class OpenClipImageEncoder(Encoder):
    """The image tower of an open_clip ``CLIP`` (``visual.*``, its ``proj`` included).

    ``uint8 (B, H, W, 3)`` -> ``(B, embed_dim)`` projected, un-normalised image features
    (``CLIP.encode_image``). ``config.kwargs``: ``embed_dim`` (joint space), ``vision_cfg``
    (``open_clip.model.CLIPVisionCfg`` fields) and ``quick_gelu``, as in an ``open_clip_config.json``.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        from open_clip.model import CLIPVisionCfg, _build_vision_tower

        kw: dict[str, Any] = dict(config.kwargs)
        self.visual = _build_vision_tower(
            kw["embed_dim"], CLIPVisionCfg(**kw["vision_cfg"]), quick_gelu=kw.get("quick_gelu", False)
        )

    def checkpoint_module(self) -> nn.Module:
        return self  # only ``visual.*`` is persistent (mean/std buffers are not saved)

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keep ``visual.*`` of a full open_clip checkpoint."""
        return split_open_clip_state_dict(state)[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, 224, 224)`` -> ``(B, 512)`` projected image embedding."""
        return self.visual(x)


def build_hf_clip_image(config: EncoderConfig) -> HFClipImageEncoder:
    """Random-init transformers CLIP image tower + projection (no download)."""
    return HFClipImageEncoder(config)


def build_open_clip_image(config: EncoderConfig) -> OpenClipImageEncoder:
    """Random-init open_clip image tower (no download)."""
    return OpenClipImageEncoder(config)


PLIP = EncoderConfig(
    name="plip",
    architecture="transformers:CLIPVisionModelWithProjection (CLIP ViT-B/32 image tower of CLIPModel)",
    embed_dim=512,
    input_size=224,
    resize_size=224,
    kwargs={
        "hidden_size": 768,
        "intermediate_size": 3072,
        "projection_dim": 512,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_channels": 3,
        "image_size": 224,
        "patch_size": 32,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
    },
    hub_id="vinid/plip",
    weights_file="pytorch_model.bin",
    mean=CLIP_MEAN,
    std=CLIP_STD,
    interpolation="bicubic",
    tile_size=224,
    mpp=0.5,
    precision="fp32",
    pooling="pooler",
    license="research use only (no licence file; model card: CLIP terms, deployed use out of scope)",
    license_url="https://huggingface.co/vinid/plip",
    gated=False,
    description=(
        "PLIP (Huang et al., Nat Med 2023): OpenAI CLIP ViT-B/32 fine-tuned on OpenPath (208k pathology "
        "image-text pairs from medical Twitter, mixed magnifications); 512-d projected image embedding "
        "(get_image_features, not L2-normalised). No native mpp: 224 px at 0.5 µm/px chosen; CLIP "
        "preprocessing (bicubic 224 + centre crop, OpenAI mean/std)."
    ),
)

QUILTNET = EncoderConfig(
    name="quiltnet",
    architecture="open_clip:ViT-B-32 image tower",
    embed_dim=512,
    input_size=224,
    resize_size=224,
    kwargs={
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
        "quick_gelu": False,
    },
    hub_id="wisdomik/QuiltNet-B-32",
    weights_file="open_clip_pytorch_model.bin",
    mean=CLIP_MEAN,
    std=CLIP_STD,
    interpolation="bicubic",
    tile_size=224,
    mpp=0.5,
    precision="fp32",
    pooling="pooler",
    license="MIT",
    license_url="https://huggingface.co/wisdomik/QuiltNet-B-32",
    gated=False,
    description=(
        "QuiltNet-B-32 (Ikezogwo et al., NeurIPS 2023): open_clip ViT-B/32 trained on Quilt-1M "
        "(histopathology frames from YouTube plus other sources, mixed magnifications); 512-d projected "
        "image embedding (encode_image, not L2-normalised). Architecture from the published "
        "open_clip_config.json (GELU). No native mpp: 224 px at 0.5 µm/px chosen; CLIP preprocessing."
    ),
)

register_encoder(PLIP, build_hf_clip_image)
register_encoder(QUILTNET, build_open_clip_image)
