"""Golden outputs of PRISM's slide encoder (Paige's PerceiverResampler) for tests/vlm/test_prism_golden.py.

The reference is the public copy of the ``paige-ai/Prism`` remote code kept in DIAGNijmegen/unicorn_baseline
(``src/unicorn_baseline/vision_language/prism/{perceiver,modeling_prism,configuring_prism}.py``; the hub
repository itself is gated). Run by hand, outside slidescope, against an exported checkout::

    git --git-dir=MIRROR archive HEAD src/unicorn_baseline | tar -x -C /tmp/ref-src-prism   # MIRROR: a clone
    uv venv /tmp/ref-prism
    uv pip install --python /tmp/ref-prism/bin/python torch numpy transformers environs
    /tmp/ref-prism/bin/python tests/golden/make_prism_perceiver.py /tmp/ref-src-prism \\
        --commit $(git --git-dir=MIRROR rev-parse HEAD)

Builds ``PerceiverResampler(PerceiverConfig(...))`` with PRISM's structure (8 Perceiver layers of 6
self-attention blocks, cross-attention shared from layer 1 on, self-attention stack shared from layer 0 on,
one cross-attention head, 8 self-attention heads, GEGLU with ``mlp_mult=1``) at small widths, gives every
LayerNorm a random affine (the default 1/0 would hide a swapped norm), and calls
``Prism.slide_representations`` (which hands the tiles to ``image_resampler``) in eval mode. Two cases:

- ``c64``: ``latent_seq=8, latent_dim=16, context_dim=64``, float32; two slides of 40 and 23 tiles (the
  second padded with random values, which the mask must hide), run with a boolean mask and with PRISM's
  docstring mask (float zeros/ones), and the second slide alone without a mask.
- ``c2560``: PRISM's real ``context_dim=2560`` with ``latent_seq=4, latent_dim=8``; two slides of 10 and 6
  tiles, boolean mask. To keep the file small, weights and tiles are rounded to float16 before the reference
  runs (in float32) and stored as float16: the stored values are exactly the ones it used.

Weights are stored under the names a PRISM checkpoint uses (``image_resampler.*``); a module that is shared
between layers is stored once, under its first name. Writes ``tests/golden/prism_perceiver.npz``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

STRUCTURE = dict(
    mhsa_heads=8,
    perceiver_depth=8,
    transformer_depth=6,
    share_xattn_start_layer=1,
    share_tf_start_layer=0,
    xattn_heads=1,
    mlp_mult=1,
    mlp_activation="geglu",
)
CASES = {
    "c64": dict(latent_seq=8, latent_dim=16, context_dim=64),
    "c2560": dict(latent_seq=4, latent_dim=8, context_dim=2560),
}
TILES = {"c64": (40, 23), "c2560": (10, 6)}


def load_reference(checkout: Path) -> SimpleNamespace:
    sys.path.insert(0, str(checkout / "src"))
    from unicorn_baseline.vision_language.prism import configuring_prism, modeling_prism, perceiver

    return SimpleNamespace(
        PerceiverConfig=configuring_prism.PerceiverConfig,
        PerceiverResampler=perceiver.PerceiverResampler,
        Prism=modeling_prism.Prism,
    )


def build(ref: SimpleNamespace, sizes: dict, seed: int, half: bool) -> tuple[object, torch.nn.Module]:
    torch.manual_seed(seed)
    config = ref.PerceiverConfig(**sizes, **STRUCTURE)
    resampler = ref.PerceiverResampler(config).eval()
    with torch.no_grad():
        for name, p in resampler.named_parameters():  # shared parameters are listed once
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            if half:
                p.copy_(p.half().float())
    return config, resampler


def unique_state(resampler: torch.nn.Module) -> dict[str, torch.Tensor]:
    seen: set[int] = set()
    out = {}
    for name, t in resampler.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            out[f"image_resampler.{name}"] = t.detach()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="exported DIAGNijmegen/unicorn_baseline checkout")
    parser.add_argument("--commit", required=True, help="the checkout's commit hash")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("prism_perceiver.npz"))
    args = parser.parse_args()
    ref = load_reference(args.checkout)
    out: dict[str, np.ndarray] = {}
    for seed, (case, sizes) in enumerate(CASES.items()):
        half = case == "c2560"
        store = np.float16 if half else np.float32
        config, resampler = build(ref, sizes, seed, half)
        prism = SimpleNamespace(image_resampler=resampler)  # what Prism.slide_representations reads
        gen = torch.Generator().manual_seed(100 + seed)
        lengths = TILES[case]
        n = max(lengths)
        tiles = torch.randn(len(lengths), n, sizes["context_dim"], generator=gen)  # padding: random, not 0
        if half:
            tiles = tiles.half().float()
        mask = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
        out[f"{case}/config"] = np.array(
            json.dumps(
                {
                    k: v
                    for k, v in config.to_dict().items()
                    if k in {**sizes, **STRUCTURE} or k == "model_type"
                }
            )
        )
        out.update({f"{case}/w/{k}": v.numpy().astype(store) for k, v in unique_state(resampler).items()})
        out[f"{case}/tiles"] = tiles.numpy().astype(store)
        out[f"{case}/mask"] = mask.numpy()
        runs = {"bool_mask": (tiles, mask)}
        if case == "c64":
            runs["float_mask"] = (tiles, mask.float())  # as PRISM's docstring: torch.zeros, then ones
            runs["single"] = (tiles[1:, : lengths[1]], None)
        with torch.no_grad():
            for run, (x, m) in runs.items():
                res = ref.Prism.slide_representations(prism, x, tile_mask=m)
                for key in ("image_embedding", "image_latents"):
                    out[f"{case}/{run}/{key}"] = res[key].numpy()
    out["provenance"] = np.array(
        json.dumps(
            {
                "repository": "https://github.com/DIAGNijmegen/unicorn_baseline",
                "commit": args.commit,
                "file": "src/unicorn_baseline/vision_language/prism/perceiver.py (PerceiverResampler), "
                "modeling_prism.py (Prism.slide_representations)",
                "upstream": "public copy of the remote code of the Hugging Face repository paige-ai/Prism",
                "called": "Prism.slide_representations(tile_embeddings, tile_mask=...) -> image_resampler(...) with "
                f"PerceiverResampler(PerceiverConfig(**sizes, **{STRUCTURE})), sizes {CASES}, eval mode, "
                "LayerNorm affines randomised",
                "script": "tests/golden/make_prism_perceiver.py",
                "torch": torch.__version__,
            }
        )
    )
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
