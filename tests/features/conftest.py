"""A tiny deterministic encoder for engine and store tests (the real presets test themselves)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slidescope.features.encoders import Encoder, EncoderConfig


class TinyEncoder(Encoder):
    """Mean colour per 4x4 grid cell, through a fixed random projection: cheap but tile-specific."""

    def __init__(
        self, dim: int = 16, seed: int = 0, delay: float = 0.0, fail_after: int | None = None
    ) -> None:
        super().__init__(
            EncoderConfig(
                name="tiny-test",
                architecture="test:tiny",
                embed_dim=dim,
                input_size=32,
                tile_size=224,
                mpp=0.5,
                license="test",
            )
        )
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Linear(48, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, 48, generator=g))
            self.proj.bias.zero_()
        self.weights_digest = f"sha256:tiny-{seed}"
        self.delay = delay
        self.fail_after = fail_after
        self.calls = 0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        import time

        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        if self.delay:
            time.sleep(self.delay)
        pooled = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.proj(pooled)


@pytest.fixture
def tiny_encoder():
    return TinyEncoder
