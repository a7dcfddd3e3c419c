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
    "kaiko-vits8": "kaiko-vits8",
    "kaiko-vits16": "kaiko-vits16",
    "kaiko-vitb8": "kaiko-vitb8",
    "kaiko-vitl14": "kaiko-vitl14",
    "gpfm": "gpfm",
}
# encoders TRIDENT builds with torch.hub (DINOv2 hub layout): ours converts that layout to timm's when loading
OURS_TO_TRIDENT_HUB = {"openmidnight": "openmidnight"}
# encoders TRIDENT builds from its own model_zoo module (ours: our own module with the published keys)
OURS_TO_TRIDENT_ZOO = {"genbio-pathfm": "genbio-pathfm"}


def test_golden_names_its_source() -> None:
    prov = GOLDEN["provenance"]
    assert prov["repository"].endswith("mahmoodlab/TRIDENT") and len(prov["commit"]) == 40
    assert prov["script"] == "tests/golden/make_trident_layouts.py"
    names = (
        set(OURS_TO_TRIDENT.values()) | set(OURS_TO_TRIDENT_HUB.values()) | set(OURS_TO_TRIDENT_ZOO.values())
    )
    assert names <= set(GOLDEN["encoders"])


def _own_shapes(ours: str) -> dict[str, list[int]]:
    assert ours in list_encoders()  # also loads the built-in presets
    config, builder = _registry._REGISTRY[ours]
    with torch.device("meta"):
        encoder = builder(config)
    return {k: list(v.shape) for k, v in encoder.checkpoint_module().state_dict().items()}


@pytest.mark.parametrize("ours", sorted(OURS_TO_TRIDENT))
def test_preset_has_the_layout_tridents_code_builds(ours: str) -> None:
    ref = GOLDEN["encoders"][OURS_TO_TRIDENT[ours]]
    shapes = _own_shapes(ours)
    config = _registry._REGISTRY[ours][0]
    missing = sorted(set(ref["shapes"]) - set(shapes))
    extra = sorted(set(shapes) - set(ref["shapes"]))
    assert not missing and not extra, f"{ours}: TRIDENT has {missing[:5]}, we have {extra[:5]} in addition"
    wrong = {k: (shapes[k], s) for k, s in ref["shapes"].items() if shapes[k] != s}
    assert not wrong, f"{ours}: shapes differ from TRIDENT's model: {dict(list(wrong.items())[:5])}"
    # TRIDENT may name a pretrained tag ("vit_large_patch14_dinov2.lvd142m"): it selects weights, not layout
    assert config.architecture == f"timm:{ref['architecture'].split('.')[0]}"
    assert config.layout_source.startswith("TRIDENT a91fa84")


@pytest.mark.parametrize("ours", sorted(OURS_TO_TRIDENT_HUB))
def test_hub_layout_tridents_code_builds_converts_to_ours(ours: str) -> None:
    """Every tensor of the DINOv2 hub model TRIDENT loads strictly maps onto one of ours, with our shape."""
    ref = GOLDEN["encoders"][OURS_TO_TRIDENT_HUB[ours]]
    assert ref["architecture"].startswith("torch.hub:facebookresearch/dinov2:")
    config, builder = _registry._REGISTRY[ours]
    with torch.device("meta"):
        encoder = builder(config)
        published = {k: torch.empty(s) for k, s in ref["shapes"].items()}
        converted = encoder.convert_state_dict(published)
    own = {k: list(v.shape) for k, v in encoder.checkpoint_module().state_dict().items()}
    assert sorted(converted) == sorted(own)
    assert {k: list(v.shape) for k, v in converted.items()} == own
    # nothing but the masked-image-modelling token is left behind
    assert len(published) - len(converted) == 1 and "mask_token" in published
    assert config.layout_source.startswith("TRIDENT a91fa84")


@pytest.mark.parametrize("ours", sorted(OURS_TO_TRIDENT_ZOO))
def test_own_module_has_the_layout_and_dtypes_of_tridents_zoo_module(ours: str) -> None:
    ref = GOLDEN["encoders"][OURS_TO_TRIDENT_ZOO[ours]]
    assert ref["architecture"].startswith("trident:trident.patch_encoder_models.model_zoo.")
    config, builder = _registry._REGISTRY[ours] if ours in list_encoders() else (None, None)
    assert config is not None and builder is not None
    with torch.device("meta"):
        state = builder(config).checkpoint_module().state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == ref["shapes"]
    assert {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()} == ref["dtypes"]
    assert config.layout_source.startswith("TRIDENT a91fa84")
