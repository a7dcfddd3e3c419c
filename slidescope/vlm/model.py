"""The slide-text model: a slide encoder, a text tower and CoCa-style contrastive heads, as PRISM.

PRISM's design is in ``docs/REFERENCE-models.md`` §1.2::

    v = normalize(img_to_latents(slide_encoder(tiles, mask)["image_embedding"]))   # (B, d)
    t = normalize(text_to_latents(text_tower.encode(texts)))                       # (B, d)
    logits = exp(logit_scale) * v @ t.T          # logit_scale: learned, init log(1/0.07), clamped at log(100)

A saved model is a directory: ``config.json`` (schema version, slide-encoder config, head width),
``model.safetensors`` (slide encoder, heads, ``logit_scale``; shared weights stored once) and ``text_tower/``
(written by the tower's own ``save``). :meth:`SlideTextModel.load` rebuilds everything from it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidParameterError
from .slide_encoder import PerceiverSlideEncoder, PerceiverSlideEncoderConfig
from .text import TextTower, load_text_tower

__all__ = ["SlideTextModel", "clip_loss"]

SCHEMA_VERSION = 1
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


def clip_loss(logits_per_slide: Tensor) -> Tensor:
    """Symmetric InfoNCE over a (B, B) similarity matrix whose diagonal holds the matching pairs."""
    target = torch.arange(logits_per_slide.shape[0], device=logits_per_slide.device)
    return 0.5 * (F.cross_entropy(logits_per_slide, target) + F.cross_entropy(logits_per_slide.T, target))


class SlideTextModel(nn.Module):
    """Slide encoder + text tower + contrastive heads into a shared ``dim_latents`` space.

    Parameters
    ----------
    slide_encoder_config : PerceiverSlideEncoderConfig
        Architecture of the slide encoder (random weights).
    text_tower : TextTower
        Any registered text tower (:class:`~slidescope.vlm.text.HFTextTower`, ``SmallTextTower``).
    dim_latents : int
        Width of the joint embedding space.

    Notes
    -----
    ``encode_slide`` maps tiles ``(B, N, context_dim)`` (mask ``(B, N)``) to ``(B, dim_latents)``; ``encode_text``
    maps ``P`` texts to ``(P, dim_latents)``; both are L2-normalised, so ``similarity`` is a scaled cosine.

    Examples
    --------
    >>> import torch
    >>> from slidescope.vlm import PerceiverSlideEncoderConfig, SlideTextModel, SmallTextTower
    >>> _ = torch.manual_seed(0)
    >>> tower = SmallTextTower.from_texts(["invasive carcinoma", "benign tissue"], width=32, depth=1, heads=2)
    >>> model = SlideTextModel(PerceiverSlideEncoderConfig.tiny(), tower, dim_latents=16).eval()
    >>> with torch.no_grad():
    ...     v = model.encode_slide(torch.randn(2, 30, 24))             # 2 slides of 30 tiles, 24-d each
    ...     t = model.encode_text(["invasive carcinoma", "benign tissue"])
    >>> v.shape, t.shape, model.similarity(v, t).shape
    (torch.Size([2, 16]), torch.Size([2, 16]), torch.Size([2, 2]))
    """

    def __init__(
        self,
        slide_encoder_config: PerceiverSlideEncoderConfig,
        text_tower: TextTower,
        *,
        dim_latents: int = 512,
    ) -> None:
        super().__init__()
        if dim_latents < 1:
            raise InvalidParameterError(f"dim_latents must be >= 1, got {dim_latents}")
        self.dim_latents = dim_latents
        self.slide_encoder = PerceiverSlideEncoder(slide_encoder_config)
        self.text_tower = text_tower
        self.img_to_latents = nn.Linear(slide_encoder_config.latent_dim, dim_latents, bias=False)
        self.text_to_latents = nn.Linear(text_tower.text_dim, dim_latents, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))

    def encode_slide(self, tiles: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalised slide embeddings (B, dim_latents) from tiles (B, N, context_dim) and mask (B, N)."""
        return F.normalize(self.img_to_latents(self.slide_encoder(tiles, mask)["image_embedding"]), dim=-1)

    def encode_text(self, texts: list[str]) -> Tensor:
        """Normalised text embeddings (B, dim_latents)."""
        return F.normalize(self.text_to_latents(self.text_tower.encode(texts)), dim=-1)

    def scale(self) -> Tensor:
        """The multiplier of cosine similarities: ``exp(logit_scale)``, at most 100."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def similarity(self, slide_emb: Tensor, text_emb: Tensor) -> Tensor:
        """Scaled cosine logits (B_slide, B_text) between normalised embeddings."""
        return self.scale() * slide_emb @ text_emb.T

    def contrastive_loss(self, slide_emb: Tensor, text_emb: Tensor) -> Tensor:
        """Symmetric CLIP loss for matching pairs ``(slide_emb[i], text_emb[i])``."""
        if slide_emb.shape[0] != text_emb.shape[0]:
            raise InvalidParameterError(
                f"contrastive_loss needs as many slides as texts, got "
                f"{slide_emb.shape[0]} and {text_emb.shape[0]}"
            )
        return clip_loss(self.similarity(slide_emb, text_emb))

    def forward(self, tiles: Tensor, mask: Tensor | None, texts: list[str]) -> dict[str, Tensor]:
        """Embed paired slides and reports; returns ``slide_emb``, ``text_emb``, ``logits`` and ``loss``."""
        v, t = self.encode_slide(tiles, mask), self.encode_text(texts)
        logits = self.similarity(v, t)
        return {"slide_emb": v, "text_emb": t, "logits": logits, "loss": clip_loss(logits)}

    # ----------------------------------------------------------------------------------- persistence

    def config_dict(self) -> dict[str, Any]:
        from .. import __version__

        return {
            "schema_version": SCHEMA_VERSION,
            "slidescope_version": __version__,
            "slide_encoder": self.slide_encoder.config.to_dict(),
            "dim_latents": self.dim_latents,
            "text_tower": self.text_tower.registry_name,
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``text_tower/`` into ``directory``; returns it.

        :meth:`load` (and every function taking ``model=<folder>``) rebuilds the model from that folder alone.
        """
        from safetensors.torch import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config_dict(), indent=2))
        save_file(_own_state(self), str(path / "model.safetensors"), metadata={"format": "pt"})
        self.text_tower.save(path / "text_tower")
        return path

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
    ) -> SlideTextModel:
        """Rebuild a model written by :meth:`save` (refuses files from a newer schema)."""
        from safetensors.torch import load_file

        path = Path(directory)
        cfg_file = path / "config.json"
        if not cfg_file.is_file() or not (path / "model.safetensors").is_file():
            raise InvalidParameterError(
                f"{path} is not a saved SlideTextModel (config.json / model.safetensors "
                "missing); write one with SlideTextModel.save()"
            )
        cfg = json.loads(cfg_file.read_text())
        if int(cfg.get("schema_version", 0)) > SCHEMA_VERSION:
            raise InvalidParameterError(
                f"{cfg_file} has schema version {cfg['schema_version']}, newer than this "
                f"slidescope understands ({SCHEMA_VERSION}); upgrade slidescope"
            )
        tower = load_text_tower(path / "text_tower")
        model = cls(
            PerceiverSlideEncoderConfig.from_dict(cfg["slide_encoder"]), tower, dim_latents=cfg["dim_latents"]
        )
        try:
            state = load_file(str(path / "model.safetensors"), device=str(map_location))
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError...: a truncated or damaged file
            raise InvalidParameterError(
                f"{path / 'model.safetensors'} is not a readable safetensors file "
                f"({type(err).__name__}: {err}); it is probably truncated or damaged: copy "
                f"the model folder again (or save it again)."
            ) from err
        expected = _own_state(model)
        missing, unexpected = set(expected) - set(state), set(state) - set(expected)
        if missing or unexpected:
            raise InvalidParameterError(
                f"{path / 'model.safetensors'} does not match its config: missing "
                f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        model.load_state_dict(state, strict=False)
        return model.to(map_location).eval()


def _own_state(model: SlideTextModel) -> dict[str, Tensor]:
    """The state dict without the text tower, each shared tensor stored once (under its first name)."""
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for name, tensor in model.state_dict(keep_vars=False).items():
        if name.startswith("text_tower."):
            continue
        key = tensor.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().cpu().contiguous()
    return out
