"""Prov-GigaPath's slide encoder (Xu et al. 2024): a LongNet ViT with dilated attention over the tile grid.

What ``gigapath.slide_encoder.create_model(..., "gigapath_slide_enc12l768d", 1536, global_pool=True)`` builds
and TRIDENT's ``GigaPathSlideEncoder.forward`` computes, written from their code:

* ``patch_embed.proj``: Linear(1536 -> 768) on each tile embedding, plus a fixed 2-D sin-cos position (MAE's
  ``get_2d_sincos_pos_embed`` over a 1000 x 1000 grid, not stored in the checkpoint): the tile at level-0
  ``(x, y)`` sits in grid cell ``(floor(x / s), floor(y / s))`` with ``s`` the level-0 tile side (TRIDENT sets
  the model's ``tile_size`` to it), and its position row is ``sincos(y cell)`` then ``sincos(x cell)``, each
  half ``[sin, cos]``. A CLS token (position row 0: zeros) goes in front.
* 12 pre-norm torchscale encoder layers (sub-LN: a LayerNorm inside the attention before ``out_proj`` and one
  inside the MLP after GELU; eps 1e-5), 16 heads, MLP 3072, and LongNet's dilated attention: for each pair of
  segment length ``w`` (1024, 5792, 32768, 185363, 1048576: the publisher's ``get_optimal_segment_length`` for
  262144 px slides of 256 px tiles) and dilation ratio ``r`` (1, 2, 4, 8, 16), the token sequence (in the
  order given) is cut into segments of ``min(w, length)`` tokens (the last one zero-padded), each padded to a
  multiple of ``r``; the heads are split into ``r`` groups (zero heads added up to a multiple of ``r``) and
  group ``j`` attends exactly among the segment positions ``j, j + r, j + 2r...``, padded positions included
  as zero keys. The branches are merged per token and head, weighted by the softmax of their log-sum-exps
  (a branch that does not cover a token weighs nothing).
* The slide embedding (TRIDENT's rule): the output of layer 11 of 12 (before the encoder's final LayerNorm),
  the mean over the tile tokens (CLS excluded), then ``norm`` (LayerNorm, eps 1e-6): 768-d. Layer 12 and
  ``encoder.layer_norm`` are loaded but take no part in it.

As in the reference, the segments follow the order of the tiles as stored, so the embedding depends on that
order (the dilation picks tokens by their index in a segment), and a segment's outputs are laid end to end at
the padded segment length: the reference's shift, which only matters when a segment length is not a
multiple of its ratio and the slide spans several segments (185363 / 8: slides above 185363 tiles).
Deviation: tiles outside the 1000 x 1000 grid (or at negative coordinates) are refused
(:class:`~slidescope.errors.InvalidParameterError`) where the reference fails or reads another cell's row.
The attention is exact softmax attention in the model's dtype, computed in query chunks; the publisher
runs flash-attn in float16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InvalidParameterError
from ._base import SlideEncoder
from ._config import SlideEncoderConfig

__all__ = ["GigaPathSlideEncoder", "build", "dilated_attention", "sincos_positions"]

#: scores computed at once per chunk of queries (elements), to bound the memory of long segments
_CHUNK = 1 << 24
#: the log-sum-exp the reference gives positions a branch does not cover
_NO_LSE = -1e8


def sincos_positions(cells: Tensor, dim: int) -> Tensor:
    """The reference's fixed 2-D sin-cos rows for grid cells ``(N, 2)`` (x cell, y cell) -> ``(N, dim)`` float32.

    Half the width encodes the y cell and half the x cell, each as ``[sin(p * w), cos(p * w)]`` with
    ``w = 10000 ** -(i / (dim / 4))``, computed in float64 as the reference's numpy does.
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64, device=cells.device) / quarter)

    def one(p: Tensor) -> Tensor:
        a = p.to(torch.float64)[:, None] * omega[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)

    return torch.cat([one(cells[:, 1]), one(cells[:, 0])], dim=1).float()


