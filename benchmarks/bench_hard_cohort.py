"""A hard synthetic cohort that tells MIL aggregators and few-shot methods apart: one table, one command.

    uv run --locked python benchmarks/bench_hard_cohort.py            # the full table: 96 patients, 20 epochs
    uv run --locked python benchmarks/bench_hard_cohort.py --quick    # 64 patients, 10 epochs, 3 draws
    uv run --locked python benchmarks/bench_hard_cohort.py --seeds 0 2 3  # three cohorts, mean +- sd per row

Each row is printed as soon as it is done (zero-shot and few-shot first, TransMIL last: on a CPU it costs
about as much as all other aggregators together), then the whole table. Rows give wall and CPU seconds.

The easy demo cohort (``slidescope demo``) is solved by every method at AUROC 1.000. This one is not:

* **sparse tumour**: a tumour slide has 0.5-5 % tumour tiles (log-uniform, at least one tile: 1 to 12 of
  its 120-240 tiles, so 0.4-5 %);
* **four tumour morphologies** (one per patient): ``solid`` (tiles >= 70 % tumour), ``margin`` (tiles
  15-60 % tumour: infiltrating edge mixed with stroma), ``small-cell`` (a 320 px window around a solid
  tile shrunk to 224 px: smaller, more crowded nuclei) and ``hypochromatic`` (solid tiles with the
  haematoxylin of colour deconvolution scaled by 0.6: pale nuclei);
* **four sites**, each with its own stain and scanner: haematoxylin and eosin optical densities scaled
  (``skimage.color.rgb2hed``/``hed2rgb``), Gaussian blur (focus) and a brightness gain, applied to
  every tile of that site before it is embedded;
* **site-confounded labels and split**: the tumour prevalence differs by site (70/60/40/30 %) and
  the cross-validation is site-preserving (``train(site_preserving=True)``: each fold holds out one
  whole site, so a model that learnt a site's stain as a shortcut pays for it on the held-out site);
  patients never straddle folds (one slide per patient);
* **label noise**: 8 % of the slide labels are flipped; the metrics are computed against these
  observed labels (as a user would), and the tile ground truth stays true; the table also gives the
  AUROC against the true tumour status;
* **low-grade tumour** (graded difficulty, at the composition step): ``he-descriptor`` separates the
  rendered tumour tiles from normal ones perfectly, so each tumour tile ``t`` of a bag is moved towards
  a random normal tile ``n`` of its site, ``t' = n + lam (t - n)``, with one grade ``lam`` per slide
  (log-uniform in ``LOW_GRADE`` = 0.25-0.8) times a per-tile jitter (``GRADE_JITTER``, x0.7-1.3): the
  tumour signal per tile is weak and differs between slides;
* **tumour mimics in negative slides** (lymphoid aggregates, reactive atypia): in half of the negative
  slides (``MIMIC_SLIDES``) 1-3 normal tiles (``MIMIC_TILES``) are moved partly towards a random tumour
  tile of their site (any morphology), ``n' = n + mu (t - n)``, ``mu`` log-uniform in ``MIMIC_LAMBDA``
  = 0.1-0.5 per tile. The ranges of ``lam`` and ``mu`` overlap, so a rule on the single most
  tumour-like tile (max pooling) gets false positives on mimic slides and misses low-grade slides,
  while a model that weighs several tiles still has a signal.

The difficulty knobs were tuned **once, on cohort seed 1** (``--seed 1``, same tile pool, rows abmil,
max and mean only; three settings tried: lam 0.03-0.3 / mu 0.03-0.2 gave ABMIL 0.39 vs truth, lam 0.1-0.5
/ mu 0.05-0.4 gave 0.55, lam 0.25-0.8 / mu 0.1-0.5 gave ABMIL 0.83, max 0.74, mean 0.64) and then
frozen; the reported table uses the default seed 0, which was not used for tuning. ``--pool-seed``
(default 0) seeds the rendered tile pool separately so that other cohort seeds reuse the cached pool.

How the cohort is made (**a choice, for the 15-minute budget**): the honest path image -> tiles ->
encoder -> store is kept at the tile level, but bags are composed in embedding space. A few
synthetic slides are rendered once with :func:`slidescope.synthetic.make_synthetic_slide` (real JPEG-tiled
TIFFs), cut into 224 px tiles at 0.5 µm/px, labelled by the slide's tumour mask, turned into the
morphologies above, restained for each site and embedded with the weight-free ``he-descriptor``
encoder; each slide of the cohort is then a bag of those real tile embeddings (normal tiles of its
site plus ``k`` tumour tiles of its site and morphology) written to a slidescope store. Tiles are
reused across bags (a pool of a few hundred per kind and site), so the bags are not independent
images; rendering ~160 full slides and extracting them would take far longer than the budget. The
tile pool is cached in ``OUT/pool.npz`` (a rerun with the same settings reuses it).

Rows: every registered aggregator (``slidescope.mil.aggregators.list_aggregators()``), trained with
the public :func:`slidescope.mil.train.train` under one recipe for all (AdamW lr 1e-3, batch 4,
20 epochs, early-stopping patience 8, default hyperparameters of each aggregator except TransMIL
(below), site-preserving folds), with the pooled out-of-fold AUROC and its 95 % bootstrap CI
(patients resampled), balanced accuracy and tile localisation (per tumour slide, the AUROC of the tile scores that
:func:`slidescope.mil.score.score` returns, from the fold model that never saw the slide, against
the true tumour tiles; the mean over slides). Few-shot rows: the functions of
:mod:`slidescope.vlm.fewshot` fitted on **mean-pooled tile embeddings as slide embeddings** (no slide
encoder is involved), k support slides per class drawn from the whole cohort, scored on the others,
AUROC mean and standard deviation over draws.

Zero-shot row and joint-space few-shot table (as ``slidescope demo`` does): :func:`slide_text_model`
pretrains slidescope's small slide-text model (:func:`slidescope.vlm.pretrain.pretrain`, its defaults: 60
epochs, batch 32, early stopping on a patient-level validation split) on a **development cohort** that is
never evaluated: ``DEV_PATIENTS`` = 128 patients made by the same generator (same sites, difficulty and
prevalence) from their **own** tile pool (other rendered slides: pool seed ``--pool-seed + 100``) and other
draws (cohort seed ``seed + 1000``), with short reports stating each slide's true tumour status, morphology
and extent (and reactive mimics on negative slides; :func:`dev_report`). The zero-shot row is
:func:`slidescope.vlm.api.zero_shot` with ``PROMPTS`` (report words in phrasings that never occur in the
reports; checked) on the evaluated cohort's stores, every slide scored, nothing of that cohort trained on:
AUROC with its 95 % bootstrap CI (:func:`slidescope.metrics.bootstrap_ci`) and balanced accuracy at
P(tumour) >= 0.5. **Not a like-for-like comparison with the aggregator rows**: the slide-text model learnt
from 128 development slides (all four sites) with correct reports, each aggregator fold from the 72 slides
of three sites with 8 % flipped labels, the held-out site's stain unseen. The joint-space few-shot table is
:func:`slidescope.vlm.api.few_shot` on that model's slide embeddings (GDA and Tip-Adapter blend in the
zero-shot prior of ``PROMPTS``, hyperparameters chosen automatically), same draws as above. The
mean-pooled table is kept as the baseline without any slide model.

Measured (2 shared cores, one thread, load ~3-5; ``--seeds 0 2 3`` from a fresh ``--out``): seed 0 took 639 s
wall (both tile pools built, 56 s each; slide-text pretraining 87 s), seeds 2 and 3 434 s and 633 s with
the pools cached; 28 min 32 s for the three. Seed 0 (its aggregator rows are identical to the table
before the zero-shot row was added): zero-shot 0.831 (0.748-0.905), vs the true status 0.902; aggregators
vs the true status 0.63 (TransMIL) to 0.83 (CLAM-MB); max pooling 0.785 with tile localisation 0.64
(ABMIL, CLAM, DTFD 0.97-0.98). Few-shot on the joint-space embeddings: GDA and Tip-Adapter 0.78-0.84 (they
start from the zero-shot prior), the other methods 0.66-0.83 (1-16 shots); on mean-pooled embeddings
0.50-0.64. Across seeds 0, 2, 3 (AUROC vs the observed label, mean +- sd): zero-shot 0.806 +- 0.021,
DTFD 0.778 +- 0.028, CLAM-SB 0.768 +- 0.060, CLAM-MB 0.764 +- 0.041, **max 0.764 +- 0.048**, pl-maxpool
0.758 +- 0.093, ABMIL 0.756 +- 0.082, DSMIL 0.754 +- 0.048, ACMIL 0.747 +- 0.078, mean 0.671 +- 0.087,
TransMIL 0.585 +- 0.007. Max pooling is **not** below the ABMIL family on this cohort at slide level (only
its tile localisation is lower: 0.64 / 0.86 / 0.79 against 0.97-0.995 for ABMIL, CLAM and DTFD); the
spread between seeds of one row (up to 0.19, pl-maxpool) is as large as the spread between rows, so only
TransMIL (width 128) at the bottom, the zero-shot row (0.79-0.83) and the tile localisation of the
attention models are stable; the slide-level order of the other rows is not.

TransMIL deviation (**for the 15-minute CPU budget**, printed under the table): ``embed_dim=128``
instead of 512 (``MODEL_KWARGS``; heads stay 8, landmarks ``embed_dim // 2`` = 64); with the default
width it costs about 18 CPU-minutes here, more than all the other rows together. The tile pool and
the bags are still built from one fixed set of rendered slides (tiles are reused across bags).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TILE = 224
MORPHOLOGIES = ("solid", "margin", "small-cell", "hypochromatic")
#: per site: (haematoxylin OD scale, eosin OD scale, blur sigma in px, brightness gain)
SITES = ((1.0, 1.0, 0.0, 1.0), (1.25, 0.8, 0.8, 0.97), (0.8, 1.3, 0.0, 1.04), (1.1, 1.1, 1.4, 0.93))
PREVALENCE = (0.7, 0.6, 0.4, 0.3)  # tumour prevalence by site: site and label are confounded
LABEL_NOISE = 0.08
TUMOUR_FRACTION = (0.005, 0.05)
BAG_SIZE = (120, 240)
RECIPE = {"epochs": 20, "batch_size": 4, "lr": 1e-3, "early_stopping_patience": 8}
#: per-aggregator deviations from the defaults, for the 15-minute CPU budget (printed under the table)
MODEL_KWARGS = {"transmil": {"embed_dim": 128}}
# difficulty knobs of the composition step (tuned once on cohort seed 1, see the module docstring)
LOW_GRADE = (0.25, 0.8)  # per tumour slide, log-uniform: t' = n + lam (t - n) towards a random normal tile n
GRADE_JITTER = (0.7, 1.3)  # per tile: lam_tile = lam_slide * uniform(GRADE_JITTER)
MIMIC_SLIDES = 0.5  # fraction of negative slides that hold tumour mimics
MIMIC_TILES = (1, 3)  # mimic tiles in such a slide (uniform, inclusive)
MIMIC_LAMBDA = (0.1, 0.5)  # per mimic tile, log-uniform: n' = n + mu (t - n) towards a random tumour tile t
SHOTS = (1, 2, 4, 8, 16)
# the slide-text model for the zero-shot row: pretrained on a development cohort that is never evaluated
DEV_POOL_SEED = 100  # added to --pool-seed: its tile pool comes from other rendered slides
DEV_SEED = 1000  # added to the cohort seed: other patients, other bags
DEV_PATIENTS = 128
PRETRAIN = {"epochs": 60, "batch_size": 32, "lr": 1e-3}  # slidescope.vlm.pretrain defaults, as the demo
#: what the development reports say about a tumour slide's morphology (and in what words)
REPORT_MORPHOLOGY = {
    "solid": ("invasive carcinoma growing in solid sheets", "carcinoma forming solid nests of tumour cells"),
    "margin": (
        "infiltrating carcinoma at the edge of the stroma",
        "carcinoma infiltrating between stromal fibres",
    ),
    "small-cell": ("small cell carcinoma with crowded small nuclei", "carcinoma of small crowded cells"),
    "hypochromatic": ("carcinoma with pale vesicular nuclei", "invasive carcinoma with pale nuclei"),
}
REPORT_POSITIVE = ("Positive for malignancy.", "Tumour is present.", "Malignant.")
REPORT_EXTENT = ("{m} in a single microscopic focus.", "{m} in a few small foci.", "{m} in several foci.")
REPORT_NEGATIVE = (
    "Benign fibrous stroma. Negative for malignancy.",
    "Benign stroma only. No tumour is seen.",
    "Unremarkable stroma with regular nuclei. No carcinoma is identified.",
)
REPORT_MIMIC = ("A reactive lymphoid aggregate is noted.", "Focal reactive atypia, benign.")
REPORT_FILLER = ("Core biopsy.", "The specimen is adequate.", "Sections of an excision.")
#: zero-shot prompts: words of the reports' vocabulary in phrasings that never occur in them (checked)
PROMPTS = {
    "normal": ["benign tissue without tumour", "no malignancy"],
    "tumour": ["malignant tumour cells", "carcinoma cells"],
}


@dataclass
class Settings:
    n_render: int  # synthetic slides rendered for the tile pool
    render_side: int  # their side in pixels (0.5 µm/px)
    pool_normal: int  # normal tiles kept per site
    pool_tumour: int  # tumour tiles kept per morphology and site
    n_patients: int
    folds: int
    draws: int  # few-shot draws per shot count
    bootstrap: int
    epochs: int = RECIPE["epochs"]


FULL = Settings(
    n_render=6,
    render_side=4480,
    pool_normal=300,
    pool_tumour=60,
    n_patients=96,
    folds=4,
    draws=10,
    bootstrap=1000,
)
QUICK = Settings(
    n_render=3,
    render_side=3584,
    pool_normal=160,
    pool_tumour=30,
    n_patients=64,
    folds=4,
    draws=3,
    bootstrap=200,
    epochs=10,
)


# -- the tile pool: synthetic slides -> tiles -> morphologies -> site stains -> he-descriptor ----------------------


def _render_tiles(s: Settings, seed: int, tmp: Path) -> dict[str, np.ndarray]:
    """uint8 (n, 224, 224, 3) tiles per kind: ``normal`` and the morphologies (before site staining)."""
    import tifffile
    from PIL import Image
    from skimage.color import hed2rgb, rgb2hed

    from slidescope.synthetic import make_synthetic_slide

    rng = np.random.default_rng(seed)
    kinds: dict[str, list[np.ndarray]] = {k: [] for k in ("normal", *MORPHOLOGIES)}
    for i in range(s.n_render):
        sl = make_synthetic_slide(
            tmp / f"pool{i}.svs",
            width=s.render_side,
            height=s.render_side,
            tumour=True,
            seed=seed * 1000 + i,
            n_levels=1,
        )
        with tifffile.TiffFile(sl.path) as tf:
            img = tf.pages[0].asarray()
        f = int(round(sl.mask_downsample))
        n = s.render_side // TILE
        for r in range(n):
            for c in range(n):
                ys, xs = (
                    slice(r * TILE // f, -(-(r + 1) * TILE // f)),
                    slice(c * TILE // f, -(-(c + 1) * TILE // f)),
                )
                tissue, tumour = sl.tissue_mask[ys, xs].mean(), sl.tumour_mask[ys, xs].mean()
                tile = img[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE]
                if tissue >= 0.6 and tumour == 0:
                    kinds["normal"].append(tile)
                elif 0.15 <= tumour < 0.6:
                    kinds["margin"].append(tile)
                elif tumour >= 0.7:
                    kinds["solid"].append(tile)
                    kinds["hypochromatic"].append(tile)
                    y0, x0 = r * TILE + TILE // 2 - 160, c * TILE + TILE // 2 - 160
                    if 0 <= y0 and 0 <= x0 and y0 + 320 <= img.shape[0] and x0 + 320 <= img.shape[1]:
                        win = Image.fromarray(img[y0 : y0 + 320, x0 : x0 + 320]).resize(
                            (TILE, TILE), Image.BILINEAR
                        )
                        kinds["small-cell"].append(np.asarray(win))
        sl.path.unlink()
    out = {}
    for k, tiles in kinds.items():
        if not tiles:
            raise RuntimeError(f"no {k} tiles in {s.n_render} rendered slides; render more or larger slides")
        cap = s.pool_normal if k == "normal" else s.pool_tumour
        pick = rng.permutation(len(tiles))[:cap]
        out[k] = np.stack([tiles[j] for j in pick])
    hed = rgb2hed(out["hypochromatic"])  # pale nuclei: less haematoxylin
    hed[..., 0] *= 0.6
    out["hypochromatic"] = (np.clip(hed2rgb(hed), 0, 1) * 255).round().astype(np.uint8)
    return out


def _stain(tiles: np.ndarray, site: tuple[float, float, float, float]) -> np.ndarray:
    """A site's stain and scanner: H/E optical densities scaled, focus blur, brightness gain."""
    from scipy.ndimage import gaussian_filter
    from skimage.color import hed2rgb, rgb2hed

    h, e, blur, gain = site
    if (h, e, blur, gain) == (1.0, 1.0, 0.0, 1.0):
        return tiles
    hed = rgb2hed(tiles)
    hed[..., 0] *= h
    hed[..., 1] *= e
    rgb = np.clip(hed2rgb(hed), 0, 1)
    if blur > 0:
        rgb = gaussian_filter(rgb, sigma=(0, blur, blur, 0))
    return (np.clip(rgb * gain, 0, 1) * 255).round().astype(np.uint8)


