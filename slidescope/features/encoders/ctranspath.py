"""CTransPath and CHIEF-CTransPath: a Swin-T (timm ``swin_tiny_patch4_window7_224``) whose patch embedding is a
small convolutional stem (:class:`ConvStem`), classifier removed; the 768-d output is the mean of the last
stage's tokens after the final LayerNorm.

Both published files (``ctranspath.pth`` of Wang et al., mirrored at ``jamesdolezal/CTransPath``, and CHIEF's
``CHIEF_CTransPath.pth``, mirrored in the ``MahmoodLab/hest-bench`` dataset) are ``{"model": state_dict}``
pickles of the model built by timm 0.5.4 (the ``timm_ctp`` fork). Their layout differs from the current timm's
in two ways, which :func:`convert_ctranspath_state_dict` undoes:

* the patch-merging layer sits at the **end** of a stage (``layers.0.downsample.*``); current timm puts it at
  the **start** of the next one (``layers.1.downsample.*``). The token order of the merge is the same.
* ``*.attn.relative_position_index`` and ``*.attn_mask`` were persistent buffers there; they are constants
  of the window geometry (TRIDENT drops the masks, loads the indices), rebuilt here, and dropped on loading.

A file already in the current timm layout (a re-export) loads unchanged. The layout TRIDENT's strict-but-masks
load accepts is recorded in ``tests/golden/trident_layouts_more.json`` (by running TRIDENT's own code).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ._base import Encoder, EncoderConfig
from ._config import resolve_kwargs

__all__ = ["ConvStem", "CTransPathEncoder", "build_ctranspath", "convert_ctranspath_state_dict"]

#: buffers of the timm 0.5.4 Swin that are functions of the window geometry only
_CONSTANT_BUFFERS = ("relative_position_index", "attn_mask")
_OLD_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


class ConvStem(nn.Module):
    """CTransPath's patch embedding: two stride-2 3x3 conv + BatchNorm + ReLU, then a 1x1 conv to
    ``embed_dim`` and the Swin's patch LayerNorm; ``(B, 3, H, W) -> (B, H/4, W/4, embed_dim)`` (NHWC, what
    timm's Swin stages take). Keys ``proj.{0,1,3,4,6}.*`` and ``norm.*`` as in the published files.

    Takes the keyword arguments timm's ``SwinTransformer`` passes to its ``embed_layer``.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: Any = None,
        strict_img_size: bool = True,
        output_fmt: str = "NHWC",
        **factory: Any,
    ) -> None:
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        if patch != (4, 4) or embed_dim % 8:
            raise ValueError(f"ConvStem needs patch_size 4 and embed_dim % 8 == 0, got {patch}, {embed_dim}")
        if output_fmt != "NHWC":
            raise ValueError(f"ConvStem returns NHWC tokens, got output_fmt={output_fmt!r}")
        self.img_size, self.patch_size = size, patch
        self.grid_size = (size[0] // 4, size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        dims = (in_chans, embed_dim // 8, embed_dim // 4)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False, **factory),
                nn.BatchNorm2d(c_out, **factory),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(dims[-1], embed_dim, kernel_size=1, **factory))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim, **factory) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strict_img_size and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input of {tuple(x.shape[-2:])} px, the model was built for {self.img_size}")
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def convert_ctranspath_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A published CTransPath / CHIEF-CTransPath state dict -> current timm Swin keys.

    Drops ``module.`` prefixes and the constant buffers (``relative_position_index``, ``attn_mask``), and moves
    ``layers.N.downsample.*`` to ``layers.N+1.downsample.*`` when the file has the timm 0.5.4 layout (stage 0
    holds a downsample). Anything else (a classifier ``head.*``) is kept, so a strict load refuses it.
    """
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    old = any(k.startswith("layers.0.downsample.") for k in state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.rsplit(".", 1)[-1] in _CONSTANT_BUFFERS:
            continue
        if old:
            key = _OLD_DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
        out[key] = value
    return out


class CTransPathEncoder(Encoder):
    """Swin-T with :class:`ConvStem`, no classifier: ``uint8 (B, H, W, 3) -> (B, 768)`` (mean of the last
    stage's tokens after the final LayerNorm, timm's ``forward_head`` with ``num_classes=0``).

    ``config.architecture`` starts with ``"timm:<swin name>"``; ``config.kwargs`` go to ``timm.create_model`` (the
    published models use the defaults of ``swin_tiny_patch4_window7_224``).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        import timm

        arch = config.architecture.split(" ", 1)[0].removeprefix("timm:")
        kwargs = {"num_classes": 0, **resolve_kwargs(config.kwargs)}
        self.model = timm.create_model(arch, pretrained=False, embed_layer=ConvStem, **kwargs)

    def checkpoint_module(self) -> nn.Module:
        return self.model

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return convert_ctranspath_state_dict(state)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, 224, 224)`` -> ``(B, 768)``."""
        return self.model(x)


def build_ctranspath(config: EncoderConfig) -> CTransPathEncoder:
    """Random-init CTransPath architecture (no download)."""
    return CTransPathEncoder(config)
