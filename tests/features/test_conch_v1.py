"""CONCH v1 (CoCa ViT-B/16 image tower + text tower) against mahmoodlab/CONCH's own code.

``tests/golden/make_conch_v1.py`` ran the reference (``conch/open_clip_custom``, commit in the files) outside
slidescope and wrote: the full-size model's state-dict keys and shapes (``conch_v1_layout.json``: what the
published ``pytorch_model.bin`` holds for that code), and a tiny model of the same structure with random
weights, fixed inputs and its ``encode_image`` / ``encode_text`` outputs (``conch_v1.npz``). Here the full-size
modules are built on the meta device and loaded strictly from that layout; the tiny weights go through the real
loading path (a weights folder, ``create_encoder`` / ``create_clip_text_tower``) and must reproduce the
reference outputs.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slidescope.errors import InvalidParameterError
from slidescope.features.encoders import WeightsError, create_encoder, get_encoder_config, list_encoders
from slidescope.features.encoders import _registry
from slidescope.features.encoders import clip as clip_mod
from slidescope.features.encoders._weights import load_into
from slidescope.features.encoders.clip import (
    CLIP_MEAN,
    CLIP_STD,
    create_clip_text_tower,
    list_clip_text_towers,
)
from slidescope.features.encoders.conch_v1 import (
    CONCH_V1_TOKENIZER_FILE,
    CONCH_V1_UNUSED_PREFIXES,
    ConchV1Encoder,
    ConchV1TextTower,
)

GOLDEN_DIR = Path(__file__).parents[1] / "golden"
LAYOUT = json.loads((GOLDEN_DIR / "conch_v1_layout.json").read_text())
GOLDEN = dict(np.load(GOLDEN_DIR / "conch_v1.npz"))
TINY_TOKENIZER = GOLDEN_DIR / "conch_v1_tiny_tokenizer.json"
COMMIT = "141cc09c7d4ff33d8eda562bd75169b457f71a62"
ATOL = 1e-5


def _tiny_kwargs() -> tuple[dict, dict]:
    """The golden tiny model's config in our preset's terms: (image kwargs, text kwargs)."""
    cfg = json.loads(str(GOLDEN["tiny_config"]))
    v = cfg["vision_cfg"]
    image = {
        "embed_dim": cfg["embed_dim"],
        "image_size": v["image_size"],
        "patch_size": v["patch_size"],
        "width": v["width"],
        "layers": v["layers"],
        "num_heads": v["num_heads"],
        "mlp_ratio": 4.0,
        "attn_pooler_heads": v["attn_pooler_heads"],
        "n_queries_contrast": v["n_queries_contrast"],
    }
    t = cfg["text_cfg"]
    text = {
        "embed_dim": cfg["embed_dim"],
        "text_cfg": {k: t[k] for k in ("context_length", "vocab_size", "width", "heads", "layers")},
    }
    return image, text


@pytest.fixture
def tiny(monkeypatch) -> str:
    """The golden tiny CONCH v1 registered as an encoder and a text tower (the real builders and classes)."""
    image_kw, text_kw = _tiny_kwargs()
    size = image_kw["image_size"]
    config = replace(
        get_encoder_config("conch-v1"),
        name="test-tiny-conch-v1",
        kwargs=image_kw,
        embed_dim=image_kw["embed_dim"],
        input_size=size,
        resize_size=size,
        tile_size=128,
    )
    monkeypatch.setitem(_registry._REGISTRY, config.name, (config, _registry._entry("conch-v1")[1]))
    builder = clip_mod._TEXT_REGISTRY["conch-v1"][2]
    monkeypatch.setitem(clip_mod._TEXT_REGISTRY, config.name, (config.name, text_kw, builder))
    return config.name


@pytest.fixture
def published(tmp_path) -> Path:
    """A folder laid out as the hub repository: the reference's tiny state dict as ``pytorch_model.bin``, plus
    the tokenizer file next to it (our small tokenizer built with CONCH's pipeline, under CONCH's file name)."""
    folder = tmp_path / "conch"
    folder.mkdir()
    state = {k[2:]: torch.from_numpy(v) for k, v in GOLDEN.items() if k.startswith("w/")}
    torch.save(state, folder / "pytorch_model.bin")
    shutil.copy(TINY_TOKENIZER, folder / CONCH_V1_TOKENIZER_FILE)
    return folder


# --- the published layout ---------------------------------------------------------------------------------


def test_golden_provenance() -> None:
    assert COMMIT in LAYOUT["source"] and COMMIT in str(GOLDEN["provenance"])
    assert LAYOUT["script"] == "tests/golden/make_conch_v1.py"
    assert LAYOUT["config"]["vision_cfg"]["image_size"] == 448 and LAYOUT["config"]["embed_dim"] == 512
    assert len(LAYOUT["shapes"]) == LAYOUT["n_tensors"]
    assert sum(int(np.prod(s)) for s in LAYOUT["shapes"].values()) == LAYOUT["n_params"]


def test_full_size_modules_are_the_reference_layout() -> None:
    """Our image + text modules hold every reference key with its shape, except the captioning parts."""
    shapes = {k: tuple(s) for k, s in LAYOUT["shapes"].items()}
    config = get_encoder_config("conch-v1")
    with torch.device("meta"):
        image = ConchV1Encoder(config)
        tower = ConchV1TextTower(config, clip_mod.CONCH_V1_TEXT)
    ours = {k: tuple(v.shape) for k, v in image.checkpoint_module().state_dict().items()}
    text = {k: tuple(v.shape) for k, v in tower.checkpoint_module().state_dict().items()}
    assert ours["visual.proj_contrast"] == text.pop("visual.proj_contrast") == (512, 512)
    assert not set(ours) & set(text)
    ours.update(text, logit_scale=())
    used = {k: s for k, s in shapes.items() if not k.startswith(CONCH_V1_UNUSED_PREFIXES)}
    assert ours == used
    dropped = set(shapes) - set(used)
    assert all(any(k.startswith(p) for k in dropped) for p in CONCH_V1_UNUSED_PREFIXES)
    assert shapes["visual.trunk.pos_embed"] == (1, 1 + 28 * 28, 768)  # trained at 448 px


def test_full_size_file_loads_strictly_through_the_real_converters() -> None:
    config = get_encoder_config("conch-v1")
    with torch.device("meta"):
        published = {k: torch.empty(s) for k, s in LAYOUT["shapes"].items()}
        image = ConchV1Encoder(config)
        converted = image.convert_state_dict(published)
        load_into(image.checkpoint_module(), converted, name="conch-v1", strict=True)
        out = image.embed(torch.empty(2, 3, 448, 448))
        tower = ConchV1TextTower(config, clip_mod.CONCH_V1_TEXT)
        load_into(
            tower.checkpoint_module(), tower.convert_state_dict(published), name="conch-v1", strict=True
        )
        text = tower.text(torch.zeros(2, 128, dtype=torch.long))
    assert tuple(out.shape) == (2, 512) and tuple(text.shape) == (2, 512)


def test_preset_contract() -> None:
    c = get_encoder_config("conch-v1")
    assert "conch-v1" in list_encoders() and "conch-v1" in list_clip_text_towers()
    assert (c.embed_dim, c.input_size, c.resize_size, c.tile_size, c.mpp) == (512, 448, 448, 512, 0.5)
    assert (c.interpolation, c.mean, c.std, c.precision) == ("bicubic", CLIP_MEAN, CLIP_STD, "fp32")
    assert (c.hub_id, c.weights_file, c.gated) == ("MahmoodLab/conch", "pytorch_model.bin", True)
    assert c.license == "CC-BY-NC-ND-4.0" and "µm/px" in c.description


# --- the tiny reference model through the real loading path --------------------------------------------------


def test_tiny_image_tower_reproduces_the_reference(tiny, published) -> None:
    encoder = create_encoder(tiny, weights=published, device="cpu")
    assert isinstance(encoder, ConchV1Encoder)
    x = torch.from_numpy(GOLDEN["in_images"])
    with torch.no_grad():
        pre = encoder.embed(x)
        proj = encoder.project(pre)
    np.testing.assert_allclose(pre.numpy(), GOLDEN["out_image_pre"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(proj.numpy(), GOLDEN["out_image_proj"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(F.normalize(proj, dim=-1).numpy(), GOLDEN["out_image_proj_norm"], atol=ATOL)
    assert encoder.weights_digest and encoder.weights_digest.startswith("sha256:")
    tiles = torch.randint(
        0, 255, (2, 128, 128, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        assert encoder(tiles).shape == (2, 16)  # uint8 tiles: resize + normalise on the device


def test_tiny_text_tower_reproduces_the_reference(tiny, published) -> None:
    tower = create_clip_text_tower(tiny, weights=published)
    assert isinstance(tower, ConchV1TextTower)
    prompts = [str(p) for p in GOLDEN["prompts"]]
    ids = tower.tokenize(prompts)["input_ids"]
    assert torch.equal(ids, torch.from_numpy(GOLDEN["in_text_ids"]))  # the reference tokenize(), same file
    with torch.no_grad():
        direct = tower.text(torch.from_numpy(GOLDEN["in_text_ids"]))
        encoded = tower.encode(prompts)
        joint = tower.image_to_joint(torch.from_numpy(GOLDEN["out_image_pre"]))
    np.testing.assert_allclose(direct.numpy(), GOLDEN["out_text"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(encoded.numpy(), GOLDEN["out_text"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(F.normalize(encoded, dim=-1).numpy(), GOLDEN["out_text_norm"], atol=ATOL)
    np.testing.assert_allclose(joint.numpy(), GOLDEN["out_image_proj"], atol=ATOL, rtol=0)
    assert tower.logit_scale == pytest.approx(float(GOLDEN["out_logit_scale_exp"]), rel=1e-6)
    image = create_encoder(tiny, weights=published, device="cpu")
    assert tower.weights_digest == image.weights_digest


@pytest.mark.skipif(
    not os.environ.get("SLIDESCOPE_CONCH_TOKENIZER"),
    reason="set SLIDESCOPE_CONCH_TOKENIZER to CONCH's conch_byte_level_bpe_uncased.json (CC-BY-NC-ND, not shipped)",
)
def test_real_tokenizer_gives_the_reference_ids(tiny, published) -> None:
    tower = create_clip_text_tower(tiny, weights=published)
    tower.load_tokenizer(os.environ["SLIDESCOPE_CONCH_TOKENIZER"])
    ids = tower.tokenize([str(p) for p in GOLDEN["prompts"]])["input_ids"]
    assert torch.equal(ids, torch.from_numpy(GOLDEN["real_tokenizer_ids"]))


def test_missing_tokenizer_and_weights_errors(tiny, published, monkeypatch) -> None:
    (published / CONCH_V1_TOKENIZER_FILE).unlink()
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a, **k: None)  # no `conch` package either
    with pytest.raises(WeightsError, match="github.com/mahmoodlab/CONCH"):
        create_clip_text_tower(tiny, weights=published)
    with pytest.raises(WeightsError, match="accept the terms on https://huggingface.co/MahmoodLab/conch"):
        create_encoder("conch-v1", weights=published / "missing.bin", device="cpu")
    wrong = {k[2:]: torch.from_numpy(v) for k, v in GOLDEN.items() if k.startswith("w/text.")}
    torch.save(wrong, published / "text-only.bin")
    with pytest.raises(WeightsError, match="missing"):
        create_encoder(tiny, weights=published / "text-only.bin", device="cpu")
    with pytest.raises(InvalidParameterError, match="list"):
        create_clip_text_tower(tiny, pretrained=False).encode("carcinoma")


# --- extraction and tile-level zero-shot -----------------------------------------------------------------------


def test_extract_then_tile_zero_shot_on_a_synthetic_slide(tiny, published, tmp_path) -> None:
    """The tiny conch-v1 extracts a synthetic slide; MI-Zero scores its tiles in the reference's joint space."""
    from slidescope.features.extract import extract_features
    from slidescope.features.store import open_store
    from slidescope.synthetic import make_synthetic_slide
    from slidescope.vlm.api import zero_shot
    from slidescope.wsi import make_tile_grid, open_slide

    synthetic = make_synthetic_slide(tmp_path / "s.tiff", width=768, height=512, seed=3)
    slide = open_slide(synthetic.path)
    grid = make_tile_grid(slide, tile_size=128, mpp=0.5)
    encoder = create_encoder(tiny, weights=published, device="cpu")
    res = extract_features(slide, grid, encoder, store=tmp_path / "stores", batch_size=8, progress=False)
    assert res.status == "done" and res.computed == len(grid) > 3 and res.store is not None
    classes = {"tumour": ["invasive carcinoma", "tumour"], "normal": ["normal colonic mucosa"]}
    rows = zero_shot([res.store], classes, model=tiny, weights=published, k=2)

    # expected from the reference's outputs alone: proj_contrast and the text tower are the golden weights
    proj = torch.from_numpy(GOLDEN["w/visual.proj_contrast"])
    tower = create_clip_text_tower(tiny, weights=published)
    with torch.no_grad():
        w = torch.stack(
            [F.normalize(F.normalize(tower.encode(p), dim=-1).mean(0), dim=0) for p in classes.values()]
        )
    store = open_store(res.store)
    z = F.normalize(torch.from_numpy(store.embeddings(tiny).astype(np.float32)) @ proj, dim=-1)
    sim = z @ w.T
    for c, name in enumerate(classes):
        np.testing.assert_allclose(store.scores(f"zero-shot/{name}"), sim[:, c].numpy(), atol=1e-5)
    expected = torch.softmax(float(GOLDEN["out_logit_scale_exp"]) * sim.topk(2, dim=0).values.mean(0), 0)
    np.testing.assert_allclose(list(rows[0].probs.values()), expected.numpy(), atol=1e-5)


def test_other_positional_grid_is_resized_as_the_reference_loader_does(tiny, published) -> None:
    state = torch.load(published / "pytorch_model.bin", weights_only=True)
    state["visual.trunk.pos_embed"] = torch.from_numpy(GOLDEN["out_pos_embed_small"])  # a 2x2 grid + CLS
    torch.save(state, published / "pytorch_model.bin")
    encoder = create_encoder(tiny, weights=published, device="cpu")
    assert isinstance(encoder, ConchV1Encoder) and encoder.visual.trunk.pos_embed is not None
    resized = encoder.visual.trunk.pos_embed.detach().numpy()
    np.testing.assert_allclose(resized, GOLDEN["out_pos_embed_resized"], atol=1e-6, rtol=0)
