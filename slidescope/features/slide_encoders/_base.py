"""The slide-encoder module interface: :class:`SlideEncoder` (features + coords [+ tile side] -> slide embedding)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...errors import InvalidParameterError
from ._config import SlideEncoderConfig

__all__ = ["SlideEncoder"]


class SlideEncoder(nn.Module):
    """One slide's tile embeddings -> one slide embedding.

    Subclasses implement :meth:`forward` on one slide; :meth:`embed` checks the inputs against the config
    and runs it without gradients. ``weights_digest`` is the sha256 of the weights file loaded (None: random
    or no weights).

    Parameters
    ----------
    config : SlideEncoderConfig
        The registry entry (patch encoder, tile geometry, widths).
    """

    def __init__(self, config: SlideEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.weights_digest: str | None = None

    @property
    def device(self) -> torch.device:
        first = next(iter(self.parameters()), None)
        return first.device if first is not None else torch.device("cpu")

    def forward(  # pragma: no cover - abstract
        self, features: Tensor, coords: Tensor | None = None, patch_size: int | None = None
    ) -> Tensor:
        """``(N, D)`` tile embeddings [+ ``(N, 2)`` level-0 coords, level-0 tile side] -> ``(E,)``."""
        raise NotImplementedError

    def output_dim(self, patch_dim: int) -> int:
        """Width of the slide embedding for ``patch_dim``-wide tiles (the config's; a loaded published model's own)."""
        return self.config.output_dim(patch_dim)

    def embed_patient(self, slides: Any) -> Tensor:
        """One patient embedding from several slides' ``(features, coords, patch_size)``: the mean of their
        slide embeddings, unless the model defines its own (``config.patient_level``: MOOZY's case transformer)."""
        rows = [self.embed(f, c, p) for f, c, p in slides]
        if not rows:
            raise InvalidParameterError("a patient needs at least one slide")
        return torch.stack(rows).mean(0)

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The published checkpoint's tensors renamed to this module's keys (default: unchanged)."""
        return state

    def check_inputs(
        self, features: Any, coords: Any | None = None, patch_size: int | None = None
    ) -> tuple[Tensor, Tensor | None, int | None]:
        """The inputs of :meth:`embed` as tensors on the model's device, checked (see there)."""
        cfg = self.config
        x = torch.as_tensor(features).to(self.device, torch.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise InvalidParameterError(
                f"slide encoder {cfg.name!r} takes one slide's tile embeddings (N, D) with N >= 1, "
                f"got shape {tuple(x.shape)}"
            )
        if cfg.patch_dim is not None and x.shape[1] != cfg.patch_dim:
            wanted = " or ".join(cfg.patch_encoders) or "its patch encoder"
            raise InvalidParameterError(
                f"slide encoder {cfg.name!r} takes {cfg.patch_dim}-d tile embeddings ({wanted}), got "
                f"{x.shape[1]}-d; {cfg.how_to_extract()}"
            )
        c = None
        if coords is not None:
            c = torch.as_tensor(coords).to(self.device, torch.long)
            if c.shape != (x.shape[0], 2):
                raise InvalidParameterError(f"coords must have shape ({x.shape[0]}, 2), got {tuple(c.shape)}")
        if cfg.needs_coords and (c is None or patch_size is None):
            raise InvalidParameterError(
                f"slide encoder {cfg.name!r} reads tile positions: pass coords (N, 2) in level-0 px and "
                f"patch_size (the level-0 side of one tile)"
            )
        return x, c, None if patch_size is None else int(patch_size)

    def embed(self, features: Any, coords: Any | None = None, patch_size: int | None = None) -> Tensor:
        """The slide embedding ``(E,)`` float32 on the CPU, inputs checked first.

        Parameters
        ----------
        features : array or Tensor (N, D)
            The slide's tile embeddings (``D`` == ``config.patch_dim`` when the model fixes it).
        coords : array or Tensor (N, 2), optional
            Level-0 top-left ``(x, y)`` of the tiles (required when ``config.needs_coords``).
        patch_size : int, optional
            Level-0 side of one tile (``store.tile_extent[0]``; required with ``coords``).

        Raises
        ------
        InvalidParameterError
            Wrong shapes or widths, no tiles, or missing coordinates.
        """
        x, c, p = self.check_inputs(features, coords, patch_size)
        with torch.inference_mode():
            z = self.forward(x, c, p)
        return z.reshape(-1).float().cpu()
