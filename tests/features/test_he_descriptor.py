"""The weight-free ``he-descriptor``: contract, determinism, speed, and real signal on synthetic slides."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from slidescope.features.encoders import create_encoder, get_encoder_config, list_encoders
from slidescope.features.encoders import he_descriptor as hd
from slidescope.wsi import open_slide
from slidescope.synthetic import make_synthetic_slide

TILE = 224
OD_EOSIN = -np.log(np.array([230.0, 150.0, 190.0]) / 242.0)


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("he-descriptor", device="cpu")


def _tiles(path: Path, seed: int, stride: int = 56):
    """Every ``stride`` px a 224 px tile of a synthetic slide with its tumour and tissue fractions."""
    slide = make_synthetic_slide(path, width=2048, height=1536, mpp=0.5, tumour=True, seed=seed)
    img = open_slide(slide.path).read_region((0, 0), 0, (slide.width, slide.height))
    f = slide.mask_downsample
    tiles, tumour, tissue = [], [], []
    for y in range(0, slide.height - TILE + 1, stride):
        for x in range(0, slide.width - TILE + 1, stride):
            rows = slice(int(y // f), int(np.ceil((y + TILE) / f)))
            cols = slice(int(x // f), int(np.ceil((x + TILE) / f)))
            tiles.append(img[y : y + TILE, x : x + TILE])
            tumour.append(slide.tumour_mask[rows, cols].mean())
            tissue.append(slide.tissue_mask[rows, cols].mean())
    return torch.from_numpy(np.stack(tiles)), np.array(tumour), np.array(tissue)


@pytest.fixture(scope="module")
def slides(tmp_path_factory, encoder):
    """Features and labels of two synthetic slides (train on seed 3, test on seed 4)."""
    root = tmp_path_factory.mktemp("he")
    out = {}
    for seed in (3, 4):
        tiles, tumour, tissue = _tiles(root / f"s{seed}.svs", seed)
        feats = encoder(tiles).numpy()
        out[seed] = {
            "x": feats,
            "tumour": tumour >= 0.5,
            "normal": (tumour == 0) & (tissue >= 0.5),
            "background": tissue == 0,
            "tissue": tissue >= 0.9,
        }
    return out


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Rank-based AUROC (Mann-Whitney U), ties counted half."""
    score = np.asarray(score, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):  # average ranks over ties
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    n1, n0 = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def logistic_regression(x: np.ndarray, y: np.ndarray, *, weight_decay: float = 1e-2):
    """A tiny L2-regularised logistic regression (LBFGS); returns a scoring function."""
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    mu, sd = xt.mean(0), xt.std(0).clamp_min(1e-3)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        z = ((xt - mu) / sd) @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda q: (((torch.tensor(q, dtype=torch.float64) - mu) / sd) @ w + b).detach().numpy()


