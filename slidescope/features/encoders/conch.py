"""CONCH v1.5 (MahmoodLab): a ViT-L/16 trunk and a CoCa attentional pooler, 768-d per tile.

The published file ``MahmoodLab/conchv1_5/pytorch_model_vision.bin`` holds the vision tower only,
with keys ``trunk.*`` (a timm-style ViT-L/16: 1024 wide, 24 blocks, 16 heads, LayerScale, a 224-px
positional grid of 14x14 + CLS) plus ``attn_pool_contrast.*`` (one learned 768-d query attending over
the 1024-d trunk tokens, 8 heads, LayerNorms on keys and query, bias-free projections) and
``ln_contrast.*``. This is the module TRIDENT's ``CONCHVisionTower`` and TITAN's ``build_conch`` load
with ``strict=True``; it is rebuilt here with the same parameter names, so the checkpoint loads as is.

Tiles: 512 px at 0.5 µm/px (20x), resized to 448 (bilinear) and centre-cropped to 448, ImageNet
normalisation, fp16 on a GPU. At 448 px the 14x14 positional grid is interpolated to 28x28 the way the
reference does it (DINO-style bicubic with the ``+0.1`` scale offset), so outputs match the reference.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ._base import Encoder, EncoderConfig
from ._catalog import CONCH_V15

__all__ = ["AttentionalPooler", "ConchV15Encoder", "CONCH_V15"]


class AttentionalPooler(nn.Module):
    """CoCa attentional pooling: ``n_queries`` learned queries cross-attend over the token sequence.

    Parameter names and shapes follow CONCH's ``AttentionalPooler`` (``query``, ``ln_k``, ``ln_q``,
    ``to_q``, ``to_kv``, ``to_out``; projections without bias).

    Parameters
    ----------
    d_model : width of the queries and of the output.
    context_dim : width of the attended tokens.
    n_head : attention heads (``d_model`` must be divisible by it).
    n_queries : number of learned queries (1 for the contrastive embedding).
    """

    def __init__(self, d_model: int, context_dim: int, *, n_head: int = 8, n_queries: int = 1) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.heads = n_head
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, d_model * 2, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, context_dim)`` tokens -> ``(B, n_queries, d_model)`` pooled vectors."""
        batch = tokens.shape[0]
        kv = self.to_kv(self.ln_k(tokens))
        k, v = kv.chunk(2, dim=-1)
        q = self.to_q(self.ln_q(self.query)).unsqueeze(0).expand(batch, -1, -1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, t.shape[1], self.heads, -1).transpose(1, 2)

        # softmax(q k^T / sqrt(d_head)) v, as the reference einsum (its max-subtraction is only for stability)
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        out = out.transpose(1, 2).reshape(batch, q.shape[1], -1)
        return self.to_out(out)


def _interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """The reference trunk's ``interpolate_pos_encoding``: DINO-style bicubic resize of the patch grid."""
    n = pos_embed.shape[1] - 1
    if n == grid_h * grid_w and grid_h == grid_w:
        return pos_embed
    side = int(math.sqrt(n))
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    patch_pos = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    # the +0.1 avoids floor() rounding down (facebookresearch/dino#8); kept for identical outputs
    patch_pos = F.interpolate(
        patch_pos, scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side), mode="bicubic"
    )
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((cls_pos, patch_pos), dim=1)


class ConchV15Encoder(Encoder):
    """CONCH v1.5 image tower: ``uint8 (B, H, W, 3)`` -> ``(B, 768)``.

    The output is ``ln_contrast(attn_pool_contrast(trunk_tokens)[:, 0])``: the attentional-pooled,
    LayerNormed contrastive image embedding, **not** L2-normalised. The published checkpoint contains
    no further projection (no ``proj_contrast``, no text tower), so this is the last image-side vector
    the release defines; it is the 768-d patch feature TITAN consumes. Zero-shot scoring (MI-Zero /
    CONCH recipe) L2-normalises it before cosine similarity; that is the zero-shot code's job, not
    ``embed``'s. Note that the text tower that shares this space is not part of ``MahmoodLab/conchv1_5``.

    Config kwargs: ``img_size`` (positional grid of the checkpoint, 224), ``patch_size``, ``embed_dim``
    (trunk width), ``depth``, ``num_heads``, ``mlp_ratio``, ``qkv_bias``, ``init_values`` (LayerScale on),
    ``pooler_dim`` (output width), ``pooler_heads``, ``pooler_queries``.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        from timm.models.vision_transformer import VisionTransformer

        kw: dict[str, Any] = dict(config.kwargs)
        self.trunk = VisionTransformer(
            img_size=kw["img_size"],
            patch_size=kw["patch_size"],
            embed_dim=kw["embed_dim"],
            depth=kw["depth"],
            num_heads=kw["num_heads"],
            mlp_ratio=kw["mlp_ratio"],
            qkv_bias=kw["qkv_bias"],
            init_values=kw["init_values"],
            num_classes=0,
            global_pool="token",
            class_token=True,
        )
        self.attn_pool_contrast = AttentionalPooler(
            kw["pooler_dim"], kw["embed_dim"], n_head=kw["pooler_heads"], n_queries=kw["pooler_queries"]
        )
        self.ln_contrast = nn.LayerNorm(kw["pooler_dim"])

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, S, S)`` -> final-norm trunk tokens ``(B, 1 + (S/16)^2, 1024)`` (CLS first)."""
        t = self.trunk
        x = t.patch_embed.proj(x)  # (B, C, h, w); the reference patch embed has no norm
        grid_h, grid_w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat((t.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + _interpolate_pos_embed(t.pos_embed, grid_h, grid_w).to(x.dtype)
        x = t.blocks(x)
        return t.norm(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, 448, 448)`` -> ``(B, 768)`` pooled embedding (not L2-normalised)."""
        pooled = self.attn_pool_contrast(self.tokens(x))[:, 0]
        return self.ln_contrast(pooled)


def build_conch_v15(config: EncoderConfig) -> ConchV15Encoder:
    """Random-init CONCH v1.5 image tower for ``config`` (no download)."""
    return ConchV15Encoder(config)
