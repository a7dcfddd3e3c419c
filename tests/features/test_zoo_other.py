"""The non-ViT and CLIP-family patch encoders of ``_zoo_other`` (issue 13): CTransPath, CHIEF-CTransPath,
QuiltNet-B-16, QuiltNet-B-16-PMB, BiomedCLIP.

CTransPath is checked against TRIDENT's own code (tests/golden/trident_layouts_more.json, written by
tests/golden/make_trident_layouts_more.py outside slidescope): the full-size layout TRIDENT loads, and the output
of TRIDENT's model (timm_ctp 0.5.4) for a tiny same-architecture checkpoint in the published ``{"model": ...}``
timm-0.5.4 layout, which must come out of ``create_encoder(..., weights=file)`` unchanged. The CLIP-family
towers are checked against open_clip's own models (``CLIP``, ``CustomTextCLIP``, ``HFTextEncoder``): tiny
variants saved as open_clip saves them and loaded through the real path.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from slidescope.features.encoders import WeightsError, create_encoder, get_encoder_config, list_encoders
from slidescope.features.encoders import _registry
from slidescope.features.encoders import clip as clip_mod
from slidescope.features.encoders._weights import load_into
from slidescope.features.encoders.clip import create_clip_text_tower, list_clip_text_towers

GOLDEN_DIR = Path(__file__).parents[1] / "golden"
GOLDEN = json.loads((GOLDEN_DIR / "trident_layouts_more.json").read_text())
NEW = ["ctranspath", "chief-ctranspath", "quiltnet-b16", "quiltnet-b16-pmb", "biomedclip"]


def _golden_script():
    """``fill`` (the deterministic weight rule) from the golden script itself, so both sides share it."""
    spec = importlib.util.spec_from_file_location("make_more", GOLDEN_DIR / "make_trident_layouts_more.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _register(monkeypatch, base: str, name: str, **changes) -> str:
    config = replace(get_encoder_config(base), name=name, **changes)
    monkeypatch.setitem(_registry._REGISTRY, name, (config, _registry._entry(base)[1]))
    return name


def test_registered_with_their_contract() -> None:
    assert set(NEW) <= set(list_encoders())
    for name in NEW:
        c = get_encoder_config(name)
        assert c.layout_source and c.license_url and c.hub_id and c.weights_file
        assert "µm/px" in c.description
    ct, chief = get_encoder_config("ctranspath"), get_encoder_config("chief-ctranspath")
    assert (ct.embed_dim, ct.mean, ct.interpolation, ct.pooling) == (
        768,
        (0.485, 0.456, 0.406),
        "bilinear",
        "mean",
    )
    assert chief.hub_id == "datasets/MahmoodLab/hest-bench" and chief.gated and chief.tile_size == 256
    assert {"quiltnet-b16", "biomedclip"} <= set(list_clip_text_towers())
    assert "quiltnet-b16-pmb" not in list_clip_text_towers()  # its text projection type is not known offline


# --- CTransPath against TRIDENT ------------------------------------------------------------------------------


def test_golden_names_its_source() -> None:
    prov = GOLDEN["provenance"]
    assert prov["repository"].endswith("mahmoodlab/TRIDENT") and len(prov["commit"]) == 40
    assert prov["script"] == "tests/golden/make_trident_layouts_more.py"


@pytest.mark.parametrize("name", ["ctranspath", "chief-ctranspath"])
def test_ctranspath_loads_the_layout_trident_loads(name: str) -> None:
    ref = GOLDEN["encoders"]["ctranspath"]
    published = {k: s for k, s in ref["shapes"].items() if k not in ref["not_in_checkpoint"]}
    config, builder = _registry._entry(name)
    with torch.device("meta"):
        encoder = builder(config)
        state = {
            k: torch.empty(
                s, dtype=torch.long if k.endswith(("index", "num_batches_tracked")) else torch.float32
            )
            for k, s in published.items()
        }
        converted = encoder.convert_state_dict(state)
        own = {k: list(v.shape) for k, v in encoder.checkpoint_module().state_dict().items()}
        assert {k: list(v.shape) for k, v in converted.items()} == own
        load_into(encoder.checkpoint_module(), converted, name=name, strict=True)
    n_params = sum(torch.Size(s).numel() for s in own.values())
    assert n_params == ref["n_params"] == 27_520_112
    # what moved: stage N's patch merging is stage N+1's downsample in current timm
    assert (
        "layers.0.downsample.reduction.weight" in published and "layers.3.downsample.reduction.weight" in own
    )


@pytest.fixture
def tiny_ctranspath(monkeypatch, tmp_path) -> tuple[str, Path]:
    """A tiny CTransPath registered under a test name and its checkpoint written as TRIDENT's golden run did."""
    ref = GOLDEN["reference_outputs"]["ctranspath_tiny"]
    kwargs = {**get_encoder_config("ctranspath").kwargs, **ref["kwargs"]}
    kwargs["num_heads"] = tuple(kwargs["num_heads"])
    name = _register(monkeypatch, "chief-ctranspath", "test-tiny-ctranspath", kwargs=kwargs, embed_dim=128)
    from timm.models.swin_transformer import get_relative_position_index

    index = get_relative_position_index(7, 7)
    constants = {k: index for k in ref["shapes"] if k.endswith("relative_position_index")}
    weights = _golden_script().fill(ref["shapes"], constants, ref["weight_seed"])
    assert sorted(weights) == ref["checkpoint_keys"]
    path = tmp_path / "CHIEF_CTransPath.pth"
    torch.save({"model": weights}, path)
    return name, path


