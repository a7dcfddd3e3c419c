"""Test stand-in for MahmoodLab/TITAN's ``configuration_titan.py``."""

from typing import Any

from transformers import PretrainedConfig


class TitanConfig(PretrainedConfig):
    model_type = "titan"

    def __init__(
        self,
        vision_config: dict | None = None,
        text_config: dict | None = None,
        conch_config: dict | None = None,
        **kwargs: Any,
    ) -> None:
        self.vision_config = dict(vision_config or {})
        self.text_config = dict(text_config or {})
        self.conch_config = dict(conch_config or {})
        super().__init__(**kwargs)
