"""Text towers of the patch-level CLIP models PLIP (transformers ``CLIPModel``) and QuiltNet (open_clip ViT-B-32),
loaded from the same weights file as their image towers, and MI-Zero zero-shot over a store's tile embeddings.

Full-size towers are built on the meta device and checked against the published checkpoint layouts
(``tests/features/layouts/{plip,quiltnet}.json``, which list the whole files: image and text halves). Tiny
variants of the same classes are saved the way the publishers save them (a full ``CLIPModel`` / open_clip ``CLIP``
state dict) and must reproduce the reference models' ``get_text_features`` / ``encode_text`` and their image-text
logits exactly.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slidescope.errors import InvalidParameterError
from slidescope.features.encoders import WeightsError, create_encoder, get_encoder_config
from slidescope.features.encoders import _registry
from slidescope.features.encoders import clip as clip_mod
from slidescope.features.encoders.clip import create_clip_text_tower, list_clip_text_towers

LAYOUTS = Path(__file__).parents[1] / "features" / "layouts"
NAMES = ["plip", "quiltnet"]
TEXTS = [
    "an H&E image of invasive ductal carcinoma.",
    "benign breast tissue",
    "lymph node with metastatic carcinoma",
]

VISION_TINY = {
    "plip": dict(
        kwargs={
            "hidden_size": 32,
            "intermediate_size": 64,
            "projection_dim": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 16,
            "hidden_act": "quick_gelu",
        },
        embed_dim=16,
        input_size=32,
        resize_size=32,
    ),
    "quiltnet": dict(
        kwargs={
            "embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 16},
            "quick_gelu": False,
        },
        embed_dim=16,
        input_size=32,
        resize_size=32,
    ),
}
TEXT_TINY = {
    "plip": {
        **clip_mod.PLIP_TEXT,
        "hidden_size": 32,
        "intermediate_size": 64,
        "projection_dim": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    },
    "quiltnet": {
        "embed_dim": 16,
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
        "quick_gelu": False,
    },
}


def _clip_bpe_files(folder: Path) -> None:
    """OpenAI CLIP's BPE (the one PLIP and QuiltNet use) as transformers tokenizer files, from open_clip's copy."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    st = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({rename.get(k, k): v for k, v in st.encoder.items()}))
    merges = sorted(st.bpe_ranks, key=st.bpe_ranks.__getitem__)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    (folder / "vocab.json").unlink()
    (folder / "merges.txt").unlink()


def _reference(name: str):
    torch.manual_seed(0)
    if name == "plip":
        from transformers import CLIPConfig, CLIPModel

        text = {k: v for k, v in TEXT_TINY["plip"].items() if k != "projection_dim"}
        return CLIPModel(
            CLIPConfig(text_config=text, vision_config=VISION_TINY["plip"]["kwargs"], projection_dim=16)
        ).eval()
    from open_clip.model import CLIP

    v = VISION_TINY["quiltnet"]["kwargs"]
    return CLIP(
        embed_dim=16, vision_cfg=v["vision_cfg"], text_cfg=TEXT_TINY["quiltnet"]["text_cfg"], quick_gelu=False
    ).eval()


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, tuple[object, Path]]:
    """Per model: the tiny reference model and a folder laid out as its hub repository."""
    out = {}
    for name in NAMES:
        ref = _reference(name)
        folder = tmp_path_factory.mktemp(name)
        weights_file = get_encoder_config(name).weights_file
        torch.save({k: v.detach().clone() for k, v in ref.state_dict().items()}, folder / weights_file)
        if name == "plip":
            _clip_bpe_files(folder)
        out[name] = (ref, folder)
    return out


@pytest.fixture
def tiny(monkeypatch) -> dict[str, str]:
    """Tiny image encoders and text towers registered as ``test-tiny-<name>`` (real builders and classes)."""
    names = {}
    for name in NAMES:
        tiny_name = f"test-tiny-{name}"
        config = replace(get_encoder_config(name), name=tiny_name, **VISION_TINY[name])
        monkeypatch.setitem(_registry._REGISTRY, tiny_name, (config, _registry._entry(name)[1]))
        _, _, builder = clip_mod._TEXT_REGISTRY[name]
        monkeypatch.setitem(clip_mod._TEXT_REGISTRY, tiny_name, (tiny_name, TEXT_TINY[name], builder))
        names[name] = tiny_name
    return names


