"""Test stand-in for MahmoodLab/TITAN's ``vision_transformer.py``: a ViT over the 2-D grid of patch features
(``coords // patch_size_lv0``), a CLS token, 2-D ALiBi (bias = -slope_h x Euclidean grid distance, 0 for the
CLS token), ``blocks.modules_list``, a final norm and the ``proj`` matrix into the text space."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def preprocess_features(features: Tensor, coords: Tensor, patch_size_lv0: int) -> tuple[Tensor, Tensor]:
    """(1, N, C) features and (1, N, 2) level-0 coords -> the tokens in raster order and their (x, y) grid cells."""
    cells = torch.div(coords[0].long(), int(patch_size_lv0), rounding_mode="floor")
    cells = cells - cells.min(0).values
    width = int(cells[:, 0].max()) + 1
    order = torch.argsort(cells[:, 1] * width + cells[:, 0])
    return features[:, order].float(), cells[order].float()


def alibi_slopes(n: int) -> list[float]:
    start = 2 ** (-(2 ** -(math.log2(n) - 3)))
    return [start ** (i + 1) for i in range(n)]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class Blocks(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.modules_list = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        for block in self.modules_list:
            x = block(x, bias)
        return x


class VisionTransformer(nn.Module):
    def __init__(
        self, input_dim: int, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float, proj_dim: int
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.patch_embed = Mlp(input_dim, embed_dim, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = Blocks(embed_dim, depth, num_heads, mlp_ratio)
        self.norm = nn.LayerNorm(embed_dim)
        self.proj = nn.Parameter(torch.randn(embed_dim, proj_dim) * embed_dim**-0.5)

    def get_alibi(self, cells: Tensor) -> Tensor:
        slopes = torch.tensor(alibi_slopes(self.num_heads), device=cells.device).view(-1, 1, 1)
        n = len(cells)
        bias = torch.zeros(1, self.num_heads, n + 1, n + 1, device=cells.device)
        bias[:, :, 1:, 1:] = -slopes * torch.cdist(cells, cells)[None]
        return bias

    def forward(self, features: Tensor, coords: Tensor, patch_size_lv0: int, no_proj: bool = False) -> Tensor:
        tokens, cells = preprocess_features(features, coords, patch_size_lv0)
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), self.patch_embed(tokens)], dim=1)
        x = self.norm(self.blocks(x, self.get_alibi(cells)))[:, 0]
        return x if no_proj else x @ self.proj


def build_vision_tower(cfg: dict) -> VisionTransformer:
    return VisionTransformer(
        cfg["input_dim"], cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["mlp_ratio"], cfg["proj_dim"]
    )