def _attend(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Exact softmax attention of one segment group: ``(m, h, d)`` each -> output ``(m, h, d)``, lse ``(m, h)``."""
    m, h, d = k.shape
    kt = k.permute(1, 2, 0).contiguous()  # (h, d, m)
    vh = v.transpose(0, 1).contiguous()  # (h, m, d)
    qh = q.transpose(0, 1) * d**-0.5
    step = max(1, _CHUNK // max(1, m * h))
    outs, lses = [], []
    for i in range(0, q.shape[0], step):
        s = torch.bmm(qh[:, i : i + step], kt).float()  # (h, chunk, m)
        lse = torch.logsumexp(s, dim=-1)
        p = s.sub_(lse[..., None]).exp_().to(v.dtype)
        outs.append(torch.bmm(p, vh).transpose(0, 1))
        lses.append(lse.transpose(0, 1))
    return torch.cat(outs), torch.cat(lses)


def _branch(q: Tensor, k: Tensor, v: Tensor, segment: int, ratio: int) -> tuple[Tensor, Tensor]:
    """One (segment length, dilation ratio) branch over ``(L, H, d)`` -> output ``(L, H, d)``, lse ``(L, H)``."""
    length, heads, d = q.shape
    g = min(segment, length)
    n = -(-length // g)
    gp = -(-g // ratio) * ratio
    per_group = -(-heads // ratio)

    def segments(x: Tensor) -> Tensor:
        x = F.pad(x, (0, 0, 0, 0, 0, n * g - length)).reshape(n, g, heads, d)
        return F.pad(x, (0, 0, 0, 0, 0, gp - g))

    qs, ks, vs = segments(q), segments(k), segments(v)
    out = q.new_zeros(n, gp, heads, d)
    lse = torch.full((n, gp, heads), _NO_LSE, dtype=torch.float32, device=q.device)
    for j in range(ratio):
        hs = slice(j * per_group, min((j + 1) * per_group, heads))
        if hs.start >= heads:
            break
        for s in range(n):
            o, e = _attend(qs[s, j::ratio, hs], ks[s, j::ratio, hs], vs[s, j::ratio, hs])
            out[s, j::ratio, hs] = o
            lse[s, j::ratio, hs] = e
    lse = lse.masked_fill(lse == 0, _NO_LSE)  # the reference reads an lse of exactly 0 as "not covered"
    return out.reshape(n * gp, heads, d)[:length], lse.reshape(n * gp, heads)[:length]


def dilated_attention(
    q: Tensor, k: Tensor, v: Tensor, segments: Sequence[int], ratios: Sequence[int]
) -> Tensor:
    """LongNet's dilated attention of one sequence (see the module docstring): ``(L, H, d)`` -> ``(L, H, d)``."""
    outs, lses = zip(*(_branch(q, k, v, w, r) for w, r in zip(segments, ratios, strict=True)), strict=True)
    weights = torch.softmax(torch.stack(lses), dim=0)  # (branches, L, H): exp(lse - max) / sum
    return sum(
        (o * w[..., None].to(o.dtype) for o, w in zip(outs, weights, strict=True)), torch.zeros_like(q)
    )


class _Attention(nn.Module):
    def __init__(
        self, dim: int, heads: int, eps: float, segments: Sequence[int], ratios: Sequence[int]
    ) -> None:
        super().__init__()
        self.heads, self.segments, self.ratios = heads, list(segments), list(ratios)
        self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.inner_attn_ln = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        n, dim = x.shape
        q, k, v = (p(x).reshape(n, self.heads, -1) for p in (self.q_proj, self.k_proj, self.v_proj))
        att = dilated_attention(q, k, v, self.segments, self.ratios).reshape(n, dim)
        return self.out_proj(self.inner_attn_ln(att))


class _Ffn(nn.Module):
    def __init__(self, dim: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.ffn_layernorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.ffn_layernorm(F.gelu(self.fc1(x).float()).to(x.dtype)))


class _Layer(nn.Module):
    """torchscale's pre-norm ``EncoderLayer`` with sub-LN (the ``encoder.layers.i`` keys)."""

    def __init__(
        self, dim: int, heads: int, ffn: int, eps: float, segments: Sequence[int], ratios: Sequence[int]
    ) -> None:
        super().__init__()
        self.self_attn = _Attention(dim, heads, eps, segments, ratios)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn = _Ffn(dim, ffn, eps)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.ffn(self.final_layer_norm(x))


class _Encoder(nn.Module):
    def __init__(
        self,
        depth: int,
        dim: int,
        heads: int,
        ffn: int,
        eps: float,
        segments: Sequence[int],
        ratios: Sequence[int],
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer(dim, heads, ffn, eps, segments, ratios) for _ in range(depth))
        self.layer_norm = nn.LayerNorm(dim, eps=eps)  # the encoder's output norm, unused by TRIDENT's rule


class _PatchEmbed(nn.Module):
    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)