def _reference_text(name: str, ref, tower, texts: list[str]) -> torch.Tensor:
    batch = tower.tokenize(texts)
    if name == "plip":
        out = ref.get_text_features(**batch)  # transformers 5: an output whose pooler_output is projected
        return out if isinstance(out, torch.Tensor) else out.pooler_output
    return ref.encode_text(batch["input_ids"])


@pytest.mark.parametrize("name", NAMES)
def test_full_size_text_tower_matches_published_layout(name: str) -> None:
    layout = json.loads((LAYOUTS / f"{name}.json").read_text())["shapes"]
    text_keys = {
        k: tuple(s)
        for k, s in layout.items()
        if not k.startswith(("vision_model.", "visual_projection.", "visual."))
        and k != "logit_scale"
        and not k.endswith("position_ids")
    }
    with torch.device("meta"):
        tower = create_clip_text_tower(name, pretrained=False, device="meta")
        own = {k: tuple(v.shape) for k, v in tower.checkpoint_module().state_dict().items()}
        assert own == text_keys
        full = {k: torch.empty(s, device="meta") for k, s in layout.items()}
        converted = tower.convert_state_dict(full)  # the text half of the full file, as loading takes it
        assert {k: tuple(v.shape) for k, v in converted.items()} == own
        out = tower.checkpoint_module()(
            **(
                {"input_ids": torch.zeros(2, 77, dtype=torch.long)}
                if name == "plip"
                else {"text": torch.zeros(2, 77, dtype=torch.long)}
            )
        )
    features = out.text_embeds if name == "plip" else out
    # the joint space: text projection width == the image tower's embedding width
    assert tuple(features.shape) == (2, get_encoder_config(name).embed_dim) == (2, 512)


@pytest.mark.parametrize("name", NAMES)
def test_loaded_text_tower_reproduces_the_reference_model(name: str, published, tiny) -> None:
    ref, folder = published[name]
    tower = create_clip_text_tower(tiny[name], weights=folder)
    with torch.no_grad():
        ours = tower.encode(TEXTS)
        expected = _reference_text(name, ref, tower, TEXTS)
    assert ours.shape == (3, 16)
    assert torch.equal(ours, expected)
    assert tower.logit_scale == pytest.approx(float(ref.logit_scale.detach().exp()))
    image = create_encoder(tiny[name], weights=folder, device="cpu")
    assert tower.weights_digest == image.weights_digest and tower.weights_digest.startswith("sha256:")
    if name == "plip":  # PLIP's tokenizer is OpenAI CLIP's BPE, as QuiltNet's (open_clip's bundled copy)
        from open_clip.tokenizer import SimpleTokenizer

        ids = tower.tokenize(TEXTS[:1])["input_ids"][0]
        assert ids.tolist() == SimpleTokenizer()(TEXTS[:1])[0, : len(ids)].tolist()


@pytest.mark.parametrize("name", NAMES)
def test_image_and_text_embeddings_share_the_reference_space(name: str, published, tiny) -> None:
    ref, folder = published[name]
    image = create_encoder(tiny[name], weights=folder, device="cpu")
    tower = create_clip_text_tower(tiny[name], weights=folder)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 32, 32, generator=g)  # already-normalised pixels
    with torch.no_grad():
        img, txt = image.embed(x), tower.encode(TEXTS)
        ours = tower.logit_scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
        if name == "plip":
            expected = ref(pixel_values=x, **tower.tokenize(TEXTS)).logits_per_image
        else:
            f_img, f_txt, scale = ref(x, tower.tokenize(TEXTS)["input_ids"])
            expected = scale * f_img @ f_txt.T
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-5)


