"""Test stand-in for paige-ai/Prism's ``biogpt.py`` / ``biogpt_hf.py``: BioGPT with cross-attention to the image
latents from layer ``first_x_attn_layer`` on, and the CLS-token text embedding read at the last unimodal layer.

The self-attention/MLP parameter names follow transformers' ``BioGptForCausalLM`` (``biogpt.embed_tokens``,
``biogpt.layers.{i}.self_attn.{q,k,v,out}_proj``, ``fc1``, ``fc2``...). The cross-attention block names
(``biogpt.layers.{i}.x_attn.*``) are a stand-in: the published ``biogpt_hf.py`` was not available.
"""

import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedTokenizerFast


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, n, d = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), attn_mask=mask[:, None]
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class _XAttn(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, n, d = x.shape
        q = self.to_q(self.norm(x)).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(context).view(b, context.shape[1], 2, self.heads, -1).unbind(2)
        out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2))
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class _Layer(nn.Module):
    def __init__(self, config, context_dim: int, cross: bool) -> None:
        super().__init__()
        d = config.hidden_size
        self.self_attn = _SelfAttention(d, config.num_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.x_attn = _XAttn(d, context_dim, config.num_attention_heads) if cross else None
        self.final_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, d)

    def forward(self, x: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask)
        if self.x_attn is not None:
            x = x + self.x_attn(x, context)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class BioGptModel(nn.Module):
    def __init__(self, config, context_dim: int) -> None:
        super().__init__()
        n = config.num_hidden_layers
        self.first_x_attn_layer = getattr(config, "first_x_attn_layer", n // 2)
        self.embed_scale = math.sqrt(config.hidden_size)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + 2, config.hidden_size)
        self.layers = nn.ModuleList(
            _Layer(config, context_dim, i >= self.first_x_attn_layer) for i in range(n)
        )
        self.layer_norm = nn.LayerNorm(config.hidden_size)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, context: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        keep = attention_mask.bool()
        positions = (keep.long().cumsum(1) * keep.long() - 1).clamp_min(0) + 2  # BioGPT's learned offset of 2
        x = self.embed_tokens(input_ids) * self.embed_scale + self.embed_positions(positions)
        n = input_ids.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        mask = causal[None] & keep[:, None, :]
        mask = (
            mask | torch.eye(n, dtype=torch.bool, device=x.device)[None]
        )  # padded rows attend to themselves
        hidden = [x]
        for layer in self.layers:
            x = layer(x, mask, context)
            hidden.append(x)
        x = self.layer_norm(x)
        hidden[-1] = x
        return x, hidden


class BioGptForCausalLM(nn.Module):
    def __init__(self, config, context_dim: int) -> None:
        super().__init__()
        self.config = config
        self.biogpt = BioGptModel(config, context_dim)
        self.output_projection = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids: Tensor, key_value_states: Tensor, attention_mask: Tensor) -> dict:
        x, hidden = self.biogpt(input_ids, attention_mask, key_value_states)
        return {"logits": self.output_projection(x), "hidden_states": tuple(hidden)}

    @torch.no_grad()
    def generate(
        self,
        inputs: Tensor,
        key_value_states: Tensor,
        max_length: int = 100,
        do_sample: bool = False,
        num_beams: int = 1,
        num_beam_groups: int = 1,
        eos_token_id: Optional[int] = None,
        pad_token_id: int = 1,
        **kwargs,
    ) -> Tensor:
        """Beam search (greedy for one beam) without a KV cache: small models only."""
        if do_sample or num_beam_groups != 1:
            raise NotImplementedError("the test stand-in decodes with plain beam search only")
        outs = []
        for b in range(inputs.shape[0]):
            beams = [(inputs[b], 0.0, False)]
            ctx = key_value_states[b : b + 1]
            while len(beams[0][0]) < max_length and not all(done for _, _, done in beams):
                cand = []
                for seq, score, done in beams:
                    if done:
                        cand.append((seq, score, True))
                        continue
                    logits = self(seq[None], ctx, torch.ones_like(seq)[None])["logits"][0, -1]
                    top = logits.log_softmax(-1).topk(num_beams)
                    for lp, tok in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                        cand.append(
                            (torch.cat([seq, seq.new_tensor([tok])]), score + lp, tok == eos_token_id)
                        )
                beams = sorted(cand, key=lambda c: -c[1])[:num_beams]
            outs.append(beams[0][0])
        length = max(len(s) for s in outs)
        return torch.stack([F.pad(s, (0, length - len(s)), value=pad_token_id) for s in outs])


class BioGPT(nn.Module):
    def __init__(
        self,
        config,
        model_dir: Path,
        frozen_weights: bool = True,
        frozen_embeddings: bool = False,
        context_dim: int = 1280,
    ) -> None:
        super().__init__()
        self.context_dim = context_dim
        self.model = BioGptForCausalLM(config, context_dim)
        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(Path(model_dir) / "biogpt")
        self.text_dim = self.model.biogpt.embed_tokens.embedding_dim
        self.cls_token_id = self.tokenizer.convert_tokens_to_ids("madeupword0006")

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def bos_token_id(self) -> int:
        return self.tokenizer.eos_token_id  # BioGPT uses EOS as BOS

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def tokenize(self, text: list[str]) -> Tensor:
        text = [t + self.tokenizer.eos_token for t in text]
        return self.tokenizer(
            text=text,
            add_special_tokens=True,
            padding=True,
            return_tensors="pt",
            return_token_type_ids=False,
            return_attention_mask=False,
        )["input_ids"]

    def untokenize(self, token_ids: Tensor) -> list[str]:
        return self.tokenizer.batch_decode(token_ids, skip_special_tokens=False)

    def forward(
        self, input_ids: Tensor, key_value_states: Tensor, attention_mask: Optional[Tensor] = None, **kwargs
    ) -> dict:
        cls = torch.full((input_ids.shape[0], 1), self.cls_token_id, device=input_ids.device)
        input_ids = torch.cat([input_ids, cls], dim=-1)
        if attention_mask is None:
            attention_mask = (input_ids != self.pad_id).long()
        out = self.model(input_ids, key_value_states, attention_mask)
        last_unimodal = self.model.biogpt.first_x_attn_layer - 1
        return {
            "logits": out["logits"][:, :-1],
            "text_embedding": out["hidden_states"][last_unimodal + 1][:, -1],
        }
