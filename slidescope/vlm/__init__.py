"""The slide-level foundation model: Perceiver slide encoder, text towers, contrastive heads,
zero-shot scoring (prompt ensembles, MI-Zero) and few-shot adapters; loaders for the published slide models
PRISM and TITAN (:mod:`slidescope.vlm.published`).

Public names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "PerceiverSlideEncoder": ".slide_encoder",
    "PerceiverSlideEncoderConfig": ".slide_encoder",
    "TextTower": ".text",
    "HFTextTower": ".text",
    "SmallTextTower": ".text",
    "load_text_tower": ".text",
    "SlideTextModel": ".model",
    "build_prompts": ".zeroshot",
    "zero_shot_logits": ".zeroshot",
    "mi_zero": ".zeroshot",
    "prompt_spread": ".zeroshot",
    "linear_probe": ".fewshot",
    "simpleshot": ".fewshot",
    "simpleshot_cosine": ".fewshot",
    "knn": ".fewshot",
    "gda": ".fewshot",
    "tip_adapter": ".fewshot",
    "pretrain": ".pretrain",
    "zero_shot": ".api",
    "few_shot": ".api",
    "load_prompts": ".api",
    "generate_reports": ".api",
    "load_slide_model": ".api",
    "slide_embeddings": ".api",
    "Prompts": ".api",
    "PublishedSlideTextModel": ".published",
    "PrismModel": ".published",
    "TitanModel": ".published",
    "load_published_model": ".published",
    "list_published_models": ".published",
    "RemoteCodeError": ".published",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .api import (
        Prompts as Prompts,
        few_shot as few_shot,
        generate_reports as generate_reports,
        load_prompts as load_prompts,
        load_slide_model as load_slide_model,
        slide_embeddings as slide_embeddings,
        zero_shot as zero_shot,
    )
    from .fewshot import (
        gda as gda,
        knn as knn,
        linear_probe as linear_probe,
        simpleshot as simpleshot,
        simpleshot_cosine as simpleshot_cosine,
        tip_adapter as tip_adapter,
    )
    from .pretrain import pretrain as pretrain
    from .published import (
        PrismModel as PrismModel,
        PublishedSlideTextModel as PublishedSlideTextModel,
        RemoteCodeError as RemoteCodeError,
        TitanModel as TitanModel,
        list_published_models as list_published_models,
        load_published_model as load_published_model,
    )
    from .model import SlideTextModel as SlideTextModel
    from .slide_encoder import (
        PerceiverSlideEncoder as PerceiverSlideEncoder,
        PerceiverSlideEncoderConfig as PerceiverSlideEncoderConfig,
    )
    from .text import (
        HFTextTower as HFTextTower,
        SmallTextTower as SmallTextTower,
        TextTower as TextTower,
        load_text_tower as load_text_tower,
    )
    from .zeroshot import (
        build_prompts as build_prompts,
        mi_zero as mi_zero,
        prompt_spread as prompt_spread,
        zero_shot_logits as zero_shot_logits,
    )

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
