"""Golden: the slide encoders TRIDENT runs, built and run by their publishers' and TRIDENT's own code.

Provenance (commits in the output file):

* mahmoodlab/TRIDENT ``trident/slide_encoder_models/load.py``: ``CHIEFSlideEncoder`` (built by TRIDENT's
  ``_build(pretrained=False)``, which imports ``models.CHIEF`` from a CHIEF checkout), and the ``forward``
  of ``CHIEFSlideEncoder``, ``MadeleineSlideEncoder``, ``FeatherSlideEncoder`` / ``FeatherUni2SlideEncoder``
  and ``MeanSlideEncoder``, run on fixed inputs.
* hms-dbmi/CHIEF ``models/CHIEF.py`` ``CHIEF(size_arg="small", dropout=True, n_classes=2)`` (what TRIDENT
  builds; ``__init__`` reads ``model_weight/Text_emdding.pth``: a seeded (19, 768) tensor is written there).
* mahmoodlab/MADELEINE ``madeleine/models/Model.py`` ``create_model(cfg, device="cpu")`` with the argparse
  defaults of ``madeleine/utils/process_args.py`` (patch_embedding_dim 512, wsi_encoder_hidden_dim 512,
  n_heads 4, activation softmax, wsi_encoder abmil): the hub's ``model_config.json`` is not readable
  offline, so the head count is the training default, not read from the release.
* AtlasAnalyticsLab/MOOZY (not in TRIDENT): slide encoder + case transformer run through its stage-2
  inference path (see :func:`_moozy`).
* mahmoodlab/MIL-Lab ``src/models/abmil.py`` ``ABMILModel(ABMILGatedBaseConfig(in_dim=D, num_classes=0))``
  with ``src/model_configs/abmil/base.yaml`` (embed_dim 512, attn_dim 384, gate, one fc layer): the class the
  FEATHER hub repositories name in their ``auto_map`` (``modeling_abmil.ABMILModel``), which TRIDENT loads with
  ``AutoModel.from_pretrained(..., trust_remote_code=True)``. The hub file itself is gated and not read here.

For each model the script writes the state-dict keys and shapes, then fills every tensor by the rule in
:func:`fill` (a seed from the key's crc32), runs TRIDENT's ``forward`` in eval mode on :func:`inputs` and
stores the output. ``tests/features/test_slide_encoders_golden.py`` fills slidescope's modules by the same
rule (through a safetensors file and the real loading path) and compares. Run outside the package::

    for r in TRIDENT MIL-Lab MADELEINE; do git --git-dir=<mirror of mahmoodlab/$r> archive HEAD | tar -x -C /tmp/ref/$r; done
    git --git-dir=<mirror of AtlasAnalyticsLab/MOOZY> archive HEAD moozy | tar -x -C /tmp/ref/MOOZY
    git --git-dir=<mirror of hms-dbmi/CHIEF> archive HEAD models utils | tar -x -C /tmp/ref/CHIEF
    uv pip install --target /tmp/refsite einops addict
    PYTHONPATH=/tmp/refsite uv run --locked python tests/golden/make_trident_slide_layouts.py /tmp/ref

TRIDENT's package ``__init__`` imports its slide readers (cv2, openslide...): the script loads only
``trident/slide_encoder_models`` (``trident.IO`` replaced by the two path functions load.py calls).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import types
import zlib
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch

N_TILES = 37


def fill(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Deterministic weights: a normal draw seeded by the key's crc32, scaled by 1/sqrt(fan-in)."""
    out = {}
    for key, t in state.items():
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        scale = 1.0 / np.sqrt(t.shape[-1]) if t.ndim >= 2 else 0.1
        out[key] = torch.from_numpy((rng.standard_normal(tuple(t.shape)) * scale).astype(np.float32))
    return out


def inputs(dim: int) -> torch.Tensor:
    """(1, N_TILES, dim) float32 features, seeded by the width."""
    rng = np.random.default_rng(dim)
    return torch.from_numpy(rng.standard_normal((1, N_TILES, dim)).astype(np.float32))


def _commit(root: Path) -> str:
    return (
        (root / "COMMIT").read_text().strip() if (root / "COMMIT").is_file() else "see README of the script"
    )


def _trident(ref: Path, chief_dir: str) -> types.ModuleType:
    io = types.ModuleType("trident.IO")
    io.get_weights_path = lambda kind, name: chief_dir if name == "chief" else ""  # type: ignore[attr-defined]
    io.get_dir = lambda: tempfile.gettempdir()  # type: ignore[attr-defined]
    pkg = types.ModuleType("trident")
    pkg.__path__ = [str(ref / "TRIDENT" / "trident")]  # type: ignore[attr-defined]
    sys.modules["trident"], sys.modules["trident.IO"] = pkg, io
    import trident.slide_encoder_models.load as load

    return load


def _record(model: torch.nn.Module) -> dict:
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    return {
        "n_tensors": len(shapes),
        "n_params": int(sum(int(np.prod(s)) for s in shapes.values())),
        "shapes": shapes,
    }


