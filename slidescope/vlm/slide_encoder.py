"""PRISM's slide encoder: a Perceiver resampler over tile embeddings, with its published weight sharing.

Architecture (Paige's public ``PerceiverResampler``; see ``docs/REFERENCE-models.md`` §1.2)::

    x = latents                                    # (1 + latent_seq, latent_dim), query 0 = slide embedding
    for layer in range(perceiver_depth):
        x = x + XAttn(LN(x), context=tiles, mask)   # single head, head_dim = latent_dim, no LN on the context
        x = x + FF_geglu(LN(x))
        for block in range(transformer_depth):
            x = x + MHSA(LN(x));  x = x + FF_geglu(LN(x))
    image_embedding = LN(x[:, 0]);  image_latents = LN'(x[:, 1:])

Weight sharing, exactly as published: cross-attention blocks (attention + its feed-forward) with index
``<= share_xattn_start_layer`` have their own weights, every later one *is* block
``share_xattn_start_layer`` (so its keys/values over the tiles are computed once and reused); likewise the
self-attention stack of layer ``share_tf_start_layer`` is the stack of every later layer.

Parity: loaded through :meth:`PerceiverSlideEncoder.from_prism`, the outputs equal those of Paige's own code
(``Prism.slide_representations``; its public copy in DIAGNijmegen/unicorn_baseline, commit dec3809) to 1e-6
in float32 (``tests/vlm/test_prism_golden.py``). One deliberate difference: float masks (see ``forward``).

Memory grows with ``latents x tiles`` and never ``tiles x tiles``: the cross-attention streams over the tiles
in chunks with a running log-sum-exp softmax, so at full size a 50,000-tile slide needs about 1 GB on top of
its own (50,000, 2560) input (see ``benchmarks/bench_slide_encoder.py``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidParameterError

__all__ = [
    "PerceiverSlideEncoderConfig",
    "PerceiverSlideEncoder",
    "streaming_cross_attention",
    "expected_parameter_count",
    "convert_prism_state_dict",
]


@dataclass(frozen=True)
class PerceiverSlideEncoderConfig:
    """Hyper-parameters of :class:`PerceiverSlideEncoder`; the defaults are PRISM's.

    Attributes
    ----------
    latent_seq : int
        Number of image latents (the decoder context); one more query is added for the slide embedding.
    latent_dim : int
        Width of the latents and of the slide embedding.
    context_dim : int
        Length of the tile embeddings (2560 = Virchow v1 CLS + mean patch token).
    mhsa_heads : int
        Heads of the latent self-attention.
    perceiver_depth : int
        Number of (cross-attention, self-attention stack) layers.
    transformer_depth : int
        Self-attention blocks per layer.
    share_xattn_start_layer : int
        Cross-attention blocks after this index reuse this block's weights.
    share_tf_start_layer : int
        Self-attention stacks after this index reuse this stack's weights.
    xattn_heads : int
        Heads of the cross-attention (PRISM: 1, so ``head_dim = latent_dim``).
    mlp_mult : int
        Hidden width of the feed-forwards as a multiple of ``latent_dim``.
    mlp_activation : {"geglu", "gelu"}
        Feed-forward activation.
    xattn_chunk : int
        Tiles per chunk of the streaming cross-attention (memory, not results; not saved in PRISM).
    """

    latent_seq: int = 512
    latent_dim: int = 1280
    context_dim: int = 2560
    mhsa_heads: int = 8
    perceiver_depth: int = 8
    transformer_depth: int = 6
    share_xattn_start_layer: int = 1
    share_tf_start_layer: int = 0
    xattn_heads: int = 1
    mlp_mult: int = 1
    mlp_activation: Literal["geglu", "gelu"] = "geglu"
    xattn_chunk: int = 8192

    def __post_init__(self) -> None:
        for name in (
            "latent_seq",
            "latent_dim",
            "context_dim",
            "mhsa_heads",
            "perceiver_depth",
            "xattn_heads",
            "mlp_mult",
            "xattn_chunk",
        ):
            if int(getattr(self, name)) < 1:
                raise InvalidParameterError(
                    f"PerceiverSlideEncoderConfig.{name} must be >= 1, got {getattr(self, name)!r}"
                )
        if self.transformer_depth < 0 or self.share_xattn_start_layer < 0 or self.share_tf_start_layer < 0:
            raise InvalidParameterError("transformer_depth and the share_*_start_layer indices must be >= 0")
        if self.latent_dim % self.xattn_heads or self.latent_dim % self.mhsa_heads:
            raise InvalidParameterError(
                f"latent_dim={self.latent_dim} must be divisible by xattn_heads={self.xattn_heads} and "
                f"mhsa_heads={self.mhsa_heads}"
            )
        if self.mlp_activation not in ("geglu", "gelu"):
            raise InvalidParameterError(
                f"mlp_activation must be 'geglu' or 'gelu', got {self.mlp_activation!r}"
            )

    @classmethod
    def tiny(cls, **overrides: Any) -> PerceiverSlideEncoderConfig:
        """A few-thousand-parameter variant with the same structure (tests, smoke runs)."""
        values: dict[str, Any] = dict(
            latent_seq=8,
            latent_dim=32,
            context_dim=24,
            mhsa_heads=4,
            perceiver_depth=3,
            transformer_depth=2,
            xattn_chunk=16,
        )
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``PerceiverSlideEncoderConfig(**d)`` rebuilds it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PerceiverSlideEncoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`InvalidParameterError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise InvalidParameterError(
                f"unknown slide-encoder config keys {sorted(unknown)}; "
                "was the file written by a newer slidescope?"
            )
        return cls(**values)


def streaming_cross_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, chunk: int) -> Tensor:
    """Softmax attention of ``q`` over ``k``/``v``, streamed over the key axis in chunks.

    Parameters
    ----------
    q : Tensor (B, H, Lq, E)
        Queries, already scaled by ``E ** -0.5``.
    k, v : Tensor (B, H, N, E)
        Keys and values.
    mask : bool Tensor (B, N) or None
        True for a real key; False keys get ``-inf`` before the softmax. Every row needs one real key.
    chunk : int
        Keys per chunk: peak extra memory is ``B * H * Lq * chunk`` scores.

    Returns
    -------
    Tensor (B, H, Lq, E)
    """
    n = k.shape[-2]
    if n <= chunk:
        scores = q @ k.transpose(-1, -2)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        return torch.softmax(scores, dim=-1) @ v
    out = torch.zeros_like(q)
    run_max = torch.full(q.shape[:-1] + (1,), float("-inf"), dtype=q.dtype, device=q.device)
    run_sum = torch.zeros_like(run_max)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        scores = q @ k[..., start:stop, :].transpose(-1, -2)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, start:stop], float("-inf"))
        new_max = torch.maximum(run_max, scores.amax(dim=-1, keepdim=True))
        # a row whose keys so far are all masked keeps max -inf; use 0 so exp() gives 0, not NaN
        safe_max = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
        p = torch.exp(scores - safe_max)
        correction = torch.exp(run_max - safe_max)
        run_sum = run_sum * correction + p.sum(dim=-1, keepdim=True)
        out = out * correction + p @ v[..., start:stop, :]
        run_max = new_max
    return out / run_sum


class _CrossAttention(nn.Module):
    """PRISM's cross-attention: LN on the queries only, bias-free projections."""

    def __init__(self, *, query_dim: int, context_dim: int, heads: int, chunk: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = query_dim // heads
        self.chunk = chunk
        self.x_norm = nn.LayerNorm(query_dim)
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * query_dim, bias=False)
        self.to_out = nn.Linear(query_dim, query_dim, bias=False)

    def keys_values(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, context_dim) -> keys, values each (B, H, N, head_dim)."""
        b, n, _ = context.shape
        kv = self.to_kv(context).view(b, n, 2, self.heads, self.head_dim)
        k, v = kv.unbind(2)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], mask: Tensor | None) -> Tensor:
        b, lq, _ = x.shape
        q = self.to_q(self.x_norm(x)).view(b, lq, self.heads, self.head_dim).transpose(1, 2)
        q = q * self.head_dim**-0.5
        a = streaming_cross_attention(q, kv[0], kv[1], mask, chunk=self.chunk)
        return self.to_out(a.transpose(1, 2).reshape(b, lq, self.heads * self.head_dim))


class _SelfAttention(nn.Module):
    """PRISM's MHSA block: LN then bias-free multi-head self-attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.in_proj(self.norm(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.out_proj(a.transpose(1, 2).reshape(b, n, d))