def fat_tile(seed: int = 0, cell: int = 100, membrane: float = 2.0) -> np.ndarray:
    """Adipose-like tile: white polygonal vacuoles (~50 µm) separated by thin pink membranes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:TILE, 0:TILE].astype(np.float32)
    centres = [
        (cy + rng.uniform(-15, 15), cx + rng.uniform(-15, 15))
        for cy in range(-cell, TILE + cell, cell)
        for cx in range(-cell, TILE + cell, cell)
    ]
    d = np.sort(np.stack([np.hypot(yy - cy, xx - cx) for cy, cx in centres]), axis=0)
    conc = np.where(d[1] - d[0] < membrane, 1.2, 0.0)[..., None]
    img = 242.0 * np.exp(-conc * OD_EOSIN) + rng.normal(0, 1.5, (TILE, TILE, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def glass_tile(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(242.0 + rng.normal(0, 1.5, (TILE, TILE, 3)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Contract


def test_registered_weight_free():
    assert "he-descriptor" in list_encoders(weight_free=True)
    cfg = get_encoder_config("he-descriptor")
    assert cfg.weight_free and cfg.hub_id is None
    assert cfg.embed_dim == len(hd.FEATURE_NAMES) == 98
    assert (cfg.tile_size, cfg.mpp, cfg.input_size) == (224, 0.5, 224)
    assert cfg.license == "Apache-2.0 (slidescope; no weights)"
    assert "not a foundation model" in hd.__doc__


def test_feature_table_documents_every_feature():
    doc = hd.__doc__
    rows = re.findall(r"^(\d+)(?:-(\d+))?\s{2,}\S", doc, flags=re.MULTILINE)
    covered = sorted(i for a, b in rows for i in range(int(a), int(b or a) + 1))
    assert covered == list(range(98)), "the docstring table must cover indices 0..97 exactly once"
    for name in ("tissue_frac", "fat_frac", "blobs_small", "nuc_core3", "crowding", "coherence_e_local"):
        assert name in doc


def test_forward_contract(encoder):
    tiles = torch.randint(0, 255, (2, 256, 256, 3), dtype=torch.uint8)
    out = encoder(tiles)
    assert out.shape == (2, 98) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert encoder.weights_digest == "weight-free"
    assert len(encoder.state_dict()) == 0


def test_edge_inputs_finite(encoder):
    tiles = torch.stack(
        [
            torch.zeros(TILE, TILE, 3, dtype=torch.uint8),
            torch.full((TILE, TILE, 3), 255, dtype=torch.uint8),
            torch.from_numpy(glass_tile()),
        ]
    )
    out = encoder(tiles)
    assert torch.isfinite(out).all()
    assert encoder(tiles[:0]).shape == (0, 98)


def test_deterministic_and_batch_independent(encoder):
    g = torch.Generator().manual_seed(0)
    tiles = torch.randint(0, 255, (20, TILE, TILE, 3), dtype=torch.uint8, generator=g)
    a, b = encoder(tiles), encoder(tiles.clone())
    assert torch.equal(a, b)  # bitwise
    # tile i's vector does not depend on its neighbours: alone, shuffled, or among other tiles
    alone = torch.cat([encoder(t[None]) for t in tiles[:3]])
    torch.testing.assert_close(alone, a[:3], rtol=0, atol=1e-5)
    perm = torch.randperm(20, generator=g)
    torch.testing.assert_close(encoder(tiles[perm]), a[perm], rtol=0, atol=1e-5)
    other = torch.randint(0, 255, (20, TILE, TILE, 3), dtype=torch.uint8, generator=g)
    mixed = torch.cat([tiles[:5], other[5:]])
    torch.testing.assert_close(encoder(mixed)[:5], a[:5], rtol=0, atol=1e-5)


def test_uint8_fast_path_matches_float_path(encoder):
    tiles = torch.randint(
        0, 255, (4, TILE, TILE, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    via_float = encoder.embed(encoder.preprocess(tiles))
    torch.testing.assert_close(encoder(tiles), via_float, rtol=0, atol=1e-3)
    as_float = encoder(tiles.permute(0, 3, 1, 2).float() / 255.0)  # float (B, 3, H, W) input also works
    torch.testing.assert_close(as_float, via_float, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Signal


def test_tumour_vs_normal_on_held_out_slide(slides):
    train, test = slides[3], slides[4]
    assert train["tumour"].sum() >= 10 and test["tumour"].sum() >= 10
    m_tr = train["tumour"] | train["normal"]
    m_te = test["tumour"] | test["normal"]
    score = logistic_regression(train["x"][m_tr], train["tumour"][m_tr])(test["x"][m_te])
    assert auroc(score, test["tumour"][m_te]) >= 0.95
    # nearest centroid on standardised features, no training beyond two means
    mu, sd = train["x"][m_tr].mean(0), train["x"][m_tr].std(0) + 1e-3
    z_tr, z_te = (train["x"] - mu) / sd, (test["x"][m_te] - mu) / sd
    c1, c0 = z_tr[train["tumour"]].mean(0), z_tr[train["normal"]].mean(0)
    nc = ((z_te - c0) ** 2).sum(1) - ((z_te - c1) ** 2).sum(1)
    assert auroc(nc, test["tumour"][m_te]) >= 0.95


def test_background_vs_tissue(slides):
    train, test = slides[3], slides[4]
    m_tr = train["background"] | train["tissue"]
    m_te = test["background"] | test["tissue"]
    score = logistic_regression(train["x"][m_tr], train["tissue"][m_tr])(test["x"][m_te])
    assert auroc(score, test["tissue"][m_te]) >= 0.99
    i = hd.FEATURE_NAMES.index("tissue_frac")
    assert auroc(test["x"][m_te, i], test["tissue"][m_te]) == 1.0


def test_nuclear_density_higher_in_tumour(slides):
    for data in slides.values():
        for name in ("blobs_small", "nuclear_frac_tissue", "blob_radius"):
            i = hd.FEATURE_NAMES.index(name)
            x = data["x"][:, i]
            assert np.median(x[data["tumour"]]) > np.median(x[data["normal"]]), name
            assert (
                auroc(x[data["tumour"] | data["normal"]], data["tumour"][data["tumour"] | data["normal"]])
                > 0.95
            )


def test_fat_differs_from_glass(encoder):
    fat = torch.from_numpy(np.stack([fat_tile(s) for s in range(3)]))
    glass = torch.from_numpy(np.stack([glass_tile(s) for s in range(3)]))
    raw_fat = hd.describe_he(fat.permute(0, 3, 1, 2).float() / 255.0)
    raw_glass = hd.describe_he(glass.permute(0, 3, 1, 2).float() / 255.0)
    col = {n: i for i, n in enumerate(hd.FEATURE_NAMES)}
    assert (raw_fat[:, col["fat_frac"]] > 0.4).all() and (raw_glass[:, col["fat_frac"]] == 0).all()
    assert (raw_glass[:, col["glass_frac"]] == 1).all() and (raw_fat[:, col["glass_frac"]] < 0.6).all()
    assert (raw_fat[:, col["tissue_frac"]] < 0.2).all()  # mostly bright, like glass...
    e_fat, e_glass = encoder(fat), encoder(glass)
    between = torch.cdist(e_fat, e_glass).min()
    within = torch.cdist(e_glass, e_glass).max()
    assert between > 10 * within  # ...but far apart in feature space
