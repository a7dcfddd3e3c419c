"""ABMIL against its reference, CLAM's gated-attention bag path (golden file from tests/golden/make_abmil.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slidescope.errors import InvalidParameterError
from slidescope.mil.aggregators.abmil import ABMIL

GOLDEN = Path(__file__).parents[1] / "golden" / "abmil.npz"
TOL = 1e-6  # float32, same weights: only the summation order differs


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


def _weights(golden: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k[2:]: torch.from_numpy(v) for k, v in golden.items() if k.startswith("w/")}


def test_golden_file_names_its_reference(golden: dict[str, np.ndarray]) -> None:
    provenance = json.loads(str(golden["provenance"]))
    assert provenance["repository"] == "https://github.com/mahmoodlab/CLAM"
    assert len(provenance["commit"]) == 40 and provenance["script"] == "tests/golden/make_abmil.py"


def test_abmil_reproduces_clam_sb_bag_path_with_reference_weights(golden: dict[str, np.ndarray]) -> None:
    model = ABMIL(32, 2, embed_dim=16, attn_dim=8, dropout=0.25)
    model.load_reference_state_dict(_weights(golden))
    model.eval()
    bags = [torch.from_numpy(golden[f"bag{b}/features"]) for b in range(2)]
    n = max(len(x) for x in bags)
    features = torch.full((2, n, 32), float("nan"))  # padding may hold anything
    mask = torch.zeros(2, n, dtype=torch.bool)
    for b, x in enumerate(bags):
        features[b, : len(x)], mask[b, : len(x)] = x, True
    with torch.no_grad():
        out = model(features, mask)
    for b, x in enumerate(bags):
        ref_logits = torch.from_numpy(golden[f"bag{b}/logits"])[0]
        ref_raw = torch.from_numpy(golden[f"bag{b}/attention_raw"])[0]
        torch.testing.assert_close(out.logits[b], ref_logits, atol=TOL, rtol=0)
        torch.testing.assert_close(out.extra["attention_logits"][b, : len(x)], ref_raw, atol=TOL, rtol=0)
        torch.testing.assert_close(out.scores[b, : len(x)], ref_raw.softmax(0), atol=TOL, rtol=0)


def test_abmil_loads_clam_checkpoint_layout(golden: dict[str, np.ndarray]) -> None:
    """CLAM's shipped checkpoints wrap ``attention_net`` in DataParallel and keep the SVM loss buffer."""
    state = {k.replace("attention_net.", "attention_net.module."): v for k, v in _weights(golden).items()}
    state["instance_loss_fn.labels"] = torch.tensor([0, 1])
    model = ABMIL(32, 2, embed_dim=16, attn_dim=8)
    model.load_reference_state_dict(state)
    torch.testing.assert_close(model.classifier.weight, torch.from_numpy(golden["w/classifiers.weight"]))
    with pytest.raises(InvalidParameterError, match="reference's sizes"):
        ABMIL(32, 2).load_reference_state_dict(state)  # default widths 512/256 do not fit
