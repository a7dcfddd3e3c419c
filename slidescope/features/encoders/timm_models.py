"""Patch encoders built with timm: published pathology ViTs, CLAM's ResNet-50 baseline, ``timm:<name>``.

Every preset builds ``timm.create_model(arch, pretrained=False, **config.kwargs)`` with the exact kwargs the
published checkpoint was trained with (TRIDENT's loaders and the model cards), so the checkpoint's own keys
(``blocks.0.attn.qkv.weight``...) load into :meth:`TimmEncoder.checkpoint_module` unchanged. Pooling is
explicit:
:meth:`TimmEncoder.embed` takes the final-norm token sequence from ``forward_features`` and indexes it itself.

=================  ====================================  ==========  =================================
name               architecture                          embed_dim   pooling
=================  ====================================  ==========  =================================
uni                ViT-L/16 + LayerScale                 1024        CLS
uni2-h             ViT-H/14, SwiGLU, 8 registers         1536        CLS
virchow            ViT-H/14, SwiGLU                      2560        CLS ++ mean(patch tokens)
virchow2           ViT-H/14, SwiGLU, 4 registers         2560        CLS ++ mean(patch tokens)
h-optimus-0/1      ViT-g/14 DINOv2, 4 registers          1536        CLS
h0-mini            ViT-B/14 DINOv2, SwiGLU, 4 registers  768         CLS
gigapath           ViT-g/16 DINOv2 (tile encoder)        1536        CLS
lunit-dino-vits8   ViT-S/8 (DINO)                        384         CLS
kaiko-vitb16       ViT-B/16 (DINO)                       768         CLS
resnet50-trunc     ResNet-50 up to layer3 (ImageNet)     1024        mean over the feature map
=================  ====================================  ==========  =================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from typing import Any

import timm
import torch
from timm.layers import SwiGLUPacked
from torch import nn

from ...errors import InvalidParameterError
from ._base import Encoder, EncoderConfig
from ._registry import register_encoder

__all__ = ["PRESETS", "TimmEncoder", "timm_entry", "tiny_config"]

#: H-optimus-0 / H-optimus-1 / H0-mini normalisation (model cards; timm ``pretrained_cfg`` of the hub files)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
#: Lunit's DINO normalisation (lunit-io/benchmark-ssl-pathology README; the hub config.json of the timm port)
LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)
KAIKO_MEAN = (0.5, 0.5, 0.5)
KAIKO_STD = (0.5, 0.5, 0.5)

_NON_COMMERCIAL = "CC-BY-NC-ND-4.0"
_KAIKO_HUB = "1aurent/vit_base_patch16_224.kaiko_ai_towards_large_pathology_fms"


class TimmEncoder(Encoder):
    """A timm model with the pooling its authors recommend.

    Parameters
    ----------
    config : the encoder contract; ``config.architecture`` is ``"timm:<model name>"`` and
        ``config.kwargs`` the exact ``timm.create_model`` kwargs of the published checkpoint.
    drop_prefixes : key prefixes of the published file that the architecture does not have (a classifier head,
        the layers after a truncation); :meth:`convert_state_dict` removes them.

    Notes
    -----
    ``pooling`` (from the config):

    - ``"cls"``: ``forward_features(x)[:, 0]``, the class token after the final norm;
    - ``"cls+mean"``: ``concat(cls, mean(tokens[:, 1 + num_register_tokens:]))``, i.e. the register tokens are
      skipped (Virchow / Virchow2 / PRISM convention);
    - ``"mean"``: mean of the patch tokens (ViTs) or of the spatial feature map (CNNs, ``features_only``);
    - ``"pooler"``: the model's own head with ``num_classes=0`` (``model(x)``), used by ``timm:<name>``.
    """

    def __init__(self, config: EncoderConfig, *, drop_prefixes: Iterable[str] = ()) -> None:
        super().__init__(config)
        arch = config.architecture.removeprefix("timm:")
        self.model = timm.create_model(arch, pretrained=False, **config.kwargs)
        self.drop_prefixes = tuple(drop_prefixes)
        n_prefix = getattr(self.model, "num_prefix_tokens", None)
        if config.pooling in ("cls", "cls+mean") and n_prefix != 1 + config.num_register_tokens:
            raise InvalidParameterError(
                f"{config.name!r}: pooling {config.pooling!r} expects 1 class token + "
                f"{config.num_register_tokens} register tokens, but the model has {n_prefix} prefix tokens; "
                f"fix num_register_tokens or kwargs."
            )

    def checkpoint_module(self) -> nn.Module:
        return self.model

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop the published keys this architecture does not have (``drop_prefixes``).

        Old torchvision checkpoints predate BatchNorm's ``num_batches_tracked`` buffer; when a file lacks
        it, it is filled with 0 (it is unused in eval mode), so such files still load strictly.
        """
        out = (
            {k: v for k, v in state.items() if not k.startswith(self.drop_prefixes)}
            if self.drop_prefixes
            else dict(state)
        )
        for key, value in self.model.state_dict().items():
            if (
                key.endswith(".num_batches_tracked")
                and key not in out
                and key.rsplit(".", 1)[0] + ".weight" in out
            ):
                out[key] = torch.zeros_like(value, device="cpu")
        return out

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The final-norm token sequence ``(B, 1 + R + N, D)`` of a ViT (class, registers, patches)."""
        return self.model.forward_features(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        pooling = self.config.pooling
        if pooling == "pooler":
            return self.model(x)
        if pooling == "mean" and not hasattr(self.model, "num_prefix_tokens"):
            fmap = (
                self.model(x)
                if not hasattr(self.model, "forward_features")
                else self.model.forward_features(x)
            )
            if isinstance(fmap, list | tuple):
                fmap = fmap[-1]
            return fmap.mean(dim=(-2, -1))
        tokens = self.tokens(x)
        n_prefix = 1 + self.config.num_register_tokens
        if pooling == "cls":
            return tokens[:, 0]
        if pooling == "cls+mean":
            return torch.cat([tokens[:, 0], tokens[:, n_prefix:].mean(dim=1)], dim=-1)
        if pooling == "mean":
            return tokens[:, n_prefix:].mean(dim=1)
        raise InvalidParameterError(
            f"{self.config.name!r}: pooling {pooling!r} is not supported by timm encoders."
        )


# --------------------------------------------------------------------------------------------------
# The presets. Kwargs are the published ones (docs/REFERENCE-models.md §4: TRIDENT's loaders, the model cards).
# --------------------------------------------------------------------------------------------------

_SWIGLU = {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}

_H_OPTIMUS_0 = EncoderConfig(
    name="h-optimus-0",
    architecture="timm:vit_giant_patch14_reg4_dinov2",
    kwargs={
        "img_size": 224,
        "init_values": 1e-5,
        "num_classes": 0,
        "global_pool": "token",
        "dynamic_img_size": True,
    },
    embed_dim=1536,
    hub_id="bioptimus/H-optimus-0",
    weights_file="pytorch_model.bin",
    input_size=224,
    mean=HOPTIMUS_MEAN,
    std=HOPTIMUS_STD,
    tile_size=224,
    mpp=0.5,
    precision="fp16",
    pooling="cls",
    num_register_tokens=4,
    license="Apache-2.0",
    license_url="https://huggingface.co/bioptimus/H-optimus-0",
    gated=True,
    description="H-optimus-0 (Bioptimus): ViT-g/14 DINOv2 with 4 registers (1.1B parameters), CLS token.",
)

PRESETS: tuple[EncoderConfig, ...] = (
    EncoderConfig(
        name="uni",
        architecture="timm:vit_large_patch16_224",
        kwargs={
            "img_size": 224,
            "patch_size": 16,
            "init_values": 1e-5,
            "num_classes": 0,
            "dynamic_img_size": True,
        },
        embed_dim=1024,
        hub_id="MahmoodLab/uni",
        weights_file="pytorch_model.bin",
        input_size=224,
        resize_size=224,
        tile_size=256,
        mpp=0.5,
        precision="fp16",
        pooling="cls",
        license=_NON_COMMERCIAL,
        license_url="https://huggingface.co/MahmoodLab/UNI",
        gated=True,
        description="UNI (Chen et al., Nat Med 2024): ViT-L/16 DINOv2-pretrained on 100k WSIs; 256 px @ 20x "
        "tiles "
        "resized to 224 (Resize(224) + CenterCrop(224)), CLS token.",
    ),
    EncoderConfig(
        name="uni2-h",
        architecture="timm:vit_giant_patch14_224",
        kwargs={
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "num_classes": 0,
            "no_embed_class": True,
            **_SWIGLU,
            "reg_tokens": 8,
            "dynamic_img_size": True,
        },
        embed_dim=1536,
        hub_id="MahmoodLab/UNI2-h",
        weights_file="pytorch_model.bin",
        input_size=224,
        resize_size=224,
        tile_size=256,
        mpp=0.5,
        precision="bf16",
        pooling="cls",
        num_register_tokens=8,
        license=_NON_COMMERCIAL,
        license_url="https://huggingface.co/MahmoodLab/UNI2-h",
        gated=True,
        description="UNI2-h: ViT-H/14 with SwiGLU and 8 registers (681M parameters), CLS token.",
    ),
    EncoderConfig(
        name="virchow",
        architecture="timm:vit_huge_patch14_224",
        kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "num_classes": 0,
            "mlp_ratio": 5.3375,
            "global_pool": "",
            "dynamic_img_size": True,
            **_SWIGLU,
        },
        embed_dim=2560,
        hub_id="paige-ai/Virchow",
        weights_file="pytorch_model.bin",
        input_size=224,
        interpolation="bicubic",
        tile_size=224,
        mpp=0.5,
        precision="fp16",
        pooling="cls+mean",
        license="Apache-2.0",
        license_url="https://huggingface.co/paige-ai/Virchow",
        gated=True,
        description="Virchow (Paige): ViT-H/14 with SwiGLU; concat(CLS, mean of patch tokens) = 2560, the "
        "tile "
        "embedding PRISM consumes.",
    ),
    EncoderConfig(
        name="virchow2",
        architecture="timm:vit_huge_patch14_224",
        kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "num_classes": 0,
            "reg_tokens": 4,
            "mlp_ratio": 5.3375,
            "global_pool": "",
            "dynamic_img_size": True,
            **_SWIGLU,
        },
        embed_dim=2560,
        hub_id="paige-ai/Virchow2",
        weights_file="pytorch_model.bin",
        input_size=224,
        interpolation="bicubic",
        tile_size=224,
        mpp=0.5,
        precision="fp16",
        pooling="cls+mean",
        num_register_tokens=4,
        license=_NON_COMMERCIAL,
        license_url="https://huggingface.co/paige-ai/Virchow2",
        gated=True,
        description="Virchow2 (Paige): ViT-H/14 with SwiGLU and 4 registers; concat(CLS, mean of the patch "
        "tokens "
        "after the 4 registers) = 2560.",
    ),
    _H_OPTIMUS_0,
    replace(
        _H_OPTIMUS_0,
        name="h-optimus-1",
        hub_id="bioptimus/H-optimus-1",
        license="other (H-optimus-1 access terms, see the model card)",
        license_url="https://huggingface.co/bioptimus/H-optimus-1",
        description="H-optimus-1 (Bioptimus): H-optimus-0's architecture, access on request; CLS token.",
    ),
    EncoderConfig(
        name="h0-mini",
        architecture="timm:vit_base_patch14_reg4_dinov2",
        kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True, **_SWIGLU},
        embed_dim=768,
        hub_id="bioptimus/H0-mini",
        weights_file="pytorch_model.bin",
        input_size=224,
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        tile_size=224,
        mpp=0.5,
        precision="fp16",
        pooling="cls",
        num_register_tokens=4,
        license="CC-BY-NC-ND-4.0 (see the model card)",
        license_url="https://huggingface.co/bioptimus/H0-mini",
        gated=True,
        description="H0-mini (Bioptimus): ViT-B/14 with 4 registers and SwiGLU, distilled from H-optimus-0. "
        "CLS token (768), TRIDENT's and eva's default; the card's example also shows concat(CLS, mean patch) "
        "= 1536.",
    ),
    EncoderConfig(
        name="gigapath",
        architecture="timm:vit_giant_patch14_dinov2",
        kwargs={
            "img_size": 224,
            "in_chans": 3,
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-5,
            "mlp_ratio": 5.33334,
            "num_classes": 0,
            "dynamic_img_size": True,
        },
        embed_dim=1536,
        hub_id="prov-gigapath/prov-gigapath",
        weights_file="pytorch_model.bin",
        input_size=224,
        resize_size=256,
        interpolation="bicubic",
        tile_size=256,
        mpp=0.5,
        precision="fp16",
        pooling="cls",
        license="Apache-2.0",
        license_url="https://huggingface.co/prov-gigapath/prov-gigapath",
        gated=True,
        description="Prov-GigaPath tile encoder: ViT-g DINOv2 at patch 16 (1.1B parameters); 256 px @ 20x -> "
        "Resize(256, bicubic) + CenterCrop(224); CLS token (input of the GigaPath slide encoder).",
    ),
    EncoderConfig(
        name="lunit-dino-vits8",
        architecture="timm:vit_small_patch8_224",
        kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
        embed_dim=384,
        hub_id="1aurent/vit_small_patch8_224.lunit_dino",
        weights_file="model.safetensors",
        input_size=224,
        mean=LUNIT_MEAN,
        std=LUNIT_STD,
        interpolation="bicubic",
        tile_size=224,
        mpp=0.5,
        precision="fp32",
        pooling="cls",
        license="lunit-non-commercial",
        license_url="https://huggingface.co/1aurent/vit_small_patch8_224.lunit_dino",
        gated=False,
        description="Lunit DINO ViT-S/8 (Kang et al., CVPR 2023), timm port of the official weights; CLS.",
    ),
    EncoderConfig(
        name="kaiko-vitb16",
        architecture="timm:vit_base_patch16_224",
        kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
        embed_dim=768,
        hub_id=_KAIKO_HUB,
        weights_file="model.safetensors",
        input_size=224,
        resize_size=224,
        mean=KAIKO_MEAN,
        std=KAIKO_STD,
        tile_size=224,
        mpp=0.5,
        precision="fp32",
        pooling="cls",
        license="kaiko-non-commercial",
        license_url=f"https://huggingface.co/{_KAIKO_HUB}",
        gated=False,
        description="kaiko.ai ViT-B/16 (Towards Large-Scale Training of Pathology FMs, 2024), timm port; CLS "
        "token as in kaiko's torch.hub model, eva and TRIDENT (CLS+mean is Midnight's recommendation, not "
        "this model's).",
    ),
    EncoderConfig(
        name="resnet50-trunc",
        architecture="timm:resnet50",
        kwargs={"features_only": True, "out_indices": (3,)},
        embed_dim=1024,
        hub_id="timm/resnet50.tv_in1k",
        weights_file="model.safetensors",
        input_size=224,
        resize_size=224,
        tile_size=256,
        mpp=0.5,
        precision="fp32",
        pooling="mean",
        license="BSD-3-Clause (torchvision weights)",
        license_url="https://huggingface.co/timm/resnet50.tv_in1k",
        gated=False,
        description="CLAM's baseline: ImageNet ResNet-50 (torchvision weights) truncated after layer3, "
        "global "
        "average pool -> 1024.",
    ),
)

#: published keys each preset's architecture does not have
_DROP_PREFIXES: dict[str, tuple[str, ...]] = {"resnet50-trunc": ("layer4.", "fc.")}


def _builder(name: str) -> Callable[[EncoderConfig], Encoder]:
    drop = _DROP_PREFIXES.get(name, ())
    return partial(TimmEncoder, drop_prefixes=drop) if drop else TimmEncoder


for _config in PRESETS:
    register_encoder(_config, _builder(_config.name))


# --------------------------------------------------------------------------------------------------
# Tiny variants (tests): the same timm constructor and distinctive parts (SwiGLU, registers, LayerScale,
# no_embed_class, patch size), a fraction of the width and depth.
# --------------------------------------------------------------------------------------------------

_TINY_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2}
_TINY_RESNET = {"layers": (1, 1, 1, 1)}


def tiny_config(name: str) -> tuple[EncoderConfig, Callable[[EncoderConfig], Encoder]]:
    """A small variant of preset ``name`` (named ``"tiny-<name>"``) and its builder, for round-trip tests."""
    config = next((c for c in PRESETS if c.name == name), None)
    if config is None:
        raise InvalidParameterError(
            f"no timm preset named {name!r}; presets: {', '.join(c.name for c in PRESETS)}"
        )
    builder = _builder(name)
    if config.architecture == "timm:resnet50":
        return replace(config, name=f"tiny-{name}", kwargs={**config.kwargs, **_TINY_RESNET}), builder
    width = _TINY_VIT["embed_dim"]
    embed_dim = 2 * width if config.pooling == "cls+mean" else width
    return replace(
        config, name=f"tiny-{name}", kwargs={**config.kwargs, **_TINY_VIT}, embed_dim=embed_dim
    ), builder


# --------------------------------------------------------------------------------------------------
# timm:<name> — any timm model, preprocessing from its pretrained_cfg.
# --------------------------------------------------------------------------------------------------


def _classifier_prefixes(pretrained_cfg: dict[str, Any]) -> tuple[str, ...]:
    classifier = pretrained_cfg.get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{n}." for n in names)


def timm_entry(name: str) -> tuple[EncoderConfig, Callable[[EncoderConfig], Encoder]]:
    """Config and builder for any timm model ``name`` (``"resnet50.a1_in1k"``...), without downloading.

    The model is built on the meta device to read its pretrained config and output width; preprocessing (input
    size, crop, mean, std, interpolation) comes from timm's ``pretrained_cfg``, the weights from its
    ``hf_hub_id``. The classifier head is dropped (``num_classes=0``); the pooled pre-logits are the
    embedding.
    """
    if not timm.is_model(name):
        raise InvalidParameterError(
            f"unknown timm model {name!r}: see timm.list_models() (e.g. 'timm:resnet50.a1_in1k'); for a hub "
            f"checkpoint, register an EncoderConfig instead."
        )
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    cfg = model.pretrained_cfg or {}
    in_size = cfg.get("input_size", (3, 224, 224))
    side = int(in_size[-1])
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    resize = math.floor(side / crop_pct)
    with torch.device("meta"):
        try:
            embed_dim = int(model(torch.empty(1, 3, side, side)).shape[-1])
        except (RuntimeError, NotImplementedError, TypeError):  # a few models cannot run on meta
            embed_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    interpolation = cfg.get("interpolation", "bilinear")
    hub_id = cfg.get("hf_hub_id")
    config = EncoderConfig(
        name=f"timm:{name}",
        architecture=f"timm:{name}",
        kwargs={"num_classes": 0},
        embed_dim=embed_dim,
        hub_id=hub_id,
        weights_file=cfg.get("hf_hub_filename") or "model.safetensors" if hub_id else None,
        input_size=side,
        resize_size=resize,
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation="bicubic" if interpolation == "bicubic" else "bilinear",
        tile_size=resize,
        mpp=0.5,
        pooling="pooler",
        num_register_tokens=0,
        license=str(cfg.get("license") or "unknown (see the timm model card)"),
        license_url=f"https://huggingface.co/{hub_id}" if hub_id else cfg.get("origin_url"),
        description=f"timm model {name} (pooled pre-logits, num_classes=0); mpp 0.5 is a default, not a "
        "property of the weights.",
    )
    return config, partial(TimmEncoder, drop_prefixes=_classifier_prefixes(cfg))