def test_text_tower_errors(published, tiny, tmp_path: Path) -> None:
    _, plip = published["plip"]
    _, quilt = published["quiltnet"]
    no_tokenizer = tmp_path / "plip-weights-only"
    no_tokenizer.mkdir()
    (no_tokenizer / "pytorch_model.bin").write_bytes((plip / "pytorch_model.bin").read_bytes())
    with pytest.raises(InvalidParameterError, match="holds no tokenizer"):
        create_clip_text_tower(tiny["plip"], weights=no_tokenizer)
    with pytest.raises(WeightsError, match="do not fit"):
        create_clip_text_tower(tiny["quiltnet"], weights=plip / "pytorch_model.bin")
    with pytest.raises(InvalidParameterError, match="plip, quiltnet"):
        create_clip_text_tower("uni")
    assert {"plip", "quiltnet"} <= set(list_clip_text_towers())
    with pytest.raises(InvalidParameterError, match="list"):
        create_clip_text_tower(tiny["quiltnet"], weights=quilt).encode("carcinoma")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_mi_zero_over_store_tile_embeddings(name: str, published, tiny, tmp_path: Path, store_writer) -> None:
    from slidescope.features.store import open_store
    from slidescope.vlm.api import zero_shot

    ref, folder = published[name]
    image = create_encoder(tiny[name], weights=folder, device="cpu")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        tiles = image.embed(torch.randn(12, 3, 32, 32, generator=g)).numpy()
    path = store_writer(
        tmp_path / "slide.zarr", tiles, encoder=tiny[name], weights_digest=image.weights_digest
    )
    classes = {
        "tumour": ["invasive ductal carcinoma", "metastatic carcinoma"],
        "normal": ["benign breast tissue"],
    }
    rows = zero_shot([path], classes, model=tiny[name], weights=folder, k=3)
    # expected, from the reference model alone: class text embedding = normalised mean of normalised prompts
    tower = create_clip_text_tower(tiny[name], weights=folder)
    with torch.no_grad():
        w = torch.stack(
            [
                F.normalize(F.normalize(_reference_text(name, ref, tower, p), dim=-1).mean(0), dim=0)
                for p in classes.values()
            ]
        )
    sim = F.normalize(torch.from_numpy(tiles), dim=-1) @ w.T
    store = open_store(path)
    for c, cls in enumerate(classes):
        np.testing.assert_allclose(store.scores(f"zero-shot/{cls}"), sim[:, c].numpy(), atol=1e-5)
    pooled = sim.topk(3, dim=0).values.mean(0)
    expected = torch.softmax(float(ref.logit_scale.detach().exp()) * pooled, 0)
    np.testing.assert_allclose(list(rows[0].probs.values()), expected.numpy(), atol=1e-5)

    with pytest.raises(InvalidParameterError, match="level='tile'"):
        zero_shot([path], classes, model=tower, level="slide")
    other = store_writer(
        tmp_path / "other.zarr", tiles, encoder=tiny[name], weights_digest="sha256:" + "0" * 64
    )
    with pytest.raises(InvalidParameterError, match="other weights"):
        zero_shot([other], classes, model=tower)


def test_a_registered_text_tower_is_listed_and_built_through_the_registry(monkeypatch) -> None:
    """register_clip_text_tower: the public call a plugin (entry point group slidescope.text_towers) makes."""
    from slidescope import _plugins

    assert _plugins.GROUPS["text_towers"] == "slidescope.text_towers"
    monkeypatch.setattr(clip_mod, "_TEXT_REGISTRY", dict(clip_mod._TEXT_REGISTRY))
    _, kwargs, builder = clip_mod._TEXT_REGISTRY["quiltnet"]
    clip_mod.register_clip_text_tower("lab-quilt", builder, kwargs, image_encoder="quiltnet")
    assert "lab-quilt" in list_clip_text_towers()
    tower = create_clip_text_tower("lab-quilt", pretrained=False)
    reference = create_clip_text_tower("quiltnet", pretrained=False)
    assert type(tower) is type(reference)
    assert {k: v.shape for k, v in tower.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