def _run(model: torch.nn.Module, forward, dim: int) -> list[float]:
    model.load_state_dict(fill(model.state_dict()), strict=True)
    model.eval()
    with torch.no_grad():
        z = forward(inputs(dim))
    return [float(v) for v in z.reshape(-1)]


def _bare(cls, model):
    """A TRIDENT encoder object holding ``model`` (its ``_build`` would download), for its ``forward``."""
    enc = cls.__new__(cls)
    torch.nn.Module.__init__(enc)
    enc.model = model
    return enc


def moozy_inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 384) features and (n, 2) level-0 coords of distinct cells of a 224-px grid (patch 448 at level 0)."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(12 * 9, size=n, replace=False)
    coords = np.stack([cells % 12, cells // 12], 1).astype(np.int64) * 448 + 1000
    return rng.standard_normal((n, 384)).astype(np.float32), coords


def _moozy(root: Path) -> dict:
    """MOOZY (AtlasAnalyticsLab/MOOZY): its stage-2 inference path on fixed features, built by its own code.

    ``MOOZYSlideEncoder`` at the model card's size (variant base_half_depth: 6 layers, 768-d, 12 heads, 4
    registers; qk_norm, LayerScale and learnable ALiBi off: ``config/model.py`` defaults) and ``CaseAggregator``
    at ``config/stage2.py``'s defaults (base_quarter_depth: 3 layers; LayerScale 1e-5; no registers); slides
    enter as ``load_stage2_slide_sample`` makes them (``build_grid_from_coords`` on the features and level-0
    coords, patch size 448) and go through ``encode_case_batch`` (``run_encoding``'s forward). The checkpoint's
    own ``slide_encoder_config`` / ``case_transformer_config`` are not readable offline.
    """
    sys.path.insert(0, str(root))
    from moozy.data.features import SLIDE_GRID_STEP_TOLERANCE, build_grid_from_coords
    from moozy.data.stage2 import build_case_sample, collate_stage2_batch
    from moozy.models.case_transformer import CaseAggregator
    from moozy.models.moozy_slide_encoder import MOOZYSlideEncoder
    from moozy.models.stage2_encoding import encode_case_batch
    from moozy.models.variants import ENCODER_VARIANTS

    se, ct = ENCODER_VARIANTS["base_half_depth"], ENCODER_VARIANTS["base_quarter_depth"]
    enc = MOOZYSlideEncoder(feat_dim=384, num_registers=4, qk_norm=False, layerscale_init=0.0, **se)
    case = CaseAggregator(
        d_model=ct["d_model"],
        num_layers=ct["n_layers"],
        num_heads=ct["n_heads"],
        dim_feedforward=ct["dim_feedforward"],
        layerscale_init=1e-5,
        num_registers=0,
        qk_norm=False,
    )
    state = fill(enc.state_dict())
    for k in state:  # the ALiBi slopes are fixed buffers (not learned): keep MOOZY's own values
        if k.endswith("pos_bias.slopes"):
            state[k] = enc.state_dict()[k].clone()
    enc.load_state_dict(state, strict=True)
    case.load_state_dict(fill(case.state_dict()), strict=True)
    enc.eval(), case.eval()

    def sample(n: int, seed: int) -> dict:
        feats, coords = moozy_inputs(n, seed)
        grid, xs, ys = build_grid_from_coords(
            feats, coords, expected_step=448.0, step_tolerance=SLIDE_GRID_STEP_TOLERANCE
        )
        xx, yy = np.meshgrid(xs, ys, indexing="xy")
        return {
            "name": f"s{seed}",
            "x": torch.from_numpy(grid).float(),
            "invalid": torch.from_numpy(~(grid != 0).any(axis=2)).bool(),
            "coords": torch.from_numpy(np.stack([xx, yy], axis=-1)).float(),
            "patch_size": torch.tensor(448.0),
        }

    outputs = {}
    with torch.no_grad():
        for key, slides in {"one": [sample(N_TILES, 1)], "two": [sample(N_TILES, 1), sample(23, 2)]}.items():
            batch = collate_stage2_batch([build_case_sample(slides=slides)])
            cls, *_ = encode_case_batch(enc, case, batch)
            outputs[key] = [float(v) for v in cls.reshape(-1)]
        s1 = sample(N_TILES, 1)
        slide_cls, _, _ = enc(
            s1["x"][None],
            invalid_mask=s1["invalid"][None],
            coords_xy=s1["coords"][None],
            patch_sizes=s1["patch_size"][None],
        )
    both = {
        **{k: v for k, v in enc.state_dict().items()},
        **{f"case_transformer.{k}": v for k, v in case.state_dict().items()},
    }
    return {
        "function": "moozy MOOZYSlideEncoder(base_half_depth, 4 registers) + CaseAggregator(base_quarter_depth); "
        "build_grid_from_coords -> collate_stage2_batch(build_case_sample) -> encode_case_batch",
        "slide_encoder_n_tensors": len(enc.state_dict()),
        **_record(_Holder(both)),
        "output": outputs["one"],
        "output_two_slides": outputs["two"],
        "slide_cls": [float(v) for v in slide_cls.reshape(-1)],
        "slopes": [float(v) for v in enc.pos_bias.slopes.reshape(-1)],
    }


class _Holder(torch.nn.Module):
    """A module whose state_dict is the given tensors (to record two modules' keys together)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._tensors = tensors

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        return dict(self._tensors)


def main() -> None:
    ref = Path(sys.argv[1])
    out: dict = {"provenance": {}, "encoders": {}, "fill": "see fill() in this script", "n_tiles": N_TILES}
    for name, repo in [
        ("TRIDENT", "mahmoodlab/TRIDENT"),
        ("MIL-Lab", "mahmoodlab/MIL-Lab"),
        ("MADELEINE", "mahmoodlab/MADELEINE"),
        ("CHIEF", "hms-dbmi/CHIEF"),
    ]:
        out["provenance"][name] = {"repository": f"https://github.com/{repo}", "commit": _commit(ref / name)}
    out["provenance"]["script"] = "tests/golden/make_trident_slide_layouts.py"
    out["provenance"]["torch"] = torch.__version__
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        chief_dir = Path(tmp) / "CHIEF"
        subprocess.run(["cp", "-r", str(ref / "CHIEF"), str(chief_dir)], check=True)
        (chief_dir / "model_weight").mkdir()
        words = torch.from_numpy(np.random.default_rng(19).standard_normal((19, 768)).astype(np.float32))
        torch.save(words, chief_dir / "model_weight" / "Text_emdding.pth")
        torch.save({}, chief_dir / "model_weight" / "CHIEF_pretraining.pth")  # TRIDENT checks it exists
        load = _trident(ref, str(chief_dir))
        cwd = os.getcwd()
        chief = load.CHIEFSlideEncoder(pretrained=False)  # TRIDENT's _build: imports models.CHIEF, builds it
        os.chdir(cwd)
        out["encoders"]["chief"] = {
            "function": "trident CHIEFSlideEncoder(pretrained=False) -> models.CHIEF.CHIEF(size_arg='small', "
            "dropout=True, n_classes=2); forward(batch, device='cpu') -> WSI_feature",
            **_record(chief.model),
            "output": _run(chief.model, lambda x: chief.forward({"features": x}, device="cpu"), 768),
        }

        sys.path.insert(0, str(ref / "MADELEINE"))
        from madeleine.models.Model import create_model

        cfg = Namespace(
            MODALITIES=["HE", "ER", "PR", "HER2", "KI67"],
            wsi_encoder="abmil",
            patch_embedding_dim=512,
            wsi_encoder_hidden_dim=512,
            activation="softmax",
            n_heads=4,
        )
        mad = create_model(cfg, device="cpu")
        enc = _bare(load.MadeleineSlideEncoder, mad)
        out["encoders"]["madeleine"] = {
            "function": "madeleine.models.Model.create_model(cfg, device='cpu') (process_args defaults); "
            "trident MadeleineSlideEncoder.forward(batch, device='cpu') -> encode_he",
            "config": {k: v for k, v in vars(cfg).items()},
            **_record(mad),
            "output": _run(mad, lambda x: enc.forward({"features": x}, device="cpu"), 512),
        }

        sys.path.insert(0, str(ref / "MIL-Lab"))
        from src.models.abmil import ABMILGatedBaseConfig, ABMILModel

        for key, dim, cls in [
            ("feather-conch-v1.5", 768, load.FeatherSlideEncoder),
            ("feather-uni2", 1536, load.FeatherUni2SlideEncoder),
            ("feather-uni", 1024, load.FeatherSlideEncoder),
        ]:
            hf = ABMILModel(ABMILGatedBaseConfig(in_dim=dim, num_classes=0))
            fenc = _bare(cls, hf)
            out["encoders"][key] = {
                "function": f"MIL-Lab ABMILModel(ABMILGatedBaseConfig(in_dim={dim}, num_classes=0)); "
                f"trident {cls.__name__}.forward(batch, device='cpu') -> model.forward_features",
                **_record(hf),
                "output": _run(hf, lambda x, f=fenc: f.forward({"features": x}, device="cpu"), dim),
            }

        mean = load.MeanSlideEncoder(model_name="mean-uni_v1")
        x = inputs(1024)
        out["encoders"]["mean-uni"] = {
            "function": "trident MeanSlideEncoder(model_name='mean-uni_v1').forward(batch, device='cpu')",
            "embedding_dim": mean.embedding_dim,
            "output": [float(v) for v in mean.forward({"features": x}, device="cpu").reshape(-1)],
        }
    out["provenance"]["MOOZY"] = {
        "repository": "https://github.com/AtlasAnalyticsLab/MOOZY",
        "commit": _commit(ref / "MOOZY"),
    }
    out["encoders"]["moozy"] = _moozy(ref / "MOOZY")
    dest = Path(__file__).with_name("trident_slide_layouts.json")
    dest.write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")
    for k, v in out["encoders"].items():
        print(f"{k:20s} {v.get('n_tensors', '-'):>4} tensors {v.get('n_params', 0):>10,d}", file=sys.stderr)
    print(f"wrote {dest} ({dest.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
