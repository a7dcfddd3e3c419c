"""MUSK (Xiang et al., Nature 2025): the image path of its BEiT-3 large multiway transformer.

MUSK is a BEiT-3 (torchscale) encoder whose every block holds two *experts* per normalisation, attention
projection and feed-forward network: ``A`` for vision tokens, ``B`` for text tokens. An image alone runs
through the ``A`` experts only, so only they are built here (about half the 675 M parameters of the published
file). Block (pre-norm, sub-LayerNorm, torchscale's ``subln``)::

    x = x + out_proj(inner_attn_ln(attention(q_proj, k_proj, v_proj of self_attn_layer_norm(x))))
    x = x + fc2(ffn_layernorm(gelu(fc1(final_layer_norm(x)))))

Tokens are ``[CLS] + 16 px patches``; the vision position table starts at row 2 (fairseq's convention),
so a 384 px input uses rows 2 .. 578 of a 579-row table. The output is the CLS token after the final
LayerNorm, as TRIDENT's ``MuskInferenceEncoder`` returns it (``with_head=False, out_norm=False,
return_global=True``). With ``multiscale=True`` it is MUSK's ``ms_aug`` (its README's advice for linear probes
and MIL): the CLS of the tile concatenated with the mean CLS of the four quarters of the tile upsampled 2x
(bicubic) -- twice the width.

Published file (``xiangjx/musk`` ``model.safetensors``, the state dict of ``musk_large_patch16_384``):
:func:`convert_musk_state_dict` keeps the vision subset and drops, by name, what this image path does not use
(:data:`UNUSED_KEYS`): the text experts (``.B.``), the text embedding, the zero-shot heads and logit scale,
and the masked-image-modelling token. Anything else is kept, so a strict load refuses it. Keys and shapes
are checked against MUSK's own model in ``tests/golden/musk_layout.json`` (``tests/golden/make_musk.py``).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ._base import Encoder, EncoderConfig
from ._config import resolve_kwargs

__all__ = ["MuskEncoder", "MuskVision", "build_musk", "convert_musk_state_dict", "UNUSED_KEYS"]

#: keys of the published file that the image path does not use, dropped on loading (regular expressions)
UNUSED_KEYS: dict[str, str] = {
    "text experts": r"^beit3\.encoder\.(layers\.\d+\.[a-z_.]+|layer_norm|embed_positions)\.B\.",
    "text embedding": r"^beit3\.text_embed\.",
    "zero-shot heads and logit scale": r"^(language_head|vision_head)\.weight$|^logit_scale$",
    "masked-image-modelling token": r"^beit3\.vision_embed\.mask_token$",
}
_UNUSED = re.compile("|".join(f"(?:{p})" for p in UNUSED_KEYS.values()))
_POSITIONS = "beit3.encoder.embed_positions.A.weight"
#: rows before the CLS row in the vision position table (fairseq starts positions at 2)
_POSITION_OFFSET = 2


class _Vision(nn.Module):
    """One multiway module with its vision expert only: the key ``<name>.A.*`` of the published file."""

    def __init__(self, expert: nn.Module) -> None:
        super().__init__()
        self.A = expert

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.A(x)
        return out


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            _Vision(nn.Linear(width, width)) for _ in range(4)
        )
        self.inner_attn_ln = _Vision(nn.LayerNorm(width, eps=eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        )
        return self.out_proj(self.inner_attn_ln(out.transpose(1, 2).reshape(b, n, d)))


class _FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.ffn_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = F.gelu(h.float()).type_as(h)  # torchscale computes the GELU in float32
        return self.fc2(self.ffn_layernorm(h))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.self_attn_layer_norm = _Vision(nn.LayerNorm(width, eps=eps))
        self.self_attn = _Attention(width, heads, eps)
        self.final_layer_norm = _Vision(nn.LayerNorm(width, eps=eps))
        self.ffn = _Vision(_FeedForward(width, hidden, eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.ffn(self.final_layer_norm(x))


class _PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, width: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"MUSK takes {self.img_size} px input, got {tuple(x.shape[-2:])}")
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(len(x), -1, -1).to(tokens.dtype), tokens], dim=1)


class _Encoder(nn.Module):
    def __init__(self, n_tokens: int, width: int, depth: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.embed_positions = _Vision(nn.Embedding(n_tokens + _POSITION_OFFSET, width))
        self.layers = nn.ModuleList(_Block(width, heads, hidden, eps) for _ in range(depth))
        self.layer_norm = _Vision(nn.LayerNorm(width, eps=eps))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        table = self.embed_positions.A.weight
        assert isinstance(table, torch.Tensor)
        x = tokens + table[_POSITION_OFFSET : _POSITION_OFFSET + tokens.shape[1]].to(tokens.dtype)
        for layer in self.layers:
            x = layer(x)
        out: torch.Tensor = self.layer_norm(x)
        return out


class _BEiT3Vision(nn.Module):
    def __init__(
        self, img_size: int, patch_size: int, width: int, depth: int, heads: int, hidden: int
    ) -> None:
        super().__init__()
        eps = 1e-5  # torchscale's layernorm_eps
        self.vision_embed = _PatchEmbed(img_size, patch_size, width)
        self.encoder = _Encoder((img_size // patch_size) ** 2 + 1, width, depth, heads, hidden, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.encoder(self.vision_embed(x))
        return out


class MuskVision(nn.Module):
    """The vision path of ``musk_large_patch16_384``; ``state_dict`` keys are the published file's vision subset
    (``beit3.vision_embed.*``, ``beit3.encoder.*.A.*``). ``(B, 3, S, S) -> (B, width)`` CLS token, or with
    ``multiscale`` ``(B, 2 width)`` (MUSK's ``ms_aug``)."""

    def __init__(
        self,
        img_size: int = 384,
        patch_size: int = 16,
        width: int = 1024,
        depth: int = 24,
        heads: int = 16,
        mlp_dim: int = 4096,
        multiscale: bool = False,
    ) -> None:
        super().__init__()
        self.img_size, self.patch_size, self.multiscale = img_size, patch_size, multiscale
        self.beit3 = _BEiT3Vision(img_size, patch_size, width, depth, heads, mlp_dim)

    def cls(self, x: torch.Tensor) -> torch.Tensor:
        """The CLS token after the final LayerNorm."""
        return self.beit3(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.cls(x)
        if not self.multiscale:
            return out
        # MUSK's MultiScaleForward with scales (1, 2): upsample 2x (bicubic, no antialias, in float32), cut
        # into a 2 x 2 chessboard of input-sized crops, average their CLS tokens
        size = x.shape[-1]
        big = F.interpolate(x.float(), size=2 * size, mode="bicubic").to(x.dtype)
        crops = torch.cat([big[..., i : i + size, j : j + size] for i in (0, size) for j in (0, size)])
        quarters = self.cls(crops).view(4, len(x), -1).mean(0)
        return torch.cat([out, quarters], dim=-1)


def convert_musk_state_dict(
    state: dict[str, torch.Tensor], *, img_size: int, patch_size: int = 16
) -> dict[str, torch.Tensor]:
    """The published MUSK state dict -> :class:`MuskVision`'s keys.

    Drops the :data:`UNUSED_KEYS` (text experts, text embedding, heads, logit scale, mask token) and keeps
    every other key (a strict load then refuses what is not MUSK). A vision position table made for another
    patch grid is interpolated as MUSK's ``load_model_and_may_interpolate`` does: the two offset rows and the
    CLS row kept, the grid resized bicubic (``align_corners=False``, float32).
    """
    out = {k: v for k, v in state.items() if not _UNUSED.search(k)}
    table = out.get(_POSITIONS)
    grid = img_size // patch_size
    extra = _POSITION_OFFSET + 1
    if table is not None and table.shape[0] != grid * grid + extra:
        side = round((table.shape[0] - extra) ** 0.5)
        if side * side + extra != table.shape[0]:
            return out  # not a square grid: left as is, the strict load names the shape mismatch
        patches = table[extra:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        resized = F.interpolate(patches.float(), size=(grid, grid), mode="bicubic", align_corners=False)
        resized = resized.to(table.dtype).permute(0, 2, 3, 1).flatten(0, 2)
        out[_POSITIONS] = torch.cat([table[:extra], resized])
    return out


class MuskEncoder(Encoder):
    """MUSK's image encoder: ``uint8 (B, H, W, 3) -> (B, 1024)`` (CLS), or ``(B, 2048)`` with
    ``kwargs["multiscale"]``. ``config.kwargs`` go to :class:`MuskVision`."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        kwargs: dict[str, Any] = resolve_kwargs(config.kwargs)
        self.model = MuskVision(**kwargs)

    def checkpoint_module(self) -> nn.Module:
        return self.model

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return convert_musk_state_dict(state, img_size=self.model.img_size, patch_size=self.model.patch_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, 384, 384)`` -> ``(B, embed_dim)``."""
        out: torch.Tensor = self.model(x)
        return out


def build_musk(config: EncoderConfig) -> MuskEncoder:
    """Random-init MUSK vision path (no download)."""
    return MuskEncoder(config)
