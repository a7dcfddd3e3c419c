"""Learned tissue / artefact segmenters (issue 17): published layouts, the real loading path, stitching.

Layouts: checked against the networks TRIDENT's own loaders build (tests/golden/trident_segmenters.json,
made by tests/golden/make_trident_segmenters.py from mahmoodlab/TRIDENT @ a91fa84): the keys and shapes the
published checkpoints are loaded into with a strict load. No real checkpoint is downloaded: the loader is
fed files in the published formats (HEST's Lightning checkpoint with ``model.`` keys and an auxiliary head;
GrandQC's plain state dicts) holding random weights. Stitching is checked with a tiny segmenter registered
through the same registry, whose answer is known (dark pixels are tissue), against numpy on the same image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slidescope.features import segmenters as sg
from slidescope.features.encoders import WeightsError

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "trident_segmenters.json").read_text())
TRIDENT_NAMES = {"hest": "hest", "grandqc": "grandqc", "grandqc-artefacts": "grandqc_artifact"}


@pytest.mark.parametrize("name", sorted(TRIDENT_NAMES))
def test_layout_equals_the_network_tridents_loader_builds(name: str) -> None:
    ref = GOLDEN["models"][TRIDENT_NAMES[name]]
    config, builder = sg._entry(name)
    with torch.device("meta"):
        net = builder(config)
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == ref["state_dict"]
    # the settings TRIDENT reads from its model: tile size; µm/px = 10 / target magnification
    assert config.input_size == ref["input_size"]
    assert config.mpp == pytest.approx(10 / ref["target_mag"])
    assert (config.precision == "fp16") == (ref["precision"] == "torch.float16")


def _random_state(name: str) -> dict[str, torch.Tensor]:
    config, builder = sg._entry(name)
    torch.manual_seed(0)
    return {k: v.clone() for k, v in builder(config).state_dict().items()}


def test_hest_loads_its_lightning_checkpoint_strictly(tmp_path: Path) -> None:
    state = _random_state("hest")
    ckpt = {f"model.{k}": v for k, v in state.items()}
    ckpt["model.aux_classifier.0.weight"] = torch.zeros(256, 1024, 3, 3)  # dropped, as HEST's loader does
    path = tmp_path / "deeplabv3_seg_v4.ckpt"
    torch.save({"state_dict": ckpt, "epoch": 3}, path)
    seg = sg.create_segmenter("hest", weights=tmp_path, device="cpu")  # a folder: finds weights_file
    for k, v in seg.network.state_dict().items():
        assert torch.equal(v, state[k]), k
    tiles = np.random.default_rng(0).integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)
    p = seg.probabilities(tiles)
    assert p.shape == (1, 2, 128, 128) and torch.allclose(p.sum(1), torch.ones(1, 128, 128))
    # a checkpoint of another model is refused with the keys that differ
    torch.save(_random_state("grandqc"), tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="do not fit the 'hest' architecture"):
        sg.create_segmenter("hest", weights=tmp_path / "other.pth", device="cpu")


@pytest.mark.parametrize("name", ["grandqc", "grandqc-artefacts"])
def test_grandqc_loads_its_state_dict_and_predicts_its_classes(name: str, tmp_path: Path) -> None:
    state = _random_state(name)
    path = tmp_path / sg.get_segmenter_config(name).weights_file
    torch.save(state, path)
    seg = sg.create_segmenter(name, weights=path, device="cpu")
    tiles = np.full((2, 64, 64, 3), 230, np.uint8)
    classes = seg.classes_of(tiles)
    assert classes.shape == (2, 64, 64) and classes.max() < len(seg.config.classes)
    assert seg.tissue(tiles).dtype == bool


def test_missing_weights_name_the_hub_repository_and_the_licence(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError) as err:
        sg.create_segmenter("hest", device="cpu")
    msg = str(err.value)
    assert "MahmoodLab/hest-tissue-seg/deeplabv3_seg_v4.ckpt" in msg and "non-commercial" in msg
    assert "weights=" in msg


class _DarkIsTissue(nn.Module):
    """Two classes: tissue logit = 10 * (0.8 - mean intensity): pixels darker than 0.8 are tissue."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = (
            torch.tensor(sg.IMAGENET_MEAN).view(1, 3, 1, 1),
            torch.tensor(sg.IMAGENET_STD).view(1, 3, 1, 1),
        )
        grey = (x * std + mean).mean(1, keepdim=True)
        t = 10 * (0.8 - grey)
        return torch.cat([-t, t], dim=1)


