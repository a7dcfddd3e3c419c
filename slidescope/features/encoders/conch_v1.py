"""CONCH v1 (MahmoodLab): the CoCa vision-language model's image tower (patch encoder) and text tower.

The published file ``MahmoodLab/conch/pytorch_model.bin`` is the whole CoCa model of mahmoodlab/CONCH
(``conch_ViT-B-16.json``): ``visual.*`` (a timm ViT-B/16 trunk at 448 px, 28x28 positional grid + CLS; a
contrastive attentional pooler, 512-d, one query, 8 heads, ``torch.nn.MultiheadAttention`` with 768-d keys and
values; ``ln_contrast``; the 512x512 ``proj_contrast``; and a captioning pooler, 256 queries), ``text.*`` (a
12-layer, 768-wide causal text transformer with a CLS embedding appended after the text, 128 positions, vocab
32007, projection to 512), ``text_decoder.*`` (the captioning decoder) and ``logit_scale``. The modules here
carry the published parameter names, so the file loads with strict key checks; the captioning parts
(``visual.attn_pool_caption``, ``visual.ln_caption``, ``text_decoder``) are not used by embeddings or
zero-shot and are left out by name. Layout checked against the reference code (mahmoodlab/CONCH @141cc09,
``tests/golden/make_conch_v1.py``).

* The patch encoder ``conch-v1`` returns ``encode_image(x, proj_contrast=False, normalize=False)``: the
  512-d attentional-pooled, LayerNormed feature before the contrastive projection, what TRIDENT's
  ``conch_v1`` and CLAM store. Tiles: 512 px at 0.5 µm/px (20x), bicubic resize to 448 + centre crop 448,
  OpenAI CLIP mean/std (the transform ``create_model_from_pretrained`` returns), fp32.
* The text tower (``create_clip_text_tower("conch-v1")``) embeds prompts as ``encode_text(normalize=False)``
  and maps stored tile features into the joint space with ``proj_contrast`` (:meth:`ConchV1TextTower.image_to_joint`),
  so MI-Zero compares ``normalize(z @ proj_contrast)`` with ``normalize(text)``, as CONCH's zero-shot does;
  ``logit_scale`` is the file's ``exp(logit_scale)``.
"""

from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import InvalidParameterError
from ._base import Encoder, EncoderConfig
from ._catalog import CONCH_V1
from ._weights import WeightsError
from .clip import ClipTextTower

__all__ = [
    "CONCH_V1",
    "CONCH_V1_TOKENIZER_FILE",
    "CONCH_V1_UNUSED_PREFIXES",
    "CoCaAttentionalPooler",
    "ConchV1Encoder",
    "ConchV1TextTower",
    "ConchV1TextTransformer",
    "split_conch_v1_state_dict",
]

#: the tokenizer CONCH's code bundles (``conch/open_clip_custom/tokenizers/``); it is not in the hub repository
CONCH_V1_TOKENIZER_FILE = "conch_byte_level_bpe_uncased.json"
#: checkpoint parts for captioning only: not built, dropped by name when loading
CONCH_V1_UNUSED_PREFIXES = ("visual.attn_pool_caption.", "visual.ln_caption.", "text_decoder.")
_PAD_ID = 0


