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
modules), plus OpenMidnight, which TRIDENT builds with ``torch.hub.load("facebookresearch/dinov2",
"dinov2_vitg14_reg", pretrained=False)`` and loads strictly after replacing ``pos_embed`` by the checkpoint's:
``torch.hub.load`` is wrapped to build that model from a local DINOv2 checkout (``DINOV2`` below, the
``hubconf.py`` torch.hub reads) and the layout of the built model is written with the hub source and commit.
Its ``pos_embed`` is the hub model's (518 px); the published one is the checkpoint's own (224 px, see
slidescope's ``openmidnight`` config). GenBio-PathFM is built by TRIDENT's own ``model_zoo/genbio_pathfm``
``VisionTransformer`` (wrapped the same way; its dtypes are recorded too: the rotary periods are bfloat16)::

    git --git-dir=<dinov2 mirror> archive b8931f7b | tar -x -C /tmp/dinov2
    DINOV2=/tmp/dinov2 PYTHONPATH=/tmp/trident python tests/golden/make_trident_layouts.py The layout is built with the timm recorded in the file (slidescope's); TRIDENT asserts
timm 0.9.16 for H-Optimus, so ``timm.__version__`` reads 0.9.16 while TRIDENT's call is recorded.
"""

from __future__ import annotations

import json
import os
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
    "kaiko-vits8",
    "kaiko-vits16",
    "kaiko-vitb8",
    "kaiko-vitl14",
    "gpfm",
]
#: encoders TRIDENT builds with torch.hub.load (DINOv2 hub code), not timm
HUB_NAMES = ["openmidnight"]
#: encoders TRIDENT builds from its own model_zoo module: name -> (module, class it instantiates)
ZOO_NAMES = {
    "genbio-pathfm": (
        "trident.patch_encoder_models.model_zoo.genbio_pathfm.genbio_pathfm",
        "VisionTransformer",
    ),
}
DINOV2_COMMIT = "b8931f7bf91576930313be2c6d6af376033b35f0"


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


def capture_hub(name: str, weights: str) -> tuple[str, dict, torch.nn.Module]:
    """The torch.hub model TRIDENT's ``_build`` creates, built from the local DINOv2 checkout on meta."""
    import trident.patch_encoder_models.load as load

    calls: list[tuple[str, dict, torch.nn.Module]] = []
    real = torch.hub.load

    def record(repo, model, *args, **kwargs):
        with torch.device("meta"):
            built = real(os.environ["DINOV2"], model, *args, source="local", **kwargs)
        calls.append((f"{repo}:{model}", dict(kwargs), built))
        raise _Stop

    torch.hub.load = record
    try:
        load.encoder_factory(name, weights_path=weights)
    except BaseException:  # TRIDENT wraps our stop in its own exception
        pass
    finally:
        torch.hub.load = real
    if not calls:
        raise SystemExit(f"{name}: TRIDENT did not call torch.hub.load")
    return calls[0]


def capture_zoo(name: str, weights: str) -> tuple[str, dict, torch.nn.Module]:
    """The model_zoo module TRIDENT's ``_build`` instantiates (with TRIDENT's kwargs), built on meta."""
    import importlib

    import trident.patch_encoder_models.load as load

    module_name, cls_name = ZOO_NAMES[name]
    module = importlib.import_module(module_name)
    real = getattr(module, cls_name)
    calls: list[tuple[str, dict, torch.nn.Module]] = []

    def record(*args, **kwargs):
        with torch.device("meta"):
            built = real(*args, **kwargs)
        calls.append((f"{module_name}.{cls_name}", dict(kwargs), built))
        raise _Stop

    setattr(module, cls_name, record)
    try:
        load.encoder_factory(name, weights_path=weights)
    except BaseException:  # TRIDENT wraps our stop in its own exception
        pass
    finally:
        setattr(module, cls_name, real)
    if not calls:
        raise SystemExit(f"{name}: TRIDENT did not build {cls_name}")
    return calls[0]


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
        for name in HUB_NAMES:
            arch, kwargs, model = capture_hub(name, weights)
            shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
            out["encoders"][name] = {
                "architecture": f"torch.hub:{arch}",
                "hub_source": f"https://github.com/facebookresearch/dinov2 @ {DINOV2_COMMIT} hubconf.py",
                "kwargs": {k: _jsonable(v) for k, v in kwargs.items()},
                "n_tensors": len(shapes),
                "n_params": int(sum(torch.Size(s).numel() for s in shapes.values())),
                "shapes": shapes,
            }
            print(f"{name:14s} {arch:32s} {len(shapes):4d} tensors", file=sys.stderr)
        for name in ZOO_NAMES:
            arch, kwargs, model = capture_zoo(name, weights)
            state = model.state_dict()
            shapes = {k: list(v.shape) for k, v in state.items()}
            out["encoders"][name] = {
                "architecture": f"trident:{arch}",
                "kwargs": {k: _jsonable(v) for k, v in kwargs.items()},
                "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()},
                "n_tensors": len(shapes),
                "n_params": int(sum(p.numel() for p in model.parameters())),
                "shapes": shapes,
            }
            print(f"{name:14s} {arch:32s} {len(shapes):4d} tensors", file=sys.stderr)
    dest = Path(__file__).with_name("trident_layouts.json")
    dest.write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")
    print(f"wrote {dest} ({dest.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
