"""PRISM-style Perceiver slide encoder and the slide-text model around it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from slidescope.errors import InvalidParameterError
from slidescope.vlm.model import SlideTextModel
from slidescope.vlm.slide_encoder import (
    PerceiverSlideEncoder,
    PerceiverSlideEncoderConfig,
    expected_parameter_count,
    streaming_cross_attention,
)
from slidescope.vlm.text import SmallTextTower

TINY = PerceiverSlideEncoderConfig.tiny()


@pytest.fixture()
def encoder() -> PerceiverSlideEncoder:
    torch.manual_seed(0)
    return PerceiverSlideEncoder(TINY).eval()


def test_defaults_are_prisms() -> None:
    cfg = PerceiverSlideEncoderConfig()
    assert (
        cfg.latent_seq,
        cfg.latent_dim,
        cfg.context_dim,
        cfg.mhsa_heads,
        cfg.perceiver_depth,
        cfg.transformer_depth,
        cfg.share_xattn_start_layer,
        cfg.share_tf_start_layer,
        cfg.xattn_heads,
        cfg.mlp_mult,
        cfg.mlp_activation,
    ) == (512, 1280, 2560, 8, 8, 6, 1, 0, 1, 1, "geglu")
    with pytest.raises(Exception):
        cfg.latent_dim = 3  # type: ignore[misc]  # frozen


def test_output_shapes(encoder: PerceiverSlideEncoder) -> None:
    out = encoder(torch.randn(3, 50, TINY.context_dim), torch.ones(3, 50, dtype=torch.bool))
    assert out["image_embedding"].shape == (3, TINY.latent_dim)
    assert out["image_latents"].shape == (3, TINY.latent_seq, TINY.latent_dim)
    assert encoder.latents.shape == (TINY.latent_seq + 1, TINY.latent_dim)  # + the slide-embedding query


def test_weight_sharing_is_literal(encoder: PerceiverSlideEncoder) -> None:
    layers = encoder.layers
    s = TINY.share_xattn_start_layer
    assert layers[0]["xattn"] is not layers[s]["xattn"]
    for i in range(s + 1, TINY.perceiver_depth):
        assert layers[i]["xattn"] is layers[s]["xattn"]
        assert layers[i]["xattn"]["xattn"].to_kv.weight is layers[s]["xattn"]["xattn"].to_kv.weight
    for i in range(1, TINY.perceiver_depth):
        assert layers[i]["tf"] is layers[0]["tf"]
    n_params = sum(p.numel() for p in encoder.parameters())
    assert n_params == expected_parameter_count(TINY)
    assert n_params < sum(
        t.numel() for t in encoder.state_dict().values()
    )  # the state dict repeats shared ones


def test_full_size_parameter_count_matches_the_sharing() -> None:
    cfg = PerceiverSlideEncoderConfig()
    with torch.device("meta"):
        enc = PerceiverSlideEncoder(cfg)
    n_params = sum(p.numel() for p in enc.parameters())
    # by hand: latents 513*1280; 2 distinct cross-attention blocks (q, kv 2560->2560, out, LN, geglu FF);
    # one stack of 6 self-attention blocks; two output LayerNorms
    d, c = 1280, 2560
    ff = 2 * d + (d * 2 * d + 2 * d) + (d * d + d)
    xattn = 2 * d + d * d + c * 2 * d + d * d + ff
    mhsa = 2 * d + 3 * d * d + d * d + ff
    assert n_params == 513 * d + 2 * xattn + 6 * mhsa + 4 * d == 99_037_440


def test_a_bag_alone_equals_the_same_bag_padded(encoder: PerceiverSlideEncoder) -> None:
    torch.manual_seed(1)
    tiles = torch.randn(2, 45, TINY.context_dim)  # 45 > chunk 16: the streaming path
    mask = torch.ones(2, 45, dtype=torch.bool)
    mask[1, 20:] = False
    tiles[1, 20:] = float("nan")  # padding may hold anything
    with torch.no_grad():
        batched = encoder(tiles, mask)
        alone = encoder(tiles[1:, :20])
    for key in ("image_embedding", "image_latents"):
        torch.testing.assert_close(batched[key][1], alone[key][0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(batched["image_embedding"]).all()


def test_streaming_attention_equals_plain_softmax() -> None:
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 1, 5, 8), torch.randn(2, 1, 37, 8), torch.randn(2, 1, 37, 8)
    mask = torch.rand(2, 37) > 0.3
    mask[:, 0] = True
    mask[1, 8:24] = False  # a whole chunk masked
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask[:, None, None, :], scale=1.0
    )
    got = streaming_cross_attention(q, k, v, mask, chunk=8)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise(encoder: PerceiverSlideEncoder) -> None:
    with pytest.raises(InvalidParameterError, match="shape"):
        encoder(torch.randn(1, 10, TINY.context_dim + 1))
    mask = torch.zeros(1, 10, dtype=torch.bool)
    with pytest.raises(InvalidParameterError, match="real tile"):
        encoder(torch.randn(1, 10, TINY.context_dim), mask)
    with pytest.raises(InvalidParameterError):
        PerceiverSlideEncoderConfig(latent_dim=30, mhsa_heads=8)


def test_gradients_reach_the_shared_weights(encoder: PerceiverSlideEncoder) -> None:
    encoder.train()
    out = encoder(torch.randn(2, 30, TINY.context_dim))
    out["image_embedding"].sum().backward()
    assert encoder.layers[-1]["xattn"]["xattn"].to_kv.weight.grad is not None
    assert encoder.latents.grad is not None


# ---------------------------------------------------------------------------------------- SlideTextModel

REPORTS = [
    "invasive ductal carcinoma grade 2",
    "benign breast tissue",
    "lung adenocarcinoma acinar",
    "squamous cell carcinoma of the lung",
]


@pytest.fixture()
def model() -> SlideTextModel:
    torch.manual_seed(0)
    tower = SmallTextTower.from_texts(REPORTS, width=32, depth=1, heads=2, max_length=16)
    return SlideTextModel(TINY, tower, dim_latents=16).eval()


def test_model_embeddings_are_normalised_and_loss_is_symmetric_clip(model: SlideTextModel) -> None:
    tiles = torch.randn(4, 12, TINY.context_dim)
    with torch.no_grad():
        v, t = model.encode_slide(tiles), model.encode_text(REPORTS)
        assert v.shape == t.shape == (4, 16)
        torch.testing.assert_close(v.norm(dim=-1), torch.ones(4))
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(4))
        logits = model.similarity(v, t)
        torch.testing.assert_close(logits, (1 / 0.07) * v @ t.T, atol=1e-4, rtol=1e-5)
        loss = model.contrastive_loss(v, t)
        ref = 0.5 * (
            torch.nn.functional.cross_entropy(logits, torch.arange(4))
            + torch.nn.functional.cross_entropy(logits.T, torch.arange(4))
        )
        torch.testing.assert_close(loss, ref)
        # matching pairs score a lower loss than mismatched ones
        assert model.contrastive_loss(v, v) < model.contrastive_loss(v, v.roll(1, dims=0))
        model.logit_scale.fill_(10.0)
        assert math.isclose(float(model.scale()), 100.0, rel_tol=1e-5)  # clamped at log(100)
    assert not model.img_to_latents.bias and not model.text_to_latents.bias


def test_model_save_load_round_trip(model: SlideTextModel, tmp_path: Path) -> None:
    tiles = torch.randn(2, 20, TINY.context_dim)
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
        v, t = model.encode_slide(tiles), model.encode_text(REPORTS)
    model.save(tmp_path / "m")
    again = SlideTextModel.load(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(again.encode_slide(tiles), v)
        torch.testing.assert_close(again.encode_text(REPORTS), t)
    assert float(again.logit_scale.detach()) == pytest.approx(3.0)
    assert (
        again.slide_encoder.layers[-1]["xattn"] is again.slide_encoder.layers[1]["xattn"]
    )  # sharing rebuilt


def test_load_refuses_a_newer_schema(model: SlideTextModel, tmp_path: Path) -> None:
    import json

    model.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["schema_version"] = 99
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidParameterError, match="newer"):
        SlideTextModel.load(tmp_path / "m")
    with pytest.raises(InvalidParameterError, match="not a saved"):
        SlideTextModel.load(tmp_path / "nothing")
