"""BiomedCLIP's text tower: PubMedBERT (transformers ``BertModel``, no pooling layer) + open_clip's MLP projection.

BiomedCLIP is an open_clip ``CustomTextCLIP``: its image tower is a timm ViT-B/16 trunk with a linear projection
(built by :class:`~slidescope.features.encoders.clip.OpenClipImageEncoder` from the ``biomedclip`` preset's
``vision_cfg``); its text tower is open_clip's ``HFTextEncoder`` over
``microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract`` with ``hf_proj_type="mlp"`` (768 -> 640 -> 512, GELU, no
biases), ``hf_pooler_type="cls_last_hidden_state_pooler"`` (the CLS token of the last hidden state) and context
length 256. open_clip builds the BERT from the hub's ``config.json``; :class:`BertClipTextTower` builds it from
``clip.BIOMEDCLIP_TEXT`` (BERT-base, the PubMedBERT vocabulary of 30522 word pieces), so nothing is fetched but
the tokenizer. Published keys (``open_clip_pytorch_model.bin``): ``text.transformer.*``, ``text.proj.{0,2}.weight``.

The tokenizer is open_clip's ``HFTokenizer`` (whitespace/ftfy cleaning, pad to 256, truncate) over the PubMedBERT
word-piece vocabulary, read from the weights folder (``vocab.txt`` / ``tokenizer.json``) or, without one, the hub.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import InvalidParameterError
from ._base import EncoderConfig
from ._weights import WeightsError, _gated_hint
from .clip import BIOMEDCLIP_TEXT, ClipTextTower, _texts, split_open_clip_state_dict

__all__ = ["BIOMEDCLIP_TEXT", "BertClipTextTower", "BertTextEncoder"]

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


class BertTextEncoder(nn.Module):
    """open_clip's ``HFTextEncoder`` for a BERT with CLS pooling, from a config (no hub): ``transformer`` (a
    ``BertModel`` without its pooling layer, as open_clip builds it for the CLS-of-last-hidden-state pooler) and
    ``proj`` (``"linear"``: one bias-free Linear; ``"mlp"``: Linear -> GELU -> Linear, hidden (width + out) // 2)."""

    def __init__(self, bert: dict[str, Any], output_dim: int, proj_type: str, pooler_type: str) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        if pooler_type != "cls_last_hidden_state_pooler":
            raise ValueError(
                f"only the CLS pooler of the last hidden state is implemented, got {pooler_type!r}"
            )
        self.config = BertConfig(**bert)
        self.transformer = BertModel(self.config, add_pooling_layer=False)
        width = self.config.hidden_size
        if proj_type == "linear":
            self.proj: nn.Module = nn.Linear(width, output_dim, bias=False)
        elif proj_type == "mlp":
            hidden = (width + output_dim) // 2
            self.proj = nn.Sequential(
                nn.Linear(width, hidden, bias=False), nn.GELU(), nn.Linear(hidden, output_dim, bias=False)
            )
        else:
            raise ValueError(f"proj_type must be 'linear' or 'mlp', got {proj_type!r}")

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids.ne(int(self.config.pad_token_id or 0)).long()
        out = self.transformer(input_ids=input_ids, attention_mask=mask)
        return self.proj(out.last_hidden_state[:, 0])


class BertClipTextTower(ClipTextTower):
    """BiomedCLIP's text side (``text.*`` of the open_clip checkpoint) and its PubMedBERT tokenizer."""

    def __init__(self, config: EncoderConfig, text_kwargs: dict[str, Any]) -> None:
        super().__init__(config, text_kwargs)
        kw = self.text_kwargs
        self.text = BertTextEncoder(kw["bert"], kw["embed_dim"], kw["proj_type"], kw["pooler_type"])
        self.tokenizer: Any = None

    def checkpoint_module(self) -> nn.Module:
        return self.text

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``text.*`` of the full file, prefix removed; constant position/token-type id buffers that older
        transformers saved are dropped (rebuilt by the model), and so is a BERT pooling layer if a file has one
        (CLS pooling of the last hidden state never uses it)."""
        text = split_open_clip_state_dict(state)[1]
        return {
            k[len("text.") :]: v
            for k, v in text.items()
            if k.startswith("text.")
            and not k.endswith((".position_ids", ".token_type_ids"))
            and not k.startswith("text.transformer.pooler.")
        }

    def load_tokenizer(self, source: str | os.PathLike[str] | None) -> None:
        """open_clip's ``HFTokenizer`` from a folder with the PubMedBERT vocabulary, or (``None``) the hub."""
        from open_clip.tokenizer import HFTokenizer

        name = str(self.text_kwargs["tokenizer"])
        kwargs: dict[str, Any] = {}
        if source is not None:
            path = Path(source)
            if not path.is_dir() or not any((path / f).is_file() for f in _TOKENIZER_FILES):
                raise InvalidParameterError(
                    f"{path} holds no tokenizer for {self.name!r} (none of {', '.join(_TOKENIZER_FILES)}): put the "
                    f"files of {name} there (`hf download {name} --local-dir DIR`), or pass tokenizer=DIR"
                )
            name, kwargs = str(path), {"local_files_only": True}
        try:
            self.tokenizer = HFTokenizer(
                name, context_length=int(self.text_kwargs["context_length"]), **kwargs
            )
        except (OSError, ValueError) as err:
            raise WeightsError(
                f"could not load the {self.name!r} tokenizer from {name}: {err}.{_gated_hint(self.config)}"
            ) from err

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokenizer(_texts(texts))}

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return self.text(self.tokenize(texts)["input_ids"].to(self.device))
