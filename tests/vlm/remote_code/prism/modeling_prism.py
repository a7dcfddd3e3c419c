"""Test stand-in for paige-ai/Prism's ``modeling_prism.py``: the ``Prism`` model and the methods its model card
uses (``slide_representations``, ``generate`` + ``untokenize``, ``zero_shot``, ``forward``)."""

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel

from .biogpt import BioGPT
from .configuring_prism import PrismConfig
from .perceiver import PerceiverResampler


class EmbedToLatents(nn.Module):
    def __init__(self, dim: int, dim_latents: int) -> None:
        super().__init__()
        self.to_latents = nn.Linear(dim, dim_latents, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.to_latents(x), dim=-1)


class Prism(PreTrainedModel):
    config_class = PrismConfig

    def __init__(self, config: PrismConfig) -> None:
        super().__init__(config)
        self.image_resampler = PerceiverResampler(config.perceiver_config)
        self.text_decoder = BioGPT(
            config.biogpt_config,
            model_dir=Path(config._name_or_path),
            frozen_weights=config.biogpt_frozen_weights,
            frozen_embeddings=config.biogpt_frozen_embeddings,
            context_dim=config.biogpt_context_dim,
        )
        self.img_to_latents = EmbedToLatents(self.image_resampler.query_dim, config.dim_latents)
        self.text_to_latents = EmbedToLatents(self.text_decoder.text_dim, config.dim_latents)
        self.temperature = nn.Parameter(torch.log(torch.tensor(1.0) / 0.07))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        pass  # every weight comes from the checkpoint

    def forward(
        self,
        input_ids: Tensor,
        tile_embeddings: Tensor,
        tile_mask: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> dict:
        res = self.image_resampler(tile_embeddings=tile_embeddings, tile_mask=tile_mask)
        dec = self.text_decoder(
            input_ids=input_ids, key_value_states=res["image_latents"], attention_mask=attention_mask
        )
        text_proj = self.text_to_latents(dec["text_embedding"])
        image_proj = self.img_to_latents(res["image_embedding"])
        sim = text_proj @ image_proj.T * self.temperature.exp()
        return {
            "logits": dec["logits"],
            "text_embedding": dec["text_embedding"],
            "image_embedding": res["image_embedding"],
            "image_latents": res["image_latents"],
            "sim": sim,
        }

    def tokenize(self, text: list[str]) -> Tensor:
        return self.text_decoder.tokenize(text)

    def untokenize(self, token_ids: Tensor) -> list[str]:
        return self.text_decoder.untokenize(token_ids)

    @torch.no_grad()
    def generate(
        self,
        inputs: Optional[Tensor] = None,
        key_value_states: Optional[Tensor] = None,
        max_length: int = 100,
        do_sample: bool = False,
        num_beams: int = 1,
        num_beam_groups: int = 1,
        **kwargs: Any,
    ) -> Tensor:
        if key_value_states is None:
            raise Exception("image latents (key_value_states) are required for generation.")
        if inputs is None:
            inputs = torch.tensor(
                [[self.text_decoder.bos_token_id]] * len(key_value_states), device=key_value_states.device
            )
        return self.text_decoder.model.generate(
            inputs=inputs,
            key_value_states=key_value_states,
            max_length=max_length,
            do_sample=do_sample,
            num_beams=num_beams,
            num_beam_groups=num_beam_groups,
            eos_token_id=self.text_decoder.eos_token_id,
            pad_token_id=self.text_decoder.pad_id,
            **kwargs,
        )

    @torch.no_grad()
    def zero_shot(self, image_embeds: Tensor, *, neg_prompts: list[str], pos_prompts: list[str]) -> Tensor:
        prompts = neg_prompts + pos_prompts
        ids = self.tokenize(prompts)[:, :-1].to(image_embeds.device)
        dummy = torch.zeros(len(prompts), 1, self.text_decoder.context_dim, device=image_embeds.device)
        text_proj = self.text_to_latents(self.text_decoder(ids, dummy)["text_embedding"])
        image_proj = self.img_to_latents(image_embeds)
        probs = torch.softmax((image_proj @ text_proj.T * self.temperature.exp()).float(), dim=-1)
        return torch.cat(
            [
                probs[:, : len(neg_prompts)].sum(-1, keepdim=True),
                probs[:, len(neg_prompts) :].sum(-1, keepdim=True),
            ],
            dim=-1,
        )

    def slide_representations(self, tile_embeddings: Tensor, tile_mask: Optional[Tensor] = None) -> dict:
        return self.image_resampler(tile_embeddings, tile_mask=tile_mask)
