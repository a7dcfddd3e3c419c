"""MOOZY (AtlasAnalyticsLab): a slide ViT with 2-D ALiBi over Lunit ViT-S/8 tiles, and a case transformer.

What MOOZY's stage-2 inference (``moozy.encoding.run_encoding``) computes, written from its code:

* slide: ``input_proj`` (Linear 384 -> 768 + GELU), a CLS token and 4 register tokens in front, 6 pre-norm blocks
  (separate q/k/v/out projections, 12 heads, GELU MLP 3072) whose attention adds ``-slope_h * distance / patch
  size`` between tiles (level-0 Euclidean distance in tiles; CLS and register rows and columns get no bias;
  ALiBi slopes of Press et al. for 12 heads), then LayerNorm; the slide token is the CLS output. MOOZY reads the
  tiles as a grid built from their coordinates and drops the empty cells, which leaves exactly the tiles.
* case (patient): a case token in front of the slides' tokens, 3 blocks of the same form without position bias
  and with LayerScale, LayerNorm; the case token's output is the embedding (768-d). One slide is a one-slide
  case: :meth:`MoozySlideEncoder.forward` returns that, as MOOZY does.

Deviation: MOOZY caps the tiles per slide by a GPU-memory preset (deterministic subsampling); slidescope uses all
tiles. Sizes are the model card's and the code's defaults (``config/model.py``, ``config/stage2.py``); the
checkpoint's own config is not readable offline, so a checkpoint of another size is refused with its key list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InvalidParameterError
from ._base import SlideEncoder
from ._config import SlideEncoderConfig

__all__ = ["MoozySlideEncoder", "alibi_slopes"]


def alibi_slopes(n_heads: int) -> list[float]:
    """The ALiBi head slopes (Press et al. 2022): a geometric series, interleaved for non-powers of two."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if n_heads & (n_heads - 1) == 0:
        return power_of_2(n_heads)
    base = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(base) + power_of_2(2 * base)[0::2][: n_heads - base]


class _Alibi(nn.Module):
    slopes: Tensor

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.register_buffer("slopes", -torch.tensor(alibi_slopes(n_heads), dtype=torch.float32)[:, None])


class _Scale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class _Block(nn.Module):
    """Pre-norm transformer block with separate q/k/v projections and an additive attention bias."""

    def __init__(self, dim: int, heads: int, ffn: int, layerscale: float, alibi: _Alibi | None) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        if alibi is not None:
            self.pos_bias = alibi  # shared with the encoder: MOOZY's keys list it under every block
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.ls_attn: nn.Module = _Scale(dim, layerscale) if layerscale > 0 else nn.Identity()
        self.ls_mlp: nn.Module = _Scale(dim, layerscale) if layerscale > 0 else nn.Identity()

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        n, d = x.shape
        h = self.norm1(x)
        q, k, v = (
            p(h).reshape(n, self.heads, -1).transpose(0, 1) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        att = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=bias)[0]
        x = x + self.ls_attn(self.out_proj(att.transpose(0, 1).reshape(n, d)))
        return x + self.ls_mlp(self.fc2(F.gelu(self.fc1(self.norm2(x)))))


class _CaseTransformer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, layers: int, layerscale: float) -> None:
        super().__init__()
        self.case_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, ffn, layerscale, None) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, slides: Tensor) -> Tensor:
        x = torch.cat([self.case_token[0], slides])
        for block in self.blocks:
            x = block(x, None)
        return self.norm(x)[0]


class MoozySlideEncoder(SlideEncoder):
    """MOOZY's slide encoder and case transformer; see the module docstring.

    Options: ``dim`` (768), ``heads`` (12), ``ffn`` (3072), ``layers`` (6), ``registers`` (4), ``case_layers`` (3),
    ``case_layerscale`` (1e-5).
    """

    def __init__(self, config: SlideEncoderConfig) -> None:
        super().__init__(config)
        o = config.options
        dim, heads, ffn = int(o.get("dim", 768)), int(o.get("heads", 12)), int(o.get("ffn", 3072))
        self.registers = int(o.get("registers", 4))
        self.input_proj = nn.Sequential(nn.Linear(int(config.patch_dim or 0), dim), nn.GELU())
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, self.registers, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # training only (masked tiles)
        self.pos_bias = _Alibi(heads)
        self.blocks = nn.ModuleList(
            _Block(dim, heads, ffn, 0.0, self.pos_bias) for _ in range(int(o.get("layers", 6)))
        )
        self.norm = nn.LayerNorm(dim)
        self.case_transformer = _CaseTransformer(
            dim, heads, ffn, int(o.get("case_layers", 3)), float(o.get("case_layerscale", 1e-5))
        )

    def adapt_state_dict(self, state: dict[str, Any]) -> dict[str, Tensor]:
        """MOOZY's ``moozy.pt`` payload -> this module's keys (an already flat state dict passes through)."""
        if "teacher_slide_encoder" in state and "case_transformer" in state:
            flat = dict(state["teacher_slide_encoder"])
            flat.update({f"case_transformer.{k}": v for k, v in state["case_transformer"].items()})
            return flat
        return state

    def _bias(self, coords: Tensor, patch_size: int) -> Tensor:
        pos = coords.float()
        dist = torch.cdist(pos, pos, compute_mode="donot_use_mm_for_euclid_dist") / float(max(patch_size, 1))
        n, p = len(pos), 1 + self.registers
        slopes = self.pos_bias.slopes
        bias = torch.zeros(slopes.shape[0], p + n, p + n, device=pos.device)
        bias[:, p:, p:] = slopes[:, :, None] * dist
        return bias

    def slide_token(self, features: Tensor, coords: Tensor | None, patch_size: int | None) -> Tensor:
        """The slide's CLS output (768-d): MOOZY's slide-level token before the case transformer."""
        if coords is None or patch_size is None:
            raise ValueError("MOOZY needs coords and patch_size")  # embed() checks first (needs_coords)
        x = self.input_proj(features)
        x = torch.cat([self.cls_token[0], self.register_tokens[0], x])
        bias = self._bias(coords, patch_size)
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)[0]

    def forward(
        self, features: Tensor, coords: Tensor | None = None, patch_size: int | None = None
    ) -> Tensor:
        return self.case_transformer(self.slide_token(features, coords, patch_size)[None])

    def embed_patient(self, slides: Sequence[tuple[Any, Any, int]]) -> Tensor:
        """One case (patient) embedding from several slides' ``(features, coords, patch_size)``."""
        checked = [self.check_inputs(f, c, p) for f, c, p in slides]
        if not checked:
            raise InvalidParameterError("a patient needs at least one slide")
        with torch.inference_mode():
            tokens = torch.stack([self.slide_token(x, c, p) for x, c, p in checked])
            return self.case_transformer(tokens).float().cpu()