class _GEGLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        x, gates = x.chunk(2, dim=-1)
        return x * F.gelu(gates)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int, activation: str) -> None:
        super().__init__()
        geglu = activation == "geglu"
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(
            nn.Linear(dim, dim * mult * (2 if geglu else 1)),
            _GEGLU() if geglu else nn.GELU(),
            nn.Linear(dim * mult, dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.norm(x))


class PerceiverSlideEncoder(nn.Module):
    """PRISM's Perceiver slide encoder (random weights; load a state dict to use trained ones).

    Parameters
    ----------
    config : PerceiverSlideEncoderConfig, optional
        Defaults to PRISM's full size (~99.0 M parameters after sharing).

    Examples
    --------
    >>> enc = PerceiverSlideEncoder(PerceiverSlideEncoderConfig.tiny())
    >>> out = enc(torch.randn(2, 30, 24), torch.ones(2, 30, dtype=torch.bool))
    >>> out["image_embedding"].shape, out["image_latents"].shape
    (torch.Size([2, 32]), torch.Size([2, 8, 32]))
    """

    def __init__(self, config: PerceiverSlideEncoderConfig | None = None) -> None:
        super().__init__()
        cfg = config or PerceiverSlideEncoderConfig()
        self.config = cfg
        d = cfg.latent_dim
        self.latents = nn.Parameter(torch.randn(cfg.latent_seq + 1, d))

        def xattn_block() -> nn.ModuleDict:
            return nn.ModuleDict(
                {
                    "xattn": _CrossAttention(
                        query_dim=d, context_dim=cfg.context_dim, heads=cfg.xattn_heads, chunk=cfg.xattn_chunk
                    ),
                    "ff": _FeedForward(d, cfg.mlp_mult, cfg.mlp_activation),
                }
            )

        def tf_stack() -> nn.ModuleList:
            return nn.ModuleList(
                nn.ModuleDict(
                    {
                        "mhsa": _SelfAttention(d, cfg.mhsa_heads),
                        "ff": _FeedForward(d, cfg.mlp_mult, cfg.mlp_activation),
                    }
                )
                for _ in range(cfg.transformer_depth)
            )

        layers: list[nn.ModuleDict] = []
        for i in range(cfg.perceiver_depth):
            layers.append(
                nn.ModuleDict(
                    {
                        "xattn": xattn_block() if i <= cfg.share_xattn_start_layer else layers[-1]["xattn"],
                        "tf": tf_stack() if i <= cfg.share_tf_start_layer else layers[-1]["tf"],
                    }
                )
            )
        self.layers = nn.ModuleList(layers)
        self.cls_norm = nn.LayerNorm(d)
        self.img_norm = nn.LayerNorm(d)

    @property
    def embed_dim(self) -> int:
        """Length of ``image_embedding``."""
        return self.config.latent_dim

    def forward(self, tiles: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Encode padded bags of tile embeddings.

        Parameters
        ----------
        tiles : float Tensor (B, N, context_dim)
            Tile embeddings, each bag padded to ``N``.
        mask : bool Tensor (B, N), optional
            True for a real tile. ``None`` means all real. Padded tiles are zeroed and get ``-inf``
            attention scores, so a bag alone and the same bag padded give the same outputs. A mask of
            another dtype is read as boolean (non-zero = real). PRISM's own code does that only for bool
            masks: it adds a float mask to the attention scores, so the float 0/1 mask of its docstring does
            not hide padding there; ours gives PRISM's boolean-mask result.

        Returns
        -------
        dict
            ``image_embedding`` (B, latent_dim) and ``image_latents`` (B, latent_seq, latent_dim).
        """
        cfg = self.config
        if tiles.ndim != 3 or tiles.shape[-1] != cfg.context_dim:
            raise InvalidParameterError(
                f"tiles must have shape (B, N, {cfg.context_dim}), got {tuple(tiles.shape)}"
            )
        if mask is not None:
            if mask.shape != tiles.shape[:2]:
                raise InvalidParameterError(
                    f"mask must have shape {tuple(tiles.shape[:2])}, got {tuple(mask.shape)}"
                )
            mask = mask.to(device=tiles.device, dtype=torch.bool)
            if not bool(mask.any(dim=1).all()):
                raise InvalidParameterError(
                    "every bag needs at least one real tile (a mask row is all False)"
                )
            if bool(mask.all()):
                mask = None
            else:
                tiles = tiles.masked_fill(~mask[..., None], 0.0)
        x = self.latents.unsqueeze(0).expand(tiles.shape[0], -1, -1)
        kv: tuple[Tensor, Tensor] | None = None
        for i, layer in enumerate(self.layers):
            block = layer["xattn"]
            if i <= cfg.share_xattn_start_layer or kv is None:
                kv = block["xattn"].keys_values(tiles)  # later layers share W_k, W_v: reuse this cache
            x = x + block["xattn"](x, kv, mask)
            x = x + block["ff"](x)
            for sub in layer["tf"]:
                x = x + sub["mhsa"](x)
                x = x + sub["ff"](x)
        return {"image_embedding": self.cls_norm(x[:, 0]), "image_latents": self.img_norm(x[:, 1:])}

    @classmethod
    def from_prism(
        cls, directory: str | os.PathLike[str], *, xattn_chunk: int = 8192
    ) -> PerceiverSlideEncoder:
        """PRISM's slide encoder from a downloaded copy of ``paige-ai/Prism``, without running its code.

        Reads ``perceiver_config`` from ``config.json`` and the ``image_resampler.*`` tensors from the weights
        (safetensors, else ``torch.load(weights_only=True)``); see :func:`convert_prism_state_dict`. The text
        decoder and heads are not loaded: for zero-shot and reports use
        :func:`~slidescope.vlm.published.load_published_model`.

        Parameters
        ----------
        directory : path
            The repository copy (``hf download paige-ai/Prism --local-dir DIR``).
        xattn_chunk : int
            Tiles per chunk of the streaming cross-attention (memory only).

        Returns
        -------
        PerceiverSlideEncoder
            In eval mode; ``forward(tiles (B, N, 2560), mask)["image_embedding"]`` is PRISM's slide embedding.
        """
        import json

        from ..features.encoders import WeightsError, read_state_dict

        path = Path(directory)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise WeightsError(f"{path} has no config.json; pass a downloaded copy of paige-ai/Prism")
        raw = json.loads(cfg_file.read_text()).get("perceiver_config")
        if not isinstance(raw, dict):
            raise WeightsError(f"{cfg_file} has no perceiver_config: not a PRISM repository")
        fields = {f.name for f in dataclasses.fields(PerceiverSlideEncoderConfig)}
        config = PerceiverSlideEncoderConfig(
            **{k: v for k, v in raw.items() if k in fields}, xattn_chunk=xattn_chunk
        )
        files = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        if not files:
            raise WeightsError(f"{path} holds no model.safetensors or pytorch_model.bin")
        encoder = cls(config)
        converted = convert_prism_state_dict(read_state_dict(files[0]))
        own = encoder.state_dict(keep_vars=True)
        wrong = [k for k, v in converted.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
        loaded = {id(own[k]) for k in converted if k in own}
        missing = [k for k, v in own.items() if id(v) not in loaded]  # shared tensors count once
        unexpected = [k for k in converted if k not in own]
        if wrong or missing or unexpected:
            raise WeightsError(
                f"{files[0]} does not fit PRISM's slide encoder for {cfg_file}: shape mismatch "
                f"{wrong[:3]}, missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        encoder.load_state_dict(converted, strict=False)
        return encoder.eval()


def convert_prism_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """PRISM's resampler tensors (``image_resampler.*`` of ``paige-ai/Prism``) under this module's names.

    The published module tree is ``image_resampler.perceiver.{latents, layers.*}`` plus ``image_resampler.
    {cls_norm, img_norm}``; its self-attention is a bias-free ``nn.MultiheadAttention`` (``mha.in_proj_weight``,
    ``mha.out_proj.weight``), stored here as two ``nn.Linear`` (``in_proj``, ``out_proj``). Everything else
    (text decoder, contrastive heads) is dropped.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        if not key.startswith("image_resampler."):
            continue
        key = key[len("image_resampler.") :]
        key = key.replace("perceiver.latents", "latents").replace("perceiver.layers.", "layers.")
        key = key.replace(".mhsa.mha.in_proj_weight", ".mhsa.in_proj.weight")
        key = key.replace(".mhsa.mha.out_proj.weight", ".mhsa.out_proj.weight")
        out[key] = value
    return out


def expected_parameter_count(config: PerceiverSlideEncoderConfig) -> int:
    """Parameters implied by ``config`` and the sharing scheme (computed by hand, for tests and docs)."""
    d, c, m = config.latent_dim, config.context_dim, config.mlp_mult
    ln = 2 * d
    g = 2 if config.mlp_activation == "geglu" else 1
    ff = ln + (d * d * m * g + d * m * g) + (d * m * d + d)
    xattn = ln + d * d + c * 2 * d + d * d + ff
    mhsa = ln + 3 * d * d + d * d + ff
    n_xattn = min(config.perceiver_depth, config.share_xattn_start_layer + 1)
    n_tf = min(config.perceiver_depth, config.share_tf_start_layer + 1)
    return (config.latent_seq + 1) * d + n_xattn * xattn + n_tf * config.transformer_depth * mhsa + 2 * ln