def test_ctranspath_reproduces_tridents_model_through_the_published_file(tiny_ctranspath) -> None:
    name, path = tiny_ctranspath
    ref = GOLDEN["reference_outputs"]["ctranspath_tiny"]
    encoder = create_encoder(name, weights=path.parent, device="cpu")  # a folder holding the hub file name
    x = torch.randn(*ref["input_shape"], generator=torch.Generator().manual_seed(ref["input_seed"]))
    with torch.no_grad():
        ours = encoder.embed(x)
        tiles = encoder(torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8))
    expected = torch.tensor(ref["output"])
    assert expected.std() > 0.1  # a real signal, not a constant
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)  # measured: 5e-7
    assert tiles.shape == (2, 128) and torch.isfinite(tiles).all()
    assert encoder.weights_digest.startswith("sha256:")


def test_ctranspath_accepts_a_current_timm_file_and_refuses_a_head(tiny_ctranspath, tmp_path) -> None:
    name, path = tiny_ctranspath
    reference = create_encoder(name, weights=path, device="cpu")
    current = {k: v.clone() for k, v in reference.checkpoint_module().state_dict().items()}
    torch.save(current, tmp_path / "reexport.bin")
    loaded = create_encoder(name, weights=tmp_path / "reexport.bin", device="cpu")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.embed(x), reference.embed(x))
    with_head = torch.load(path, weights_only=True)
    with_head["model"]["head.weight"] = torch.zeros(2, 128)
    torch.save(with_head, tmp_path / "finetuned.pth")
    with pytest.raises(WeightsError, match="unexpected"):
        create_encoder(name, weights=tmp_path / "finetuned.pth", device="cpu")


def test_chief_hub_file_is_in_a_dataset_repository(monkeypatch) -> None:
    import huggingface_hub

    calls = []

    def offline(*args, **kwargs):
        calls.append((args, kwargs))
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError, match="gated") as err:
        create_encoder("chief-ctranspath", device="cpu")
    assert calls == [
        (("MahmoodLab/hest-bench", "fm_v1/ctranspath/CHIEF_CTransPath.pth"), {"repo_type": "dataset"})
    ]
    assert "weights=" in str(err.value)


# --- CLIP family against open_clip ----------------------------------------------------------------------------

