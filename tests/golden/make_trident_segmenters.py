"""Golden: the tissue / artefact segmenters TRIDENT builds, run from TRIDENT's own code.

Provenance: mahmoodlab/TRIDENT @ a91fa8490e0210ebbbe58452c3babe009e0ab7ca,
``trident/segmentation_models/load.py`` ``segmentation_model_factory(name)`` for ``hest``, ``grandqc`` and
``grandqc_artifact``. Each ``_build()`` creates its network (torchvision ``deeplabv3_resnet50`` with a 2-class
last conv; segmentation_models_pytorch ``UnetPlusPlus`` / ``Unet`` on ``timm-efficientnet-b0``) and loads
the published checkpoint into it with a strict ``load_state_dict``. This script runs TRIDENT's code itself
(a checkout on ``PYTHONPATH``, never slidescope), with the weights path pointed at a dummy file,
``torch.load`` answering an empty checkpoint and ``nn.Module.load_state_dict`` wrapped to record the
state-dict keys and shapes of the network it is called on: the layout the real checkpoint must fit. It also
records the settings TRIDENT reads from the built model (input size, precision, target magnification) and
HEST's checkpoint conversion (keys prefixed ``model.``, auxiliary-head keys dropped). Run outside the package::

    git --git-dir=<TRIDENT mirror> archive a91fa849 trident | tar -x -C /tmp/trident
    PYTHONPATH=/tmp/trident python tests/golden/make_trident_segmenters.py   # needs torch, torchvision,
                                                                             # segmentation-models-pytorch
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

COMMIT = "a91fa8490e0210ebbbe58452c3babe009e0ab7ca"
NAMES = ["hest", "grandqc", "grandqc_artifact"]


def capture(name: str, dummy: str) -> dict:
    import trident.segmentation_models.load as load

    recorded: list[dict] = []
    real_load_state_dict, real_torch_load = nn.Module.load_state_dict, torch.load

    def record(self, state_dict, strict=True, assign=False):
        recorded.append((self, {k: list(v.shape) for k, v in self.state_dict().items()}))

    real_hub = torch.hub.load_state_dict_from_url
    load.get_weights_path = lambda *_: dummy
    nn.Module.load_state_dict = record  # type: ignore[method-assign]
    torch.load = lambda *a, **k: {"state_dict": {}}  # type: ignore[assignment]
    # torchvision's deeplabv3_resnet50(weights=None) still asks for ImageNet backbone weights (offline here;
    # the checkpoint load overwrites them anyway): answer with nothing, and keep only the checkpoint's load
    import torchvision.models._api as tv_api

    real_tv = tv_api.load_state_dict_from_url
    torch.hub.load_state_dict_from_url = tv_api.load_state_dict_from_url = lambda *a, **k: {}  # type: ignore
    try:
        model = load.segmentation_model_factory(name)
    finally:
        nn.Module.load_state_dict = real_load_state_dict  # type: ignore[method-assign]
        torch.load = real_torch_load
        torch.hub.load_state_dict_from_url, tv_api.load_state_dict_from_url = real_hub, real_tv
    recorded = [(m, keys) for m, keys in recorded if m is model.model]
    if len(recorded) != 1:
        raise SystemExit(f"{name}: expected one checkpoint load into the network, got {len(recorded)}")
    return {
        "class": type(model).__name__,
        "network": f"{type(model.model).__module__}.{type(model.model).__qualname__}",
        "input_size": model.input_size,
        "precision": str(model.precision),
        "target_mag": model.target_mag,
        "confidence_thresh": model.confidence_thresh,
        "n_tensors": len(recorded[0][1]),
        "n_parameters": sum(p.numel() for p in model.model.parameters()),
        "state_dict": recorded[0][1],
    }


def main() -> None:
    import segmentation_models_pytorch as smp
    import torchvision

    out = Path(__file__).with_name("trident_segmenters.json")
    with tempfile.NamedTemporaryFile(suffix=".pth") as dummy:
        models = {name: capture(name, dummy.name) for name in NAMES}
    golden = {
        "provenance": {
            "repository": "mahmoodlab/TRIDENT",
            "commit": COMMIT,
            "file": "trident/segmentation_models/load.py",
            "function": "segmentation_model_factory(name) -> <Segmenter>._build()",
            "script": "tests/golden/make_trident_segmenters.py",
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "segmentation_models_pytorch": smp.__version__,
            "python": sys.version.split()[0],
        },
        "hest_checkpoint": "Lightning checkpoint: state_dict keys 'model.<key>'; keys containing 'aux' are dropped",
        "models": models,
    }
    out.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(out, {n: (m["n_tensors"], m["n_parameters"]) for n, m in models.items()})


if __name__ == "__main__":
    main()
