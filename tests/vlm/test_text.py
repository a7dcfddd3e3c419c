"""Text towers: every HF kind through the real from_pretrained path (tiny offline models), the small tower."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slidescope.errors import InvalidParameterError
from slidescope.vlm.text import HFTextTower, SmallTextTower, list_text_towers, load_text_tower

REPORTS = [
    "Invasive ductal carcinoma of the breast, grade 2.",
    "Lobular carcinoma in situ, no invasive tumour identified.",
    "Lung adenocarcinoma, acinar pattern predominant.",
    "Squamous cell carcinoma of the lung with keratinisation.",
    "Benign breast tissue with fibrocystic change.",
    "Lymph node with metastatic carcinoma, 3 of 12 nodes positive.",
]
TEXTS = ["invasive ductal carcinoma", "squamous cell carcinoma of the lung, well differentiated"]


def _fast_tokenizer(specials: dict[str, str], post: str) -> object:
    """A tiny WordPiece tokenizer trained offline and wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token=specials["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        REPORTS * 3, trainers.WordPieceTrainer(vocab_size=200, special_tokens=list(specials.values()))
    )
    if post == "cls-sep":
        tok.post_processor = processors.TemplateProcessing(
            single=f"{specials['cls_token']} $A {specials['sep_token']}",
            special_tokens=[
                (specials["cls_token"], tok.token_to_id(specials["cls_token"])),
                (specials["sep_token"], tok.token_to_id(specials["sep_token"])),
            ],
        )
    elif post == "bos-eos":
        tok.post_processor = processors.TemplateProcessing(
            single=f"{specials['bos_token']} $A {specials['eos_token']}",
            special_tokens=[
                (specials["bos_token"], tok.token_to_id(specials["bos_token"])),
                (specials["eos_token"], tok.token_to_id(specials["eos_token"])),
            ],
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def _ids(tokenizer, *names: str) -> dict[str, int]:
    return {n: tokenizer.convert_tokens_to_ids(getattr(tokenizer, n)) for n in names}


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bert")
    tok = _fast_tokenizer(
        {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]"}, "cls-sep"
    )
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
    )
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("clip")
    tok = _fast_tokenizer(
        {
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
        },
        "bos-eos",
    )
    ids = _ids(tok, "pad_token", "bos_token", "eos_token")
    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        projection_dim=16,
        pad_token_id=ids["pad_token"],
        bos_token_id=ids["bos_token"],
        eos_token_id=ids["eos_token"],
    )
    CLIPTextModelWithProjection(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def biogpt_dir(tmp_path_factory) -> Path:
    from transformers import BioGptConfig, BioGptForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("biogpt")
    tok = _fast_tokenizer(
        {
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "bos_token": "</s>",
            "eos_token": "</s>",
            "cls_token": "madeupword0006",
        },
        "none",
    )
    cfg = BioGptConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
    )
    BioGptForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_bert_kind_takes_the_cls_hidden_state(bert_dir: Path) -> None:
    tower = HFTextTower.from_pretrained(bert_dir, kind="bert")
    with torch.no_grad():
        emb = tower.encode(TEXTS)
        batch = tower.tokenizer(TEXTS[:1], return_tensors="pt")
        ref = tower.model(**batch).last_hidden_state[:, 0]
    assert emb.shape == (2, 32) and tower.text_dim == 32
    torch.testing.assert_close(emb[:1], ref, atol=1e-5, rtol=1e-5)  # padding in the batch changes nothing


def test_clip_kind_is_the_projected_eos_output(clip_dir: Path) -> None:
    tower = HFTextTower.from_pretrained(clip_dir, kind="clip")
    with torch.no_grad():
        emb = tower.encode(TEXTS)
        batch = tower.tokenizer(TEXTS[1:], return_tensors="pt")
        out = tower.model.text_model(**batch)
        eos_state = out.last_hidden_state[
            0, batch["input_ids"][0].tolist().index(tower.tokenizer.eos_token_id)
        ]
        ref = tower.model.text_projection(eos_state)
    assert emb.shape == (2, 16) and tower.text_dim == 16
    torch.testing.assert_close(emb[1], ref, atol=1e-5, rtol=1e-5)


def test_causal_cls_appends_cls_and_reads_the_chosen_layer(biogpt_dir: Path) -> None:
    tower = HFTextTower.from_pretrained(biogpt_dir, kind="causal-cls", layer=2)
    assert tower.cls_token_id == tower.tokenizer.convert_tokens_to_ids("madeupword0006")
    with torch.no_grad():
        emb = tower.encode(TEXTS)
        alone = tower.encode(TEXTS[:1])
        ids = tower.tokenizer(TEXTS[:1])["input_ids"][0] + [tower.cls_token_id]
        hidden = tower.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert emb.shape == (2, 32)
    torch.testing.assert_close(alone[0], hidden[2][0, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb[0], alone[0], atol=1e-5, rtol=1e-5)  # right padding is invisible (causal)
    assert not torch.allclose(hidden[2][0, -1], hidden[3][0, -1])  # the layer choice matters


def test_hf_tower_save_load_round_trip(clip_dir: Path, tmp_path: Path) -> None:
    tower = HFTextTower.from_pretrained(clip_dir, kind="clip")
    tower.save(tmp_path / "tower")
    again = load_text_tower(tmp_path / "tower")
    assert isinstance(again, HFTextTower) and again.kind == "clip"
    with torch.no_grad():
        torch.testing.assert_close(again.encode(TEXTS), tower.encode(TEXTS))


def test_directory_without_tokenizer_is_a_clear_error(bert_dir: Path, tmp_path: Path) -> None:
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((bert_dir / name).read_bytes())
    with pytest.raises(InvalidParameterError, match="no tokenizer"):
        HFTextTower.from_pretrained(tmp_path, kind="bert")


def test_unknown_kind_is_rejected(bert_dir: Path) -> None:
    with pytest.raises(InvalidParameterError, match="kind"):
        HFTextTower.from_pretrained(bert_dir, kind="t5")  # type: ignore[arg-type]


def test_small_tower_trains_its_tokenizer_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tower = SmallTextTower.from_texts(REPORTS, width=64, depth=2, heads=4, max_length=32).eval()
    ids, mask = tower.tokenize(["invasive ductal carcinoma"])
    assert ids[0, 0] == tower.tokenizer.token_to_id("[CLS]")
    assert tower.tokenizer.token_to_id("[UNK]") not in ids[0].tolist()  # report words are in the vocabulary
    with torch.no_grad():
        emb = tower.encode(TEXTS)
        alone = tower.encode(TEXTS[:1])
    assert emb.shape == (2, 64)
    torch.testing.assert_close(emb[0], alone[0], atol=1e-5, rtol=1e-5)  # padding changes nothing
    tower.save(tmp_path / "small")
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= {
        p.name for p in (tmp_path / "small").iterdir()
    }
    again = load_text_tower(tmp_path / "small")
    with torch.no_grad():
        torch.testing.assert_close(again.encode(TEXTS), emb)
    assert {"hf", "small"} <= set(list_text_towers())


def test_small_tower_mean_pooling_and_bad_input() -> None:
    tower = SmallTextTower.from_texts(REPORTS, width=32, depth=1, heads=2, pooling="mean").eval()
    with torch.no_grad():
        assert tower.encode(["carcinoma"]).shape == (1, 32)
    with pytest.raises(InvalidParameterError, match="list"):
        tower.encode("carcinoma")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError):
        SmallTextTower.from_texts(REPORTS, pooling="max")  # type: ignore[arg-type]
