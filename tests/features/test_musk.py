"""MUSK (``musk``, ``musk-ms``) against MUSK's own code as TRIDENT runs it (issue 13).

``tests/golden/musk_layout.json`` and ``musk.npz`` were written by ``tests/golden/make_musk.py`` outside
slidescope from lilab-stanford/MUSK (``musk_large_patch16_384``, ``load_model_and_may_interpolate``) and
TRIDENT's ``MuskInferenceEncoder``. Checked here: the full-size layout we load is MUSK's, less exactly the
keys dropped by name; a tiny same-architecture file in MUSK's layout (text experts included), loaded through
``create_encoder(..., weights=...)``, gives MUSK's embeddings (CLS, multi-scale, and a position table
interpolated from another grid).
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from slidescope.features.encoders import WeightsError, create_encoder, get_encoder_config
from slidescope.features.encoders import _registry
from slidescope.features.encoders._weights import load_into
from slidescope.features.encoders.musk import UNUSED_KEYS, convert_musk_state_dict

GOLDEN_DIR = Path(__file__).parents[1] / "golden"
LAYOUT = json.loads((GOLDEN_DIR / "musk_layout.json").read_text())
OUTPUTS = np.load(GOLDEN_DIR / "musk.npz")


def _fill():
    """``fill`` (the deterministic weight rule) from the golden script itself, so both sides share it."""
    spec = importlib.util.spec_from_file_location("make_musk", GOLDEN_DIR / "make_musk.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fill


def test_registered_with_their_contract() -> None:
    musk, ms = get_encoder_config("musk"), get_encoder_config("musk-ms")
    assert (musk.embed_dim, ms.embed_dim) == (1024, 2048)
    for c in (musk, ms):
        assert (c.hub_id, c.weights_file, c.gated) == ("xiangjx/musk", "model.safetensors", True)
        assert (c.tile_size, c.input_size, c.mpp, c.interpolation) == (384, 384, 0.5, "bicubic")
        assert c.mean == c.std == (0.5, 0.5, 0.5)  # timm's IMAGENET_INCEPTION_MEAN / _STD
        assert "CC-BY-NC-ND-4.0" in c.license and "musk_layout.json" in c.layout_source
    assert LAYOUT["provenance"]["repository"].endswith("lilab-stanford/MUSK")
    assert len(LAYOUT["provenance"]["commit"]) == 40 == len(LAYOUT["provenance"]["trident_commit"])


@pytest.mark.parametrize("name", ["musk", "musk-ms"])
def test_full_size_layout_is_musks_vision_subset(name: str) -> None:
    theirs = LAYOUT["full"]["shapes"]
    config, builder = _registry._entry(name)
    with torch.device("meta"):
        encoder = builder(config)
        own = {k: list(v.shape) for k, v in encoder.checkpoint_module().state_dict().items()}
        state = {k: torch.empty(s) for k, s in theirs.items()}
        converted = encoder.convert_state_dict(state)
        assert {k: list(v.shape) for k, v in converted.items()} == own
        load_into(encoder.checkpoint_module(), converted, name=name, strict=True)
    dropped = set(theirs) - set(own)
    assert set(own) <= set(theirs) and {k: theirs[k] for k in own} == own
    # what is dropped: every text expert (one per vision expert), the text embedding, heads, mask token
    text_experts = {k for k in dropped if ".B." in k}
    assert {k.replace(".B.", ".A.") for k in text_experts} == {k for k in own if ".A." in k}
    assert dropped - text_experts == {
        "beit3.text_embed.weight",
        "beit3.vision_embed.mask_token",
        "language_head.weight",
        "vision_head.weight",
        "logit_scale",
    }
    n_own = sum(math.prod(s) for s in own.values())
    # by hand: patch conv 787_456 + CLS 1_024 + positions 579 x 1024 + 24 x 12_606_464 per block + final LN 2_048
    assert LAYOUT["full"]["n_params"] == 675_188_737 and n_own == 303_938_560
    assert own["beit3.encoder.embed_positions.A.weight"] == [24 * 24 + 3, 1024]
    assert len(UNUSED_KEYS) == 4


def _tiny(monkeypatch, base: str) -> str:
    m = LAYOUT["tiny"]["musk_config"]
    name = f"test-tiny-{base}"
    kwargs = {
        **get_encoder_config(base).kwargs,
        "img_size": m["img_size"],
        "width": m["encoder_embed_dim"],
        "depth": m["encoder_layers"],
        "heads": m["encoder_attention_heads"],
        "mlp_dim": m["encoder_ffn_embed_dim"],
    }
    width = m["encoder_embed_dim"] * (2 if base == "musk-ms" else 1)
    config = replace(
        get_encoder_config(base),
        name=name,
        kwargs=kwargs,
        embed_dim=width,
        input_size=m["img_size"],
        resize_size=m["img_size"],
        tile_size=m["img_size"],
    )
    monkeypatch.setitem(_registry._REGISTRY, name, (config, _registry._entry(base)[1]))
    return name


def _write(folder: Path, case: str) -> Path:
    """The tiny file as the golden run wrote it: MUSK's full layout (text experts too), safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    weights = _fill()(LAYOUT["tiny"]["layouts"][case], LAYOUT["tiny"]["weight_seed"])
    save_file(weights, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize(("base", "case"), [("musk", "cls"), ("musk-ms", "ms"), ("musk", "interp")])
def test_tiny_model_reproduces_musk_through_the_published_file(monkeypatch, tmp_path, base, case) -> None:
    name = _tiny(monkeypatch, base)
    folder = _write(tmp_path / case, "interp" if case == "interp" else "cls")
    encoder = create_encoder(name, weights=folder, device="cpu")  # a folder holding the hub file name
    x = torch.from_numpy(OUTPUTS["input"])
    with torch.no_grad():
        ours = encoder.embed(x)
    expected = torch.from_numpy(OUTPUTS[case])
    assert expected.std() > 0.5  # a real signal, not a constant
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)  # measured: 1.1e-6
    if case == "interp":  # the position table MUSK's loader interpolated (2 x 2 -> 4 x 4 grid)
        table = encoder.checkpoint_module().state_dict()["beit3.encoder.embed_positions.A.weight"]
        torch.testing.assert_close(table, torch.from_numpy(OUTPUTS["interp_positions"]), atol=1e-6, rtol=0)
    assert encoder.weights_digest is not None and encoder.weights_digest.startswith("sha256:")


