"""Test stand-in for paige-ai/Prism's ``perceiver.py``.

Same module tree and parameter names as the published resampler (``perceiver.latents``,
``perceiver.layers.{i}.xattn.{xattn,ff}``, ``perceiver.layers.{i}.tf.{j}.{mhsa,ff}``, the MHSA being a bias-free
``nn.MultiheadAttention``; ``cls_norm``, ``img_norm``), the same weight sharing (later cross-attention blocks
and self-attention stacks *are* earlier ones) and the same arithmetic, written independently (slidescope's
encoder is checked against the real code in ``tests/vlm/test_prism_golden.py``). Like the real code it reads a
boolean ``tile_mask`` as a mask and adds a float one to the attention scores, so a float 0/1 mask (as in PRISM's
docstring) does not hide padding.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CrossAttention(nn.Module):
    def __init__(self, *, query_dim: int, context_dim: int, head_dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.x_norm = nn.LayerNorm(query_dim)  # queries only: the context is not normed
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim, bias=False)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        b, n, _ = x.shape
        q = self.to_q(self.x_norm(x)).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.to_kv(context).view(b, context.shape[1], 2, self.heads, self.head_dim).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        else:  # as PRISM's scaled_dot_product_attention call: a float mask is added to the scores, not masked
            scores = scores + mask[:, None, None, :].to(scores.dtype)
        out = scores.softmax(-1) @ v
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class MHSA(nn.Module):
    def __init__(self, *, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mha = nn.MultiheadAttention(dim, num_heads, bias=False, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        return self.mha(x, x, x, need_weights=False)[0]


class FeedForward(nn.Module):
    def __init__(self, *, dim: int, mult: int, activation: str) -> None:
        super().__init__()
        self.geglu = activation == "geglu"
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(
            nn.Linear(dim, dim * mult * (2 if self.geglu else 1)), nn.Identity(), nn.Linear(dim * mult, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.net[0](self.norm(x))
        if self.geglu:
            a, gate = h.chunk(2, dim=-1)
            h = a * F.gelu(gate)
        else:
            h = F.gelu(h)
        return self.net[2](h)


class Perceiver(nn.Module):
    def __init__(
        self,
        *,
        latent_seq: int,
        latent_dim: int,
        context_dim: int,
        mhsa_heads: int,
        perceiver_depth: int,
        transformer_depth: int,
        share_xattn_start_layer: int,
        share_tf_start_layer: int,
        xattn_heads: int,
        mlp_mult: int,
        mlp_activation: str,
    ) -> None:
        super().__init__()
        self.share_xattn_start_layer = share_xattn_start_layer
        self.latents = nn.Parameter(torch.randn(latent_seq, latent_dim))
        layers: list[nn.ModuleDict] = []
        for i in range(perceiver_depth):
            if i <= share_xattn_start_layer:
                xattn = nn.ModuleDict(
                    {
                        "xattn": CrossAttention(
                            query_dim=latent_dim,
                            context_dim=context_dim,
                            head_dim=latent_dim // xattn_heads,
                            heads=xattn_heads,
                        ),
                        "ff": FeedForward(dim=latent_dim, mult=mlp_mult, activation=mlp_activation),
                    }
                )
            else:
                xattn = layers[-1]["xattn"]
            if i <= share_tf_start_layer:
                tf = nn.ModuleList(
                    nn.ModuleDict(
                        {
                            "mhsa": MHSA(dim=latent_dim, num_heads=mhsa_heads),
                            "ff": FeedForward(dim=latent_dim, mult=mlp_mult, activation=mlp_activation),
                        }
                    )
                    for _ in range(transformer_depth)
                )
            else:
                tf = layers[-1]["tf"]
            layers.append(nn.ModuleDict({"xattn": xattn, "tf": tf}))
        self.layers = nn.ModuleList(layers)

    def forward(self, context: Tensor, mask: Tensor) -> Tensor:
        x = self.latents.unsqueeze(0).expand(context.shape[0], -1, -1)
        for layer in self.layers:
            x = x + layer["xattn"]["xattn"](x, context, mask)
            x = x + layer["xattn"]["ff"](x)
            for block in layer["tf"]:
                x = x + block["mhsa"](x)
                x = x + block["ff"](x)
        return x


class PerceiverResampler(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.query_dim = config.latent_dim
        self.query_seq = config.latent_seq
        self.cls_norm = nn.LayerNorm(config.latent_dim)
        self.img_norm = nn.LayerNorm(config.latent_dim)
        self.perceiver = Perceiver(
            latent_seq=config.latent_seq + 1,
            latent_dim=config.latent_dim,
            context_dim=config.context_dim,
            mhsa_heads=config.mhsa_heads,
            perceiver_depth=config.perceiver_depth,
            transformer_depth=config.transformer_depth,
            share_xattn_start_layer=config.share_xattn_start_layer,
            share_tf_start_layer=config.share_tf_start_layer,
            xattn_heads=config.xattn_heads,
            mlp_mult=config.mlp_mult,
            mlp_activation=config.mlp_activation,
        )

    def forward(self, tile_embeddings: Tensor, tile_mask: Optional[Tensor] = None) -> dict:
        if tile_mask is None:
            if len(tile_embeddings) > 1:
                raise ValueError("tile pad mask must be provided with batch size>1.")
            tile_mask = torch.ones(
                tile_embeddings.shape[:2], device=tile_embeddings.device, dtype=tile_embeddings.dtype
            )
        x = self.perceiver(tile_embeddings, tile_mask)  # passed on as given: bool masks, float masks add
        return {"image_embedding": self.cls_norm(x[:, 0]), "image_latents": self.img_norm(x[:, 1:])}
