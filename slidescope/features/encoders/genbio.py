"""GenBio-PathFM (GenBio AI, Kapse et al. 2026): a DINOv3-style ViT-g/16 that encodes each RGB channel as
its own grey image and concatenates the three class tokens (3 x 1536 = 4608).

Written from the architecture TRIDENT runs (mahmoodlab/TRIDENT @ a91fa84,
``trident/patch_encoder_models/model_zoo/genbio_pathfm``, itself taken from genbio-ai/genbio-pathfm), with the
published ``model.pth`` keys, so the file loads unchanged:

- ``patch_embed.proj``: a 16 x 16 convolution of **one** input channel; no absolute position embedding;
- ``cls_token`` and 4 ``storage_tokens`` (registers) before the patch tokens;
- ``rope_embed.periods``: rotary positions (base 100, coordinates 0.5-centred, normalised per axis to
  [-1, 1]) applied to q and k of the patch tokens only; the periods are a **bfloat16** buffer of the file and
  the rotation is computed in bfloat16 (q and k are cast to it and back), as in the reference, also when the
  rest runs in float32;
- blocks: pre-norm LayerNorm (eps 1e-6), attention with ``qkv`` without bias, LayerScale ``ls1/ls2.gamma``,
  SwiGLU ``w3(silu(w1 x) * w2 x)`` with the hidden width ``int(4 * 1536 * 2 / 3)`` rounded up to 64 = 4096;
- ``norm`` at the end; the embedding is ``concat(CLS(R), CLS(G), CLS(B))`` after it.

Training-time options of the reference (coordinate jitter / rescale, drop path) do nothing at inference and
are left out. ``tests/golden/make_genbio_pathfm.py`` runs the reference module on a tiny model of the same
structure; ``tests/features/test_zoo_vit.py`` reproduces its output through ``create_encoder``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ._base import Encoder, EncoderConfig

__all__ = ["GenBioPathFMEncoder", "GenBioViT", "build_genbio_pathfm"]


class _Rope(nn.Module):
    """Rotary sin / cos for an ``h x w`` patch grid (DINOv3's ``separate`` normalisation, periods from base)."""

    def __init__(self, embed_dim: int, num_heads: int, base: float = 100.0) -> None:
        super().__init__()
        head = embed_dim // num_heads
        if embed_dim % (4 * num_heads):
            raise ValueError(f"embed_dim {embed_dim} must be a multiple of 4 x num_heads ({num_heads})")
        quarter = head // 4
        periods = base ** (2 * torch.arange(quarter, dtype=torch.bfloat16) / (head // 2))
        self.periods: torch.Tensor
        self.register_buffer("periods", periods, persistent=True)

    def forward(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        kw: dict[str, Any] = {"device": self.periods.device, "dtype": self.periods.dtype}
        ys = torch.arange(0.5, h, **kw) / h
        xs = torch.arange(0.5, w, **kw) / w
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1) * 2.0 - 1.0
        angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :]
        angles = angles.flatten(1, 2).tile(2)
        return torch.sin(angles), torch.cos(angles)


def _rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-b, a], dim=-1) * sin


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        sin, cos = rope
        prefix = n - sin.shape[0]  # class + storage tokens are not rotated

        def turn(t: torch.Tensor) -> torch.Tensor:
            r = t.to(sin.dtype)
            return torch.cat([r[:, :, :prefix], _rotate(r[:, :, prefix:], sin, cos)], dim=2).to(t.dtype)

        out = F.scaled_dot_product_attention(turn(q), turn(k), v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _SwiGLU(nn.Module):
    def __init__(self, dim: int, ratio: float, align: int = 64) -> None:
        super().__init__()
        hidden = int(int(dim * ratio) * 2 / 3)
        hidden += -hidden % align
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, num_heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _SwiGLU(dim, ffn_ratio)
        self.ls2 = _LayerScale(dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=patch_size, stride=patch_size)


class GenBioViT(nn.Module):
    """The single-channel ViT; :meth:`forward` returns the class token after the final norm, ``(B, D)``."""

    def __init__(
        self,
        *,
        embed_dim: int = 1536,
        depth: int = 40,
        num_heads: int = 24,
        patch_size: int = 16,
        ffn_ratio: float = 4.0,
        n_storage_tokens: int = 4,
        rope_base: float = 100.0,
    ) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed(embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, n_storage_tokens, embed_dim))
        self.rope_embed = _Rope(embed_dim, num_heads, rope_base)
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads, ffn_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed.proj(x)
        h, w = patches.shape[-2:]
        b = patches.shape[0]
        tokens = torch.cat(
            [
                self.cls_token.expand(b, -1, -1),
                self.storage_tokens.expand(b, -1, -1),
                patches.flatten(2).transpose(1, 2),
            ],
            dim=1,
        )
        rope = self.rope_embed(h, w)
        for block in self.blocks:
            tokens = block(tokens, rope)
        return self.norm(tokens)[:, 0]


class GenBioPathFMEncoder(Encoder):
    """``uint8 (B, H, W, 3)`` -> ``(B, 3 * embed_dim)``: each normalised channel through :class:`GenBioViT`,
    the three class tokens concatenated in R, G, B order. ``config.kwargs`` are :class:`GenBioViT`'s."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        self.model = GenBioViT(**config.kwargs)

    def checkpoint_module(self) -> nn.Module:
        return self.model

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        cls = self.model(x.reshape(b * c, 1, h, w))
        return cls.reshape(b, c * cls.shape[-1])


def build_genbio_pathfm(config: EncoderConfig) -> GenBioPathFMEncoder:
    """Random-init GenBio-PathFM for ``config`` (no download)."""
    return GenBioPathFMEncoder(config)