def test_uint8_tiles_run_and_a_foreign_key_is_refused(monkeypatch, tmp_path) -> None:
    name = _tiny(monkeypatch, "musk")
    folder = _write(tmp_path / "ok", "cls")
    encoder = create_encoder(name, weights=folder, device="cpu")
    tiles = torch.randint(
        0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        out = encoder(tiles)
    assert out.shape == (3, 32) and torch.isfinite(out).all()
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    state["head.weight"] = torch.zeros(2, 32)  # a fine-tuned classifier is not MUSK's published file
    bad = tmp_path / "finetuned.safetensors"
    save_file(state, str(bad))
    with pytest.raises(WeightsError, match="unexpected"):
        create_encoder(name, weights=bad, device="cpu")


def test_converter_drops_only_named_keys() -> None:
    state = {
        "beit3.encoder.layers.3.self_attn.q_proj.B.weight": torch.zeros(1),
        "beit3.encoder.layers.3.self_attn.q_proj.A.weight": torch.zeros(1),
        "beit3.encoder.layers.3.ffn.B.fc1.bias": torch.zeros(1),
        "beit3.encoder.embed_positions.B.weight": torch.zeros(1),
        "beit3.text_embed.weight": torch.zeros(1),
        "logit_scale": torch.zeros(()),
        "vision_head.weight": torch.zeros(1),
        "beit3.vision_embed.mask_token": torch.zeros(1),
        "beit3.vision_embed.cls_token": torch.zeros(1),
        "head.weight": torch.zeros(1),
    }
    kept = convert_musk_state_dict(state, img_size=384)
    assert sorted(kept) == [
        "beit3.encoder.layers.3.self_attn.q_proj.A.weight",
        "beit3.vision_embed.cls_token",
        "head.weight",
    ]