def _strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def split_conch_v1_state_dict(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(image, text)`` parts of a CONCH v1 checkpoint.

    ``image``: ``visual.*`` without the captioning pooler; ``text``: ``text.*``, ``visual.proj_contrast`` and
    ``logit_scale``. ``text_decoder.*`` (captioning) is in neither; any other key goes to ``image`` so that a
    strict load names it.
    """
    image: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    for key, value in _strip_module(state).items():
        if key.startswith(CONCH_V1_UNUSED_PREFIXES):
            continue
        if key.startswith("text.") or key == "logit_scale":
            text[key] = value
        else:
            image[key] = value
            if key == "visual.proj_contrast":
                text[key] = value
    return image, text


class CoCaAttentionalPooler(nn.Module):
    """CONCH v1's attentional pooler: learned queries attend over the trunk tokens.

    ``ln_q(query)`` attends to ``ln_k(tokens)`` through one ``torch.nn.MultiheadAttention`` whose keys and
    values have the trunk's width (``context_dim``), so its parameters are ``q_proj_weight``, ``k_proj_weight``,
    ``v_proj_weight``, ``in_proj_bias`` and ``out_proj`` (when ``context_dim == d_model``: one ``in_proj_weight``).
    This differs from CONCH v1.5's bias-free ``to_q``/``to_kv`` pooler (:class:`~.conch.AttentionalPooler`).
    """

    def __init__(self, d_model: int, context_dim: int, *, n_head: int = 8, n_queries: int = 1) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(
            d_model, n_head, kdim=context_dim, vdim=context_dim, batch_first=True
        )
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, context_dim)`` -> ``(B, n_queries, d_model)``."""
        kv = self.ln_k(tokens)
        q = self.ln_q(self.query).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.attn(q, kv, kv, need_weights=False)[0]


class _Visual(nn.Module):
    """``visual.*`` of the checkpoint minus the captioning pooler: trunk, contrastive pooler, LN, projection."""

    def __init__(self, kw: dict[str, Any]) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        width, dim = kw["width"], kw["embed_dim"]
        self.trunk = VisionTransformer(
            img_size=kw["image_size"],
            patch_size=kw["patch_size"],
            embed_dim=width,
            depth=kw["layers"],
            num_heads=kw["num_heads"],
            mlp_ratio=kw["mlp_ratio"],
            num_classes=0,
            dynamic_img_size=True,
        )
        self.attn_pool_contrast = CoCaAttentionalPooler(
            dim, width, n_head=kw["attn_pooler_heads"], n_queries=kw["n_queries_contrast"]
        )
        self.ln_contrast = nn.LayerNorm(dim)
        self.proj_contrast = nn.Parameter(width**-0.5 * torch.randn(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(
            x
        )  # final-norm tokens, CLS first (the reference's trunk.forward)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


class ConchV1Encoder(Encoder):
    """CONCH v1 image tower: ``uint8 (B, H, W, 3)`` -> ``(B, 512)``.

    The output is ``ln_contrast(attn_pool_contrast(trunk_tokens)[:, 0])``, i.e. the reference
    ``encode_image(x, proj_contrast=False, normalize=False)``: **not** projected into the text space and not
    L2-normalised (the patch feature TRIDENT and CLAM store). :meth:`project` applies ``proj_contrast``
    (``encode_image(x, normalize=False)``); zero-shot code does that through the text tower.

    Config kwargs (names of ``conch_ViT-B-16.json``'s ``vision_cfg``): ``image_size``, ``patch_size``, ``width``,
    ``layers``, ``num_heads``, ``mlp_ratio``, ``attn_pooler_heads``, ``n_queries_contrast``; ``embed_dim`` is
    the joint-space width.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        self.visual = _Visual(dict(config.kwargs))

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The image part of the full checkpoint; a positional grid of another size is resampled as the
        reference's ``resize_pos_embed`` does (bilinear, no antialias) before loading."""
        image = split_conch_v1_state_dict(state)[0]
        key = "visual.trunk.pos_embed"
        own = self.visual.trunk.pos_embed
        if key in image and own is not None and image[key].shape != own.shape and image[key].ndim == 3:
            from timm.layers import resample_abs_pos_embed

            image[key] = resample_abs_pos_embed(
                image[key],
                new_size=list(self.visual.trunk.patch_embed.grid_size),
                num_prefix_tokens=1,
                interpolation="bilinear",
                antialias=False,
            )
        return image

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, 448, 448)`` -> ``(B, 512)`` pooled feature (before ``proj_contrast``)."""
        return self.visual(x)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features -> the joint image-text space (``features @ proj_contrast``), not normalised."""
        return features @ self.visual.proj_contrast


def build_conch_v1(config: EncoderConfig) -> ConchV1Encoder:
    """Random-init CONCH v1 image tower for ``config`` (no download)."""
    return ConchV1Encoder(config)


# --------------------------------------------------------------------------------------------- text tower


class _TextBlock(nn.Module):
    """Pre-norm residual block with ``nn.MultiheadAttention`` (``ln_1``, ``attn``, ``ln_2``, ``mlp.c_fc/c_proj``)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", nn.GELU()),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Resblocks(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_TextBlock(width, heads) for _ in range(layers))


class ConchV1TextTransformer(nn.Module):
    """CONCH v1's text encoder (``text.*``): causal transformer, CLS embedding appended after the text.

    ``forward(ids)`` takes the tokenizer's ``(B, context_length)`` ids, drops the last position (the slot the
    tokenizer pads for the CLS token), appends ``cls_emb``, runs the blocks with a causal mask plus the
    reference's CLS mask, and returns ``ln_final(x[:, -1]) @ text_projection`` (not normalised). The CLS mask
    is the reference's as written: the CLS query sees position 0 and each position ``j >= 1`` whose
    *preceding* token is not padding (so one padding position after the end token, and itself only when the
    text fills the context).
    """

    def __init__(
        self, *, context_length: int, vocab_size: int, width: int, heads: int, layers: int, embed_dim: int
    ) -> None:
        super().__init__()
        self.heads = heads
        self.context_length = context_length
        self.text_projection = nn.Parameter(width**-0.5 * torch.randn(width, embed_dim))
        self.cls_emb = nn.Parameter(0.01 * torch.randn(width))
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, width))
        self.transformer = _Resblocks(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)

    def _mask(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive ``(B * heads, n + 1, n + 1)`` mask: causal, and the CLS row as the reference builds it."""
        n = ids.shape[1]
        keep = torch.ones(ids.shape[0], n + 1, n + 1, dtype=torch.bool, device=ids.device)
        keep[:, n, 1:] = ids != _PAD_ID  # the last row: column j >= 1 follows token j - 1
        causal = torch.ones(n + 1, n + 1, dtype=torch.bool, device=ids.device).tril()
        mask = torch.zeros(keep.shape, dtype=dtype, device=ids.device)
        mask.masked_fill_(~(keep & causal), float("-inf"))
        return mask.repeat_interleave(self.heads, dim=0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` token ids (``L <= context_length``) -> ``(B, embed_dim)`` projected text feature."""
        if ids.shape[1] > self.context_length:
            raise InvalidParameterError(
                f"token ids have {ids.shape[1]} positions; CONCH v1's text tower takes at most {self.context_length}"
            )
        ids = ids[:, :-1]
        x = self.token_embedding(ids)
        x = torch.cat([x, self.cls_emb.to(x.dtype).expand(x.shape[0], 1, -1)], dim=1)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        mask = self._mask(ids, x.dtype)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        return self.ln_final(x[:, -1]) @ self.text_projection


class _Projection(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_contrast = nn.Parameter(torch.eye(dim))


def _find_tokenizer(source: str | os.PathLike[str] | None) -> Path | None:
    """The tokenizer file: ``source`` (a file, or a folder holding it), else the installed CONCH package's."""
    candidates: list[Path] = []
    if source is not None:
        path = Path(source).expanduser()
        if path.is_file():
            return path
        candidates += [path / CONCH_V1_TOKENIZER_FILE, path / "tokenizer.json"]
    spec = importlib.util.find_spec("conch")  # finds the package without importing it
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(Path(root) / "open_clip_custom" / "tokenizers" / CONCH_V1_TOKENIZER_FILE)
    return next((c for c in candidates if c.is_file()), None)


class ConchV1TextTower(ClipTextTower):
    """CONCH v1's text side: ``text.*`` plus ``visual.proj_contrast`` (for the stored tile features).

    ``encode(texts)`` is the reference ``encode_text(tokenize(get_tokenizer(), texts), normalize=False)``;
    :meth:`image_to_joint` is ``features @ proj_contrast``, turning ``conch-v1`` tile features into the
    reference's ``encode_image(x, normalize=False)``. The tokenizer is CONCH's byte-level BPE file
    (``conch_byte_level_bpe_uncased.json``), which ships with CONCH's code, not with the hub weights: it is taken
    from ``tokenizer=``, from the weights folder, or from an installed ``conch`` package.
    """

    def __init__(self, config: EncoderConfig, text_kwargs: dict[str, Any]) -> None:
        super().__init__(config, text_kwargs)
        kw = dict(text_kwargs)
        cfg = dict(kw["text_cfg"])
        self.text = ConchV1TextTransformer(
            context_length=cfg["context_length"],
            vocab_size=cfg["vocab_size"],
            width=cfg["width"],
            heads=cfg["heads"],
            layers=cfg["layers"],
            embed_dim=kw["embed_dim"],
        )
        self.visual = _Projection(kw["embed_dim"])
        self.tokenizer: Any = None

    def checkpoint_module(self) -> nn.Module:
        return self  # text.* and visual.proj_contrast

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        text = split_conch_v1_state_dict(state)[1]
        return {k: v for k, v in text.items() if k != "logit_scale"}

    def image_to_joint(self, features: torch.Tensor) -> torch.Tensor:
        """Stored ``conch-v1`` tile features ``(N, 512)`` -> the joint space (``@ proj_contrast``)."""
        proj = self.visual.proj_contrast
        return features.to(proj.device, proj.dtype) @ proj

    def load_tokenizer(self, source: str | os.PathLike[str] | None) -> None:
        """CONCH's tokenizer file, read with the ``tokenizers`` library as the file specifies it.

        Its byte-level pre-tokeniser adds a prefix space, so the first word gets the same id as later ones.
        The reference wraps the file in transformers' ``PreTrainedTokenizerFast``, which from transformers 4.38
        to 4.57 turns that prefix space off (the first word then gets another id); transformers < 4.38 (what
        CONCH was released with) and 5 follow the file, as this does (``tests/golden/make_conch_v1.py``).
        """
        from tokenizers import Tokenizer

        path = _find_tokenizer(source)
        if path is None:
            raise WeightsError(
                f"CONCH v1's tokenizer ({CONCH_V1_TOKENIZER_FILE}) was not found"
                + (f" in {source}" if source is not None else "")
                + ". It ships with CONCH's code, not with the hub weights: put conch/open_clip_custom/tokenizers/"
                f"{CONCH_V1_TOKENIZER_FILE} from https://github.com/mahmoodlab/CONCH next to pytorch_model.bin, "
                "or `pip install git+https://github.com/Mahmoodlab/CONCH.git`."
            )
        tok = Tokenizer.from_file(str(path))
        pad = tok.token_to_id("<pad>")
        if pad != _PAD_ID or tok.token_to_id("<start_of_text>") is None:
            raise WeightsError(
                f"{path} is not CONCH's tokenizer (no <pad> = {_PAD_ID} / <start_of_text> tokens)"
            )
        length = self.text.context_length - 1  # the last position is the CLS slot
        tok.enable_truncation(max_length=length)
        tok.enable_padding(length=length, pad_id=pad, pad_token="<pad>")
        self.tokenizer = tok

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The reference ``tokenize``: start/end tokens, truncation and padding to ``context_length - 1``, then one
        ``<pad>`` appended (the CLS slot): ``(P, context_length)`` ids."""
        from .clip import _texts

        texts = _texts(texts)
        if self.tokenizer is None:
            raise InvalidParameterError(
                "this CONCH v1 text tower has no tokenizer; call load_tokenizer(PATH)"
            )
        ids = torch.tensor([e.ids for e in self.tokenizer.encode_batch(texts)], dtype=torch.long)
        return {"input_ids": F.pad(ids, (0, 1), value=_PAD_ID)}

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return self.text(self.tokenize(texts)["input_ids"].to(self.device))
