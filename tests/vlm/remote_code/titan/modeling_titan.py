"""Test stand-in for MahmoodLab/TITAN's ``modeling_titan.py``: ``Titan`` with the methods its model card and
zero-shot notebook use (``encode_slide_from_patch_features``, ``encode_text``, ``zero_shot_classifier``,
``zero_shot``)."""

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from .configuration_titan import TitanConfig
from .text_transformer import build_text_tower
from .vision_transformer import build_vision_tower


class Titan(PreTrainedModel):
    config_class = TitanConfig

    def __init__(self, config: TitanConfig, *model_args, **model_kwargs) -> None:
        super().__init__(config)
        self.vision_encoder = build_vision_tower(config.vision_config)
        self.text_encoder = build_text_tower(config.text_config, config._name_or_path)
        self.conch_config = config.conch_config
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        pass  # every weight comes from the checkpoint

    def encode_slide_from_patch_features(
        self, patch_features: torch.Tensor, patch_coords: torch.Tensor, patch_size_lv0: int
    ) -> torch.Tensor:
        return self.vision_encoder(patch_features, patch_coords, patch_size_lv0, no_proj=True)

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        latent, _ = self.text_encoder(input_ids[:, :-1])  # make space for the CLS token
        return F.normalize(latent, dim=-1) if normalize else latent

    def zero_shot_classifier(self, classnames, templates, device=None) -> torch.Tensor:
        weights = []
        for names in classnames:
            per_name = []
            for name in names:
                ids = self.text_encoder.tokenizer([t.replace("CLASSNAME", name) for t in templates]).to(
                    device
                )
                per_name.append(self.encode_text(ids, normalize=True))
            w = torch.stack(per_name).mean(dim=(0, 1))
            weights.append(w / w.norm())
        return torch.stack(weights, dim=1)

    def zero_shot(self, slide_embedding: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
        z = F.normalize(slide_embedding.float().unsqueeze(0) @ self.vision_encoder.proj, dim=-1)
        return F.softmax(z @ classifier, dim=-1)
