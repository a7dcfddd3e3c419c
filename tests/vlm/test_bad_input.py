"""Bad input to the zero-/few-shot API gives a slidescope error that says what is wrong: an empty prompt set, a
class without phrasings, slide embeddings of the wrong width, a text model without its tokenizer, and labels or
classes beyond what the prompts define. Uses a tiny untrained model (the answers do not matter, the errors do)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slidescope.errors import InvalidParameterError
from slidescope.vlm.api import few_shot, load_prompts, stored_slide_embeddings, zero_shot
from slidescope.vlm.model import SlideTextModel
from slidescope.vlm.slide_encoder import PerceiverSlideEncoderConfig
from slidescope.vlm.text import SmallTextTower
from slidescope.vlm.zeroshot import zero_shot_logits

CLASSES = {"tumour": ["carcinoma"], "normal": ["benign tissue"]}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[SlideTextModel, Path]:
    torch.manual_seed(0)
    tower = SmallTextTower.from_texts(["carcinoma benign tissue lymph node"], width=32, depth=1, heads=2)
    model = SlideTextModel(PerceiverSlideEncoderConfig.tiny(), tower, dim_latents=16).eval()
    return model, model.save(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def stores(tmp_path: Path, store_writer) -> list[Path]:
    rng = np.random.default_rng(0)
    return [
        store_writer(tmp_path / f"s{i}.zarr", rng.normal(size=(6, 24)), encoder="tiny-24") for i in range(4)
    ]


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        ({}, "the prompt set is empty"),
        ({"classes": {}}, "the prompt set is empty"),
        ({"tumour": ["carcinoma"]}, "at least two classes"),
        ({"tumour": ["carcinoma"], "normal": []}, "'normal' has no phrasings"),
        ({"tumour": ["carcinoma"], "normal": ["  ", None]}, "'normal' has no phrasings"),
    ],
)
def test_prompt_sets_that_cannot_classify(classes, match, tiny_model, stores) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        load_prompts(classes)
    with pytest.raises(InvalidParameterError, match=match):
        zero_shot(stores, classes, model=tiny_model[0], encoder="tiny-24")


def test_empty_prompt_yaml(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("")
    with pytest.raises(InvalidParameterError, match="expected a mapping with 'classes"):
        load_prompts(path)


def test_slide_embeddings_of_the_wrong_width(tiny_model, stores, store_writer, tmp_path: Path) -> None:
    model, _ = tiny_model
    with pytest.raises(InvalidParameterError, match=r"shape \(B, 16\) to match the model, got \(4, 12\)"):
        few_shot(
            np.zeros((4, 12)),
            ["tumour", "normal", "tumour", "normal"],
            np.zeros((2, 16)),
            model=model,
            encoder="tiny-24",
        )
    with pytest.raises(InvalidParameterError, match="d="):
        zero_shot_logits(torch.ones(2, 12), torch.ones(3, 16), [0, 0, 1])
    # stored slide embeddings of another width (another model's) are refused, not silently scored
    from slidescope.features.store import SlideStore

    for p in stores:
        SlideStore.open(p, mode="r+").write_slide_embedding("other", np.ones(12, np.float32))
    with pytest.raises(InvalidParameterError, match="12 dimensions but the model's joint space has 16"):
        stored_slide_embeddings(stores, "other", model=model)
    with pytest.raises(InvalidParameterError, match="12 dimensions"):
        zero_shot(stores, CLASSES, model=model, slide_embedding="other")
    # tile embeddings of the wrong width
    wrong = store_writer(tmp_path / "wide.zarr", np.ones((5, 40)), encoder="tiny-24")
    with pytest.raises(InvalidParameterError, match="40 dimensions but the model expects 24"):
        zero_shot([wrong], CLASSES, model=model, encoder="tiny-24")


def test_text_model_without_its_tokenizer(tiny_model, tmp_path: Path) -> None:
    import shutil

    _, folder = tiny_model
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "text_tower" / "tokenizer.json").unlink()
    with pytest.raises(InvalidParameterError, match="lacks tokenizer.json"):
        SlideTextModel.load(broken)


def test_more_classes_than_the_prompts_define(tiny_model, stores) -> None:
    model, _ = tiny_model
    labels = ["tumour", "normal", "tumour", "necrosis"]
    with pytest.raises(
        InvalidParameterError,
        match=r"training labels \['necrosis'\] are not among the prompt "
        r"classes \['tumour', 'normal'\]",
    ):
        few_shot(stores, labels, stores[:2], model=model, encoder="tiny-24", classes=CLASSES)
    with pytest.raises(InvalidParameterError, match=r"test labels \['necrosis'\] are not among the classes"):
        few_shot(
            stores,
            ["tumour", "normal"] * 2,
            stores[:2],
            model=model,
            encoder="tiny-24",
            classes=CLASSES,
            method="simpleshot",
            test_labels=["tumour", "necrosis"],
            n_bootstrap=10,
        )
    with pytest.raises(InvalidParameterError, match="4 training labels for 2 training slides"):
        few_shot(stores[:2], labels, stores[:2], model=model, encoder="tiny-24")
    # prompt indices naming classes that have no prompt
    with pytest.raises(InvalidParameterError, match=r"classes \[1, 2\] have no prompts"):
        zero_shot_logits(torch.ones(1, 4), torch.ones(2, 4), [0, 3])


def test_named_model_errors(tiny_model, stores) -> None:
    with pytest.raises(InvalidParameterError, match="weights= is for named models"):
        zero_shot(stores, CLASSES, model=tiny_model[1], weights="somewhere", encoder="tiny-24")
    with pytest.raises(InvalidParameterError, match="give encoder="):
        zero_shot(stores, CLASSES, model=tiny_model[0])
    with pytest.raises(InvalidParameterError, match="level must be"):
        zero_shot(stores, CLASSES, model=tiny_model[0], encoder="tiny-24", level="patch")  # type: ignore[arg-type]
