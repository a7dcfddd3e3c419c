"""MI-Zero over CONCH v1's text tower vs over PLIP's: the same training, the same cohort, the same real path.

The published CONCH and PLIP weights are gated / not reachable offline, and random tiny weights give meaningless
AUROCs, so both models are *trained* here, identically, and then used only through slidescope's public path:

1. Per model, a tiny model of the published architecture: PLIP = transformers ``CLIPModel`` (image + text
   towers, ``projection_dim`` 16, width 32, 2 layers, 64 px input, OpenAI CLIP BPE tokenizer from open_clip's
   copy); CONCH v1 = the CoCa layout of ``tests/golden/make_conch_v1.py``'s tiny config (width 32, 2 layers,
   64 px, joint width 16) with its small byte-level BPE tokenizer (``tests/golden/conch_v1_tiny_tokenizer.json``)
   built from slidescope's modules, which ``tests/features/test_conch_v1.py`` proves equal to the reference
   (mahmoodlab/CONCH) to 1e-5.
2. Both trained with the CLIP contrastive loss (symmetric cross-entropy, learned logit scale) on the same tiles
   of synthetic slides (64 px at 1 µm/px, labelled tumour / normal from the slides' exact tumour masks) with
   captions drawn from a few phrasings per class: same tiles, batches, captions, steps, seed, AdamW settings.
3. The weights are saved in the published file layout (a full ``CLIPModel`` state dict + tokenizer files; the
   full CoCa state dict, captioning decoder included, + CONCH's tokenizer file name) and checked: PLIP's file
   loads strictly into transformers' ``CLIPModel``; CONCH's has exactly the reference tiny model's keys and shapes.
4. Held-out synthetic cohort (``make_synthetic_cohort``, other seeds): ``create_encoder(weights=folder)`` ->
   ``extract_features`` into stores -> ``zero_shot(stores, classes, model=name, weights=folder, level="tile")``
   (MI-Zero top-k pooling) -> slide AUROC (scikit-learn ``roc_auc_score``), and a tile AUROC of the per-tile
   score maps the call wrote (``scores/zero-shot/<class>``: tumour minus normal cosine) against the masks: on
   the clear tiles (>= 50 % tumour vs none) and on all tiles (majority label; reported, not judged). Also
   reported, not judged: the balanced accuracy of the zero-shot predictions themselves (the slide's argmax
   class; a tile is called tumour where its tumour cosine exceeds its normal one), which needs no threshold.

Pass criterion: CONCH v1's slide AUROC within 0.05 of PLIP's (or above it), and both above 0.75; the same for
the (clear-tile) tile AUROC. Exit status 1 if it fails.

What it can and cannot tell: tumour and stroma differ strongly in colour on these slides, so trained models sit
at or near AUROC 1 and so can even a random tower by chance (``--control`` evaluates the untrained models: their
AUROC is far from 0.5 either way, its sign random). The check therefore catches a CONCH path that loses the
learned alignment (features not projected with ``proj_contrast``: AUROC 0.0; a mismatched tokenizer, wrong
weights), not differences of a few hundredths between towers.

Usage::

    uv run python benchmarks/bench_mizero_towers.py            # 300 steps, 6 training slides, 16 held-out
    uv run python benchmarks/bench_mizero_towers.py --quick    # 120 steps, 3 training slides, 8 held-out
    uv run python benchmarks/bench_mizero_towers.py --control  # and the untrained models, for comparison
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
TILE, TILE_MPP, SLIDE_MPP = 64, 1.0, 0.5
CAPTIONS = {
    "tumour": [
        "an H&E image of invasive carcinoma.",
        "tumour with crowded pleomorphic nuclei.",
        "malignant epithelial cells.",
    ],
    "normal": [
        "an H&E image of benign stroma.",
        "normal fibrous connective tissue.",
        "benign tissue without atypia.",
    ],
}
#: zero-shot prompts: the class phrasings the captions use (a tiny text tower knows no other words)
CLASSES = {"tumour": ["invasive carcinoma", "malignant epithelial cells"], "normal": ["benign stroma"]}
TEMPLATES = ["an H&E image of {}.", "{}."]
MARGIN, FLOOR = 0.05, 0.75

PLIP_VISION = {
    "hidden_size": 32,
    "intermediate_size": 128,
    "projection_dim": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": TILE,
    "patch_size": 16,
    "hidden_act": "quick_gelu",
}


# ----------------------------------------------------------------------------------------------- models


def _plip_tokenizer_files(folder: Path) -> None:
    """OpenAI CLIP's BPE (PLIP's) as transformers tokenizer files, from open_clip's copy."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    st = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({rename.get(k, k): v for k, v in st.encoder.items()}))
    merges = sorted(st.bpe_ranks, key=st.bpe_ranks.__getitem__)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    (folder / "vocab.json").unlink()
    (folder / "merges.txt").unlink()