def tile_pool(s: Settings, seed: int, out: Path) -> dict[tuple[int, str], np.ndarray]:
    """{(site, kind): float32 (n, 98) he-descriptor embeddings}, cached in ``out/pool.npz``."""
    import torch

    from slidescope.features.encoders import create_encoder

    cache = out / "pool.npz"
    pool_settings = {k: getattr(s, k) for k in ("n_render", "render_side", "pool_normal", "pool_tumour")}
    key = json.dumps({"settings": pool_settings, "seed": seed, "sites": SITES, "v": 1}, sort_keys=True)
    if cache.is_file():
        z = np.load(cache)
        if str(z["key"]) == key:
            return {(int(k.split("|")[0]), k.split("|")[1]): z[k] for k in z.files if k != "key"}
    with tempfile.TemporaryDirectory() as tmp:
        tiles = _render_tiles(s, seed, Path(tmp))
    enc = create_encoder("he-descriptor", device="cpu")
    pool = {}
    with torch.no_grad():
        for si, site in enumerate(SITES):
            for kind, t in tiles.items():
                pool[(si, kind)] = enc(torch.from_numpy(np.ascontiguousarray(_stain(t, site)))).numpy()
    np.savez(cache, key=np.array(key), **{f"{si}|{k}": v for (si, k), v in pool.items()})
    return pool


