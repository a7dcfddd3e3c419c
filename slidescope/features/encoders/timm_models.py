"""Patch encoders built with timm: published pathology ViTs, CLAM's ResNet-50 baseline, ``timm:<name>``.

Every preset builds ``timm.create_model(arch, pretrained=False, **config.kwargs)`` with the exact kwargs the
published checkpoint was trained with (TRIDENT's loaders and the model cards), so the checkpoint's own keys
(``blocks.0.attn.qkv.weight``...) load into :meth:`TimmEncoder.checkpoint_module` unchanged. Pooling is
explicit:
:meth:`TimmEncoder.embed` takes the final-norm token sequence from ``forward_features`` and indexes it itself.
The presets' configs are written in ``_catalog`` (data, no torch; ``PRESETS`` here is that tuple); the
registry builds them with :func:`build_preset`.

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
from torch import nn

from ...errors import InvalidParameterError
from ._base import Encoder, EncoderConfig
from ._catalog import TIMM_PRESETS as PRESETS
from ._config import resolve_kwargs

__all__ = ["PRESETS", "TimmEncoder", "build_preset", "timm_entry", "tiny_config"]


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
        self.model = timm.create_model(arch, pretrained=False, **resolve_kwargs(config.kwargs))
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


#: published keys each preset's architecture does not have
_DROP_PREFIXES: dict[str, tuple[str, ...]] = {"resnet50-trunc": ("layer4.", "fc.")}


def _builder(name: str) -> Callable[[EncoderConfig], Encoder]:
    drop = _DROP_PREFIXES.get(name, ())
    return partial(TimmEncoder, drop_prefixes=drop) if drop else TimmEncoder


def build_preset(config: EncoderConfig) -> TimmEncoder:
    """The registry's builder of the presets (``_catalog.TIMM_PRESETS``, where their configs are written)."""
    return TimmEncoder(config, drop_prefixes=_DROP_PREFIXES.get(config.name, ()))


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