TINY_VISION = {
    "quiltnet-b16": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 16},
    # BiomedCLIP's vision_cfg with timm's smallest ViT/16 (open_clip's TimmModel builds the trunk at 224)
    "biomedclip": {
        "timm_model_name": "vit_tiny_patch16_224",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": 224,
    },
}
SIZE = {"quiltnet-b16": 32, "biomedclip": 224}
TINY_TEXT = {
    "quiltnet-b16": {
        "embed_dim": 16,
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
        "quick_gelu": False,
    },
    "biomedclip": {
        **clip_mod.BIOMEDCLIP_TEXT,
        "embed_dim": 16,
        "context_length": 24,
        "bert": {
            **clip_mod.BIOMEDCLIP_TEXT["bert"],
            "vocab_size": 64,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
        },
    },
}
TEXTS = ["adenocarcinoma of the colon", "normal   colonic mucosa", "lymphocytes"]
WORDS = ["adenocarcinoma", "of", "the", "colon", "normal", "colonic", "mucosa", "lymph", "##ocytes"]


def _vocab_folder(folder: Path) -> None:
    """A small uncased BERT word-piece vocabulary (the PubMedBERT tokenizer's kind), saved as transformers does."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)


def _open_clip_reference(name: str) -> torch.nn.Module:
    """The tiny model as open_clip itself builds it (``CLIP``; ``CustomTextCLIP`` + ``HFTextEncoder``)."""
    torch.manual_seed(0)
    from open_clip.model import CLIP, CustomTextCLIP

    if name == "quiltnet-b16":
        return CLIP(16, TINY_VISION[name], TINY_TEXT[name]["text_cfg"]).eval()
    from open_clip.hf_model import HFTextEncoder
    from transformers import BertConfig

    model = CustomTextCLIP(
        16, TINY_VISION[name], {"context_length": 24, "vocab_size": 64, "width": 32, "heads": 4}
    )
    t = TINY_TEXT[name]
    text = HFTextEncoder(
        t["tokenizer"], 16, config=BertConfig(**t["bert"]), pooler_type=t["pooler_type"], proj_type="mlp"
    )
    text.transformer.pooler = None  # open_clip builds its BERT with add_pooling_layer=False for this pooler
    model.text = text
    return model.eval()


@pytest.fixture
def tiny_clip(monkeypatch, tmp_path) -> dict[str, tuple[str, torch.nn.Module, Path]]:
    out = {}
    for name in ("quiltnet-b16", "biomedclip"):
        tiny = _register(
            monkeypatch,
            name,
            f"test-tiny-{name}",
            kwargs={"embed_dim": 16, "vision_cfg": TINY_VISION[name], "quick_gelu": False},
            embed_dim=16,
            input_size=SIZE[name],
            resize_size=SIZE[name],
        )
        builder = clip_mod._TEXT_REGISTRY[name][2]
        monkeypatch.setitem(clip_mod._TEXT_REGISTRY, tiny, (tiny, TINY_TEXT[name], builder))
        ref = _open_clip_reference(name)
        folder = tmp_path / name
        folder.mkdir()
        torch.save(
            {k: v.detach().clone() for k, v in ref.state_dict().items()},
            folder / "open_clip_pytorch_model.bin",
        )
        if name == "biomedclip":
            _vocab_folder(folder)
        out[name] = (tiny, ref, folder)
    return out


@pytest.mark.parametrize("name", ["quiltnet-b16", "biomedclip"])
def test_image_tower_reproduces_open_clip(name: str, tiny_clip) -> None:
    tiny, ref, folder = tiny_clip[name]
    encoder = create_encoder(tiny, weights=folder, device="cpu")
    x = torch.randn(3, 3, SIZE[name], SIZE[name], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(encoder.embed(x), ref.encode_image(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["quiltnet-b16", "biomedclip"])
def test_text_tower_reproduces_open_clip_and_shares_its_space(name: str, tiny_clip) -> None:
    tiny, ref, folder = tiny_clip[name]
    tower = create_clip_text_tower(tiny, weights=folder)
    image = create_encoder(tiny, weights=folder, device="cpu")
    ids = tower.tokenize(TEXTS)["input_ids"]
    if name == "biomedclip":  # open_clip's HFTokenizer: [CLS] ... [SEP], padded to the context length
        from open_clip.tokenizer import HFTokenizer

        assert ids.shape == (3, 24) and torch.equal(ids, HFTokenizer(str(folder), context_length=24)(TEXTS))
        assert ids[0, 0].item() == 2 and 1 not in ids[:2].tolist()[0]  # no [UNK] for known words
    x = torch.randn(2, 3, SIZE[name], SIZE[name], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = tower.encode(TEXTS)
        torch.testing.assert_close(ours, ref.encode_text(ids), atol=1e-5, rtol=1e-5)
        logits = tower.logit_scale * F.normalize(image.embed(x), dim=-1) @ F.normalize(ours, dim=-1).T
        f_img, f_txt, scale = ref(x, ids)
    torch.testing.assert_close(logits, scale * f_img @ f_txt.T, atol=1e-4, rtol=1e-5)
    assert tower.weights_digest == image.weights_digest


def test_full_size_biomedclip_text_tower_is_pubmedbert_base() -> None:
    with torch.device("meta"):
        tower = create_clip_text_tower("biomedclip", pretrained=False, device="meta")
        shapes = {k: tuple(v.shape) for k, v in tower.checkpoint_module().state_dict().items()}
    assert shapes["transformer.embeddings.word_embeddings.weight"] == (30522, 768)
    assert shapes["proj.0.weight"] == (640, 768) and shapes["proj.2.weight"] == (512, 640)
    assert not any(k.startswith("transformer.pooler") for k in shapes)
    assert shapes["transformer.embeddings.position_embeddings.weight"] == (512, 768)  # context 256 fits
    assert shapes["proj.2.weight"][0] == get_encoder_config("biomedclip").embed_dim  # the image tower's space


def test_biomedclip_tokenizer_folder_errors(tiny_clip, tmp_path) -> None:
    from slidescope.errors import InvalidParameterError

    tiny, _, folder = tiny_clip["biomedclip"]
    empty = tmp_path / "weights-only"
    empty.mkdir()
    (empty / "open_clip_pytorch_model.bin").write_bytes((folder / "open_clip_pytorch_model.bin").read_bytes())
    with pytest.raises(InvalidParameterError, match="holds no tokenizer"):
        create_clip_text_tower(tiny, weights=empty)
    tower = create_clip_text_tower(tiny, weights=empty, tokenizer=folder)
    assert tower.encode(TEXTS[:1]).shape == (1, 16)


def _write_store():
    """``write_store`` of tests/vlm/conftest.py (a complete store, as extraction writes it)."""
    path = Path(__file__).parents[1] / "vlm" / "conftest.py"
    spec = importlib.util.spec_from_file_location("vlm_conftest_for_zoo_other", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.write_store


@pytest.mark.parametrize("name", ["quiltnet-b16", "biomedclip"])
def test_mi_zero_over_store_tile_embeddings(name: str, tiny_clip, tmp_path) -> None:
    from slidescope.vlm.api import zero_shot

    tiny, ref, folder = tiny_clip[name]
    image = create_encoder(tiny, weights=folder, device="cpu")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        tiles = image.embed(torch.randn(12, 3, SIZE[name], SIZE[name], generator=g)).numpy()
    path = _write_store()(tmp_path / "slide.zarr", tiles, encoder=tiny, weights_digest=image.weights_digest)
    classes = {
        "tumour": ["adenocarcinoma of the colon", "adenocarcinoma"],
        "normal": ["normal colonic mucosa"],
    }
    rows = zero_shot([path], classes, model=tiny, weights=folder, k=3)
    # expected from open_clip's model alone: class embedding = normalised mean of the normalised prompts
    tower = create_clip_text_tower(tiny, weights=folder)
    with torch.no_grad():
        w = torch.stack(
            [
                F.normalize(
                    F.normalize(ref.encode_text(tower.tokenize(p)["input_ids"]), dim=-1).mean(0), dim=0
                )
                for p in classes.values()
            ]
        )
    sim = F.normalize(torch.from_numpy(tiles), dim=-1) @ w.T
    pooled = sim.topk(3, dim=0).values.mean(0)
    expected = torch.softmax(float(ref.logit_scale.detach().exp()) * pooled, 0)
    assert list(rows[0].probs) == list(classes)
    torch.testing.assert_close(torch.tensor(list(rows[0].probs.values())), expected, atol=1e-5, rtol=1e-5)
