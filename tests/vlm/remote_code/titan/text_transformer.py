"""Test stand-in for MahmoodLab/TITAN's ``text_transformer.py``: a CoCa-style causal text transformer whose
embedding is the output at a learned CLS token appended after the text, and its ``tokenizer``. Internal
parameter names are a stand-in (the published file was not available)."""

from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerFast


class Tokenizer:
    """``tokenizer(texts) -> LongTensor (B, context_length)``, zero-padded, as open_clip-style tokenizers return."""

    def __init__(self, model_dir: str, context_length: int) -> None:
        self.hf = PreTrainedTokenizerFast.from_pretrained(Path(model_dir))
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> Tensor:
        ids = self.hf(
            texts, padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )["input_ids"]
        return ids


class TextTransformer(nn.Module):
    def __init__(self, cfg: dict, model_dir: str) -> None:
        super().__init__()
        width, n = cfg["width"], cfg["context_length"]
        self.pad_id = cfg.get("pad_id", 0)
        self.tokenizer = Tokenizer(model_dir, n)
        self.token_embedding = nn.Embedding(cfg["vocab_size"], width)
        self.positional_embedding = nn.Parameter(torch.randn(n, width) * 0.02)
        self.cls_emb = nn.Parameter(torch.randn(width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, cfg["heads"], 2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, cfg["layers"], enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, cfg["embed_dim"]) * width**-0.5)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        n = ids.shape[1] + 1
        x = torch.cat([self.token_embedding(ids), self.cls_emb.expand(ids.shape[0], 1, -1)], dim=1)
        x = x + self.positional_embedding[:n]
        causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).triu(1)
        x = self.ln_final(self.transformer(x, mask=causal))
        return x[:, -1] @ self.text_projection, x[:, :-1]


def build_text_tower(cfg: dict, model_dir: str) -> TextTransformer:
    return TextTransformer(cfg, model_dir)
