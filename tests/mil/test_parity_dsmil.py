"""DSMIL equals the reference binli123/dsmil-wsi on its golden file (``tests/golden/make_dsmil.py``).

Same weights (the reference state dict, loaded with ``DSMIL.load_reference_state_dict``), same bag of 37
tiles x 16-d: bag logits, instance logits, attention, the loss terms of ``train_tcga.py`` and the parameters
after one step of its Adam (lr 1e-4, betas (0.5, 0.9), weight decay 1e-3) agree to 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slidescope.errors import InvalidParameterError
from slidescope.mil.aggregators import create_aggregator
from slidescope.mil.task import MILTask

GOLDEN = np.load(Path(__file__).parents[1] / "golden" / "dsmil.npz")
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _ref(prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): torch.from_numpy(GOLDEN[k]) for k in GOLDEN.files if k.startswith(prefix)}


def _model():
    model = create_aggregator("dsmil", in_dim=16, num_classes=2)
    model.load_reference_state_dict(_ref("ref/"))
    return model


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(GOLDEN["features"])[None], torch.tensor([int(GOLDEN["label"])])


def test_golden_file_names_its_source() -> None:
    provenance = json.loads(str(GOLDEN["provenance"]))
    assert provenance["repository"].endswith("binli123/dsmil-wsi") and len(provenance["commit"]) == 40


def test_forward_matches_the_reference() -> None:
    model = _model().eval()
    x, _ = _inputs()
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out.logits[0], torch.from_numpy(GOLDEN["bag_logits"][0]), **TOL)
    torch.testing.assert_close(
        out.extra["instance_logits"][0], torch.from_numpy(GOLDEN["instance_logits"]), **TOL
    )
    torch.testing.assert_close(out.extra["attention"][0].T, torch.from_numpy(GOLDEN["attention"]), **TOL)
    torch.testing.assert_close(
        out.extra["bag_probs"], torch.sigmoid(torch.from_numpy(GOLDEN["bag_logits"])), **TOL
    )


def test_loss_and_one_adam_step_match_the_reference() -> None:
    model = _model().train()
    x, labels = _inputs()
    out = model(x, labels=labels)
    bag_loss = model.task_loss(out.logits, labels)
    torch.testing.assert_close(bag_loss, torch.from_numpy(GOLDEN["bag_loss"]), **TOL)
    torch.testing.assert_close(out.aux_loss, 0.5 * torch.from_numpy(GOLDEN["max_loss"]), **TOL)
    loss = model.task_loss_weight * bag_loss + out.aux_loss
    torch.testing.assert_close(loss, torch.from_numpy(GOLDEN["loss"]), **TOL)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.9), weight_decay=1e-3)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    expected = _model()
    expected.load_reference_state_dict(_ref("step/"))
    for (name, got), (_, want) in zip(model.state_dict().items(), expected.state_dict().items(), strict=True):
        torch.testing.assert_close(got, want, **TOL, msg=f"{name} after one step")


def test_the_trainer_optimises_the_reference_loss() -> None:
    """``MILTask`` uses the model's BCE task loss and weighting, not its default cross-entropy."""
    task = MILTask("dsmil", {}, in_dim=16, num_classes=2, class_names=["a", "b"], encoder="golden")
    task.model.load_reference_state_dict(_ref("ref/"))
    x, labels = _inputs()
    loss, _ = task.model_step(
        {"features": x, "mask": torch.ones(x.shape[:2], dtype=torch.bool), "labels": labels}, train=True
    )
    torch.testing.assert_close(loss, torch.from_numpy(GOLDEN["loss"]), **TOL)


def test_foreign_weights_are_refused_with_a_clear_error() -> None:
    with pytest.raises(InvalidParameterError, match="feats_size"):
        create_aggregator("dsmil", in_dim=32, num_classes=2).load_reference_state_dict(_ref("ref/"))
