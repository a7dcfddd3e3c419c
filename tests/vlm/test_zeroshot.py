"""Zero-shot scoring on hand-made embeddings whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from slidescope.errors import InvalidParameterError
from slidescope.vlm.zeroshot import (
    auroc,
    build_prompts,
    class_text_embeddings,
    mi_zero,
    prompt_spread,
    zero_shot_logits,
)

E = torch.eye(4)


def test_build_prompts_expands_phrasings_and_templates() -> None:
    prompts, idx = build_prompts(
        {"LUAD": ["lung adenocarcinoma", "LUAD"], "LUSC": ["squamous cell carcinoma"]},
        ["an H&E image of {}.", "CLASSNAME is present."],
    )
    assert prompts == [
        "an H&E image of lung adenocarcinoma.",
        "lung adenocarcinoma is present.",
        "an H&E image of LUAD.",
        "LUAD is present.",
        "an H&E image of squamous cell carcinoma.",
        "squamous cell carcinoma is present.",
    ]
    assert idx.tolist() == [0, 0, 0, 0, 1, 1]
    prompts, idx = build_prompts({"a": ["x"], "b": ["y"]}, None)
    assert prompts == ["x", "y"] and idx.tolist() == [0, 1]


@pytest.mark.parametrize(
    "classes, templates, match",
    [
        ({}, None, "at least one class"),
        ({"a": ["x"], "b": []}, None, "'b' has no phrasings"),
        ({"a": ["x"], "b": [" "]}, None, "'b' has no phrasings"),
        ({"a": "x"}, None, "list of phrasings"),
        ({"a": ["x"]}, [], "empty"),
        ({"a": ["x"]}, ["no placeholder"], "placeholder"),
    ],
)
def test_build_prompts_errors(classes, templates, match) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        build_prompts(classes, templates)


def _prompts_near(directions: torch.Tensor, per_class: int, noise: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = directions.repeat_interleave(per_class, 0) + noise * torch.randn(
        len(directions) * per_class, directions.shape[1], generator=g
    )
    return emb, torch.arange(len(directions)).repeat_interleave(per_class)


@pytest.mark.parametrize("ensemble", ["mean-embedding", "sum-probability"])
def test_slides_near_a_class_direction_get_that_class(ensemble) -> None:
    text, idx = _prompts_near(E[:3], per_class=5, noise=0.2)
    slides = torch.stack([E[2] + 0.1 * E[3], E[0], E[1] - 0.1 * E[0]]) * 7.0  # scale must not matter
    probs = zero_shot_logits(slides, text, idx, ensemble=ensemble, logit_scale=50.0)
    assert probs.shape == (3, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    assert probs.argmax(1).tolist() == [2, 0, 1]
    assert (probs.max(1).values > 0.9).all()


def test_mean_embedding_is_softmax_of_scaled_cosine_to_class_means() -> None:
    text = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    idx = torch.tensor([0, 0, 1])
    w0 = F.normalize(F.normalize(text[0], dim=0) + F.normalize(text[1], dim=0), dim=0)
    slide = torch.tensor([[0.6, 0.8]])
    probs = zero_shot_logits(slide, text, idx, ensemble="mean-embedding", logit_scale=10.0)
    expected = torch.softmax(10.0 * torch.stack([slide[0] @ w0, slide[0] @ torch.tensor([0.0, 1.0])]), 0)
    torch.testing.assert_close(probs[0], expected)
    torch.testing.assert_close(class_text_embeddings(text, idx)[0], w0)


def test_sum_probability_sums_softmax_over_all_prompts_like_prism() -> None:
    text = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    idx = torch.tensor([0, 0, 1])
    slide = torch.tensor([[0.6, 0.8]])
    p = torch.softmax(5.0 * slide @ F.normalize(text, dim=1).T, dim=1)[0]
    probs = zero_shot_logits(slide, text, idx, ensemble="sum-probability", logit_scale=5.0)
    torch.testing.assert_close(probs[0], torch.stack([p[0] + p[1], p[2]]))
    # the two modes genuinely differ: summing favours the class with more prompts
    other = zero_shot_logits(slide, text, idx, ensemble="mean-embedding", logit_scale=5.0)
    assert not torch.allclose(probs, other)


def test_zero_shot_errors() -> None:
    text, idx = _prompts_near(E[:2], 2, 0.0)
    with pytest.raises(InvalidParameterError, match="ensemble"):
        zero_shot_logits(E[:1], text, idx, ensemble="max")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="no prompts"):
        zero_shot_logits(E[:1], text[:0], idx[:0])
    with pytest.raises(InvalidParameterError, match=r"classes \[1\] have no prompts"):
        zero_shot_logits(E[:1], text, torch.tensor([0, 0, 2, 2]))
    with pytest.raises(InvalidParameterError, match="d="):
        zero_shot_logits(torch.ones(1, 3), text, idx)


def test_mi_zero_top_k_pools_tile_similarities() -> None:
    classes = E[:2]
    tiles = torch.stack(
        [E[0], E[0] + E[2], E[1], E[2], E[3]]
    )  # two tumour-ish tiles of class 0, one of class 1
    res = mi_zero(tiles, classes, k=1)
    assert res.similarity.shape == (5, 2)
    torch.testing.assert_close(res.scores, res.similarity.max(0).values)  # k=1 is max pooling
    torch.testing.assert_close(mi_zero(tiles, classes, k=5).scores, res.similarity.mean(0))  # k=N is mean
    assert mi_zero(tiles, classes, k=500).k == 5  # capped at N
    two = mi_zero(tiles, classes, k=2)
    torch.testing.assert_close(two.scores, torch.tensor([(1 + 1 / math.sqrt(2)) / 2, 0.5]))
    assert int(two.scores.argmax()) == 0 and two.probs.sum().item() == pytest.approx(1.0)
    with pytest.raises(InvalidParameterError, match="k must be"):
        mi_zero(tiles, classes, k=0)
    with pytest.raises(InvalidParameterError, match="no tiles"):
        mi_zero(tiles[:0], classes)


def test_prompt_spread_reports_fragility() -> None:
    # class 0 has one good prompt and one pointing elsewhere (E3); class 1 two good ones
    text = torch.stack([E[0], E[3], E[1], E[1] + 0.1 * E[2]])
    idx = torch.tensor([0, 0, 1, 1])
    slides = torch.stack([E[0] + 0.3 * E[1], E[1], E[0] + 0.2 * E[2], E[1] + E[3]])
    labels = torch.tensor([0, 1, 0, 1])
    spread = prompt_spread(
        slides, text, idx, labels=labels, n_subsets=20, subset_size=1, logit_scale=20.0, seed=0
    )
    assert spread.probs.shape == (20, 4, 2) and spread.mean.shape == (4, 2)
    assert spread.auroc is not None and spread.auroc.shape == (20,)
    assert float(spread.auroc.max()) == 1.0 and float(spread.auroc.min()) < 1.0  # the bad prompt hurts
    assert float(spread.std[0, 0]) > 0.05
    assert (spread.min <= spread.mean + 1e-7).all() and (spread.mean <= spread.max + 1e-7).all()
    again = prompt_spread(
        slides, text, idx, labels=labels, n_subsets=20, subset_size=1, logit_scale=20.0, seed=0
    )
    assert again.subsets == spread.subsets  # seeded


def test_auroc_matches_hand_counts() -> None:
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # ties count half
    s = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    assert auroc([0, 1, 2], s) == pytest.approx(1.0)
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))  # one class: undefined (slidescope.metrics' documented NaN)
