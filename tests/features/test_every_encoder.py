"""Every registered encoder, built-in or added later, keeps the promises of its config (issue 13).

Parametrised over :func:`list_encoders` itself, so a preset added tomorrow is tested without editing this
file. Full-size models are built on the meta device (no memory, no weights) and run there: the output width
must be the config's ``embed_dim`` (a mismatch once stored the first columns silently). Weight-free encoders
run for real on CPU tiles through ``forward`` (the path extraction uses).
"""

from __future__ import annotations

import pytest
import torch

from slidescope.features.encoders import create_encoder, get_encoder_config, list_encoders
from slidescope.features.encoders._registry import _entry

NAMES = list_encoders()


def test_the_registry_is_not_empty_and_has_the_documented_presets() -> None:
    assert {"he-descriptor", "uni", "virchow2", "conch-v1.5", "plip"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_is_complete(name: str) -> None:
    c = get_encoder_config(name)
    assert c.name == name and c.embed_dim > 0 and c.input_size > 0 and c.tile_size > 0 and c.mpp > 0
    assert len(c.mean) == 3 and len(c.std) == 3 and all(s > 0 for s in c.std)
    assert (c.resize_size or c.input_size) >= c.input_size  # resize, then centre crop to the input
    assert c.license and c.license != "unknown"
    if not c.weight_free:
        assert c.hub_id and c.weights_file, "a model with weights says where they come from"


@pytest.mark.parametrize("name", NAMES)
def test_output_width_is_embed_dim(name: str) -> None:
    config, builder = _entry(name)
    if config.weight_free:
        enc = create_encoder(name, device="cpu")
        tiles = torch.randint(0, 256, (2, config.tile_size, config.tile_size, 3), dtype=torch.uint8)
        out = enc(tiles)
    else:
        with torch.device("meta"):
            enc = builder(config)
            out = enc.embed(torch.empty(2, 3, config.input_size, config.input_size))
    assert tuple(out.shape) == (2, config.embed_dim)
