"""CLAM-SB / CLAM-MB against mahmoodlab/CLAM (golden files from tests/golden/make_clam.py).

Forward (logits, attention), the instance loss with and without subtyping, the total loss of CLAM's
``train_loop_clam`` (``0.7 * CE + 0.3 * L_inst``) and its gradient, with the reference's weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from slidescope.mil.aggregators.clam import CLAMMB, CLAMSB

GOLDEN = Path(__file__).parents[1] / "golden"
TOL = 1e-6  # float32, same weights: only the summation order differs
KINDS = {"sb": CLAMSB, "mb": CLAMMB}


def _load(kind: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"clam_{kind}.npz") as z:
        return {k: z[k] for k in z.files}


def _model(kind: str, golden: dict[str, np.ndarray], **kwargs) -> CLAMSB | CLAMMB:
    model = KINDS[kind](32, 3, embed_dim=16, attn_dim=8, k_sample=8, bag_weight=0.7, **kwargs)
    model.load_reference_state_dict(
        {k[2:]: torch.from_numpy(v) for k, v in golden.items() if k.startswith("w/")}
    )
    return model


def _bag(golden: dict[str, np.ndarray], b: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(golden[f"bag{b}/features"])[None], torch.tensor([int(golden[f"bag{b}/label"])])


@pytest.mark.parametrize("kind", ["sb", "mb"])
def test_golden_file_names_its_reference(kind: str) -> None:
    provenance = json.loads(str(_load(kind)["provenance"]))
    assert provenance["repository"] == "https://github.com/mahmoodlab/CLAM"
    assert len(provenance["commit"]) == 40 and provenance["script"] == "tests/golden/make_clam.py"


@pytest.mark.parametrize("kind", ["sb", "mb"])
def test_clam_forward_equals_reference(kind: str) -> None:
    golden = _load(kind)
    model = _model(kind, golden, dropout=0.25).eval()
    bags = [_bag(golden, b)[0][0] for b in range(2)]
    n = max(len(x) for x in bags)
    features, mask = torch.full((2, n, 32), float("nan")), torch.zeros(2, n, dtype=torch.bool)
    for b, x in enumerate(bags):
        features[b, : len(x)], mask[b, : len(x)] = x, True
    with torch.no_grad():
        out = model(features, mask)
    for b, x in enumerate(bags):
        torch.testing.assert_close(
            out.logits[b], torch.from_numpy(golden[f"bag{b}/logits"])[0], atol=TOL, rtol=0
        )
        ref_attention = torch.from_numpy(golden[f"bag{b}/attention_raw"]).softmax(-1)  # (K, n)
        torch.testing.assert_close(out.extra["attention"][b, :, : len(x)], ref_attention, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", ["sb", "mb"])
@pytest.mark.parametrize("subtyping", [False, True])
def test_clam_instance_loss_equals_reference(kind: str, subtyping: bool) -> None:
    golden = _load(kind)
    model = _model(kind, golden, dropout=0.0, subtyping=subtyping).train()  # dropout off, as the golden run
    for b in range(2):
        features, label = _bag(golden, b)
        out = model(features, labels=label)
        assert out.aux_loss is not None
        reference = float(golden[f"bag{b}/subtyping{int(subtyping)}/instance_loss"])
        assert abs(out.aux_loss.item() / (1 - 0.7) - reference) <= TOL


@pytest.mark.parametrize("kind", ["sb", "mb"])
def test_clam_total_loss_and_gradient_equal_train_loop_clam(kind: str) -> None:
    """The trainer's ``task_loss_weight * CE + aux_loss`` is CLAM's total loss, gradients included."""
    golden = _load(kind)
    model = _model(kind, golden, dropout=0.0).train()
    model.zero_grad()
    for b in range(2):  # CLAM steps one bag at a time; the reference gradients are summed over both bags
        features, label = _bag(golden, b)
        out = model(features, labels=label)
        total = model.task_loss_weight * F.cross_entropy(out.logits, label) + out.aux_loss
        assert abs(total.item() - float(golden[f"bag{b}/total_loss"])) <= TOL
        total.backward()
    reference = {k[5:]: torch.from_numpy(v) for k, v in golden.items() if k.startswith("grad/")}
    ours = {k: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in model.named_parameters()}
    renamed = {}  # reference name -> ours, by the class's own key table
    for ref_key in reference:
        prefix = next((old for old in model.REFERENCE_KEYS if ref_key.startswith(old)), "")
        renamed[ref_key] = model.REFERENCE_KEYS.get(prefix, "") + ref_key[len(prefix) :]
    assert sorted(renamed.values()) == sorted(ours)
    for ref_key, our_key in renamed.items():
        torch.testing.assert_close(ours[our_key], reference[ref_key], atol=1e-5, rtol=1e-4, msg=ref_key)


def test_clam_sb_loads_the_checkpoint_layout_clam_ships() -> None:
    """``heatmaps/demo/ckpts/s_0_checkpoint.pt``: DataParallel ``.module`` keys and the SVM loss buffer."""
    golden = _load("sb")
    state = {
        k[2:].replace("attention_net.", "attention_net.module."): torch.from_numpy(v)
        for k, v in golden.items()
        if k.startswith("w/")
    }
    state["instance_loss_fn.labels"] = torch.tensor([0, 1])
    model = CLAMSB(32, 3, embed_dim=16, attn_dim=8)
    model.load_reference_state_dict(state)
    torch.testing.assert_close(model.embed[0].weight, torch.from_numpy(golden["w/attention_net.0.weight"]))
