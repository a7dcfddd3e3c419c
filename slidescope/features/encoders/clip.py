"""CLIP-family pathology encoders: PLIP (transformers ``CLIPModel``) and QuiltNet (open_clip ``CLIP``).

Both publish the whole vision-language model in one file. The encoders keep the image tower and its
projection into the joint space (512-d), with the published key names; the text parts are split off
by :func:`split_hf_clip_state_dict` / :func:`split_open_clip_state_dict`. The **text towers** that share
that space live here too (:class:`HFClipTextTower`, :class:`OpenClipTextTower`, built by
:func:`create_clip_text_tower`): they load the text half of the *same* weights file, so MI-Zero
(:func:`slidescope.vlm.zero_shot` with ``level="tile"``) compares tile and prompt embeddings in one space.

Embeddings are the **projected** image features (``CLIPModel.get_image_features`` for PLIP,
``CLIP.encode_image(normalize=False)`` for QuiltNet), **not** L2-normalised; zero-shot scoring
normalises them before the cosine similarity.

Both models were trained on images of varying magnification (PLIP: OpenPath, pathology images shared
on Twitter; QuiltNet: Quilt-1M, frames of educational YouTube videos plus other sources), so no native
mpp exists; the presets tile 224 px at 0.5 µm/px (20x), the common setting of the CONCH/MI-Zero
benchmarks. Preprocessing is CLIP's: bicubic resize to 224 + centre crop, OpenAI CLIP mean/std.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import InvalidParameterError
from ._base import Encoder, EncoderConfig
from ._catalog import CLIP_MEAN, CLIP_STD, PLIP, QUILTNET
from ._weights import WeightsError, _gated_hint, file_digest, load_into, read_state_dict, resolve_weights

log = logging.getLogger(__name__)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "HFClipImageEncoder",
    "OpenClipImageEncoder",
    "split_hf_clip_state_dict",
    "split_open_clip_state_dict",
    "PLIP",
    "QUILTNET",
    "ClipTextTower",
    "HFClipTextTower",
    "OpenClipTextTower",
    "create_clip_text_tower",
    "register_clip_text_tower",
    "list_clip_text_towers",
]


_HF_IMAGE_PREFIXES = ("vision_model.", "visual_projection.")


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def split_hf_clip_state_dict(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a transformers ``CLIPModel`` state dict into ``(image, text)`` parts.

    ``image``: ``vision_model.*`` and ``visual_projection.*``; ``text``: everything else
    (``text_model.*``, ``text_projection.*``, ``logit_scale``). The ``*.position_ids`` buffers that
    transformers < 4.31 saved are dropped from both (they are constants, rebuilt by the model).
    """
    image: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    for key, value in _strip_prefix(state, "module.").items():
        if key.endswith(".position_ids"):
            continue
        (image if key.startswith(_HF_IMAGE_PREFIXES) else text)[key] = value
    return image, text


def split_open_clip_state_dict(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split an open_clip ``CLIP`` state dict into ``(image, text)`` parts.

    ``image``: ``visual.*``; ``text``: everything else (``token_embedding``, ``positional_embedding``,
    ``transformer.*``, ``ln_final``, ``text_projection``, ``logit_scale``, or ``text.*`` for custom
    text towers).
    """
    image: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    for key, value in _strip_prefix(state, "module.").items():
        (image if key.startswith("visual.") else text)[key] = value
    return image, text


class HFClipImageEncoder(Encoder):
    """The image half of a transformers ``CLIPModel``: vision transformer + ``visual_projection``.

    ``uint8 (B, H, W, 3)`` -> ``(B, projection_dim)`` projected, un-normalised image features
    (``CLIPModel.get_image_features``). ``config.kwargs`` are ``CLIPVisionConfig`` keyword arguments
    (including ``projection_dim``). :meth:`checkpoint_module` has the published keys
    ``vision_model.*`` + ``visual_projection.weight``.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        self.clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**config.kwargs))

    def checkpoint_module(self) -> nn.Module:
        return self.clip

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keep the image parts of a full ``CLIPModel`` checkpoint (text parts and position_ids dropped)."""
        return split_hf_clip_state_dict(state)[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, 224, 224)`` -> ``(B, 512)`` projected image embedding."""
        return self.clip(pixel_values=x).image_embeds


