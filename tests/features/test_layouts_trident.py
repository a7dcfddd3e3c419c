"""Our encoder presets against the models TRIDENT's own code builds (an outside source, not our constructors).

tests/golden/trident_layouts.json was written by tests/golden/make_trident_layouts.py, which ran TRIDENT's
``encoder_factory`` (mahmoodlab/TRIDENT @ a91fa849, outside slidescope) and recorded the timm architecture and
keyword arguments of each ``timm.create_model`` call whose result TRIDENT loads the published checkpoint into
with ``strict=True``; the file holds that model's state-dict keys and shapes. If our preset builds the same
keys and shapes, a checkpoint TRIDENT loads strictly also loads into ours. Still not the checkpoint itself
(gated, offline): a second, independent derivation of the layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slidescope.features.encoders import _registry, list_encoders

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "trident_layouts.json").read_text())
# slidescope preset -> TRIDENT encoder name (encoder_factory's registry)
OURS_TO_TRIDENT = {
    "uni": "uni_v1",
    "uni2-h": "uni_v2",
    "virchow": "virchow",
    "virchow2": "virchow2",
    "h-optimus-0": "hoptimus0",
    "h-optimus-1": "hoptimus1",
    "gigapath": "gigapath",
    "kaiko-vitb16": "kaiko-vitb16",
    "lunit-dino-vits8": "lunit-vits8",
    "resnet50-trunc": "resnet50",
}


def test_golden_names_its_source() -> None:
    prov = GOLDEN["provenance"]
    assert prov["repository"].endswith("mahmoodlab/TRIDENT") and len(prov["commit"]) == 40
    assert prov["script"] == "tests/golden/make_trident_layouts.py"
    assert set(OURS_TO_TRIDENT.values()) <= set(GOLDEN["encoders"])


@pytest.mark.parametrize("ours", sorted(OURS_TO_TRIDENT))
def test_preset_has_the_layout_tridents_code_builds(ours: str) -> None:
    ref = GOLDEN["encoders"][OURS_TO_TRIDENT[ours]]
    assert ours in list_encoders()  # also loads the built-in presets
    config, builder = _registry._REGISTRY[ours]
    with torch.device("meta"):
        encoder = builder(config)
    shapes = {k: list(v.shape) for k, v in encoder.checkpoint_module().state_dict().items()}
    missing = sorted(set(ref["shapes"]) - set(shapes))
    extra = sorted(set(shapes) - set(ref["shapes"]))
    assert not missing and not extra, f"{ours}: TRIDENT has {missing[:5]}, we have {extra[:5]} in addition"
    wrong = {k: (shapes[k], s) for k, s in ref["shapes"].items() if shapes[k] != s}
    assert not wrong, f"{ours}: shapes differ from TRIDENT's model: {dict(list(wrong.items())[:5])}"
    assert config.architecture == f"timm:{ref['architecture']}"
