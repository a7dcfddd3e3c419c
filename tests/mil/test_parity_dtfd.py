"""DTFD-MIL equals the reference hrzhang1123/DTFD-MIL on its golden file (``tests/golden/make_dtfd.py``).

The golden file holds one training iteration of the reference's own ``train_attention_preFeature_DTFD`` (one
slide of 37 tiles x 16-d, ``numGroup`` 4, gradient clipping 5, two Adam optimisers at lr 1e-4 and weight
decay 1e-4) for the AFS and MaxMinS distillations. With the same weights (``load_reference_state_dict``)
and the same random split (``groups_from_permutation``), the tier-1 and tier-2 logits and losses, the
clipped gradients (tier 1 from the tier-1 loss only) and the parameters after one Adam step agree to 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slidescope.errors import InvalidParameterError
from slidescope.mil.aggregators import create_aggregator
from slidescope.mil.aggregators.dtfd import DTFD

GOLDEN = np.load(Path(__file__).parents[1] / "golden" / "dtfd.npz")
TOL = {"atol": 1e-5, "rtol": 1e-5}
MODES = ["AFS", "MaxMinS"]


def _checkpoint(prefix: str) -> dict[str, dict[str, torch.Tensor]]:
    """The reference's saved layout ``{"classifier": {...}, "dim_reduction": ..., ...}`` from the golden file."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key in GOLDEN.files:
        if key.startswith(prefix):
            part, name = key.removeprefix(prefix).split("/", 1)
            out.setdefault(part, {})[name] = torch.from_numpy(GOLDEN[key])
    return out


def _model(distill: str, prefix: str = "ref/") -> DTFD:
    model = create_aggregator("dtfd", in_dim=16, num_classes=2, embed_dim=8, distill=distill)
    model.load_reference_state_dict(_checkpoint(f"{distill}/{prefix}"))
    return model


def _inputs(distill: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(GOLDEN[f"{distill}/features"])[None]
    groups = DTFD.groups_from_permutation(GOLDEN[f"{distill}/permutation"].tolist(), 4)[None]
    return x, torch.tensor([1]), groups


def test_golden_file_names_its_source() -> None:
    provenance = json.loads(str(GOLDEN["provenance"]))
    assert provenance["repository"].endswith("hrzhang1123/DTFD-MIL") and len(provenance["commit"]) == 40


def test_defaults_are_the_reference_script_defaults() -> None:
    model = create_aggregator("dtfd", in_dim=16, num_classes=2)
    assert (model.num_groups, model.distill, model.instances_per_group, model.grad_clip) == (4, "AFS", 1, 5.0)


@pytest.mark.parametrize("distill", MODES)
def test_one_training_iteration_matches_the_reference(distill: str) -> None:
    model = _model(distill).train()
    x, labels, groups = _inputs(distill)
    out = model(x, labels=labels, groups=groups)
    torch.testing.assert_close(
        out.extra["tier1_logits"][0], torch.from_numpy(GOLDEN[f"{distill}/tier1_logits"]), **TOL
    )
    torch.testing.assert_close(out.logits, torch.from_numpy(GOLDEN[f"{distill}/tier2_logits"]), **TOL)
    tier2_loss = model.task_loss(out.logits, labels)
    torch.testing.assert_close(out.aux_loss, torch.from_numpy(GOLDEN[f"{distill}/loss0"]), **TOL)
    torch.testing.assert_close(tier2_loss, torch.from_numpy(GOLDEN[f"{distill}/loss1"]), **TOL)

    (model.task_loss_weight * tier2_loss + out.aux_loss).backward()
    model.clip_gradients_()
    expected_grads = _model(distill)  # a model whose "weights" are the reference's clipped gradients
    expected_grads.load_reference_state_dict(_checkpoint(f"{distill}/grad/"))
    for (name, param), (_, want) in zip(
        model.named_parameters(), expected_grads.named_parameters(), strict=True
    ):
        torch.testing.assert_close(param.grad, want.detach(), **TOL, msg=f"gradient of {name}")

    torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4).step()
    stepped = _model(distill, "step/")
    for (name, got), (_, want) in zip(model.state_dict().items(), stepped.state_dict().items(), strict=True):
        # an attention-logit bias cancels in the softmax: its gradient is 0 up to rounding, which Adam's first
        # step normalises to a step of up to lr (1e-4) in either direction, in the reference too
        tol = {"atol": 1e-4, "rtol": 0.0} if name.endswith("attention_c.bias") else TOL
        torch.testing.assert_close(got, want, **tol, msg=f"{name} after one step")


def test_eval_split_is_fixed_and_a_reference_style_split() -> None:
    model = create_aggregator("dtfd", in_dim=16, num_classes=2).eval()
    x = torch.randn(2, 10, 16)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    groups = model(x, mask).extra["groups"]
    assert torch.equal(groups, model(x, mask).extra["groups"])
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(groups[1, :7], DTFD.groups_from_permutation(perm, 4))


def test_bad_groups_are_a_clear_error() -> None:
    model = create_aggregator("dtfd", in_dim=16, num_classes=2)
    x = torch.randn(1, 5, 16)
    with pytest.raises(InvalidParameterError, match="groups_from_permutation"):
        model(x, groups=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(InvalidParameterError, match=r"\[0, 4\)"):
        model(x, groups=torch.full((1, 5), 4))
    with pytest.raises(InvalidParameterError, match="exactly once"):
        DTFD.groups_from_permutation([0, 0, 1], 2)
    with pytest.raises(InvalidParameterError, match="att_classifier"):
        model.load_reference_state_dict({"classifier": {}})


@pytest.mark.filterwarnings(
    "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"
)  # 1 batch, 0 workers
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated:FutureWarning")  # lightning on torch >= 2.10
def test_the_trainer_applies_the_reference_clipping(monkeypatch) -> None:
    """One Lightning step of ``MILTask``: the model's per-module clipping runs once, after the backward pass."""
    import lightning as L
    from torch.utils.data import DataLoader

    from slidescope.mil.task import MILTask

    torch.manual_seed(0)
    task = MILTask(
        "dtfd", {"embed_dim": 8}, in_dim=16, num_classes=2, class_names=["a", "b"], encoder="golden", lr=0.0
    )
    model = task.model
    calls: list[float] = []
    unclipped = model.clip_gradients_

    def spy() -> None:  # the gradient norm of the tier-1 classifier before clipping, then the real clipping
        calls.append(
            float(torch.cat([p.grad.reshape(-1) for p in model.tier1_classifier.parameters()]).norm())
        )
        unclipped()

    monkeypatch.setattr(model, "clip_gradients_", spy)
    x = 100.0 * torch.randn(2, 37, 16)  # large embeddings: gradients above the clip
    batch = {"features": x, "mask": torch.ones(2, 37, dtype=torch.bool), "labels": torch.tensor([0, 1])}
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
    )
    trainer.fit(task, DataLoader([batch], batch_size=None))
    assert len(calls) == 1 and calls[0] > 5.0
    clipped = torch.cat([p.grad.reshape(-1) for p in model.tier1_classifier.parameters()]).norm()
    torch.testing.assert_close(clipped, torch.tensor(5.0), atol=1e-4, rtol=0)
