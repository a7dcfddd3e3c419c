"""Golden: Prov-GigaPath's slide encoder (LongNetViT), built and run by its publisher's code on the CPU.

Provenance (commits in the output file):

* prov-gigapath/prov-gigapath ``gigapath/slide_encoder.py`` (``create_model``, ``LongNetViT``,
  ``gigapath_slide_enc12l768d``), ``gigapath/pos_embed.py`` and its vendored torchscale (``LongNet.py``,
  ``LongNetConfig.py``, ``dilated_attention.py``, ``multihead_attention.py``, ``encoder.py``).
* mahmoodlab/TRIDENT ``trident/slide_encoder_models/load.py`` ``GigaPathSlideEncoder``: builds
  ``create_model(..., "gigapath_slide_enc12l768d", 1536, global_pool=True)`` and its ``forward`` sets
  ``model.tile_size = patch_size_level0`` and returns ``model(features, coords, all_layer_embed=True)[11]``.
  That forward is repeated here in two lines (TRIDENT's package imports its slide readers; not loaded).

The one piece written here is ``flash_attn_func``: the reference's dilated attention calls flash-attn (GPU
only; on a machine without CUDA ``torchscale/component/flash_attention.py`` sets it to None). :func:`exact_attention`
has the signature of that module's wrapper (``q, k, v, dropout, bias, softmax_scale, is_causal`` with
``(batch, length, heads, head_dim)`` tensors; returns the output and the log-sum-exp ``(batch, heads, length)``
as flash-attn does) and computes exact softmax attention; it is bound where the reference looks the name up
(``torchscale.component.multihead_attention.flash_attn_func``). Everything around it - segmenting, dilation,
head groups, padding, merging the branches by their softmax denominators, positions, pooling - is the
reference's own code.

The numbers:

* ``full``: keys and shapes of the full-size model TRIDENT builds (``create_model("", ...)``, random weights),
  its parameter count and the LongNet arguments it was built with (segment lengths, dilation ratios...).
  ``slide_ngrids=8`` there: the fixed sin-cos table is a non-persistent buffer of ``slide_ngrids ** 2 + 1`` rows
  (3 GB at the published 1000), not in the state dict; the tiny model below uses the published 1000.
* ``tiny``: ``LongNetViT`` as ``gigapath_slide_enc12l768d`` builds it, at 64-d input, 48-d, 3 layers, 6 heads
  (a LongNet config of that size added to ``LongNetConfig``, otherwise the 768-d one's entries), every tensor
  filled by :func:`fill`; TRIDENT's forward on :func:`inputs` (tiles at random grid cells, level-0 tile side
  512, random order) for every layer index. Case ``published_segments``: 2500 tiles with the published
  segment lengths (1024-length segments: three in the first branch); case ``short_segments``: 700 tiles with
  segment lengths ``[64, 100, 256, 300, 1024]`` set on the built encoder's args (several segments in every
  branch; 300 is not a multiple of its ratio 8, which shows how the reference lays out padded segments).

Run outside the package::

    git --git-dir=<mirror of prov-gigapath/prov-gigapath> archive HEAD gigapath | tar -x -C /tmp/gref/prov-gigapath
    git --git-dir=<mirror> rev-parse HEAD > /tmp/gref/prov-gigapath/COMMIT
    uv pip install --target /tmp/gref/site --no-deps einops fairscale
    PYTHONPATH=/tmp/gref/site:/tmp/gref/prov-gigapath uv run --locked python tests/golden/make_gigapath_slide.py \
        /tmp/gref/prov-gigapath

numpy >= 2 prints ``np.int64(1024)`` in the segment-length string the reference ``eval``s: the script sets
numpy's 1.25 print mode first (what the reference's numpy printed).
"""

from __future__ import annotations

import json
import sys
import zlib
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRIDENT_COMMIT = "a91fa8490e0210ebbbe58452c3babe009e0ab7ca"
TINY = {"in_chans": 64, "embed_dim": 48, "depth": 3, "heads": 6, "ffn": 192}
PATCH_SIZE_LEVEL0 = 512
CASES: dict[str, dict[str, Any]] = {
    "published_segments": {"n_tiles": 2500, "seed": 1, "segment_length": None},
    "short_segments": {"n_tiles": 700, "seed": 2, "segment_length": [64, 100, 256, 300, 1024]},
}


