"""ViTs published in another layout than timm's, built with timm: Hugging Face ``transformers`` ``ViTModel``,
``Dinov2Model`` and ``Dinov2WithRegistersModel`` files (Phikon, Midnight-12k, Hibou-B/L) and DINOv2
``torch.hub`` files (OpenMidnight).

One architecture family for every ViT keeps one pooling code path (:class:`~.timm_models.TimmEncoder`);
:meth:`ConvertedTimmEncoder.convert_state_dict` maps the published keys onto timm's (transformers 4.x names,
which are those of the published files and of transformers 5's ``save_pretrained``; DINOv2 ``torch.hub``
names after the slash):

- ``embeddings.cls_token`` / ``cls_token`` -> ``cls_token``; ``embeddings.register_tokens`` /
  ``register_tokens`` -> ``reg_token``; ``embeddings.position_embeddings`` / ``pos_embed`` -> ``pos_embed``
  (see below); ``embeddings.patch_embeddings.projection`` -> ``patch_embed.proj``;
- in layer ``i``: ``attention.attention.{query,key,value}`` -> ``blocks.i.attn.qkv`` (concatenated);
  ``attention.output.dense`` -> ``attn.proj``; ``norm1`` / ``layernorm_before`` -> ``norm1``; ``norm2`` /
  ``layernorm_after`` -> ``norm2``; ``layer_scale{1,2}.lambda1`` -> ``ls{1,2}.gamma``; ``intermediate.dense``
  / ``mlp.fc1`` / ``mlp.weights_in`` / ``mlp.w12`` -> ``mlp.fc1`` (SwiGLU: the packed ``[gate, value]``
  projection as it is, timm's ``SwiGLUPacked``); ``output.dense`` / ``mlp.fc2`` / ``mlp.weights_out`` /
  ``mlp.w3`` -> ``mlp.fc2``;
- ``layernorm`` / ``norm`` -> ``norm``; ``embeddings.mask_token`` / ``mask_token`` (masked-image training
  only) and a ``pooler`` are dropped.

Position embeddings: a timm model with registers (``no_embed_class``) adds positions to the patch tokens
only, so the class position is folded into ``cls_token`` (what transformers and DINOv2 add to the class token
at every forward pass: the same numbers). A published grid other than the model's (a transformers config
built for 518 px like facebook/dinov2-giant's, run at 224) is resampled once when loading, exactly as
transformers' ``Dinov2Embeddings.interpolate_pos_encoding`` does at every forward pass (bicubic,
``align_corners=False``, no antialiasing, in float32), so the output equals ``Dinov2Model``'s at the config's
input size. DINOv2's own hub code interpolates differently (a 0.1 offset, antialiasing); OpenMidnight's file
is saved at 224 px (16 x 16 positions), so nothing is resampled for it. A file already in timm's layout (e.g. saved from :meth:`checkpoint_module`) loads unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._base import EncoderConfig
from ._weights import WeightsError
from .timm_models import TimmEncoder

__all__ = ["ConvertedTimmEncoder", "LayerNormEps12", "build_converted", "transformers_to_timm"]


class LayerNormEps12(nn.LayerNorm):
    """``nn.LayerNorm`` with ``eps=1e-12``, the ``layer_norm_eps`` of transformers' ``ViTConfig`` (Phikon)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-12, **kwargs: object) -> None:
        super().__init__(normalized_shape, eps=eps, **kwargs)  # type: ignore[arg-type]


