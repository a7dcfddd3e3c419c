"""Learned artefact QC (``qc_model="grandqc"``): GrandQC's artefact network loaded through the real loader on
random same-architecture weights, its output replaced by a known per-pixel class map, and the per-tile class
fractions stored, checked, summarised and excluded like the classic measures.

The known class map: the patched network answers, for every pixel, class ``min(R // 32, 7)`` of the pixel's
red value (recovered exactly from the normalised input), so the expected map is computed here from the same
read of the slide at 1 µm/px, and each tile's fractions from its footprint (224 px at 0.5 µm/px = 112 px at
1 µm/px) with numpy, independently of ``class_fractions``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slidescope.features import segmenters as sg
from slidescope.wsi import ARTEFACT_MAX, open_slide, qc_flags

W, H = 2400, 1800  # px at 0.5 µm/px: 1200 x 900 at the model's 1 µm/px, 3 x 2 input tiles of 512 (padded)


def _known_classes(x: torch.Tensor) -> torch.Tensor:
    """Logits (B, 8, H, W) whose arg-max is min(R // 32, 7) of each pixel's uint8 red value."""
    config = sg.get_segmenter_config("grandqc-artefacts")
    red = (x[:, 0] * config.std[0] + config.mean[0]) * 255.0
    cls = (red.round().long() // 32).clamp(max=7)
    return torch.nn.functional.one_hot(cls, 8).permute(0, 3, 1, 2).float() * 10.0


@pytest.fixture()
def patched_model(tmp_path: Path):
    """The artefact segmenter as the QC loads it (cached per name, weights and device), its output known."""
    config, builder = sg._entry("grandqc-artefacts")
    torch.manual_seed(0)
    path = tmp_path / config.weights_file
    torch.save(builder(config).state_dict(), path)
    sg._cached_segmenter.cache_clear()
    seg = sg._cached_segmenter("grandqc-artefacts", str(path.resolve()), "cpu")  # the real loader
    seg.network.forward = _known_classes  # type: ignore[method-assign]
    yield path
    sg._cached_segmenter.cache_clear()


@pytest.fixture()
def slide_path(tmp_path: Path) -> Path:
    from slidescope.synthetic import make_synthetic_slide

    path = tmp_path / "s.svs"
    make_synthetic_slide(path, width=W, height=H, mpp=0.5, seed=4, n_levels=3)
    return path


def _expected(slide_path: Path, coords: np.ndarray) -> dict[str, np.ndarray]:
    with open_slide(slide_path) as slide:
        rgb = slide.get_thumbnail((W // 2, H // 2))  # the read segment_artefacts makes at 1 µm/px
    classes = np.minimum(rgb[..., 0] // 32, 7)
    names = {c: f"grandqc_{n}" for c, n in sg.get_segmenter_config("grandqc-artefacts").artefacts}
    out = {name: np.zeros(len(coords), np.float32) for name in names.values()}
    for i, (x, y) in enumerate(coords // 2):  # level-0 px at 0.5 µm/px -> map px at 1 µm/px
        box = classes[y : y + 112, x : x + 112]
        for c, name in names.items():
            out[name][i] = (box == c).mean()
    return out


def test_artefact_fractions_per_tile_are_stored_checked_and_summarised(
    patched_model: Path, slide_path: Path, tmp_path: Path
) -> None:
    from slidescope.features import extract_slides
    from slidescope.features.store import open_store

    kw = dict(tile_size=224, mpp=0.5, device="cpu", num_workers=0, progress=False, qc="flag")
    (res,) = extract_slides(
        [slide_path],
        "he-descriptor",
        store=tmp_path / "st",
        qc_model="grandqc",
        segmenter_weights=str(patched_model),
        **kw,
    )
    assert res.status == "done", res.error
    store = open_store(res.store)
    qc = store.qc()
    expected = _expected(slide_path, store.coords)
    assert set(expected) == {k for k in qc if k.startswith("grandqc_")}
    for name, value in expected.items():
        np.testing.assert_array_equal(qc[name], value, err_msg=name)
    assert any(v.max() > ARTEFACT_MAX for v in expected.values())  # the checks below have something to find
    flags = qc_flags(qc)
    summary = res.extra["qc"]["flagged_fraction"]
    for name, value in expected.items():
        assert np.array_equal(flags[name], value > ARTEFACT_MAX)
        assert summary[name] == pytest.approx((value > ARTEFACT_MAX).mean(), abs=1e-4)
    assert {"blur", "fold", "pen"} <= set(summary)  # the classic checks as before
    # flag keeps the tiling of a run without QC (same tiles, same cache key)
    (off,) = extract_slides([slide_path], "he-descriptor", store=tmp_path / "off", **{**kw, "qc": "off"})
    assert open_store(off.store).tiling_key == store.tiling_key


def test_exclude_drops_the_tiles_a_learned_check_flags(
    patched_model: Path, slide_path: Path, tmp_path: Path
) -> None:
    from slidescope.features import extract_slides
    from slidescope.features.store import open_store

    kw = dict(tile_size=224, mpp=0.5, device="cpu", num_workers=0, progress=False)
    args = dict(qc_model="grandqc", segmenter_weights=str(patched_model))
    (flag,) = extract_slides([slide_path], "he-descriptor", store=tmp_path / "f", qc="flag", **args, **kw)
    (exc,) = extract_slides([slide_path], "he-descriptor", store=tmp_path / "e", qc="exclude", **args, **kw)
    flagged = open_store(flag.store)
    bad = np.zeros(flagged.n_tiles, bool)
    for f in qc_flags(flagged.qc()).values():
        bad |= f
    learned_only = bad & ~np.any([v for k, v in qc_flags(flagged.qc()).items() if "_" not in k], axis=0)
    assert learned_only.any(), "some tiles are flagged by a learned check alone"
    kept = open_store(exc.store)
    assert (
        kept.n_tiles
        == flagged.n_tiles - bad.sum()
        == exc.extra["qc"]["n_tiles"] - exc.extra["qc"]["excluded"]
    )
    assert not any((v > ARTEFACT_MAX).any() for k, v in kept.qc().items() if k.startswith("grandqc_"))
    meta = kept.attrs["tiling"]["qc"]
    assert meta["model"]["name"] == "grandqc-artefacts" and meta["thresholds"]["artefact_max"] == ARTEFACT_MAX
    assert meta["model"]["weights_sha256"] == sg.file_digest(patched_model)


def test_qc_model_none_runs_no_model_and_keeps_the_classic_key(slide_path: Path, tmp_path: Path) -> None:
    from slidescope.features import extract_slides
    from slidescope.features.store import open_store

    kw = dict(tile_size=224, mpp=0.5, device="cpu", num_workers=0, progress=False, qc="exclude")
    (res,) = extract_slides([slide_path], "he-descriptor", store=tmp_path / "n", **kw)
    st = open_store(res.store)
    assert not any(k.startswith("grandqc_") for k in st.qc())
    assert (
        "model" not in st.attrs["tiling"]["qc"]
        and "artefact_max" not in st.attrs["tiling"]["qc"]["thresholds"]
    )
