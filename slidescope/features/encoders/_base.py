"""What every patch encoder is: a frozen config (the contract the pipeline reads) and a module.

The pipeline never hard-codes preprocessing: tile size and mpp to tile at, input size, mean/std,
interpolation, precision and pooling all travel with the :class:`EncoderConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import InvalidParameterError

__all__ = ["EncoderConfig", "Encoder", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Pooling = Literal["cls", "cls+mean", "mean", "pooler", "none"]
Precision = Literal["fp32", "fp16", "bf16"]


@dataclass(frozen=True)
class EncoderConfig:
    """Everything the pipeline needs to know about a patch encoder, as data.

    Attributes
    ----------
    name : registry name (``"uni"``, ``"virchow2"``...).
    architecture : how it is built, e.g. ``"timm:vit_large_patch16_224"``.
    kwargs : the exact constructor kwargs that match the published checkpoint.
    hub_id : Hugging Face hub repository of the weights (None for weight-free models).
    weights_file : file inside ``hub_id`` holding the weights.
    embed_dim : length of one tile embedding.
    input_size : side in px of the model input (tiles are resized / cropped to it on the device).
    resize_size : side the tile is resized to before the centre crop (== input_size: no crop).
    mean, std : normalisation of RGB in [0, 1].
    interpolation : ``"bilinear"`` or ``"bicubic"`` for the on-device resize.
    tile_size, mpp : what the model was trained on: tile side in px at mpp µm/px.
    precision : recommended compute precision on a GPU.
    pooling : how the token sequence becomes one vector (documented per model).
    license, license_url, gated : terms of the weights (not of slidescope).
    weight_free : True when the encoder needs no weights at all.
    """

    name: str
    architecture: str
    embed_dim: int
    input_size: int = 224
    resize_size: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    hub_id: str | None = None
    weights_file: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    tile_size: int = 224
    mpp: float = 0.5
    precision: Precision = "fp32"
    pooling: Pooling = "cls"
    num_register_tokens: int = 0
    license: str = "unknown"
    license_url: str | None = None
    gated: bool = False
    weight_free: bool = False
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for provenance in stores and checkpoints."""
        out = asdict(self)
        out["kwargs"] = {k: _jsonable(v) for k, v in self.kwargs.items()}
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return getattr(value, "__qualname__", None) or repr(value)


class Encoder(nn.Module):
    """A patch encoder: ``uint8 (B, H, W, 3)`` tiles in, ``(B, embed_dim)`` float embeddings out.

    Subclasses implement :meth:`embed` on normalised ``float (B, 3, S, S)`` input. :meth:`forward`
    converts uint8 tiles on the device (resize, centre crop, normalise), so DataLoader workers only
    move uint8 bytes.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("_mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, tiles: torch.Tensor) -> torch.Tensor:
        """``uint8 (B, H, W, 3)`` or ``float (B, 3, H, W)`` in [0, 1] -> normalised ``(B, 3, S, S)``."""
        if tiles.dtype == torch.uint8:
            x = tiles.permute(0, 3, 1, 2).float().div_(255.0)
        else:
            x = tiles.float()
        cfg = self.config
        resize = cfg.resize_size or cfg.input_size
        if x.shape[-1] != resize or x.shape[-2] != resize:
            x = F.interpolate(
                x, size=(resize, resize), mode=cfg.interpolation, antialias=True, align_corners=False
            ).clamp_(0.0, 1.0)
        if resize != cfg.input_size:
            off = (resize - cfg.input_size) // 2
            x = x[..., off : off + cfg.input_size, off : off + cfg.input_size]
        return (x - self._mean) / self._std

    #: set by create_encoder
    weights_digest: str | None = None
    precision: str = "fp32"
    autocast_dtype: torch.dtype = torch.float32

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def checkpoint_module(self) -> nn.Module:
        """The submodule whose ``state_dict`` has exactly the published checkpoint's keys."""
        return self

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Turn a published checkpoint into :meth:`checkpoint_module`'s keys (identity by default)."""
        return state

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        out = self.embed(self.preprocess(tiles))
        if out.ndim != 2 or out.shape[1] != self.config.embed_dim:
            # a config whose embed_dim disagrees with the model would otherwise be cut or padded downstream
            raise InvalidParameterError(
                f"encoder {self.config.name!r} returned embeddings of shape {tuple(out.shape)}, but its config "
                f"says embed_dim={self.config.embed_dim}: fix embed_dim (or the model's head) in its config"
            )
        return out