# -- the cohort: bags composed from the pool, written as stores ---------------------------------------------------


def _write_store(path: Path, emb: np.ndarray) -> None:
    from slidescope.features.encoders import get_encoder_config
    from slidescope.features.store import CacheKey, SlideStore

    n = len(emb)
    side = int(np.ceil(np.sqrt(n)))
    coords = (np.stack([np.arange(n) % side, np.arange(n) // side], 1) * TILE).astype(np.int64)
    store = SlideStore.create_or_open(
        path,
        slide_attrs={"fingerprint": path.name, "mpp": [0.5, 0.5]},
        tiling={"tile_size": TILE, "mpp": 0.5, "extent": [TILE, TILE]},
        coords=coords,
        tissue_fraction=np.ones(n, np.float32),
    )
    key = CacheKey(
        encoder=get_encoder_config("he-descriptor").to_dict(),
        weights_digest=None,
        precision="fp32",
        dtype="float32",
        package_version="bench-hard-cohort",
    )
    writer = store.prepare_embeddings(key, embed_dim=emb.shape[1])
    for c in range(-(-n // writer.chunk_rows)):
        writer.write_chunk(c, emb[c * writer.chunk_rows : (c + 1) * writer.chunk_rows])
    writer.finish()


def make_cohort(pool: dict, s: Settings, seed: int, out: Path, prefix: str = "") -> list[dict]:
    """Write ``out/stores`` and ``out/manifest.csv``; return one record per slide (with its tile truth).

    ``prefix`` starts the slide and patient names (``H000``/``P000``; the development cohort's are ``DH000``/
    ``DP000``); the draws do not depend on it."""
    rng = np.random.default_rng([seed, 12])
    stores = out / "stores"
    shutil.rmtree(stores, ignore_errors=True)
    stores.mkdir(parents=True)
    rows = []
    for p in range(s.n_patients):
        site = p % len(SITES)
        tumour = bool(rng.random() < PREVALENCE[site])
        n = int(rng.integers(BAG_SIZE[0], BAG_SIZE[1] + 1))
        k, morph = 0, ""
        if tumour:
            morph = MORPHOLOGIES[int(rng.integers(len(MORPHOLOGIES)))]
            frac = float(np.exp(rng.uniform(*np.log(TUMOUR_FRACTION))))
            k = max(1, int(round(frac * n)))
        normal = pool[(site, "normal")]
        emb = normal[rng.choice(len(normal), n - k, replace=n - k > len(normal))]
        truth = np.zeros(n, bool)
        grade, mimics = float("nan"), 0
        if k:  # low-grade tumour: each tumour tile moved towards a random normal tile of its site
            t = pool[(site, morph)]
            t = t[rng.choice(len(t), k, replace=k > len(t))]
            base = normal[rng.integers(len(normal), size=k)]
            grade = float(np.exp(rng.uniform(*np.log(LOW_GRADE))))
            lam = grade * rng.uniform(*GRADE_JITTER, size=(k, 1))
            emb = np.concatenate([emb, base + lam * (t - base)])
            truth[n - k :] = True
        elif rng.random() < MIMIC_SLIDES:  # tumour mimics: a few normal tiles moved partly towards tumour
            mimics = int(rng.integers(MIMIC_TILES[0], MIMIC_TILES[1] + 1))
            idx = rng.choice(n, mimics, replace=False)
            kinds = [MORPHOLOGIES[j] for j in rng.integers(len(MORPHOLOGIES), size=mimics)]
            t = np.stack([pool[(site, kd)][rng.integers(len(pool[(site, kd)]))] for kd in kinds])
            mu = np.exp(rng.uniform(*np.log(MIMIC_LAMBDA), size=(mimics, 1)))
            emb[idx] = emb[idx] + mu * (t - emb[idx])
        order = rng.permutation(n)
        emb, truth = emb[order].astype(np.float32), truth[order]
        label = tumour if rng.random() >= LABEL_NOISE else not tumour
        name = f"{prefix}H{p:03d}"
        _write_store(stores / f"{name}.zarr", emb)
        rows.append(
            {
                "slide": f"slides/{name}.svs",
                "label": "tumour" if label else "normal",
                "patient": f"{prefix}P{p:03d}",
                "site": f"site{site}",
                "true_tumour": tumour,
                "morphology": morph,
                "k": k,
                "n": n,
                "grade": grade,
                "mimics": mimics,
                "truth": truth,
                "mean": emb.mean(0),
            }
        )
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide", "label", "patient", "site"])
        w.writerows([[r["slide"], r["label"], r["patient"], r["site"]] for r in rows])
    return rows


# -- the methods ------------------------------------------------------------------------------------------------


def run_aggregator(name: str, rows: list[dict], s: Settings, seed: int, out: Path) -> dict:
    from slidescope.metrics import auroc, bootstrap_ci
    from slidescope.mil.score import score
    from slidescope.mil.train import train

    run_dir = out / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    res = train(
        out / "manifest.csv",
        store=out / "stores",
        encoder="he-descriptor",
        out=run_dir,
        model=name,
        folds=s.folds,
        site_preserving=True,
        seed=seed,
        bootstrap=s.bootstrap,
        model_kwargs=MODEL_KWARGS.get(name),
        **{**RECIPE, "epochs": s.epochs},
    )
    by_name = {Path(r["slide"]).stem: r for r in rows}
    with open(res.oof_csv, newline="") as fh:
        oof = list(csv.DictReader(fh))
    # AUROC against the true tumour status (the labels train() saw are 8 % noisy)
    truth = np.array([by_name[o["slide"]]["true_tumour"] for o in oof], dtype=int)
    prob = np.array([float(o["prob_tumour"]) for o in oof])
    vs_truth = bootstrap_ci(truth, prob, "auroc", n=s.bootstrap, seed=seed)
    # localisation: tile scores of each truly tumorous slide, from the fold model that never saw it
    loc = []
    for fold in sorted({o["fold"] for o in oof}):
        names = [o["slide"] for o in oof if o["fold"] == fold and by_name[o["slide"]]["true_tumour"]]
        if not names:
            continue
        scored = score(
            [run_dir / f"fold{fold}" / "best.ckpt"],
            [out / "stores" / f"{n}.zarr" for n in names],
            write_scores=False,
        )
        for sc, n in zip(scored, names, strict=True):
            loc.append(auroc(by_name[n]["truth"].astype(int), np.asarray(sc.attention, dtype=np.float64)))
    return {
        "auroc": res.pooled["auroc"],
        "ci": res.pooled_ci["auroc"],
        "bacc": res.pooled["balanced_accuracy"],
        "truth": vs_truth,
        "loc": float(np.nanmean(loc)) if loc else float("nan"),
        "seconds": time.perf_counter() - t0,
        "cpu": time.process_time() - c0,
    }


def run_few_shot(rows: list[dict], s: Settings, seed: int) -> dict[str, dict[int, tuple[float, float]]]:
    """{method: {shots: (mean AUROC, sd over draws)}} on mean-pooled tile embeddings."""
    import torch

    from slidescope.errors import InvalidParameterError
    from slidescope.metrics import auroc
    from slidescope.vlm import fewshot

    X = torch.tensor(np.stack([r["mean"] for r in rows]), dtype=torch.float64)
    y = np.array([r["label"] == "tumour" for r in rows], dtype=int)
    methods = [
        m
        for m in ("linear_probe", "simpleshot", "simpleshot_cosine", "knn", "gda", "tip_adapter")
        if hasattr(fewshot, m)
    ]
    table: dict[str, dict[int, tuple[float, float]]] = {}
    for m in methods:
        fit = getattr(fewshot, m)
        table[m] = {}
        for k in SHOTS:
            vals = []
            for d in range(s.draws):
                rng = np.random.default_rng([seed, k, d])
                sup = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in (0, 1)])
                test = np.setdiff1d(np.arange(len(y)), sup)
                try:
                    model = fit(X[sup], torch.as_tensor(y[sup]), n_classes=2)
                    proba = model.predict_proba(X[test])
                    vals.append(auroc(y[test], np.asarray(proba.detach().cpu(), dtype=np.float64)))
                except InvalidParameterError:  # refused (GDA without a prior at 1 shot): "n/a" in the table
                    vals.append(float("nan"))
                except Exception as err:  # noqa: BLE001 - a method mid-edit elsewhere: report, do not stop the table
                    print(f"  few-shot {m} {k}-shot failed: {type(err).__name__}: {err}", file=sys.stderr)
                    vals.append(float("nan"))
            table[m][k] = (
                float(np.nanmean(vals)) if not np.isnan(vals).all() else float("nan"),
                float(np.nanstd(vals)) if not np.isnan(vals).all() else float("nan"),
            )
    return table


# -- zero-shot: a slide-text model pretrained on a development cohort's reports ----------------------------------


def dev_report(row: dict, rng: np.random.Generator) -> str:
    """A short report of a development slide: its true tumour status, morphology and extent (and mimics)."""
    if row["true_tumour"]:
        frac = row["k"] / row["n"]
        extent = REPORT_EXTENT[0 if frac < 0.01 else 1 if frac < 0.025 else 2]
        morph = str(rng.choice(REPORT_MORPHOLOGY[row["morphology"]]))
        parts = [extent.format(m=morph[0].upper() + morph[1:]), str(rng.choice(REPORT_POSITIVE))]
    else:
        parts = [str(rng.choice(REPORT_NEGATIVE))]
        if row["mimics"]:
            parts.append(str(rng.choice(REPORT_MIMIC)))
    if rng.random() < 0.5:
        parts.insert(0, str(rng.choice(REPORT_FILLER)))
    return " ".join(parts)


def slide_text_model(s: Settings, seed: int, pool_seed: int, out: Path) -> tuple[Path, dict]:
    """Pretrain the small slide-text model on a development cohort; ``(model folder, facts)``, cached.

    The development cohort is made as the evaluated one (same generator and difficulty) from its **own** tile pool
    (other rendered slides, ``pool_seed + DEV_POOL_SEED``) with other draws (``seed + DEV_SEED``) and
    ``DEV_PATIENTS`` patients; its reports state the true tumour status, the morphology and the extent
    (:func:`dev_report`). :func:`slidescope.vlm.pretrain.pretrain` trains on them as the demo does. Nothing of the
    evaluated cohort (tiles, bags, labels) is seen.
    """
    import dataclasses

    from slidescope.vlm.pretrain import pretrain

    dev = out / "dev"
    dev.mkdir(parents=True, exist_ok=True)
    run = dev / f"slidetext-seed{seed}"
    key = json.dumps(
        {
            "settings": dataclasses.asdict(s),
            "seed": seed,
            "pool_seed": pool_seed,
            "dev": DEV_PATIENTS,
            "pretrain": PRETRAIN,
            "reports": [
                REPORT_MORPHOLOGY,
                REPORT_POSITIVE,
                REPORT_EXTENT,
                REPORT_NEGATIVE,
                REPORT_MIMIC,
                REPORT_FILLER,
            ],
            "v": 1,
        },
        sort_keys=True,
    )
    if (run / "key.json").is_file() and (run / "key.json").read_text() == key and (run / "model").is_dir():
        facts = json.loads((run / "facts.json").read_text())
        facts["reused"] = True
        return run / "model", facts
    t0 = time.perf_counter()
    pool = tile_pool(s, pool_seed + DEV_POOL_SEED, dev)
    rows = make_cohort(
        pool, dataclasses.replace(s, n_patients=DEV_PATIENTS), seed + DEV_SEED, dev, prefix="D"
    )
    rng = np.random.default_rng([seed, 34])
    reports = [dev_report(r, rng) for r in rows]
    corpus = " ".join(reports).lower()
    seen = [ph for phs in PROMPTS.values() for ph in phs if ph.lower() in corpus]
    if seen:
        raise RuntimeError(f"zero-shot prompts occur in the development reports: {seen}")
    manifest = dev / "reports.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide", "patient", "label", "report"])
        w.writerows(
            [
                [r["slide"], r["patient"], "tumour" if r["true_tumour"] else "normal", rep]
                for r, rep in zip(rows, reports, strict=True)
            ]
        )
    shutil.rmtree(run, ignore_errors=True)
    res = pretrain(
        manifest,
        store=dev / "stores",
        encoder="he-descriptor",
        out=run,
        seed=seed,
        accelerator="cpu",
        **PRETRAIN,
    )
    facts = {
        "slides": len(rows),
        "tumour": int(sum(r["true_tumour"] for r in rows)),
        "summary": res.summary(),
        "seconds": time.perf_counter() - t0,
        "example": reports[int(np.argmax([r["true_tumour"] for r in rows]))],
    }
    (run / "facts.json").write_text(json.dumps(facts))
    (run / "key.json").write_text(key)
    facts["reused"] = False
    return run / "model", facts


def joint_space(model_dir: Path, rows: list[dict], out: Path):
    """(model, joint-space slide embeddings (B, d), zero-shot P(tumour) (B,)) of the evaluated cohort's stores."""
    from slidescope.vlm.api import slide_embeddings, zero_shot
    from slidescope.vlm.model import SlideTextModel

    net = SlideTextModel.load(model_dir)
    stores = [out / "stores" / f"{Path(r['slide']).stem}.zarr" for r in rows]
    _, X = slide_embeddings(stores, model=net, encoder="he-descriptor", write=False)
    zs = zero_shot(stores, PROMPTS, model=net, encoder="he-descriptor", write=False)
    return net, X, np.array([z.probs["tumour"] for z in zs])


def run_zero_shot(p_tumour: np.ndarray, rows: list[dict], s: Settings, seed: int) -> dict:
    from slidescope.metrics import balanced_accuracy, bootstrap_ci

    y = np.array([r["label"] == "tumour" for r in rows], dtype=int)
    truth = np.array([r["true_tumour"] for r in rows], dtype=int)
    ci = bootstrap_ci(y, p_tumour, "auroc", n=s.bootstrap, seed=seed)
    return {
        "auroc": ci.estimate,
        "ci": (ci.low, ci.high),
        "bacc": balanced_accuracy(y, (p_tumour >= 0.5).astype(int)),
        "truth": bootstrap_ci(truth, p_tumour, "auroc", n=s.bootstrap, seed=seed),
        "loc": float("nan"),
    }


def run_few_shot_joint(
    net, X, rows: list[dict], s: Settings, seed: int
) -> dict[str, dict[int, tuple[float, float]]]:
    """As :func:`run_few_shot`, through :func:`slidescope.vlm.api.few_shot` on the slide-text model's joint-space
    embeddings; GDA and Tip-Adapter blend in the zero-shot prior of ``PROMPTS`` (their automatic tuning)."""
    from slidescope.metrics import auroc
    from slidescope.vlm.api import FEW_SHOT_METHODS, few_shot

    labels = np.array([r["label"] for r in rows])
    y = (labels == "tumour").astype(int)
    table: dict[str, dict[int, tuple[float, float]]] = {}
    for m in FEW_SHOT_METHODS:
        table[m] = {}
        for k in SHOTS:
            vals = []
            for d in range(s.draws):
                rng = np.random.default_rng([seed, k, d])
                sup = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in (0, 1)])
                test = np.setdiff1d(np.arange(len(y)), sup)
                res = few_shot(
                    X[sup],
                    list(labels[sup]),
                    X[test],
                    model=net,
                    encoder="he-descriptor",
                    method=m,
                    classes=PROMPTS,
                    seed=d,
                )
                vals.append(auroc(y[test], res.probs[:, res.class_names.index("tumour")].double().numpy()))
            table[m][k] = (float(np.mean(vals)), float(np.std(vals)))
    return table


