"""Golden file ``genbio_pathfm.npz``: GenBio-PathFM's reference forward on a tiny model of the same structure.

Run by hand, outside the package (never by pytest), against a TRIDENT checkout (its
``trident/patch_encoder_models/model_zoo/genbio_pathfm/genbio_pathfm.py`` is the upstream
genbio-ai/genbio-pathfm module)::

    git --git-dir=<TRIDENT mirror> archive a91fa849 trident | tar -x -C /tmp/trident
    PYTHONPATH=/tmp/trident python tests/golden/make_genbio_pathfm.py

Reference code called: ``VisionTransformer(...)`` with the options ``GenBioPathFMInference.__init__`` passes
(1 input channel, 4 storage tokens, ``swiglu64``, LayerScale, no qkv bias, RoPE in bfloat16, "separate"
coordinates) at a tiny width (32, 2 heads, 2 blocks), random weights (seeded), and
``GenBioPathFMInference.forward`` (each RGB channel as a grey image, class tokens concatenated) on a
normalised ``(2, 3, 48, 48)`` input. Stored: every tensor of the state dict (``sd/<key>``, with its dtype: the
rotary periods are bfloat16, stored as float32 values of the bfloat16 numbers), the input and the output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).with_name("genbio_pathfm.npz")
COMMIT = "a91fa8490e0210ebbbe58452c3babe009e0ab7ca"
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def main() -> None:
    from trident.patch_encoder_models.model_zoo.genbio_pathfm import genbio_pathfm as ref

    torch.manual_seed(0)
    model = ref.VisionTransformer(
        img_size=224,
        patch_size=16,
        ffn_ratio=4,
        in_chans=1,
        n_storage_tokens=4,
        ffn_layer="swiglu64",
        layerscale_init=1.0e-5,
        qkv_bias=False,
        proj_bias=True,
        ffn_bias=True,
        pos_embed_rope_rescale_coords=2,
        pos_embed_rope_jitter_coords=True,
        pos_embed_rope_normalize_coords="separate",
        **TINY,
    )
    with torch.no_grad():  # the reference leaves most parameters torch.empty: fill them, seeded
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape) * (0.5 if name.endswith("gamma") else 0.2))
    model.eval()
    wrapper = ref.GenBioPathFMInference.__new__(ref.GenBioPathFMInference)
    torch.nn.Module.__init__(wrapper)
    wrapper.model = model
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = wrapper(x)  # GenBioPathFMInference.forward: [B, 3 * D]
    state = model.state_dict()
    commit = subprocess.run(
        ["git", "-C", str(Path(ref.__file__).parent), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    np.savez(
        OUT,
        x=x.numpy(),
        out=out.numpy(),
        keys=np.array(list(state)),
        dtypes=np.array([str(v.dtype).removeprefix("torch.") for v in state.values()]),
        **{f"sd/{k}": v.float().numpy() for k, v in state.items()},
        tiny=np.array([TINY["embed_dim"], TINY["depth"], TINY["num_heads"]]),
        provenance=np.array(
            f"mahmoodlab/TRIDENT@{commit or COMMIT} trident/patch_encoder_models/model_zoo/genbio_pathfm; "
            "script tests/golden/make_genbio_pathfm.py; torch " + torch.__version__
        ),
    )
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); out {tuple(out.shape)}", file=sys.stderr)


if __name__ == "__main__":
    main()