class OpenClipImageEncoder(Encoder):
    """The image tower of an open_clip ``CLIP`` (``visual.*``, its ``proj`` included).

    ``uint8 (B, H, W, 3)`` -> ``(B, embed_dim)`` projected, un-normalised image features
    (``CLIP.encode_image``). ``config.kwargs``: ``embed_dim`` (joint space), ``vision_cfg``
    (``open_clip.model.CLIPVisionCfg`` fields) and ``quick_gelu``, as in an ``open_clip_config.json``.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        from open_clip.model import CLIPVisionCfg, _build_vision_tower

        kw: dict[str, Any] = dict(config.kwargs)
        self.visual = _build_vision_tower(
            kw["embed_dim"], CLIPVisionCfg(**kw["vision_cfg"]), quick_gelu=kw.get("quick_gelu", False)
        )

    def checkpoint_module(self) -> nn.Module:
        return self  # only ``visual.*`` is persistent (mean/std buffers are not saved)

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keep ``visual.*`` of a full open_clip checkpoint."""
        return split_open_clip_state_dict(state)[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, 224, 224)`` -> ``(B, 512)`` projected image embedding."""
        return self.visual(x)


def build_hf_clip_image(config: EncoderConfig) -> HFClipImageEncoder:
    """Random-init transformers CLIP image tower + projection (no download)."""
    return HFClipImageEncoder(config)


def build_open_clip_image(config: EncoderConfig) -> OpenClipImageEncoder:
    """Random-init open_clip image tower (no download)."""
    return OpenClipImageEncoder(config)


# --------------------------------------------------------------------------------------------- text towers


class ClipTextTower(nn.Module):
    """The text half of a CLIP checkpoint: ``encode(texts) -> (P, embed_dim)`` in the image tower's space.

    The output is the projected, **un-normalised** text feature (``CLIPModel.get_text_features`` /
    ``CLIP.encode_text(normalize=False)``); zero-shot code L2-normalises it, as it does the image side.

    Attributes
    ----------
    config : EncoderConfig
        The image preset the weights belong to (hub id, weights file, licence).
    logit_scale : float
        The checkpoint's learned ``exp(logit_scale)`` (CLIP's softmax temperature), or 100 if absent.
    weights_digest : str or None
        sha256 of the weights file: equal to the image encoder's when both come from the same file.
    """

    logit_scale: float = 100.0
    weights_digest: str | None = None

    def __init__(self, config: EncoderConfig, text_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.text_kwargs = dict(text_kwargs)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def checkpoint_module(self) -> nn.Module:
        """The submodule whose ``state_dict`` has the published text keys."""
        raise NotImplementedError  # pragma: no cover

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The text half of a full checkpoint, without ``logit_scale`` (kept as :attr:`logit_scale`)."""
        raise NotImplementedError  # pragma: no cover

    def load_tokenizer(self, source: str | os.PathLike[str] | None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected text features ``(P, embed_dim)`` (not L2-normalised)."""
        raise NotImplementedError  # pragma: no cover

    def image_to_joint(self, features: torch.Tensor) -> torch.Tensor:
        """Stored tile embeddings of the image encoder -> the space of :meth:`encode` (identity: PLIP and
        QuiltNet store projected features; CONCH v1 stores them before its ``proj_contrast``)."""
        return features

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encode(texts)


def _texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InvalidParameterError("encode() takes a list of texts, got a single str; wrap it in a list")
    out = [str(t) for t in texts]
    if not out:
        raise InvalidParameterError("encode() got an empty list of texts")
    return out


_HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


class HFClipTextTower(ClipTextTower):
    """PLIP's text side: transformers ``CLIPTextModelWithProjection`` (``text_model.*`` + ``text_projection``)
    and the CLIP BPE tokenizer saved next to the weights (``vocab.json`` + ``merges.txt`` / ``tokenizer.json``).
    """

    def __init__(self, config: EncoderConfig, text_kwargs: dict[str, Any]) -> None:
        super().__init__(config, text_kwargs)
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        self.clip = CLIPTextModelWithProjection(CLIPTextConfig(**text_kwargs))
        self.tokenizer: Any = None

    def checkpoint_module(self) -> nn.Module:
        return self.clip

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        text = split_hf_clip_state_dict(state)[1]
        return {k: v for k, v in text.items() if k != "logit_scale"}

    def load_tokenizer(self, source: str | os.PathLike[str] | None) -> None:
        """CLIP tokenizer from a directory (the weights folder) or, with ``None``, the preset's hub repository."""
        from transformers import AutoTokenizer

        if source is not None:
            path = Path(source)
            if not path.is_dir() or not any((path / f).is_file() for f in _HF_TOKENIZER_FILES):
                raise InvalidParameterError(
                    f"{path} holds no tokenizer for {self.name!r} (none of {', '.join(_HF_TOKENIZER_FILES)}); the "
                    f"weights folder must be a full copy of {self.config.hub_id} (`hf download {self.config.hub_id} "
                    f"--local-dir DIR`), or pass tokenizer=DIR"
                )
            name, kwargs = str(path), {"local_files_only": True}
        else:
            name, kwargs = str(self.config.hub_id), {}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        except (OSError, ValueError) as err:
            raise WeightsError(
                f"could not load the {self.name!r} tokenizer from {name}: {err}.{_gated_hint(self.config)}"
            ) from err

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        limit = int(self.text_kwargs.get("max_position_embeddings", 77))
        batch = self.tokenizer(
            _texts(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt"
        )
        return {k: batch[k] for k in ("input_ids", "attention_mask")}

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
        return self.clip(**batch).text_embeds


class OpenClipTextTower(ClipTextTower):
    """QuiltNet's text side: open_clip's ``TextTransformer`` (``token_embedding``, ``positional_embedding``,
    ``transformer.resblocks.*``, ``ln_final``, ``text_projection``) and open_clip's bundled OpenAI BPE tokenizer
    (what ``open_clip.get_tokenizer('hf-hub:wisdomik/QuiltNet-B-32')`` returns: the config names no other)."""

    def __init__(self, config: EncoderConfig, text_kwargs: dict[str, Any]) -> None:
        super().__init__(config, text_kwargs)
        from open_clip.model import _build_text_tower

        kw = dict(text_kwargs)
        self.text = _build_text_tower(
            kw["embed_dim"], dict(kw["text_cfg"]), quick_gelu=kw.get("quick_gelu", False)
        )
        self.tokenizer: Any = None

    def checkpoint_module(self) -> nn.Module:
        return self.text

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        text = split_open_clip_state_dict(state)[1]
        return {k: v for k, v in text.items() if k != "logit_scale"}

    def load_tokenizer(self, source: str | os.PathLike[str] | None) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self.tokenizer = SimpleTokenizer(
            context_length=int(self.text_kwargs["text_cfg"].get("context_length", 77))
        )

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokenizer(_texts(texts))}

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return self.text(self.tokenize(texts)["input_ids"].to(self.device))


TextBuilder = Callable[[EncoderConfig, dict[str, Any]], ClipTextTower]

#: published text-tower architectures of the full checkpoints (``layouts/plip.json``, ``layouts/quiltnet.json``)
PLIP_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "projection_dim": 512,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    # openai/clip-vit-base-patch32's (and so PLIP's) ids: eos_token_id 2 selects the legacy argmax pooling
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
QUILTNET_TEXT = {
    "embed_dim": 512,
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
    "quick_gelu": False,
}

#: CONCH v1's text tower (``conch_ViT-B-16.json``'s ``text_cfg``; layout: ``tests/golden/conch_v1_layout.json``)
CONCH_V1_TEXT = {
    "embed_dim": 512,
    "text_cfg": {"context_length": 128, "vocab_size": 32007, "width": 768, "heads": 12, "layers": 12},
}


#: BiomedCLIP's open_clip text_cfg (hf_proj_type mlp, CLS of the last hidden state, context 256) with the
#: PubMedBERT-base architecture written out (open_clip reads it from the hub); see ``biomedclip``
BIOMEDCLIP_TEXT: dict[str, Any] = {
    "embed_dim": 512,
    "proj_type": "mlp",
    "pooler_type": "cls_last_hidden_state_pooler",
    "context_length": 256,
    "tokenizer": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
    "bert": {
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
    },
}


def _conch_v1_text_tower(config: EncoderConfig, kwargs: dict[str, Any]) -> ClipTextTower:
    from .conch_v1 import ConchV1TextTower  # conch_v1 imports this module

    return ConchV1TextTower(config, kwargs)


def _biomedclip_text_tower(config: EncoderConfig, kwargs: dict[str, Any]) -> ClipTextTower:
    from .biomedclip import BertClipTextTower  # biomedclip imports this module

    return BertClipTextTower(config, kwargs)


_TEXT_REGISTRY: dict[str, tuple[str, dict[str, Any], TextBuilder]] = {
    "plip": ("plip", PLIP_TEXT, HFClipTextTower),
    "quiltnet": ("quiltnet", QUILTNET_TEXT, OpenClipTextTower),
    "conch-v1": ("conch-v1", CONCH_V1_TEXT, _conch_v1_text_tower),
    # QuiltNet-B-16: open_clip ViT-B-16, whose text_cfg is ViT-B-32's (model_configs/ViT-B-16.json)
    "quiltnet-b16": ("quiltnet-b16", QUILTNET_TEXT, OpenClipTextTower),
    "biomedclip": ("biomedclip", BIOMEDCLIP_TEXT, _biomedclip_text_tower),
}


def register_clip_text_tower(
    name: str, builder: TextBuilder, kwargs: dict[str, Any] | None = None, *, image_encoder: str | None = None
) -> None:
    """Add a text tower: the text half of a patch-level CLIP model, for MI-Zero (``zero_shot(level="tile")``).

    ``builder(config, kwargs)`` returns a :class:`ClipTextTower` (random weights) whose
    ``checkpoint_module()`` / ``convert_state_dict()`` load the text half of the image encoder's weights file;
    ``config`` is the registered patch encoder ``image_encoder`` (default: ``name``) whose tile embeddings
    share the tower's joint space. A lab's package registers from a ``slidescope.text_towers`` entry point
    (see docs/PLUGINS.md), like encoders."""
    if name in _TEXT_REGISTRY:
        log.warning("text tower %r registered twice; the later one wins", name)
    _TEXT_REGISTRY[name] = (image_encoder or name, dict(kwargs or {}), builder)


def _text_plugins() -> None:
    from ..._plugins import load_plugins

    load_plugins("text_towers")


def list_clip_text_towers() -> list[str]:
    """Patch-level CLIP models with a text tower (their names are the image encoders' names), plugins included."""
    _text_plugins()
    return sorted(_TEXT_REGISTRY)


def create_clip_text_tower(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    pretrained: bool = True,
) -> ClipTextTower:
    """The text tower of a patch-level CLIP model, from the same weights file as its image encoder.

    Parameters
    ----------
    name : {"plip", "quiltnet", "quiltnet-b16", "biomedclip", "conch-v1"}
        A name from :func:`list_clip_text_towers`; the image encoder of the same name embeds the tiles.
    weights : path, optional
        The weights file or folder (as for ``create_encoder(name, weights=...)``); ``None`` uses the hub.
    tokenizer : path, optional
        Where PLIP's tokenizer files (or CONCH v1's ``conch_byte_level_bpe_uncased.json``) are; default: the
        weights folder (or the hub repository; for CONCH v1 an installed ``conch`` package).
    device : str or torch.device
        Where the tower runs.
    pretrained : bool
        False builds the architecture with random weights and no tokenizer (tests, layout checks).

    Returns
    -------
    ClipTextTower
        ``encode(list of P texts) -> (P, embed_dim)`` projected text features; ``logit_scale`` from the file.

    Examples
    --------
    >>> tower = create_clip_text_tower("quiltnet", weights="QuiltNet-B-32/")   # doctest: +SKIP
    >>> tower.encode(["adenocarcinoma", "normal lung"]).shape                  # doctest: +SKIP
    torch.Size([2, 512])
    """
    from ._registry import _entry

    _text_plugins()
    if name not in _TEXT_REGISTRY:
        raise InvalidParameterError(
            f"{name!r} has no text tower; patch-level CLIP models with one: "
            f"{', '.join(list_clip_text_towers())}"
        )
    image_name, kwargs, builder = _TEXT_REGISTRY[name]
    config = _entry(image_name)[0]
    path = resolve_weights(config, weights) if pretrained else None
    tower = builder(config, kwargs)
    if path is not None:
        state = read_state_dict(path)
        load_into(
            tower.checkpoint_module(), tower.convert_state_dict(state), name=f"{config.name} text tower"
        )
        scale = state.get("logit_scale", state.get("module.logit_scale"))
        if scale is not None:
            tower.logit_scale = float(scale.float().exp())
        tower.weights_digest = file_digest(path)
        if tokenizer is None and weights is not None:
            tokenizer = Path(weights) if Path(weights).is_dir() else Path(weights).parent
        tower.load_tokenizer(tokenizer)
    return tower.eval().to(device)
