"""What every patch encoder is: a frozen config (the contract the pipeline reads; in ``_config``, torch-free)
and a module.

The pipeline never hard-codes preprocessing: tile size and mpp to tile at, input size, mean/std,
interpolation, precision and pooling all travel with the :class:`EncoderConfig`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import InvalidParameterError
from ._config import IMAGENET_MEAN, IMAGENET_STD, EncoderConfig, Pooling as Pooling, Precision as Precision

__all__ = ["EncoderConfig", "Encoder", "IMAGENET_MEAN", "IMAGENET_STD"]


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
