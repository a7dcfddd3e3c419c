"""Golden: the timm model TRIDENT builds for each patch encoder, run from TRIDENT's own code.

Provenance: mahmoodlab/TRIDENT @ a91fa8490e0210ebbbe58452c3babe009e0ab7ca,
``trident/patch_encoder_models/load.py`` ``encoder_factory(name, weights_path=...)``: each ``_build()``
creates its timm model with ``timm.create_model(arch, **kwargs)`` and then loads the published checkpoint
into it with ``load_state_dict(..., strict=True)``. This script runs TRIDENT's code itself (from a checkout
on ``PYTHONPATH``, never from slidescope), with ``timm.create_model`` wrapped to record the architecture and
keyword arguments TRIDENT passes (the local-checkpoint branch, taken by passing a dummy ``weights_path``),
then builds that exact model on the meta device and writes its state-dict keys and shapes, which are
therefore the layout TRIDENT's strict load accepts. Run outside the package::

    git --git-dir=<TRIDENT mirror> archive a91fa849 trident | tar -x -C /tmp/trident
    PYTHONPATH=/tmp/trident python tests/golden/make_trident_layouts.py

Only encoders TRIDENT builds through timm from a local checkpoint are covered (H0-mini loads only from the hub,
whose config.json is not readable offline; CONCH v1.5, Phikon-v2 and others use their own or transformers
modules). The layout is built with the timm recorded in the file (slidescope's); TRIDENT asserts
timm 0.9.16 for H-Optimus, so ``timm.__version__`` reads 0.9.16 while TRIDENT's call is recorded.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import timm
import torch

COMMIT = "a91fa8490e0210ebbbe58452c3babe009e0ab7ca"
NAMES = [
    "uni_v1",
    "uni_v2",
    "virchow",
    "virchow2",
    "hoptimus0",
    "hoptimus1",
    "gigapath",
    "kaiko-vitb16",
    "lunit-vits8",
    "resnet50",
]


class _Stop(Exception):
    pass


def capture(name: str, weights: str) -> tuple[str, dict]:
    import trident.patch_encoder_models.load as load

    calls: list[tuple[str, dict]] = []
    real = timm.create_model

    def record(arch=None, *args, **kwargs):
        calls.append((arch, dict(kwargs)))
        raise _Stop

    timm.create_model = record
    version = timm.__version__
    timm.__version__ = "0.9.16"  # TRIDENT asserts this version for H-Optimus; only the call is recorded here
    try:
        load.encoder_factory(name, weights_path=weights)
    except BaseException:  # TRIDENT wraps our stop in its own exception
        pass
    finally:
        timm.create_model = real
        timm.__version__ = version
    if not calls:
        raise SystemExit(f"{name}: TRIDENT did not call timm.create_model")
    arch, kwargs = calls[0]
    if arch is None:  # create_model(model_name=...)
        arch = kwargs.pop("model_name")
    return arch, kwargs


def _jsonable(v):
    if isinstance(v, type):
        return f"{v.__module__}.{v.__qualname__}"
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)


def main() -> None:
    out = {
        "provenance": {
            "repository": "https://github.com/mahmoodlab/TRIDENT",
            "commit": COMMIT,
            "function": "trident.patch_encoder_models.load.encoder_factory(name, weights_path=...)"
            " -> _build() -> timm.create_model(arch, **kwargs)",
            "script": "tests/golden/make_trident_layouts.py",
            "timm": timm.__version__,
            "torch": torch.__version__,
        },
        "encoders": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        weights = str(Path(tmp) / "pytorch_model.bin")
        torch.save({}, weights)
        for name in NAMES:
            arch, kwargs = capture(name, weights)
            kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained", "checkpoint_path")}
            with torch.device("meta"):
                model = timm.create_model(arch, pretrained=False, **kwargs)
            shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
            jsonable = {k: _jsonable(v) for k, v in kwargs.items()}
            out["encoders"][name] = {
                "architecture": arch,
                "kwargs": jsonable,
                "n_tensors": len(shapes),
                "n_params": int(sum(torch.Size(s).numel() for s in shapes.values())),
                "shapes": shapes,
            }
            print(
                f"{name:14s} {arch:32s} {len(shapes):4d} tensors {out['encoders'][name]['n_params']:>12,d}",
                file=sys.stderr,
            )
    dest = Path(__file__).with_name("trident_layouts.json")
    dest.write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")
    print(f"wrote {dest} ({dest.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