# -- the table --------------------------------------------------------------------------------------------------


def _row(name: str, r: dict) -> str:
    t = r["truth"]
    loc = "-" if np.isnan(r["loc"]) else f"{r['loc']:.3f}"
    return (
        f"| {name} | {r['auroc']:.3f} ({r['ci'][0]:.3f}-{r['ci'][1]:.3f}) | {t.estimate:.3f} ({t.low:.3f}-"
        f"{t.high:.3f}) | {r['bacc']:.3f} | {loc} | {r['seconds']:.0f} / {r['cpu']:.0f} s |"
    )


def _few_table(title: str, few: dict) -> None:
    print()
    print(title)
    print()
    print("| method | " + " | ".join(f"{k}-shot" for k in SHOTS) + " |")
    print("|---|" + "---|" * len(SHOTS))
    for m, by_k in few.items():
        cells = (
            "n/a (refused)" if np.isnan(by_k[k][0]) else f"{by_k[k][0]:.3f} ({by_k[k][1]:.3f})" for k in SHOTS
        )
        print(f"| {m} | " + " | ".join(cells) + " |")


def run_seed(args: argparse.Namespace, s: Settings, seed: int) -> dict:
    """Build the cohort of ``seed``, run every row, print the tables; returns the results."""
    from slidescope.mil.aggregators import list_aggregators

    out = args.out
    t_all, c_all = time.perf_counter(), time.process_time()
    t0 = time.perf_counter()
    pool = tile_pool(s, args.pool_seed, out)
    sizes = {k: len(v) for (si, k), v in pool.items() if si == 0}
    print(
        f"[seed {seed}] tile pool: {sizes} tiles per site x {len(SITES)} sites ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    t0 = time.perf_counter()
    rows = make_cohort(pool, s, seed, out)
    n_t = sum(r["true_tumour"] for r in rows)
    flipped = sum((r["label"] == "tumour") != r["true_tumour"] for r in rows)
    fr = [r["k"] / r["n"] for r in rows if r["true_tumour"]]
    print(
        f"cohort: {len(rows)} slides/patients, {n_t} with tumour (tumour tiles {100 * min(fr):.1f}-"
        f"{100 * max(fr):.1f} %), {flipped} labels flipped, {len(SITES)} sites ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    grades = [r["grade"] for r in rows if r["true_tumour"]]
    print(
        f"difficulty: tumour grade lambda {min(grades):.2f}-{max(grades):.2f} (median {np.median(grades):.2f}); "
        f"{sum(r['mimics'] > 0 for r in rows)} of {len(rows) - n_t} negative slides hold "
        f"{sum(r['mimics'] for r in rows)} mimic tiles",
        flush=True,
    )

    results: dict[str, dict] = {}
    few_joint: dict = {}
    if not args.no_zero_shot:
        t0, c0 = time.perf_counter(), time.process_time()
        model_dir, facts = slide_text_model(s, seed, args.pool_seed, out)
        print(
            f"slide-text model: {'reused' if facts['reused'] else 'pretrained'} on {facts['slides']} development "
            f"slides ({facts['tumour']} with tumour; own tile pool, pool seed {args.pool_seed + DEV_POOL_SEED}, "
            f"cohort seed {seed + DEV_SEED}), {facts['summary']}; a report: {facts['example']!r}",
            flush=True,
        )
        net, X, p_tumour = joint_space(model_dir, rows, out)
        zs = run_zero_shot(p_tumour, rows, s, seed)
        zs.update(seconds=time.perf_counter() - t0, cpu=time.process_time() - c0)
        results["zero-shot"] = zs
        print("  " + _row("zero-shot", zs), flush=True)
        t0 = time.perf_counter()
        if not args.no_few_shot:
            few_joint = run_few_shot_joint(net, X, rows, s, seed)
            print(f"few-shot on joint-space embeddings done ({time.perf_counter() - t0:.0f} s)", flush=True)
    t0 = time.perf_counter()
    few = {} if args.no_few_shot else run_few_shot(rows, s, seed)
    t_few = time.perf_counter() - t0
    print(f"few-shot on mean-pooled embeddings done ({t_few:.0f} s)", flush=True)
    # TransMIL last: by far the slowest on a CPU (its rows come last if the budget runs out)
    names = (
        sorted(list_aggregators(), key=lambda m: m == "transmil")
        if args.models is None
        else [m for m in args.models.split(",") if m and m != "none"]
    )
    for name in names:
        try:
            results[name] = run_aggregator(name, rows, s, seed, out)
            print("  " + _row(name, results[name]), flush=True)
        except Exception as err:  # noqa: BLE001 - one broken aggregator must not hide the others
            results[name] = {"error": f"{type(err).__name__}: {err}"}
            print(f"  {name}: FAILED {results[name]['error']}", flush=True)

    print()
    print(
        f"Hard synthetic cohort ({'--quick' if args.quick else 'full'}, seed {seed}): {len(rows)} patients, "
        f"{len(SITES)} sites, tumour tiles 0.5-5 %, {int(100 * LABEL_NOISE)} % label noise, "
        f"{s.folds}-fold site-preserving CV (zero-shot: all slides, no training on this cohort)"
    )
    print()
    print(
        "| row | AUROC (95% CI) | AUROC vs true status (95% CI) | balanced acc. | tile localisation AUROC "
        "| wall / CPU time |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(_row(name, r) if "error" not in r else f"| {name} | failed: {r['error'][:60]} | | | | |")
    for name, kw in MODEL_KWARGS.items():
        if name in results:
            print(f"\n{name}: deviation for the CPU budget: {kw} instead of its defaults")
    if few_joint:
        _few_table(
            f"Few-shot (slidescope.vlm.api.few_shot) on the slide-text model's joint-space embeddings; gda and "
            f"tip-adapter blend in the zero-shot prior: AUROC mean (sd) over {s.draws} draws of k support "
            f"slides per class, scored on the rest",
            few_joint,
        )
    if few:
        _few_table(
            f"Few-shot on mean-pooled he-descriptor tile embeddings as slide embeddings (no prior): AUROC "
            f"mean (sd) over {s.draws} draws ({t_few:.0f} s)",
            few,
        )
    wall = time.perf_counter() - t_all
    print()
    print(f"seed {seed}: wall time {wall:.0f} s, CPU time {time.process_time() - c_all:.0f} s", flush=True)
    return {"rows": results, "few_joint": few_joint, "few": few, "wall": wall}


def summary(per_seed: dict[int, dict]) -> None:
    """Per-row AUROC of every seed and mean +- sd across seeds."""
    seeds = list(per_seed)
    names = [n for n in next(iter(per_seed.values()))["rows"]]
    print()
    print(
        f"Across cohort seeds {', '.join(map(str, seeds))}: AUROC vs the observed label / vs the true status "
        f"(mean +- sd over seeds)"
    )
    print()
    print(
        "| row | " + " | ".join(f"seed {sd}" for sd in seeds) + " | mean +- sd | vs true status: mean +- sd |"
    )
    print("|---|" + "---|" * (len(seeds) + 2))
    for n in names:
        rs = [per_seed[sd]["rows"].get(n, {}) for sd in seeds]
        if any("error" in r or not r for r in rs):
            print(
                f"| {n} | "
                + " | ".join("failed" if "error" in r or not r else f"{r['auroc']:.3f}" for r in rs)
                + " | | |"
            )
            continue
        a = np.array([r["auroc"] for r in rs])
        t = np.array([r["truth"].estimate for r in rs])
        print(
            f"| {n} | "
            + " | ".join(f"{r['auroc']:.3f} ({r['ci'][0]:.2f}-{r['ci'][1]:.2f})" for r in rs)
            + f" | {a.mean():.3f} +- {a.std(ddof=1) if len(a) > 1 else 0:.3f}"
            f" | {t.mean():.3f} +- {t.std(ddof=1) if len(t) > 1 else 0:.3f} |"
        )
    for key, title in (("few_joint", "few-shot, joint-space embeddings"), ("few", "few-shot, mean-pooled")):
        if not all(per_seed[sd][key] for sd in seeds):
            continue
        print()
        print(f"{title}: AUROC mean over draws, mean +- sd over seeds")
        print()
        print("| method | " + " | ".join(f"{k}-shot" for k in SHOTS) + " |")
        print("|---|" + "---|" * len(SHOTS))
        for m in per_seed[seeds[0]][key]:
            cells = []
            for k in SHOTS:
                v = np.array([per_seed[sd][key][m][k][0] for sd in seeds])
                cells.append(f"{v.mean():.3f} +- {v.std(ddof=1) if len(v) > 1 else 0:.3f}")
            print(f"| {m} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller cohort and pool, fewer draws and resamples")
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "slidescope-bench-hard",
        help="working folder (the tile pools and slide-text models are cached here)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the cohort composition, training and draws")
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="several cohort seeds, one after the other, then a summary across them (overrides --seed)",
    )
    ap.add_argument(
        "--pool-seed",
        type=int,
        default=0,
        help="seed of the rendered tile pool (kept apart so that tuning seeds reuse the cached pool)",
    )
    ap.add_argument(
        "--models",
        default=None,
        help="comma-separated aggregators (default: every registered one; 'none': no aggregator)",
    )
    ap.add_argument("--no-few-shot", action="store_true", help="leave out the few-shot tables")
    ap.add_argument(
        "--no-zero-shot",
        action="store_true",
        help="leave out the slide-text model (zero-shot row and joint-space few-shot table)",
    )
    args = ap.parse_args(argv)

    import logging
    import warnings

    import torch

    torch.set_num_threads(1)  # small models: threads only add overhead (and oversubscribe a shared machine)

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    s = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    per_seed = {seed: run_seed(args, s, seed) for seed in (args.seeds or [args.seed])}
    if len(per_seed) > 1:
        summary(per_seed)
    print()
    print(
        f"wall time {time.perf_counter() - t_all:.0f} s, CPU time of this process {time.process_time():.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
