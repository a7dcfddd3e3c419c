"""The slide-encoder contract over every registered slide encoder, the store checks, embed_slides and patients.

Every registered slide encoder (built-ins and any plugin installed) is built small or at its published size
(they are small; PRISM and TITAN from the stand-in repositories of tests/vlm/remote_code, through the
publishers' loading path), runs on random tile embeddings, returns ``embed_dim`` numbers, and refuses tile
embeddings of another width and stores of another patch encoder or tiling.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slidescope.errors import InvalidParameterError
from slidescope.features import open_store
from slidescope.features.slide_encoders import (
    SlideEncoderConfig,
    create_slide_encoder,
    embed_patients,
    embed_slides,
    get_slide_encoder_config,
    list_slide_encoders,
    pool_patients,
    register_slide_encoder,
)

_spec = importlib.util.spec_from_file_location(
    "_vlm_fixtures", Path(__file__).parents[1] / "vlm" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
vlmfx = importlib.util.module_from_spec(_spec)
sys.modules["_vlm_fixtures"] = vlmfx
_spec.loader.exec_module(vlmfx)
write_store = vlmfx.write_store


@pytest.fixture(scope="module")
def published_dirs(tmp_path_factory: pytest.TempPathFactory):
    """Stand-in PRISM and TITAN repositories (tests/vlm/remote_code), built as the vlm tests do."""
    import transformers.dynamic_module_utils as dmu

    cache = tmp_path_factory.mktemp("hf_modules")
    vlmfx.forget_dynamic_modules()  # another module's remote-code cache must not shadow this one (and back)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dmu, "HF_MODULES_CACHE", str(cache))
        mp.setattr(sys, "path", list(sys.path))
        root = tmp_path_factory.mktemp("models")
        tok = vlmfx._word_tokenizer(
            {"bos_token": "</s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
            "</s> $A",
            extra=("madeupword0006",),
        )
        prism = vlmfx.build_remote_model_dir(
            root / "prism",
            "prism",
            vlmfx.prism_config(len(tok), tok.pad_token_id),
            root / "prism" / "biogpt",
            tok,
        )
        ttok = vlmfx._word_tokenizer(
            {
                "pad_token": "<pad>",
                "bos_token": "<start_of_text>",
                "eos_token": "<end_of_text>",
                "unk_token": "<unk>",
            },
            "<start_of_text> $A <end_of_text>",
        )
        titan = vlmfx.build_remote_model_dir(
            root / "titan", "titan", vlmfx.titan_config(len(ttok)), root / "titan", ttok
        )
        yield {"prism": prism, "titan": titan}
    vlmfx.forget_dynamic_modules()


def build(name: str, dirs: dict[str, Path]):
    cfg = get_slide_encoder_config(name)
    if cfg.requires_remote_code:
        return create_slide_encoder(name, weights=dirs[name], trust_remote_code=True)
    return create_slide_encoder(name, pretrained=False)


def test_at_least_seven_slide_encoders() -> None:
    names = list_slide_encoders()
    assert len(names) >= 7
    assert {"mean", "feather-conch-v1.5", "feather-uni2", "madeleine", "chief", "prism", "titan"} <= set(
        names
    )


@pytest.mark.parametrize("name", list_slide_encoders())
def test_contract(name: str, published_dirs) -> None:
    cfg = get_slide_encoder_config(name)
    assert cfg.name == name and cfg.layout and cfg.license
    assert (cfg.tile_size is None) == (cfg.mpp is None) == (not cfg.patch_encoders)
    model = build(name, published_dirs)
    assert not model.training
    dim = cfg.patch_dim or 24
    n = 13
    coords = np.stack([np.arange(n) % 4, np.arange(n) // 4], 1) * 512
    z = model.embed(torch.randn(n, dim), coords, 512)
    assert z.dtype == torch.float32 and z.shape == (model.output_dim(dim),)
    if cfg.family != "published":  # PRISM/TITAN: the stand-ins are narrower than the published 1280/768
        assert model.output_dim(dim) == cfg.output_dim(dim)
    assert torch.isfinite(z).all()
    if name != "prism":  # PRISM's stand-in may pad its latents; the tiles' order must not matter elsewhere
        perm = torch.randperm(n)
        feats = torch.randn(n, dim)
        a = model.embed(feats, coords, 512)
        b = model.embed(feats[perm], coords[perm.numpy()], 512)
        if cfg.family not in ("published", "gigapath"):  # GigaPath's LongNet dilates in the stored order
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if cfg.patch_dim is not None:
        with pytest.raises(InvalidParameterError, match=f"{cfg.patch_dim}-d"):
            model.embed(torch.randn(n, cfg.patch_dim + 1), coords, 512)
    with pytest.raises(InvalidParameterError, match=r"\(N, D\)"):
        model.embed(torch.randn(0, dim))
    if cfg.needs_coords:
        with pytest.raises(InvalidParameterError, match="coords"):
            model.embed(torch.randn(n, dim))


@pytest.mark.parametrize(
    "name", [n for n in list_slide_encoders() if get_slide_encoder_config(n).patch_encoders]
)
def test_refuses_a_store_of_another_patch_encoder_or_tiling(name: str, tmp_path: Path) -> None:
    cfg = get_slide_encoder_config(name)
    assert cfg.patch_dim is not None and cfg.tile_size is not None and cfg.mpp is not None
    good = write_store(
        tmp_path / "good.zarr",
        np.ones((5, cfg.patch_dim)),
        encoder=cfg.patch_encoders[0],
        tile_size=cfg.tile_size,
        mpp=cfg.mpp,
    )
    cfg.check_store(open_store(good), cfg.patch_encoders[0])  # accepted
    other = write_store(
        tmp_path / "other.zarr",
        np.ones((5, cfg.patch_dim)),
        encoder="he-descriptor",
        tile_size=cfg.tile_size,
        mpp=cfg.mpp,
    )
    with pytest.raises(
        InvalidParameterError, match=f"trained on '{cfg.patch_encoders[0]}'.*slidescope extract"
    ):
        cfg.check_store(open_store(other), "he-descriptor")
    tiled = write_store(
        tmp_path / "tiled.zarr",
        np.ones((5, cfg.patch_dim)),
        encoder=cfg.patch_encoders[0],
        tile_size=cfg.tile_size * 2,
        mpp=cfg.mpp,
    )
    with pytest.raises(InvalidParameterError, match=f"tiled at {cfg.tile_size * 2} px"):
        cfg.check_store(open_store(tiled), cfg.patch_encoders[0])
    wide = write_store(
        tmp_path / "wide.zarr",
        np.ones((5, cfg.patch_dim + 1)),
        encoder=cfg.patch_encoders[0],
        tile_size=cfg.tile_size,
        mpp=cfg.mpp,
    )
    with pytest.raises(InvalidParameterError, match=f"takes {cfg.patch_dim}"):
        cfg.check_store(open_store(wide), cfg.patch_encoders[0])


def test_embed_slides_writes_and_goes_on_past_a_bad_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stores = tmp_path / "stores"
    feats = {f"s{i}": rng.standard_normal((7 + i, 1536)).astype(np.float32) for i in range(3)}
    for key, f in feats.items():
        write_store(stores / f"{key}.zarr", f, encoder="uni2-h", tile_size=256, mpp=0.5)
    write_store(stores / "bad.zarr", feats["s0"], encoder="uni2-h", tile_size=224, mpp=0.5)  # wrong tiling
    model = create_slide_encoder("feather-uni2", pretrained=False)
    res = embed_slides(stores, model)
    assert [p.name for p in res.paths] == ["s0.zarr", "s1.zarr", "s2.zarr"]
    assert (
        list(res.failed) == [str(stores / "bad.zarr")]
        and "tiled at 224 px" in res.failed[str(stores / "bad.zarr")]
    )
    assert res.embeddings.shape == (3, 512) and res.name == "feather-uni2" and res.encoders == ["uni2-h"] * 3
    for i, p in enumerate(res.paths):
        stored = open_store(p, slide_embedding="feather-uni2").slide_embedding("feather-uni2")
        np.testing.assert_allclose(stored, res.embeddings[i])
        np.testing.assert_allclose(stored, model.embed(feats[f"s{i}"]).numpy(), rtol=1e-6)
    # mean pooling of any encoder: the numpy mean, stored as mean-<encoder>
    mean = embed_slides(sorted(stores.glob("s*.zarr")), "mean", write=True)
    assert mean.name == "mean-uni2-h"
    np.testing.assert_allclose(mean.embeddings[1], feats["s1"].mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidParameterError, match="no slide could be embedded"):
        embed_slides(stores / "bad.zarr", model)


def test_mean_needs_the_encoder_named_when_a_store_has_two(tmp_path: Path) -> None:
    p = write_store(tmp_path / "a.zarr", np.ones((4, 8)), encoder="he-descriptor-x", tile_size=224)
    write_store(p, np.ones((4, 3)), encoder="other-x", tile_size=224)
    res = embed_slides(p, "mean", encoder="other-x", write=False)
    assert res.embeddings.shape == (1, 3)
    with pytest.raises(InvalidParameterError, match="pass encoder="):
        embed_slides(p, "mean", write=False)


def test_published_adapter_equals_the_published_model(published_dirs, tmp_path: Path) -> None:
    from slidescope.vlm.published import load_published_model

    titan = create_slide_encoder("titan", weights=published_dirs["titan"], trust_remote_code=True)
    ref = load_published_model("titan", published_dirs["titan"], trust_remote_code=True)
    feats = torch.randn(9, 768)
    coords = torch.from_numpy(np.stack([np.arange(9) % 3, np.arange(9) // 3], 1) * 1024)
    torch.testing.assert_close(
        titan.embed(feats, coords, 1024), ref.embed_tiles(feats, coords=coords, tile_extent=1024).float()
    )
    from slidescope.vlm.published import RemoteCodeError

    with pytest.raises(RemoteCodeError):
        create_slide_encoder("prism", weights=published_dirs["prism"])


def test_pool_patients() -> None:
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    ids, pooled = pool_patients(emb, ["p2", "p1", "p2", "p3"])
    assert ids == ["p2", "p1", "p3"]
    np.testing.assert_allclose(pooled, [emb[[0, 2]].mean(0), emb[1], emb[3]])
    with pytest.raises(InvalidParameterError):
        pool_patients(emb, ["a"])


def test_a_registered_slide_encoder_is_listed_and_built() -> None:
    from slidescope.features.slide_encoders import SlideEncoder

    class Max(SlideEncoder):
        def forward(self, features, coords=None, patch_size=None):
            return features.max(0).values

    cfg = SlideEncoderConfig(
        name="test-max", family="max", embed_dim=None, layout="no weights", license="none", weight_free=True
    )
    register_slide_encoder(cfg, Max)
    try:
        assert "test-max" in list_slide_encoders()
        z = create_slide_encoder("test-max").embed(torch.tensor([[1.0, 5.0], [3.0, 2.0]]))
        assert z.tolist() == [3.0, 5.0]
    finally:
        from slidescope.features.slide_encoders import _registry

        _registry._REGISTRY.pop("test-max")


def test_cli_lists_slide_encoders_and_embeds(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from slidescope.cli import app

    res = CliRunner().invoke(app, ["encoders"])
    assert res.exit_code == 0, res.output
    table = res.output.split("slide encoders")[1]
    for name in list_slide_encoders():
        cfg = get_slide_encoder_config(name)
        line = next(ln for ln in table.splitlines() if ln.startswith(name + " "))
        assert (cfg.patch_encoders[0] if cfg.patch_encoders else "any") in line and cfg.license in line
    rng = np.random.default_rng(1)
    feats = [rng.standard_normal((5, 6)).astype(np.float32) for _ in range(2)]
    for i, f in enumerate(feats):
        write_store(tmp_path / "stores" / f"s{i}.zarr", f, encoder="enc-x", tile_size=224)
    write_store(tmp_path / "stores" / "t.zarr", feats[0], encoder="enc-y", tile_size=224)
    out = tmp_path / "emb.csv"
    res = CliRunner().invoke(
        app,
        [
            "embed-slides",
            str(tmp_path / "stores"),
            "--slide-encoder",
            "mean",
            "--encoder",
            "enc-x",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 1  # t.zarr has no enc-x embeddings: reported, the others written
    assert "t.zarr" in res.output and "2 slide embeddings (6-d) written as 'mean-enc-x'" in res.output
    rows = out.read_text().splitlines()
    assert rows[0].startswith("slide,d0") and [r.split(",")[0] for r in rows[1:]] == ["s0", "s1"]
    np.testing.assert_allclose([float(v) for v in rows[2].split(",")[1:]], feats[1].mean(0), rtol=1e-5)


def test_slide_embeddings_feed_the_few_shot_classifiers(tmp_path: Path) -> None:
    """embed_slides' matrix goes straight into slidescope.vlm.fewshot (no slide-text model needed)."""
    from slidescope.vlm.fewshot import knn, linear_probe

    rng = np.random.default_rng(3)
    centre = {"a": rng.standard_normal(16) * 3, "b": rng.standard_normal(16) * 3}
    labels = ["a", "b"] * 6
    for i, lab in enumerate(labels):
        tiles = centre[lab] + rng.standard_normal((20, 16))
        write_store(tmp_path / f"s{i:02d}.zarr", tiles, encoder="enc-z", tile_size=224)
    res = embed_slides(tmp_path, "mean", write=False)
    y = np.array([lab == "b" for lab in labels], np.int64)
    probe = linear_probe(res.embeddings[:8], y[:8], seed=0)
    assert (probe.predict(res.embeddings[8:]).numpy() == y[8:]).all()
    assert (knn(res.embeddings[:8], y[:8], k=3).predict(res.embeddings[8:]).numpy() == y[8:]).all()