#: per-layer transformers 4.x names -> timm names (ViTModel and Dinov2 / Dinov2WithRegisters)
_LAYER_RENAMES = (
    ("attention.output.dense.", "attn.proj."),
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("layer_scale1.lambda1", "ls1.gamma"),
    ("layer_scale2.lambda1", "ls2.gamma"),
    ("mlp.weights_in.", "mlp.fc1."),
    ("mlp.weights_out.", "mlp.fc2."),
    ("norm1.", "norm1."),
    ("norm2.", "norm2."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
)
_HUB_RENAMES = ((".mlp.w12.", ".mlp.fc1."), (".mlp.w3.", ".mlp.fc2."))
_EMBEDDINGS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_QKV = ("query", "key", "value")
_WHAT_TO_DO = (
    "pass the model's published file (model.safetensors / pytorch_model.bin of its hub repository), or a state "
    "dict saved from the encoder's checkpoint_module()"
)


def _strip_model_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ``vit.`` / ``dinov2.`` / ``model.`` prefix shared by every key (task-head checkpoints)."""
    for prefix in ("vit.", "dinov2.", "model.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def transformers_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of a transformers ``ViTModel`` / ``Dinov2Model`` / ``Dinov2WithRegistersModel`` state dict
    (4.x names, the published files) -> timm ``VisionTransformer`` keys; q, k, v are concatenated into ``qkv``.

    Position embeddings are renamed, not adapted (see :meth:`ConvertedTimmEncoder.convert_state_dict`). A key
    that is neither an embedding, a final norm nor a layer parameter raises :class:`WeightsError` (an unknown
    layout must not load half-converted); ``embeddings.mask_token`` and a pooler are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in _EMBEDDINGS:
            out[_EMBEDDINGS[key]] = value
        elif key == "embeddings.mask_token" or key.startswith("pooler."):
            continue
        elif key.startswith("encoder.layer."):
            number, _, rest = key[len("encoder.layer.") :].partition(".")
            layers.setdefault(int(number), {})[rest] = value
        else:
            raise WeightsError(f"{key!r} is not a transformers ViT/DINOv2 parameter: {_WHAT_TO_DO}")
    for index, params in layers.items():
        block = f"blocks.{index}."
        for kind in ("weight", "bias"):
            parts = [params.pop(f"attention.attention.{n}.{kind}", None) for n in _QKV]
            if all(p is not None for p in parts):
                out[f"{block}attn.qkv.{kind}"] = torch.cat(parts, dim=0)  # type: ignore[arg-type]
        for rest, value in params.items():
            new = next((rest.replace(a, b, 1) for a, b in _LAYER_RENAMES if rest.startswith(a)), None)
            if new is None:
                raise WeightsError(
                    f"'encoder.layer.{index}.{rest}' is not a transformers ViT/DINOv2 layer parameter: {_WHAT_TO_DO}"
                )
            out[block + new] = value
    return out


def _hub_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv2 ``torch.hub`` keys -> timm keys (``register_tokens``, fused SwiGLU ``w12`` / ``w3``; no mask)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "mask_token":
            continue
        if key == "register_tokens":
            key = "reg_token"
        for old, new in _HUB_RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


def resample_pos_embed(pos: torch.Tensor, grid: tuple[int, int], n_prefix: int) -> torch.Tensor:
    """``(1, n_prefix + g*g, D)`` position embeddings resampled to ``grid`` as transformers' Dinov2 does
    (bicubic, ``align_corners=False``, no antialiasing, float32); the prefix positions are kept."""
    prefix, patches = pos[:, :n_prefix], pos[:, n_prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"position embeddings of {patches.shape[1]} patches are not a square grid")
    if (side, side) == tuple(grid):
        return pos
    dim = patches.shape[-1]
    img = patches.reshape(1, side, side, dim).permute(0, 3, 1, 2).to(torch.float32)
    img = nn.functional.interpolate(img, size=grid, mode="bicubic", align_corners=False)
    patches = img.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([prefix, patches], dim=1)


class ConvertedTimmEncoder(TimmEncoder):
    """A :class:`~.timm_models.TimmEncoder` whose published file is in transformers' or DINOv2 hub's layout
    (see the module docstring); pooling, preprocessing and the timm build are those of the config."""

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = _strip_model_prefix(dict(state))
        if "embeddings.cls_token" in state:
            state = transformers_to_timm(state)
        elif "mask_token" in state or "register_tokens" in state or any(".mlp.w12." in k for k in state):
            state = _hub_to_timm(state)
        else:
            return super().convert_state_dict(state)  # already timm's layout
        # both published layouts give the class token a position of its own
        pos = state.get("pos_embed")
        if pos is not None:
            n_prefix = 1
            if getattr(self.model, "no_embed_class", False):
                state["cls_token"] = state["cls_token"] + pos[:, :1]
                pos, n_prefix = pos[:, 1:], 0
            rows, cols = getattr(self.model.patch_embed, "grid_size")  # noqa: B009 (an nn.Module attribute)
            state["pos_embed"] = resample_pos_embed(pos, (int(rows), int(cols)), n_prefix)
        return super().convert_state_dict(state)


def build_converted(config: EncoderConfig) -> ConvertedTimmEncoder:
    """The registry's builder of the ``_zoo_vit`` encoders published in transformers / DINOv2 hub layout."""
    return ConvertedTimmEncoder(config)