def register_tiny(name: str) -> str:
    """Register ``bench-tiny-<name>``: the preset's config and builders at the tiny widths."""
    from slidescope.features.encoders import get_encoder_config, register_encoder
    from slidescope.features.encoders import _registry
    from slidescope.features.encoders import clip as clip_mod

    tiny = f"bench-tiny-{name}"
    base = get_encoder_config(name)
    if name == "plip":
        image_kw: dict[str, Any] = PLIP_VISION
        text_kw: dict[str, Any] = {
            **clip_mod.PLIP_TEXT,
            "hidden_size": 32,
            "intermediate_size": 128,
            "projection_dim": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        }
    else:
        cfg = json.loads(str(np.load(GOLDEN / "conch_v1.npz")["tiny_config"]))
        v, t = cfg["vision_cfg"], cfg["text_cfg"]
        image_kw = {k: v[k] for k in ("image_size", "patch_size", "width", "layers", "num_heads")}
        image_kw.update(
            embed_dim=cfg["embed_dim"],
            mlp_ratio=4.0,
            attn_pooler_heads=v["attn_pooler_heads"],
            n_queries_contrast=v["n_queries_contrast"],
        )
        assert image_kw["image_size"] == TILE
        text_kw = {
            "embed_dim": cfg["embed_dim"],
            "text_cfg": {k: t[k] for k in ("context_length", "vocab_size", "width", "heads", "layers")},
        }
    config = replace(
        base, name=tiny, kwargs=image_kw, embed_dim=16, input_size=TILE, resize_size=TILE, tile_size=TILE
    )
    register_encoder(config, _registry._entry(name)[1])
    clip_mod.register_clip_text_tower(tiny, clip_mod._TEXT_REGISTRY[name][2], text_kw)
    return tiny


def build(name: str, tiny: str, folder: Path) -> tuple[Any, Any]:
    """Random-init image encoder and text tower (seeded), with the tokenizer the saved folder will hold."""
    from slidescope.features.encoders import create_encoder
    from slidescope.features.encoders.clip import create_clip_text_tower
    from slidescope.features.encoders.conch_v1 import CONCH_V1_TOKENIZER_FILE

    folder.mkdir(parents=True, exist_ok=True)
    if name == "plip":
        _plip_tokenizer_files(folder)
    else:
        shutil.copy(GOLDEN / "conch_v1_tiny_tokenizer.json", folder / CONCH_V1_TOKENIZER_FILE)
    torch.manual_seed(0)
    image = create_encoder(tiny, pretrained=False, device="cpu")
    tower = create_clip_text_tower(tiny, pretrained=False)
    tower.load_tokenizer(folder)
    return image.train(), tower.train()


def to_joint(name: str, image: Any, x: torch.Tensor) -> torch.Tensor:
    """Normalised pixels -> the joint space (PLIP's image tower projects; CONCH's through proj_contrast)."""
    feats = image.embed(x)
    return image.project(feats) if name == "conch-v1" else feats


def save_published(name: str, image: Any, tower: Any, logit_scale: torch.Tensor, folder: Path) -> Path:
    """The weights as the publisher's file: PLIP a full CLIPModel state dict, CONCH the full CoCa one."""
    state = {k: v.detach().clone() for k, v in image.checkpoint_module().state_dict().items()}
    text = {k: v.detach().clone() for k, v in tower.checkpoint_module().state_dict().items()}
    if name == "conch-v1":
        text.pop("visual.proj_contrast")  # the image tower's (trained) copy is the file's
        golden = np.load(GOLDEN / "conch_v1.npz")
        full = {k[2:]: torch.from_numpy(golden[k]) for k in golden.files if k.startswith("w/")}
        state = {**full, **state, **text, "logit_scale": logit_scale.detach().clone()}
        ref = {k: tuple(v.shape) for k, v in full.items()}
        if {k: tuple(v.shape) for k, v in state.items()} != ref:
            raise AssertionError("the CONCH file does not have the reference tiny model's keys and shapes")
    else:
        from transformers import CLIPConfig, CLIPModel

        state = {**state, **text, "logit_scale": logit_scale.detach().clone()}
        text_cfg = {k: v for k, v in tower.text_kwargs.items() if k != "projection_dim"}
        ref_model = CLIPModel(CLIPConfig(text_config=text_cfg, vision_config=PLIP_VISION, projection_dim=16))
        ref_model.load_state_dict(state, strict=True)  # the published class reads the file as it is
    path = folder / image.config.weights_file
    torch.save(state, path)
    return path


