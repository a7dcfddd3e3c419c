"""Stain normalisation: Macenko and Reinhard move stain-shifted H&E back towards the reference."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from slidescope.errors import InvalidParameterError
from slidescope.features import stain
from slidescope.features.stain import MacenkoNormalizer, ReinhardNormalizer, make_normalizer
from slidescope.wsi import open_slide
from slidescope.synthetic import make_synthetic_slide

TILE = 224
METHODS = ["macenko", "reinhard"]


@pytest.fixture(scope="module")
def he_tiles(tmp_path_factory):
    """(tissue tile with tumour and stroma, tile that is about half glass) from a synthetic slide."""
    path = tmp_path_factory.mktemp("stain") / "s.svs"
    slide = make_synthetic_slide(path, width=2048, height=1536, mpp=0.5, tumour=True, seed=0)
    img = open_slide(slide.path).read_region((0, 0), 0, (slide.width, slide.height))
    f = slide.mask_downsample
    best_tissue, best_half = None, None
    for y in range(0, slide.height - TILE + 1, 56):
        for x in range(0, slide.width - TILE + 1, 56):
            rows = slice(int(y // f), int(np.ceil((y + TILE) / f)))
            cols = slice(int(x // f), int(np.ceil((x + TILE) / f)))
            tis, tum = slide.tissue_mask[rows, cols].mean(), slide.tumour_mask[rows, cols].mean()
            score = tis + (0.3 < tum < 0.7)  # full tissue, mixed tumour / stroma
            if best_tissue is None or score > best_tissue[0]:
                best_tissue = (score, img[y : y + TILE, x : x + TILE])
            if best_half is None or abs(tis - 0.5) < best_half[0]:
                best_half = (abs(tis - 0.5), img[y : y + TILE, x : x + TILE])
    return best_tissue[1].copy(), best_half[1].copy()


def shift_stain(rgb: np.ndarray) -> np.ndarray:
    """Re-stain in OD space: stronger, bluer haematoxylin-like cast, weaker eosin (a lab-to-lab shift)."""
    od = -np.log((rgb.astype(np.float64) + 1) / 256)
    mix = np.array([[1.25, 0.10, 0.0], [0.0, 0.70, 0.05], [0.15, 0.10, 1.30]])  # OD_rgb -> OD_rgb
    out = 256 * np.exp(-(od @ mix)) - 1
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def mean_od(rgb: np.ndarray | torch.Tensor) -> np.ndarray:
    a = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
    od = -np.log((a + 1) / 256)
    return od[(od >= 0.15).any(axis=1)].mean(axis=0)


def lab_stats(rgb: np.ndarray) -> np.ndarray:
    _lab, _mask, mean, std = stain._lab_stats(torch.from_numpy(rgb)[None], 0.15)
    return np.concatenate([mean[0].numpy(), std[0].numpy()])


@pytest.mark.parametrize("method", METHODS)
def test_shifted_tile_moves_back_to_reference(he_tiles, method):
    original, _ = he_tiles
    shifted = shift_stain(original)
    before = np.abs(mean_od(shifted) - mean_od(original)).sum()
    assert before > 0.1  # the shift is visible
    norm = make_normalizer(method, reference=original)
    after = np.abs(mean_od(norm(shifted)) - mean_od(original)).sum()
    assert after < 0.5 * before
    if method == "reinhard":
        d0 = np.abs(lab_stats(shifted) - lab_stats(original)).sum()
        d1 = np.abs(lab_stats(norm(shifted)) - lab_stats(original)).sum()
        assert d1 < 0.25 * d0


@pytest.mark.parametrize("method", METHODS)
def test_default_reference_makes_stain_versions_agree(he_tiles, method):
    original, _ = he_tiles
    shifted = shift_stain(original)
    norm = make_normalizer(method)  # built-in reference
    gap_before = np.abs(mean_od(shifted) - mean_od(original)).sum()
    gap_after = np.abs(mean_od(norm(shifted)) - mean_od(norm(original))).sum()
    assert gap_after < 0.5 * gap_before


@pytest.mark.parametrize("method", METHODS)
def test_background_stays_white_and_shapes_kept(he_tiles, method):
    _, half = he_tiles
    norm = make_normalizer(method)
    batch = torch.from_numpy(np.stack([half, shift_stain(half)]))
    before = batch.clone()
    out = norm(batch)
    assert torch.equal(batch, before)  # input not modified
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8 and out.shape == batch.shape
    glass = (batch.float().min(dim=-1).values > 230)[0]  # bright, neutral pixels of the unshifted tile
    assert glass.float().mean() > 0.2
    assert out[0][glass].float().mean() > 225 and out[1][glass].float().mean() > 225
    single = norm(half)  # numpy (H, W, 3) in, numpy out
    assert isinstance(single, np.ndarray) and single.dtype == np.uint8 and single.shape == half.shape
    np.testing.assert_array_equal(single, out[0].numpy())  # one tile == the same tile in a batch


@pytest.mark.parametrize("method", METHODS)
def test_blank_tile_returned_unchanged_with_one_warning(he_tiles, method, caplog):
    original, _ = he_tiles
    blank = np.full((TILE, TILE, 3), 242, np.uint8)
    norm = make_normalizer(method)
    with caplog.at_level(logging.DEBUG, logger="slidescope.features.stain"):
        out = norm(np.stack([blank, original, blank]))
        norm(blank)
    np.testing.assert_array_equal(out[0], blank)
    np.testing.assert_array_equal(out[2], blank)
    assert not np.array_equal(out[1], original)  # the tissue tile next to them is normalised
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 of 3 tiles" in warnings[0].getMessage()
    white = np.full((TILE, TILE, 3), 255, np.uint8)
    np.testing.assert_array_equal(norm(white), white)


@pytest.mark.parametrize("method", METHODS)
def test_deterministic(he_tiles, method):
    original, half = he_tiles
    batch = torch.from_numpy(np.stack([original, half, shift_stain(original)]))
    a, b = make_normalizer(method)(batch), make_normalizer(method)(batch.clone())
    assert torch.equal(a, b)


def test_make_normalizer_switch_and_errors(he_tiles):
    assert make_normalizer(None) is None
    assert isinstance(make_normalizer("Macenko"), MacenkoNormalizer)
    assert isinstance(make_normalizer("reinhard"), ReinhardNormalizer)
    with pytest.raises(InvalidParameterError, match="macenko"):
        make_normalizer("vahadane")
    blank = np.full((TILE, TILE, 3), 242, np.uint8)
    for method in METHODS:
        with pytest.raises(InvalidParameterError, match="too little"):
            make_normalizer(method, reference=blank)
    with pytest.raises(InvalidParameterError, match="uint8"):
        make_normalizer("macenko")(np.zeros((8, 8, 3), np.float32))


def test_macenko_fit_recovers_stain_vectors(he_tiles):
    """The fitted haematoxylin vector is bluer-absorbing (more red OD) than eosin, as in the default."""
    original, _ = he_tiles
    norm = MacenkoNormalizer().fit(original)
    h, e = norm.stain_matrix
    assert h[0] > e[0] and e[1] > e[0]
    assert torch.allclose(norm.stain_matrix.norm(dim=1), torch.ones(2), atol=1e-5)
    assert (norm.max_concentrations > 0).all()