def test_segment_tissue_stitches_tiles_at_the_model_mpp(tmp_path: Path) -> None:
    import slidescope as ss
    from slidescope.synthetic import make_synthetic_slide

    config = sg.SegmenterConfig(
        name="test-dark",
        architecture="test",
        hub_id="none/none",
        weights_file="w.pth",
        mpp=4.0,
        input_size=64,  # several tiles, a partial one at each edge
        classes=("background", "tissue"),
        tissue_classes=(1,),
    )
    sg.register_segmenter(config, lambda c: _DarkIsTissue())
    torch.save({}, tmp_path / "w.pth")  # the network has no weights: an empty state dict fits strictly
    try:
        path = tmp_path / "s.svs"
        make_synthetic_slide(path, width=3000, height=2200, mpp=0.5, seed=2, n_levels=3)
        with ss.open_slide(path) as slide:
            mask = sg.segment_tissue(
                slide, "test-dark", weights=tmp_path / "w.pth", device="cpu", batch_size=3
            )
            rgb = slide.get_thumbnail((375, 275))  # the same read at 4 µm/px (3000 px x 0.5 µm / 4)
        expect = rgb.astype(np.float32).mean(axis=2) / 255.0 < 0.8
        assert mask.mask.shape == expect.shape == (275, 375)
        # float32 rounding of the normalisation can flip pixels that sit exactly at the threshold
        assert (mask.mask != expect).mean() < 1e-4
        assert mask.mask.any() and not mask.mask.all()
        assert mask.params["method"] == "test-dark" and mask.mpp == pytest.approx((4.0, 4.0))
        assert mask.contours  # polygons like the classic detector's
    finally:
        sg._REGISTRY.pop("test-dark")


def _all_tissue_grandqc(path: Path) -> None:
    """GrandQC tissue weights (the real layout) whose answer is known: a zero head with a bias for class 0
    (tissue), so every pixel is tissue with probability sigmoid(8) ~ 1 whatever the input."""
    state = _random_state("grandqc")
    state["segmentation_head.0.weight"].zero_()
    state["segmentation_head.0.bias"].copy_(torch.tensor([4.0, -4.0]))
    torch.save(state, path)


def test_tissue_option_runs_a_learned_segmenter_end_to_end(tmp_path: Path) -> None:
    """``--tissue grandqc --segmenter-weights`` on extract and tile: the real loader on same-architecture weights,
    the grid made on its mask, its name and weights' sha256 in the tiling's cache key (beside the classic
    tiling, not mixed with it)."""
    from typer.testing import CliRunner

    from slidescope.cli import app
    from slidescope.features.store import open_store, store_path
    from slidescope.synthetic import make_synthetic_slide

    weights = tmp_path / sg.get_segmenter_config("grandqc").weights_file
    _all_tissue_grandqc(weights)
    slide = tmp_path / "s.svs"
    make_synthetic_slide(slide, width=2400, height=1800, mpp=0.5, seed=1, n_levels=3)
    common = ["--encoder", "he-descriptor", "--device", "cpu", "--num-workers", "0", "--stores"]
    runner = CliRunner()
    res = runner.invoke(app, ["extract", str(slide), *common, str(tmp_path / "st")])
    assert res.exit_code == 0, res.output
    classic = open_store(store_path(tmp_path / "st", slide))
    args = ["--tissue", "grandqc", "--segmenter-weights", str(weights)]
    res = runner.invoke(app, ["extract", str(slide), *args, *common, str(tmp_path / "st")])
    assert res.exit_code == 0, res.output
    store = open_store(store_path(tmp_path / "st", slide))  # the most recently written tiling
    assert len(store.tilings()) == 2 and store.tiling_key != classic.tiling_key
    key = store.attrs["tiling"]["tissue"]
    assert key == {"name": "grandqc", "weights_sha256": sg.file_digest(weights)}
    assert "tissue" not in classic.attrs["tiling"]
    # every pixel is tissue: every whole tile of the slide is in the grid (the classic one keeps fewer)
    tiles_x, tiles_y = 2400 // 224, 1800 // 224
    assert store.n_tiles == tiles_x * tiles_y > classic.n_tiles
    assert store.embeddings("he-descriptor").shape[0] == store.n_tiles
    out = tmp_path / "tiles"
    res = runner.invoke(app, ["tile", str(slide), *args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "grid.json").read_text())["tissue"]["name"] == "grandqc"


def test_tissue_option_without_weights_names_the_hub_and_the_licence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    from typer.testing import CliRunner

    from slidescope.cli import app
    from slidescope.synthetic import make_synthetic_slide

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    slide = tmp_path / "s.svs"
    make_synthetic_slide(slide, width=1200, height=900, mpp=0.5, seed=1, n_levels=2)
    res = CliRunner().invoke(app, ["tile", str(slide), "--tissue", "hest", "--out", str(tmp_path / "t")])
    assert res.exit_code != 0
    msg = " ".join(str(res.exception).split())
    assert "MahmoodLab/hest-tissue-seg/deeplabv3_seg_v4.ckpt" in msg and "non-commercial" in msg
    assert "--segmenter-weights PATH" in msg
    bad = CliRunner().invoke(app, ["extract", str(slide), "--tissue", "otsu", "--stores", str(tmp_path)])
    assert bad.exit_code != 0 and "tissue must be one of classic, hest, grandqc" in bad.output + str(
        bad.exception
    )


def test_tissue_and_qc_model_choices_of_the_schema_are_the_segmenters() -> None:
    from slidescope import options

    assert options._TISSUE_METHODS == sg.TISSUE_METHODS and options._QC_MODELS == tuple(sg.QC_MODELS)
    learned = [n for n in sg.TISSUE_METHODS if n != "classic"]
    assert all(sg.get_segmenter_config(n).tissue_classes for n in learned)
    assert set(learned) == {n for n in sg.list_segmenters() if "artefact" not in n}