# ------------------------------------------------------------------------------------------------- data


def tile_tumour_fraction(coords: np.ndarray, extent: int, mask: np.ndarray, f: float) -> np.ndarray:
    """Fraction of each tile's area (level-0 top-left ``coords``, side ``extent``) inside the tumour mask."""
    out = np.empty(len(coords))
    for i, (x, y) in enumerate(coords):
        x0, y0 = int(x // f), int(y // f)
        x1, y1 = max(x0 + 1, int(math.ceil((x + extent) / f))), max(y0 + 1, int(math.ceil((y + extent) / f)))
        out[i] = mask[y0:y1, x0:x1].mean()
    return out


def training_tiles(root: Path, n_slides: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 tiles and labels (1 tumour, 0 normal) of synthetic slides with tumour; mixed tiles left out."""
    from slidescope.synthetic import make_synthetic_slide
    from slidescope.wsi import iter_tiles, make_tile_grid, open_slide

    tiles, labels = [], []
    for i in range(n_slides):
        s = make_synthetic_slide(root / f"train_{i}.svs", width=size[0], height=size[1], seed=900 + i)
        slide = open_slide(s.path)
        grid = make_tile_grid(slide, tile_size=TILE, mpp=TILE_MPP)
        frac = tile_tumour_fraction(grid.coords, grid.extent[0], s.tumour_mask, s.mask_downsample)
        for idx, tile in iter_tiles(slide, grid):
            if frac[idx] >= 0.5 or frac[idx] == 0:
                tiles.append(tile)
                labels.append(int(frac[idx] >= 0.5))
    return np.stack(tiles), np.array(labels)


def batches(labels: np.ndarray, steps: int, batch: int, seed: int) -> list[tuple[np.ndarray, list[str]]]:
    """Class-balanced tile batches with a caption per tile, fixed in advance (identical for both models)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    out = []
    for _ in range(steps):
        idx = np.concatenate([rng.choice(pos, batch // 2), rng.choice(neg, batch - batch // 2)])
        caps = [str(rng.choice(CAPTIONS["tumour" if labels[i] else "normal"])) for i in idx]
        out.append((idx, caps))
    return out


def train(name: str, image: Any, tower: Any, tiles: torch.Tensor, plan: list, lr: float) -> torch.Tensor:
    """CLIP contrastive training; the learned log logit scale (clamped at log 100, as CLIP does)."""
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = [*image.parameters(), *tower.parameters(), logit_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    torch.manual_seed(1)
    for idx, caps in plan:
        x = image.preprocess(tiles[torch.from_numpy(idx)])
        img = F.normalize(to_joint(name, image, x), dim=-1)
        txt = F.normalize(tower.encode(caps), dim=-1)
        logits = logit_scale.exp() * img @ txt.T
        same = torch.tensor([[a == b for b in caps] for a in caps], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)  # captions repeat: every matching caption is a positive
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            logit_scale.clamp_(0, math.log(100))
    return logit_scale.detach()


# -------------------------------------------------------------------------------------------- evaluation


def evaluate(tiny: str, folder: Path, cohort: Path, stores: Path, k: int) -> dict[str, float]:
    """The real path: create_encoder -> extract_features -> zero_shot(level="tile") -> AUROCs."""
    import csv

    from PIL import Image
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score  # type: ignore[import-untyped]

    from slidescope.features.encoders import create_encoder
    from slidescope.features.extract import extract_features
    from slidescope.features.store import open_store
    from slidescope.vlm.api import zero_shot
    from slidescope.wsi import make_tile_grid, open_slide

    with open(cohort / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    encoder = create_encoder(tiny, weights=folder, device="cpu")
    paths, truth, extents = [], [], []
    for row in rows:
        slide = open_slide(cohort / row["slide"])
        grid = make_tile_grid(slide, tile_size=TILE, mpp=TILE_MPP)
        res = extract_features(slide, grid, encoder, store=stores, batch_size=64, progress=False)
        assert res.status == "done" and res.store is not None, res
        paths.append(res.store)
        truth.append(int(row["label"] == "tumour"))
        extents.append(grid.extent[0])
    out = zero_shot(paths, CLASSES, model=tiny, weights=folder, templates=TEMPLATES, level="tile", k=k)
    slide_auc = roc_auc_score(truth, [r.probs["tumour"] for r in out])
    slide_bacc = balanced_accuracy_score(truth, [int(r.predicted == "tumour") for r in out])
    scores, gt, scores_all, gt_all = [], [], [], []
    for row, path, extent in zip(rows, paths, extents):
        store = open_store(path)
        mask = np.asarray(Image.open(cohort / row["tumour_mask"])) > 0
        frac = tile_tumour_fraction(store.coords, extent, mask, float(row["mask_mpp"]) / SLIDE_MPP)
        keep = (frac >= 0.5) | (frac == 0)
        s = store.scores("zero-shot/tumour") - store.scores("zero-shot/normal")
        scores.append(s[keep])
        gt.append(frac[keep] >= 0.5)
        scores_all.append(s)
        gt_all.append(frac >= 0.5)
    return {
        "slide_auroc": float(slide_auc),
        "tile_auroc": float(roc_auc_score(np.concatenate(gt), np.concatenate(scores))),
        "tile_auroc_all": float(roc_auc_score(np.concatenate(gt_all), np.concatenate(scores_all))),
        "slide_bacc": float(slide_bacc),
        "tile_bacc": float(balanced_accuracy_score(np.concatenate(gt), np.concatenate(scores) > 0)),
        "n_slides": len(rows),
    }


def run(quick: bool, work: Path, *, control: bool = False) -> dict[str, Any]:
    """Data, training and evaluation of both models; ``control`` also evaluates the untrained models."""
    from slidescope.synthetic import make_synthetic_cohort

    torch.set_num_threads(1)
    steps, n_train, n_test = (120, 3, 8) if quick else (300, 6, 16)
    size = (1536, 1024) if quick else (2048, 1536)
    t0 = time.perf_counter()
    tiles_np, labels = training_tiles(work / "train", n_train, size)
    tiles = torch.from_numpy(tiles_np)
    plan = batches(labels, steps, 32, seed=0)
    cohort = work / "cohort"
    make_synthetic_cohort(cohort, n_slides=n_test, width=size[0], height=size[1], mpp=SLIDE_MPP, seed=7)
    result: dict[str, Any] = {
        "steps": steps,
        "train_tiles": int(len(labels)),
        "train_tumour_tiles": int(labels.sum()),
        "data_s": round(time.perf_counter() - t0, 1),
    }
    for name in ("plip", "conch-v1"):
        t1 = time.perf_counter()
        tiny = register_tiny(name)
        folder = work / name
        image, tower = build(name, tiny, folder)
        scale = train(name, image, tower, tiles, plan, lr=1e-3)
        save_published(name, image, tower, scale, folder)
        metrics = evaluate(tiny, folder, cohort, work / f"stores-{name}", k=5)
        result[name] = {**metrics, "logit_scale": round(float(scale.exp()), 2)}
        result[name]["seconds"] = round(time.perf_counter() - t1, 1)
        if control:  # the same random init, not trained: what colour alone gives through random towers
            image, tower = build(name, tiny, work / f"{name}-untrained")
            scale = torch.tensor(math.log(1 / 0.07))
            save_published(name, image, tower, scale, work / f"{name}-untrained")
            result[f"{name}-untrained"] = evaluate(
                tiny, work / f"{name}-untrained", cohort, work / f"stores-{name}-untrained", k=5
            )
    p, c = result["plip"], result["conch-v1"]
    result["slide_diff"] = round(c["slide_auroc"] - p["slide_auroc"], 4)
    result["tile_diff"] = round(c["tile_auroc"] - p["tile_auroc"], 4)
    result["pass"] = bool(
        result["slide_diff"] >= -MARGIN
        and result["tile_diff"] >= -MARGIN
        and min(p["slide_auroc"], c["slide_auroc"], p["tile_auroc"], c["tile_auroc"]) > FLOOR
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and slides (the test's setting)")
    parser.add_argument("--control", action="store_true", help="also evaluate the untrained models")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.quick, Path(tmp), control=args.control)
    for name in ("plip", "conch-v1", "plip-untrained", "conch-v1-untrained"):
        if name in result:
            r = result[name]
            print(
                f"{name:18s} slide AUROC {r['slide_auroc']:.3f}  tile AUROC {r['tile_auroc']:.3f} "
                f"(all tiles {r['tile_auroc_all']:.3f})  balanced accuracy slide {r['slide_bacc']:.3f} "
                f"tile {r['tile_bacc']:.3f}  logit scale {r.get('logit_scale', '-')}  "
                f"({r['n_slides']} slides)"
            )
    print(f"CONCH - PLIP: slide {result['slide_diff']:+.3f}, tile {result['tile_diff']:+.3f}")
    print(
        f"pass (CONCH within {MARGIN} of PLIP or above, all > {FLOOR}): {result['pass']}  "
        f"[{result['steps']} steps, {result['train_tiles']} training tiles, {result['train_tumour_tiles']} tumour]"
    )
    print(json.dumps(result))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