class GigaPathSlideEncoder(SlideEncoder):
    """Prov-GigaPath's LongNet slide encoder with TRIDENT's output rule; see the module docstring.

    Options: ``dim`` (768), ``depth`` (12), ``heads`` (16), ``ffn`` (3072), ``segment_length``, ``dilated_ratio``
    (the published ones), ``grid`` (1000 cells a side), ``layer`` (11: which layer's output is pooled; 0 is the
    input tokens), ``eps`` (1e-5, the layers' LayerNorms), ``norm_eps`` (1e-6, the output ``norm``).
    """

    def __init__(self, config: SlideEncoderConfig) -> None:
        super().__init__(config)
        o = config.options
        dim, depth = int(o.get("dim", 768)), int(o.get("depth", 12))
        segments = [int(s) for s in o.get("segment_length", (1024, 5792, 32768, 185363, 1048576))]
        ratios = [int(r) for r in o.get("dilated_ratio", (1, 2, 4, 8, 16))]
        if len(segments) != len(ratios) or dim % 4:
            raise InvalidParameterError(
                f"{config.name}: one dilation ratio per segment length and dim % 4 == 0"
            )
        self.grid, self.layer = int(o.get("grid", 1000)), int(o.get("layer", 11))
        if not 0 <= self.layer <= depth:
            raise InvalidParameterError(f"{config.name}: layer must be in 0..{depth}, got {self.layer}")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embed = _PatchEmbed(int(config.patch_dim or 0), dim)
        eps = float(o.get("eps", 1e-5))
        self.encoder = _Encoder(
            depth, dim, int(o.get("heads", 16)), int(o.get("ffn", 4 * dim)), eps, segments, ratios
        )
        self.norm = nn.LayerNorm(dim, eps=float(o.get("norm_eps", 1e-6)))

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``slide_encoder.pth`` (its ``"model"`` entry, unwrapped by the reader) without a ``pos_embed`` table:
        the reference's is a fixed, non-persistent buffer that slidescope recomputes."""
        return {k: v for k, v in state.items() if k != "pos_embed"}

    def cells(self, coords: Tensor, patch_size: int) -> Tensor:
        """Grid cells ``(N, 2)`` of level-0 ``coords``; refuses tiles outside the model's grid."""
        cells = torch.div(coords, max(int(patch_size), 1), rounding_mode="floor")
        if cells.numel() and (int(cells.min()) < 0 or int(cells.max()) >= self.grid):
            raise InvalidParameterError(
                f"slide encoder {self.config.name!r} places tiles on a {self.grid} x {self.grid} grid of "
                f"{patch_size} level-0 px, but these coordinates reach grid cells {cells.min(0).values.tolist()} "
                f"to {cells.max(0).values.tolist()}; pass non-negative level-0 coordinates and the level-0 "
                f"side of one tile as patch_size"
            )
        return cells

    def forward(
        self, features: Tensor, coords: Tensor | None = None, patch_size: int | None = None
    ) -> Tensor:
        if coords is None or patch_size is None:
            raise InvalidParameterError("GigaPath needs coords and patch_size")  # embed() checks first
        x = self.patch_embed.proj(features)
        x = x + sincos_positions(self.cells(coords, patch_size), x.shape[1]).to(x.dtype)
        x = torch.cat([self.cls_token[0].to(x.dtype), x])
        for layer in self.encoder.layers[: self.layer]:
            x = layer(x)
        return self.norm(x[1:].mean(0))


def build(config: SlideEncoderConfig) -> GigaPathSlideEncoder:
    """The architecture at ``config``'s sizes, with random weights (the registry's builder)."""
    return GigaPathSlideEncoder(config)
