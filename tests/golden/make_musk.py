"""Golden: MUSK as its own code builds and loads it and as TRIDENT runs it (outside slidescope).

Provenance: lilab-stanford/MUSK @ 714b666969c1911e5efe70d991140a21030f4ef3 (``musk/modeling.py``
``musk_large_patch16_384``: BEiT-3 large from the torchscale copy vendored in ``musk/torchscale``;
``musk/utils.py`` ``load_model_and_may_interpolate``) and mahmoodlab/TRIDENT @
a91fa8490e0210ebbbe58452c3babe009e0ab7ca (``trident/patch_encoder_models/load.py`` ``MuskInferenceEncoder``:
``timm.create_model("musk_large_patch16_384")``, ``load_model_and_may_interpolate("hf_hub:xiangjx/musk",
model, 'model|module', '')``, forward ``model(image=x, with_head=False, out_norm=False, ms_aug=inference_aug,
return_global=True)[0]``).

Recorded here:

* ``musk_layout.json`` ``full``: every key and shape of the full-size ``musk_large_patch16_384`` state dict
  (built on the meta device), the layout the published ``model.safetensors`` is loaded into.
* ``musk_layout.json`` ``tiny`` and ``musk.npz``: a numeric check through the **real loading path**.
  MUSK's ``_get_large_config`` (what ``musk_large_patch16_384`` calls) is replaced by the same
  ``EncoderConfig`` with small widths (:data:`TINY`; BEiT-3 multiway, sub-LN, final LayerNorm unchanged);
  deterministic weights (:func:`fill`, the rule the test repeats) are written as the hub's
  ``model.safetensors`` where MUSK's loader looks for it (``$HOME/.cache/model.safetensors``, so nothing is
  downloaded); TRIDENT's ``encoder_factory("musk")`` builds and loads it (its offline check is set to True:
  there is no network here) and runs ``x`` (``input`` in the npz):

  - ``cls``: TRIDENT's default (CLS token after the final LayerNorm, no head, no norm, no multi-scale);
  - ``ms``: ``inference_aug=True`` (MUSK's multi-scale forward, scales 1 and 2, 2 x width);
  - ``interp``: a checkpoint made for a 2 x 2 patch grid (``img_size`` 32) loaded into the 4 x 4 grid model:
    MUSK's loader interpolates the vision position table (bicubic) before loading.

Run outside the package (MUSK vendors torchscale, so the PyPI ``torchscale`` is not needed; ``fairscale`` and
``einops`` are imported by it; ``timm==0.9.8`` is MUSK's pinned version; opencv, geopandas, shapely only for
TRIDENT's imports)::

    git --git-dir=<MUSK mirror> archive 714b6669 musk | tar -x -C /tmp/b3/musk_src
    git --git-dir=<TRIDENT mirror> archive a91fa849 trident | tar -x -C /tmp/b3/trident
    uv pip install --no-deps --target /tmp/b3/ref einops fairscale==0.4.13 timm==0.9.8 \
        opencv-python-headless geopandas shapely
    PYTHONPATH=/tmp/b3/ref:/tmp/b3/musk_src:/tmp/b3/trident python tests/golden/make_musk.py
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

MUSK_COMMIT = "714b666969c1911e5efe70d991140a21030f4ef3"
TRIDENT_COMMIT = "a91fa8490e0210ebbbe58452c3babe009e0ab7ca"
#: keyword arguments of MUSK's ``EncoderConfig`` that differ in the tiny model (the rest as _get_large_config)
TINY = {
    "img_size": 64,
    "encoder_embed_dim": 32,
    "encoder_attention_heads": 4,
    "encoder_ffn_embed_dim": 64,
    "encoder_layers": 2,
    "vocab_size": 100,
}
#: ``img_size`` of the checkpoint loaded with position interpolation (2 x 2 grid into the 4 x 4 model)
INTERP_FROM = 32
WEIGHT_SEED = 4321
INPUT_SEED = 11


def fill(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """Deterministic weights for a state dict layout: keys in sorted order, one generator.

    Scalars (``logit_scale``) ``N``; 1-d biases ``0.1 N``, other 1-d weights (LayerNorm) ``1 + 0.1 N``;
    everything else (matrices, kernels, tokens, embedding tables) ``N / sqrt(prod(shape[1:]))``.
    """
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if len(shape) == 0:
            out[key] = torch.randn((), generator=g)
        elif len(shape) == 1 and key.endswith("bias"):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            out[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            out[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    return out


def _layout(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def main() -> None:
    home = Path(os.environ["HOME"])
    cache = home / ".cache" / "model.safetensors"
    if not str(home).startswith(tempfile.gettempdir()):
        sys.exit("run with HOME set to a scratch folder (MUSK's loader reads $HOME/.cache/model.safetensors)")
    import timm
    from musk import modeling  # type: ignore[import-not-found]
    from safetensors.torch import save_file

    import trident.patch_encoder_models.load as load  # type: ignore[import-not-found]

    with torch.device("meta"):
        full = timm.create_model("musk_large_patch16_384")
    full_shapes = _layout(full)

    real_config = modeling._get_large_config
    load.BasePatchEncoder._has_internet = True  # no network here; the file is already where MUSK looks
    cache.parent.mkdir(parents=True, exist_ok=True)
    x = torch.randn(
        2, 3, TINY["img_size"], TINY["img_size"], generator=torch.Generator().manual_seed(INPUT_SEED)
    )
    outputs: dict[str, np.ndarray] = {"input": x.numpy()}
    tiny_layouts = {}
    try:
        for case, ckpt_size in (("cls", TINY["img_size"]), ("ms", TINY["img_size"]), ("interp", INTERP_FROM)):
            # the checkpoint: the layout of a tiny model built at ckpt_size, filled deterministically
            modeling._get_large_config = lambda img_size=384, _s=ckpt_size, **kw: _tiny(modeling, _s)
            shapes = _layout(timm.create_model("musk_large_patch16_384"))
            weights = fill(shapes, WEIGHT_SEED)
            save_file(weights, str(cache))
            if case != "ms":  # the same file as "cls"
                tiny_layouts[case] = shapes
            # TRIDENT builds the model (at the tiny model's img_size) and MUSK's loader reads the file
            modeling._get_large_config = lambda img_size=384, **kw: _tiny(modeling, TINY["img_size"])
            encoder = load.encoder_factory("musk", inference_aug=(case == "ms")).eval()
            loaded = encoder.model.state_dict()
            for key, value in weights.items():  # the non-strict loader took every tensor of the file
                if key != "beit3.encoder.embed_positions.A.weight" or case != "interp":
                    assert torch.equal(loaded[key], value), key
            assert sorted(loaded) == sorted(weights)
            with torch.no_grad():
                outputs[case] = encoder(x).numpy()
            if case == "interp":
                outputs["interp_positions"] = loaded["beit3.encoder.embed_positions.A.weight"].numpy()
    finally:
        modeling._get_large_config = real_config
        cache.unlink(missing_ok=True)

    provenance = {
        "repository": "https://github.com/lilab-stanford/MUSK",
        "commit": MUSK_COMMIT,
        "function": "musk.modeling.musk_large_patch16_384 (timm.create_model) + "
        "musk.utils.load_model_and_may_interpolate; run by TRIDENT's MuskInferenceEncoder",
        "trident_repository": "https://github.com/mahmoodlab/TRIDENT",
        "trident_commit": TRIDENT_COMMIT,
        "trident_function": "trident.patch_encoder_models.load.encoder_factory('musk', inference_aug=...)",
        "script": "tests/golden/make_musk.py",
        "torch": torch.__version__,
        "timm": timm.__version__,
    }
    layout: dict[str, Any] = {
        "provenance": provenance,
        "full": {
            "n_tensors": len(full_shapes),
            "n_params": int(sum(math.prod(s) for s in full_shapes.values())),
            "shapes": full_shapes,
        },
        "tiny": {
            "musk_config": TINY,
            "interp_from_img_size": INTERP_FROM,
            "weight_seed": WEIGHT_SEED,
            "input_seed": INPUT_SEED,
            "layouts": tiny_layouts,
        },
    }
    here = Path(__file__).parent
    (here / "musk_layout.json").write_text(json.dumps(layout, indent=0, sort_keys=True) + "\n")
    np.savez_compressed(here / "musk.npz", **outputs)  # type: ignore[arg-type]
    print(
        f"full: {len(full_shapes)} tensors, {layout['full']['n_params']:,} params; "
        + ", ".join(f"{k} {v.shape} std {v.std():.3f}" for k, v in outputs.items())
    )


def _tiny(modeling, img_size: int):
    """MUSK's ``_get_large_config`` body (``musk/modeling.py``) with the :data:`TINY` widths."""
    return modeling.EncoderConfig(
        patch_size=16,
        multiway=True,
        layernorm_embedding=False,
        normalize_output=True,
        no_output_layer=True,
        drop_path_rate=0,
        checkpoint_activations=None,
        **{**TINY, "img_size": img_size},
    )


if __name__ == "__main__":
    main()
