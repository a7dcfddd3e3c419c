"""Golden: CTransPath as TRIDENT builds and loads it, run from TRIDENT's own code (outside slidescope).

Provenance: mahmoodlab/TRIDENT @ a91fa8490e0210ebbbe58452c3babe009e0ab7ca,
``trident/patch_encoder_models/load.py`` ``CTransPathInferenceEncoder`` (``encoder_factory("ctranspath",
weights_path=...)``): builds ``model_zoo/ctranspath/ctran.py`` ``ctranspath(img_size=224)`` (timm_ctp 0.5.4
``swin_tiny_patch4_window7_224`` with ``embed_layer=ConvStem``), sets ``head = Identity``, reads
``torch.load(path)["model"]``, drops the ``attn_mask`` keys, loads with ``strict=False`` and asserts that nothing
is unexpected and that exactly the five ``attn_mask`` buffers are missing. That is the published file's layout
(TRIDENT loads ``CHIEF_CTransPath.pth`` from MahmoodLab/hest-bench this way).

Recorded here:

* ``encoders.ctranspath.shapes``: the state dict of TRIDENT's full-size model (``n_params`` etc.), and
  ``not_in_checkpoint``: the keys TRIDENT lets the file lack (the attention masks).
* ``reference_outputs.ctranspath_tiny``: a numeric check through TRIDENT's **real loading path**: the
  ``timm_ctp.create_model`` that ``ctran.py`` calls is replaced by timm_ctp's own Swin-T constructor with small
  widths (``kwargs``; depths, window and patch size unchanged, so the same masks exist),
  a checkpoint ``{"model": weights}`` is written with deterministic weights (:func:`fill`, the rule the test
  repeats) and loaded by ``encoder_factory``; ``output`` is TRIDENT's forward on ``input`` (``torch.randn`` with
  seed ``input_seed``).

Run outside the package (needs timm_ctp, opencv-python-headless, geopandas, shapely only for TRIDENT's
imports)::

    git --git-dir=<TRIDENT mirror> archive a91fa849 trident | tar -x -C /tmp/trident
    uv pip install --no-deps --target /tmp/ctp timm_ctp==0.5.4 opencv-python-headless geopandas shapely
    PYTHONPATH=/tmp/ctp:/tmp/trident python tests/golden/make_trident_layouts_more.py
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import torch

COMMIT = "a91fa8490e0210ebbbe58452c3babe009e0ab7ca"
TINY = {"embed_dim": 16, "num_heads": (1, 2, 4, 8)}
WEIGHT_SEED = 1234
INPUT_SEED = 7


def fill(
    shapes: dict[str, list[int]], constants: dict[str, torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """Deterministic weights for a state dict layout: keys in sorted order, one generator.

    ``constants`` (index buffers) are copied; ``num_batches_tracked`` is 0; BatchNorm running variances are
    ``U(0.5, 1.5)``, running means ``0.1 N``; other 1-d weights ``1 + 0.1 N``, biases ``0.1 N``; relative
    position bias tables ``N``; matrices and kernels ``N / sqrt(fan_in)``.
    """
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key in constants:
            out[key] = constants[key].clone()
        elif key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean") or (len(shape) == 1 and key.endswith("bias")):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("relative_position_bias_table"):
            out[key] = torch.randn(shape, generator=g)
        elif len(shape) == 1:
            out[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            out[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    return out


def _layout(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def main() -> None:
    import timm_ctp
    import trident.patch_encoder_models.load as load
    from trident.patch_encoder_models.model_zoo.ctranspath import ctran

    full = ctran.ctranspath(img_size=224)
    full.head = torch.nn.Identity()
    shapes = _layout(full)
    masks = sorted(k for k in shapes if k.endswith("attn_mask"))

    from timm_ctp.models.swin_transformer import _create_swin_transformer

    def tiny_swin(arch: str, **kw):  # the body of timm_ctp's swin_tiny_patch4_window7_224, with TINY widths
        assert arch == "swin_tiny_patch4_window7_224"
        base = dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
        return _create_swin_transformer(arch, **{**base, **TINY, **kw})

    real = ctran.ctp_create_model
    ctran.ctp_create_model = tiny_swin
    try:
        tiny = ctran.ctranspath(img_size=224)
        tiny.head = torch.nn.Identity()
        tiny_shapes = {k: s for k, s in _layout(tiny).items() if not k.endswith("attn_mask")}
        constants = {k: v for k, v in tiny.state_dict().items() if k.endswith("relative_position_index")}
        weights = fill(tiny_shapes, constants, WEIGHT_SEED)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "CHIEF_CTransPath.pth"
            torch.save({"model": weights}, path)
            encoder = load.encoder_factory("ctranspath", weights_path=str(path)).eval()
        x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(INPUT_SEED))
        with torch.no_grad():
            output = encoder(x)
    finally:
        ctran.ctp_create_model = real

    out = {
        "provenance": {
            "repository": "https://github.com/mahmoodlab/TRIDENT",
            "commit": COMMIT,
            "function": "trident.patch_encoder_models.load.encoder_factory('ctranspath', weights_path=...) -> "
            "CTransPathInferenceEncoder._build() -> model_zoo.ctranspath.ctran.ctranspath(img_size=224)",
            "script": "tests/golden/make_trident_layouts_more.py",
            "timm_ctp": getattr(timm_ctp, "__version__", "0.5.4"),
            "torch": torch.__version__,
        },
        "encoders": {
            "ctranspath": {
                "architecture": "timm_ctp:swin_tiny_patch4_window7_224 + ConvStem, head = Identity",
                "n_tensors": len(shapes),
                "n_params": int(
                    sum(math.prod(s) for k, s in shapes.items() if "index" not in k and "mask" not in k)
                ),
                "not_in_checkpoint": masks,
                "shapes": shapes,
            }
        },
        "reference_outputs": {
            "ctranspath_tiny": {
                "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()},
                "weight_seed": WEIGHT_SEED,
                "input_seed": INPUT_SEED,
                "input_shape": [2, 3, 224, 224],
                "checkpoint_keys": sorted(weights),
                "shapes": {k: list(v.shape) for k, v in weights.items()},
                "output": output.tolist(),
            }
        },
    }
    dest = Path(__file__).with_name("trident_layouts_more.json")
    dest.write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")
    print(
        f"ctranspath: {len(shapes)} tensors, masks {masks}; tiny output {tuple(output.shape)}",
        file=sys.stderr,
    )
    print(f"wrote {dest} ({dest.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
