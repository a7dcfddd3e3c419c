"""PRISM and TITAN through the real loading path: a directory shaped like the published hub repository
(config.json with ``auto_map``, the publisher-style modelling files, safetensors weights, tokenizer files), loaded
by ``transformers.AutoModel.from_pretrained(..., trust_remote_code=True, local_files_only=True)``.

The adapters must reproduce the publishers' own zero-shot methods (``Prism.zero_shot``, ``Titan.zero_shot`` with
``zero_shot_classifier``) when driven through slidescope's store-based ``zero_shot`` API, check the tile embeddings
they are given, and refuse to run downloaded code without the opt-in.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slidescope.errors import InvalidParameterError, MissingDependencyError
from slidescope.features.encoders import WeightsError
from slidescope.vlm.published import (
    PrismModel,
    RemoteCodeError,
    TitanModel,
    get_published_config,
    list_published_models,
    load_published_model,
)
from slidescope.vlm.zeroshot import zero_shot_logits

CLASSES = {
    "benign": ["benign breast tissue", "fibrocystic change"],
    "carcinoma": ["invasive ductal carcinoma", "lobular carcinoma", "metastatic carcinoma"],
}
TEMPLATES = ["CLASSNAME.", "an image of CLASSNAME.", "the image shows CLASSNAME."]


def _tiles(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


@pytest.fixture(scope="module")
def prism(prism_dir: Path) -> PrismModel:
    model = load_published_model("prism", prism_dir, trust_remote_code=True)
    assert isinstance(model, PrismModel)
    return model


@pytest.fixture(scope="module")
def titan(titan_dir: Path) -> TitanModel:
    model = load_published_model("titan", titan_dir, trust_remote_code=True)
    assert isinstance(model, TitanModel)
    return model


def test_registry_describes_the_published_models() -> None:
    assert {"prism", "titan"} <= set(list_published_models())
    p, t = get_published_config("prism"), get_published_config("titan")
    assert (p.hub_id, p.tile_encoders, p.tile_dim, p.embed_dim, p.ensemble) == (
        "paige-ai/Prism",
        ("virchow",),
        2560,
        1280,
        "sum-probability",
    )
    assert (t.hub_id, t.tile_encoders, t.tile_dim, t.tile_size, t.needs_coords, t.logit_scale) == (
        "MahmoodLab/TITAN",
        ("conch-v1.5",),
        768,
        512,
        True,
        1.0,
    )
    assert p.requires_remote_code and t.requires_remote_code and p.gated and t.gated


def test_prism_loads_the_repository_layout(prism: PrismModel, prism_dir: Path) -> None:
    from safetensors import safe_open

    net = prism.model
    assert type(net).__name__ == "Prism" and type(net).__module__.startswith("transformers_modules.")
    with safe_open(str(prism_dir / "model.safetensors"), "pt") as fh:
        file_keys = set(fh.keys())
    assert file_keys == set(net.state_dict())
    assert {
        "temperature",
        "img_to_latents.to_latents.weight",
        "text_to_latents.to_latents.weight",
        "image_resampler.perceiver.latents",
        "image_resampler.cls_norm.weight",
        "image_resampler.perceiver.layers.0.tf.0.mhsa.mha.in_proj_weight",
    } <= file_keys
    layers = net.image_resampler.perceiver.layers  # PRISM's weight sharing survives loading
    assert layers[2]["xattn"] is layers[1]["xattn"] and layers[2]["tf"] is layers[0]["tf"]
    assert prism.dim_latents == 24 and prism.device.type == "cpu" and not net.training


def test_prism_adapter_reproduces_prism_zero_shot(prism: PrismModel) -> None:
    neg, pos = CLASSES["benign"], CLASSES["carcinoma"]
    tiles = torch.from_numpy(_tiles(40, 2560, 0))
    with torch.inference_mode():
        v = prism.encode_slide(tiles[None])
        image_embedding = prism.model.slide_representations(tiles[None])["image_embedding"]
        expected = prism.model.zero_shot(image_embedding, neg_prompts=neg, pos_prompts=pos)
        text = prism.encode_text(neg + pos)
        probs = zero_shot_logits(
            v,
            text,
            [0] * len(neg) + [1] * len(pos),
            ensemble="sum-probability",
            logit_scale=float(prism.scale()),
        )
        torch.testing.assert_close(v, F.normalize(prism.model.img_to_latents(image_embedding), dim=-1))
    assert text.shape == (5, 24) and torch.allclose(text.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prism.scale(), prism.model.temperature.exp().detach())
    # padding another slide into the batch changes nothing (mask honoured)
    two = torch.zeros(2, 50, 2560)
    two[0, :40] = tiles
    two[1] = torch.from_numpy(_tiles(50, 2560, 1))
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[0, :40] = True
    mask[1] = True
    with torch.inference_mode():
        torch.testing.assert_close(prism.encode_slide(two, mask)[0], v[0])


def test_slidescope_perceiver_loads_prism_weights_and_matches_prism(
    prism: PrismModel, prism_dir: Path
) -> None:
    """slidescope's own Perceiver (no remote code) reads PRISM's resampler tensors and computes the same thing."""
    from slidescope.vlm.slide_encoder import PerceiverSlideEncoder

    enc = PerceiverSlideEncoder.from_prism(prism_dir, xattn_chunk=16)  # 16: the streaming path is exercised
    assert (enc.config.latent_seq, enc.config.latent_dim, enc.config.context_dim) == (6, 32, 2560)
    tiles = torch.zeros(2, 45, 2560)
    tiles[0] = torch.from_numpy(_tiles(45, 2560, 7))
    tiles[1, :30] = torch.from_numpy(_tiles(30, 2560, 8))
    mask = torch.ones(2, 45, dtype=torch.bool)
    mask[1, 30:] = False
    with torch.inference_mode():
        ours = enc(tiles, mask)
        ref = prism.model.slide_representations(tiles, tile_mask=mask)
    torch.testing.assert_close(ours["image_embedding"], ref["image_embedding"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours["image_latents"], ref["image_latents"], atol=1e-5, rtol=1e-4)


def test_titan_adapter_reproduces_titan_zero_shot(titan: TitanModel) -> None:
    feats = torch.from_numpy(_tiles(12, 768, 2))
    coords = torch.tensor([[x * 1024, y * 1024] for y in range(3) for x in range(4)])
    prompts = [t.replace("CLASSNAME", p) for ps in CLASSES.values() for p in ps for t in TEMPLATES]
    idx = [c for c, ps in enumerate(CLASSES.values()) for _ in ps for _ in TEMPLATES]
    with torch.inference_mode():
        z = titan.embed_tiles(feats, coords=coords, tile_extent=1024)
        expected_z = titan.model.encode_slide_from_patch_features(feats[None], coords[None], 1024)
        classifier = titan.model.zero_shot_classifier(list(CLASSES.values()), TEMPLATES)
        expected = titan.model.zero_shot(z, classifier)
        probs = zero_shot_logits(
            titan.project(z[None]),
            titan.encode_text(prompts),
            idx,
            ensemble="mean-embedding",
            logit_scale=float(titan.scale()),
        )
    torch.testing.assert_close(z, expected_z[0])
    assert z.shape == (32,) and titan.dim_latents == 16
    torch.testing.assert_close(probs, expected.reshape(1, -1), atol=1e-5, rtol=1e-5)
    with pytest.raises(InvalidParameterError, match="coords"):
        titan.embed_tiles(feats)


def test_zero_shot_api_on_prism_stores_matches_prism(
    prism: PrismModel, prism_dir: Path, tmp_path: Path, store_writer
) -> None:
    from slidescope.features.store import open_store
    from slidescope.vlm.api import zero_shot

    paths = [
        store_writer(tmp_path / f"s{i}.zarr", _tiles(20 + 7 * i, 2560, 10 + i), encoder="virchow")
        for i in range(4)
    ]
    rows = zero_shot(paths, CLASSES, model="prism", weights=prism_dir, trust_remote_code=True)
    assert [r.slide for r in rows] == ["s0", "s1", "s2", "s3"]
    for path, row in zip(paths, rows, strict=True):
        tiles = torch.from_numpy(open_store(path).embeddings("virchow"))[None]
        with torch.inference_mode():
            emb = prism.model.slide_representations(tiles)["image_embedding"]
            expected = prism.model.zero_shot(
                emb, neg_prompts=CLASSES["benign"], pos_prompts=CLASSES["carcinoma"]
            )
        np.testing.assert_allclose(
            [row.probs["benign"], row.probs["carcinoma"]], expected[0].numpy(), atol=1e-5
        )
        stored = open_store(path).slide_embedding("prism")  # the raw 1280-d-style embedding (toy: 32)
        np.testing.assert_allclose(stored, emb[0].numpy(), atol=1e-5)
    # re-scoring from the stored slide embeddings needs no slide encoding and gives the same answer
    again = zero_shot(paths, CLASSES, model=prism, slide_embedding="prism", write=False)
    for a, b in zip(rows, again, strict=True):
        assert a.probs == pytest.approx(b.probs, abs=1e-6)


def test_zero_shot_api_on_titan_stores_matches_titan(
    titan: TitanModel, titan_dir: Path, tmp_path: Path, store_writer
) -> None:
    from slidescope.features.store import open_store
    from slidescope.vlm.api import zero_shot

    paths = [
        store_writer(
            tmp_path / f"t{i}.zarr",
            _tiles(9 + 4 * i, 768, 20 + i),
            encoder="conch-v1.5",
            tile_size=512,
            extent=1024,
        )
        for i in range(3)
    ]
    rows = zero_shot(
        paths,
        {"classes": CLASSES, "templates": TEMPLATES},
        model="titan",
        weights=titan_dir,
        trust_remote_code=True,
    )
    classifier = titan.model.zero_shot_classifier(list(CLASSES.values()), TEMPLATES)
    for path, row in zip(paths, rows, strict=True):
        store = open_store(path)
        feats = torch.from_numpy(store.embeddings("conch-v1.5"))[None]
        with torch.inference_mode():
            z = titan.model.encode_slide_from_patch_features(
                feats, torch.from_numpy(store.coords)[None], 1024
            )
            expected = titan.model.zero_shot(z[0], classifier)
        np.testing.assert_allclose(list(row.probs.values()), expected.reshape(-1).numpy(), atol=1e-5)
        assert store.slide_embedding("titan").shape == (32,)


def test_few_shot_runs_on_published_models(titan: TitanModel, tmp_path: Path, store_writer) -> None:
    from slidescope.vlm.api import few_shot

    paths = [
        store_writer(
            tmp_path / f"f{i}.zarr",
            _tiles(9, 768, 40 + i) + (2.0 if i % 2 else -2.0),
            encoder="conch-v1.5",
            tile_size=512,
            extent=1024,
        )
        for i in range(8)
    ]
    labels = ["a" if i % 2 else "b" for i in range(8)]
    res = few_shot(
        paths[:6],
        labels[:6],
        paths[6:],
        model=titan,
        method="simpleshot",
        test_labels=labels[6:],
        n_bootstrap=20,
    )
    assert res.probs.shape == (2, 2) and res.class_names == ["a", "b"]
    assert torch.allclose(res.probs.sum(1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize(
    ("model", "encoder", "dim", "tile_size", "match"),
    [
        ("prism", "uni", 1024, 224, r"needs virchow tile embeddings.*`slidescope extract --encoder virchow`"),
        ("prism", "virchow2", 2560, 224, r"Virchow2.*another space"),
        ("titan", "virchow", 2560, 224, r"needs conch-v1.5 tile embeddings \(768-d, 512 px"),
        ("titan", "conch-v1.5", 768, 224, r"tiled at 224 px.*trained on 512 px tiles"),
    ],
)
def test_tile_embedding_requirements_are_checked(
    model, encoder, dim, tile_size, match, prism, titan, tmp_path: Path, store_writer
) -> None:
    from slidescope.vlm.api import zero_shot

    net = {"prism": prism, "titan": titan}[model]
    path = store_writer(tmp_path / "wrong.zarr", _tiles(6, dim, 3), encoder=encoder, tile_size=tile_size)
    with pytest.raises(InvalidParameterError, match=match):
        zero_shot([path], CLASSES, model=net, encoder=encoder)
    if (
        model == "prism"
    ):  # the default encoder is the one the model needs: a store without it says what to extract
        from slidescope.features.store import StoreError

        with pytest.raises(StoreError, match="slidescope extract --encoder virchow"):
            zero_shot([path], CLASSES, model=net)


def test_remote_code_needs_the_opt_in(prism_dir: Path, tmp_path: Path, monkeypatch, store_writer) -> None:
    import huggingface_hub

    from slidescope.vlm.api import zero_shot

    def no_network(*args, **kwargs):
        raise AssertionError("the loader must stop before fetching anything")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    for name in ("prism", "titan"):
        with pytest.raises(RemoteCodeError) as err:
            load_published_model(name)
        msg = str(err.value)
        assert get_published_config(name).hub_id in msg
        assert "trust_remote_code=True" in msg and "--trust-remote-code" in msg and "review" in msg
    path = store_writer(tmp_path / "s.zarr", _tiles(5, 2560, 0), encoder="virchow")
    with pytest.raises(RemoteCodeError, match=str(prism_dir)):
        zero_shot([path], CLASSES, model="prism", weights=prism_dir)


@pytest.mark.parametrize("name", ["prism", "titan"])
def test_offline_hub_is_a_clear_error(name: str, monkeypatch) -> None:
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' (offline mode)")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    cfg = get_published_config(name)
    with pytest.raises(WeightsError) as err:
        load_published_model(name, trust_remote_code=True)
    msg = str(err.value)
    assert cfg.title in msg and cfg.license in msg and cfg.license_url in msg
    assert "accept its terms" in msg and "--weights DIR" in msg and f"hf download {cfg.hub_id}" in msg


def test_local_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not a directory"):
        load_published_model("prism", tmp_path / "nope", trust_remote_code=True)
    with pytest.raises(WeightsError, match="no config.json"):
        load_published_model("titan", tmp_path, trust_remote_code=True)


def test_weights_that_do_not_fit_are_named(prism_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "prism-broken"
    shutil.copytree(prism_dir, broken)
    state = load_file(str(broken / "model.safetensors"))
    del state["text_to_latents.to_latents.weight"]
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"1 missing keys \(e.g. text_to_latents.to_latents.weight\)"):
        load_published_model("prism", broken, trust_remote_code=True)


def test_missing_publisher_dependency_names_the_packages(prism_dir: Path, tmp_path: Path) -> None:
    needy = tmp_path / "prism-needy"
    shutil.copytree(prism_dir, needy)
    code = needy / "perceiver.py"
    code.write_text("import slidescope_absent_test_package  # noqa: F401\n" + code.read_text())
    with pytest.raises(MissingDependencyError, match=r"slidescope_absent_test_package.*environs sacremoses"):
        load_published_model("prism", needy, trust_remote_code=True)


def test_prism_generates_reports(prism: PrismModel, titan: TitanModel, tmp_path: Path, store_writer) -> None:
    from slidescope.features.store import open_store
    from slidescope.vlm.api import generate_reports

    paths = [
        store_writer(tmp_path / f"r{i}.zarr", _tiles(15, 2560, 30 + i), encoder="virchow") for i in range(2)
    ]
    rows = generate_reports(paths, model=prism, num_beams=2, max_length=8)
    assert [r["slide"] for r in rows] == ["r0", "r1"]
    for path, row in zip(paths, rows, strict=True):
        tiles = torch.from_numpy(open_store(path).embeddings("virchow"))[None]
        with torch.inference_mode():
            latents = prism.model.slide_representations(tiles)["image_latents"]
            ids = prism.model.generate(
                key_value_states=latents, do_sample=False, num_beams=2, num_beam_groups=1, max_length=8
            )
        raw = prism.model.untokenize(ids)[0]
        assert raw.startswith("</s>")  # PRISM's decoded text carries its special tokens ...
        words = [w for w in raw.split() if w not in ("</s>", "<pad>", "<s>", "<unk>", "madeupword0006")]
        assert row["report"] == " ".join(words) and row["report"]  # ... the report does not
    with pytest.raises(InvalidParameterError, match="needs PRISM"):
        generate_reports(paths, model=titan)


def test_cli_zero_shot_and_report_with_published_models(
    prism_dir: Path, titan_dir: Path, tmp_path: Path, store_writer
) -> None:
    import yaml
    from typer.testing import CliRunner

    from slidescope.cli import app

    stores = [
        store_writer(tmp_path / f"c{i}.zarr", _tiles(12, 2560, 50 + i), encoder="virchow") for i in range(2)
    ]
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(yaml.safe_dump({"classes": CLASSES}))
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "zero-shot",
            *map(str, stores),
            "--model",
            "prism",
            "--weights",
            str(prism_dir),
            "--trust-remote-code",
            "--prompts",
            str(prompts),
            "--out",
            str(tmp_path / "p.csv"),
        ],
    )
    assert res.exit_code == 0, res.output
    with open(tmp_path / "p.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["slide"] for r in table] == ["c0", "c1"] and {"prob_benign", "prob_carcinoma"} <= set(table[0])
    res = runner.invoke(
        app,
        [
            "report",
            *map(str, stores),
            "--weights",
            str(prism_dir),
            "--trust-remote-code",
            "--num-beams",
            "1",
            "--max-length",
            "6",
            "--out",
            str(tmp_path / "r.csv"),
        ],
    )
    assert res.exit_code == 0, res.output
    with open(tmp_path / "r.csv", newline="") as fh:
        assert [r["slide"] for r in csv.DictReader(fh)] == ["c0", "c1"]
    res = runner.invoke(
        app,
        [
            "zero-shot",
            str(stores[0]),
            "--model",
            "titan",
            "--weights",
            str(titan_dir),
            "--prompts",
            str(prompts),
        ],
    )
    assert isinstance(res.exception, RemoteCodeError)  # no --trust-remote-code: refused