def fill(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Deterministic weights: a normal draw seeded by the key's crc32, scaled by 1/sqrt(fan-in) (LayerNorm
    gains: 1 + 0.1 x the draw, so that the attention, not the norms' gains, shapes the output)."""
    out = {}
    for key, t in state.items():
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        scale = 1.0 / np.sqrt(t.shape[-1]) if t.ndim >= 2 else 0.1
        centre = 1.0 if t.ndim == 1 and key.endswith(".weight") else 0.0  # LayerNorm gains near 1
        out[key] = torch.from_numpy((centre + rng.standard_normal(tuple(t.shape)) * scale).astype(np.float32))
    return out


def inputs(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) features and (n, 2) level-0 coords: distinct cells of a 120 x 90 grid of 512 px, random
    order, each shifted by up to 511 px inside its cell (the positions are floor(coord / tile side))."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(120 * 90, size=n, replace=False)
    grid = np.stack([cells % 120, cells // 120], 1)
    coords = grid * PATCH_SIZE_LEVEL0 + rng.integers(0, PATCH_SIZE_LEVEL0, size=(n, 2))
    feats = rng.standard_normal((n, dim)).astype(np.float32)
    return feats, coords.astype(np.int64)


def exact_attention(q, k, v, dropout=0.0, bias=None, softmax_scale=None, is_causal=False):
    """Stand-in for flash-attn: exact softmax attention and its log-sum-exp, flash-attn's shapes."""
    assert bias is None and not is_causal and dropout == 0.0
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    s = torch.einsum("blhd,bmhd->bhlm", q.double(), k.double()) * scale
    lse = torch.logsumexp(s, dim=-1)  # (b, h, l)
    out = torch.einsum("bhlm,bmhd->blhd", torch.softmax(s, dim=-1), v.double())
    return out.to(q.dtype), lse.float()


def _commit(root: Path) -> str:
    return (root / "COMMIT").read_text().strip()


def _layout(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def main(ref: Path) -> None:
    np.set_printoptions(legacy="1.25")
    sys.path.insert(0, str(ref))
    import gigapath.slide_encoder as se
    import torchscale.component.multihead_attention as mha
    from torchscale.model import LongNetConfig

    mha.flash_attn_func = exact_attention
    torch.set_grad_enabled(False)

    full = se.create_model("", "gigapath_slide_enc12l768d", 1536, global_pool=True, slide_ngrids=8).eval()
    args = full.encoder.args
    out: dict = {
        "provenance": {
            "prov-gigapath": {"repo": "prov-gigapath/prov-gigapath", "commit": _commit(ref)},
            "TRIDENT": {"repo": "mahmoodlab/TRIDENT", "commit": TRIDENT_COMMIT},
            "shim": "flash_attn_func replaced by exact_attention (exact softmax attention + log-sum-exp)",
        },
        "full": {
            "shapes": _layout(full),
            "n_params": sum(p.numel() for p in full.parameters()),
            "segment_length": [int(s) for s in args.segment_length],
            "dilated_ratio": [int(r) for r in args.dilated_ratio],
            "heads": args.encoder_attention_heads,
            "ffn": args.encoder_ffn_embed_dim,
            "layernorm_eps": args.layernorm_eps,
            "norm_eps": full.norm.eps,
            "subln": args.subln,
            "slide_ngrids_default": se.LongNetViT.__init__.__defaults__[3],
        },
    }
    name = f"LongNet_{TINY['depth']}_layers_{TINY['embed_dim']}_dim"
    setattr(
        LongNetConfig,
        name,
        dict(
            LongNetConfig.LongNet_12_layers_768_dim,
            encoder_layers=TINY["depth"],
            encoder_embed_dim=TINY["embed_dim"],
            encoder_ffn_embed_dim=TINY["ffn"],
            encoder_attention_heads=TINY["heads"],
        ),
    )
    tiny = se.LongNetViT(
        in_chans=TINY["in_chans"],
        embed_dim=TINY["embed_dim"],
        depth=TINY["depth"],
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        global_pool=True,
    ).eval()
    tiny.load_state_dict(fill(tiny.state_dict()), strict=True)
    published_segments = list(tiny.encoder.args.segment_length)
    out["tiny"] = {
        "config": TINY,
        "shapes": _layout(tiny),
        "patch_size_level0": PATCH_SIZE_LEVEL0,
        "cases": {},
    }
    for case, spec in CASES.items():
        tiny.encoder.args.segment_length = spec["segment_length"] or published_segments
        feats, coords = inputs(spec["n_tiles"], TINY["in_chans"], spec["seed"])
        # TRIDENT's GigaPathSlideEncoder.forward, with all the layers kept
        tiny.tile_size = PATCH_SIZE_LEVEL0
        layers = tiny(torch.from_numpy(feats)[None], torch.from_numpy(coords)[None], all_layer_embed=True)
        out["tiny"]["cases"][case] = {
            **spec,
            "segment_length": [int(s) for s in tiny.encoder.args.segment_length],
            "features_sum": float(feats.astype(np.float64).sum()),
            "coords_sum": int(coords.sum()),
            "layers": [z[0].tolist() for z in layers],
        }
    dest = Path(__file__).with_name("gigapath_slide.json")
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
