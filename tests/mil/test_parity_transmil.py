"""TransMIL against szc19990412/TransMIL with lucidrains' nystrom-attention (tests/golden/make_transmil.py).

The reference pads each sequence at the front with zeros up to a multiple of the landmark count and lets
those zeros into the landmarks; TransMIL's sequence length ``1 + side**2`` is never such a multiple. Our
``landmarks="reference"`` (nystrom-attention >= 0.0.10) and ``"reference-0.0.9"`` (the pinned version)
reproduce it with the reference's weights; the default ``"exact"`` does not, by design.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slidescope.errors import InvalidParameterError
from slidescope.mil.aggregators import create_aggregator
from slidescope.mil.aggregators.transmil import TransMIL

GOLDEN = Path(__file__).parents[1] / "golden" / "transmil.npz"
TOL = 1e-6  # float32 (measured <= 2.1e-7); the chunked evaluation re-associates the Nystrom product


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


def _model(golden: dict[str, np.ndarray], landmarks: str) -> TransMIL:
    model = TransMIL(32, 3, embed_dim=32, heads=8, landmarks=landmarks)
    model.load_reference_state_dict(
        {k[2:]: torch.from_numpy(v) for k, v in golden.items() if k.startswith("w/")}
    )
    return model.eval()


def _n_bags(golden: dict[str, np.ndarray]) -> int:
    return sum(k.endswith("/features") for k in golden)


def _batch(golden: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every golden bag in one padded batch (NaN padding: it must not matter)."""
    bags = [torch.from_numpy(golden[f"bag{b}/features"]) for b in range(_n_bags(golden))]
    n = max(len(x) for x in bags)
    features = torch.full((len(bags), n, 32), float("nan"))
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for b, x in enumerate(bags):
        features[b, : len(x)], mask[b, : len(x)] = x, True
    return features, mask


def test_golden_file_names_its_references(golden: dict[str, np.ndarray]) -> None:
    provenance = json.loads(str(golden["provenance"]))
    assert (
        provenance["repository"] == "https://github.com/szc19990412/TransMIL"
        and len(provenance["commit"]) == 40
    )
    versions = provenance["nystrom_attention"]
    assert versions["reference"]["version"] == "0.0.14" and versions["reference-0.0.9"]["version"] == "0.0.9"


@pytest.mark.parametrize("landmarks", ["reference", "reference-0.0.9"])
@pytest.mark.parametrize("chunk_bytes", [1, 1 << 40])  # many 64-row chunks, or one
def test_reference_landmarks_reproduce_the_reference_logits(
    golden: dict[str, np.ndarray], landmarks: str, chunk_bytes: int
) -> None:
    model = _model(golden, landmarks)
    for layer in (model.layer1, model.layer2):
        layer.attn.chunk_bytes = chunk_bytes
    features, mask = _batch(golden)
    with torch.no_grad():
        logits = model(features, mask).logits
    expected = np.concatenate([golden[f"bag{b}/{landmarks}/logits"] for b in range(_n_bags(golden))])
    torch.testing.assert_close(logits, torch.from_numpy(expected), atol=TOL, rtol=0)


def test_exact_landmarks_differ_from_the_reference(golden: dict[str, np.ndarray]) -> None:
    """The default is a deliberate deviation: with the reference's weights it gives other logits."""
    features, mask = _batch(golden)
    with torch.no_grad():
        logits = _model(golden, "exact")(features, mask).logits
    expected = np.concatenate([golden[f"bag{b}/reference/logits"] for b in range(_n_bags(golden))])
    assert float((logits - torch.from_numpy(expected)).abs().max()) > 1e-3


def test_landmarks_mode_is_a_registry_kwarg_and_checked() -> None:
    model = create_aggregator(
        "transmil", in_dim=8, num_classes=2, embed_dim=16, heads=4, landmarks="reference"
    )
    assert model.layer1.attn.landmarks == model.layer2.attn.landmarks == "reference"
    with pytest.raises(InvalidParameterError, match="landmarks must be one of"):
        TransMIL(8, 2, embed_dim=16, heads=4, landmarks="nystrom")
