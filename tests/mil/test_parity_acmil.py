"""ACMIL equals the reference dazhangyu123/ACMIL (``ACMIL_GA``) on its golden file (``tests/golden/make_acmil.py``).

Same weights (``load_reference_state_dict``), same bag of 37 tiles x 16-d and the same seed before the
training forward (so the stochastic top-K instance masking draws the same numbers): eval and training
logits, the masked tiles, the loss terms of ``train_one_epoch`` and the parameters after one AdamW step
(lr 1e-4, weight decay 1e-5) agree to 1e-5, for ACMIL (5 tokens, 10 maskable tiles, drop 0.6) and for the
one-token setting, where the reference adds no branch loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slidescope.errors import InvalidParameterError
from slidescope.mil.aggregators import create_aggregator

GOLDEN = np.load(Path(__file__).parents[1] / "golden" / "acmil.npz")
SETTINGS = json.loads(str(GOLDEN["provenance"]))["settings"]
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _get(name: str, key: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(GOLDEN[f"{name}/{key}"]))


def _model(name: str, prefix: str = "ref/"):
    model = create_aggregator("acmil", in_dim=16, num_classes=2, embed_dim=8, **SETTINGS[name])
    full = f"{name}/{prefix}"
    model.load_reference_state_dict(
        {k.removeprefix(full): torch.from_numpy(GOLDEN[k]) for k in GOLDEN.files if k.startswith(full)}
    )
    return model


def test_golden_file_names_its_source() -> None:
    provenance = json.loads(str(GOLDEN["provenance"]))
    assert provenance["repository"].endswith("dazhangyu123/ACMIL") and len(provenance["commit"]) == 40


@pytest.mark.parametrize("name", ["acmil", "one_token"])
def test_eval_forward_matches_the_reference(name: str) -> None:
    model = _model(name).eval()
    with torch.no_grad():
        out = model(_get(name, "features")[None])
    torch.testing.assert_close(out.logits, _get(name, "eval/slide_logits"), **TOL)
    torch.testing.assert_close(out.extra["branch_logits"][0], _get(name, "eval/sub_logits"), **TOL)
    torch.testing.assert_close(
        out.extra["branch_attention"][0], _get(name, "eval/attention_logits").softmax(-1), **TOL
    )


@pytest.mark.parametrize("name", ["acmil", "one_token"])
def test_training_loss_and_one_step_match_the_reference(name: str) -> None:
    model = _model(name).train()
    labels = torch.tensor([int(GOLDEN[f"{name}/label"])])
    torch.manual_seed(int(GOLDEN[f"{name}/seed"]))
    out = model(_get(name, "features")[None], labels=labels)
    torch.testing.assert_close(out.logits, _get(name, "train/slide_logits"), **TOL)
    torch.testing.assert_close(out.extra["branch_logits"][0], _get(name, "train/sub_logits"), **TOL)
    assert torch.equal(out.extra["branch_attention"][0] == 0, _get(name, "train/masked"))
    slide_loss = model.task_loss(out.logits, labels)
    torch.testing.assert_close(slide_loss, _get(name, "loss1"), **TOL)
    if SETTINGS[name]["n_token"] > 1:
        torch.testing.assert_close(out.aux_loss, _get(name, "loss0") + _get(name, "diff_loss"), **TOL)
        loss = slide_loss + out.aux_loss
    else:  # one token: the reference's branch and diversity losses are 0
        assert not model.has_aux_loss and out.aux_loss is None
        loss = slide_loss
    torch.testing.assert_close(loss, _get(name, "loss"), **TOL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    stepped = _model(name, "step/")
    for (key, got), (_, want) in zip(model.state_dict().items(), stepped.state_dict().items(), strict=True):
        # the attention-logit bias cancels in the softmax: its gradient is 0 up to rounding (~1e-9), which
        # Adam's first step normalises to a step of up to lr in either direction, in the reference too
        tol = {"atol": 1e-4, "rtol": 0.0} if key == "attention.attention_c.bias" else TOL
        torch.testing.assert_close(got, want, **tol, msg=f"{key} after one step")


def test_foreign_weights_are_refused_with_a_clear_error() -> None:
    model = create_aggregator("acmil", in_dim=16, num_classes=2, embed_dim=8, n_token=3)
    full = "acmil/ref/"
    with pytest.raises(InvalidParameterError, match="n_token"):
        model.load_reference_state_dict(
            {k.removeprefix(full): torch.from_numpy(GOLDEN[k]) for k in GOLDEN.files if k.startswith(full)}
        )