def test_embed_patients(tmp_path: Path) -> None:
    """MOOZY's case transformer over a patient's slides; other slide encoders average the slide embeddings."""
    rng = np.random.default_rng(5)
    paths, feats = [], []
    for i in range(3):
        f = rng.standard_normal((6 + i, 384)).astype(np.float32)
        paths.append(
            write_store(tmp_path / f"m{i}.zarr", f, encoder="lunit-dino-vits8", tile_size=224, mpp=0.5)
        )
        feats.append(f)
    bad = write_store(tmp_path / "bad.zarr", feats[0], encoder="lunit-dino-vits8", tile_size=256, mpp=0.5)
    moozy = create_slide_encoder("moozy", pretrained=False)
    ids, emb, failed = embed_patients([*paths, bad], ["p1", "p2", "p1", "p2"], moozy)
    assert ids == ["p1", "p2"] and emb.shape == (2, 768) and list(failed) == [str(bad)]
    stores = [open_store(p) for p in (paths[0], paths[2])]
    expected = moozy.embed_patient(
        [(s.embeddings("lunit-dino-vits8"), s.coords, s.tile_extent[0]) for s in stores]
    )
    np.testing.assert_allclose(emb[0], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(
        emb[0],
        (moozy.embed(feats[0], stores[0].coords, 224) + moozy.embed(feats[2], stores[1].coords, 224)).numpy()
        / 2,
    )
    ids, emb, _ = embed_patients(paths, ["a", "b", "a"], "mean")
    np.testing.assert_allclose(emb[0], (feats[0].mean(0) + feats[2].mean(0)) / 2, rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidParameterError, match="one patient per store"):
        embed_patients(paths, ["a"], "mean")
