"""Patient bags (``train --bag patient``, ``score --patients``): one bag per patient, the tiles of all its
slides one after the other.

The cohort is written here as stores of known tile embeddings: every patient has two slides; a tumour
patient's marker tiles (dimension 0 raised) are split between its two slides, half in each. Checked against
what we wrote (not against the reading code): the bag is exactly the two slides' arrays concatenated in
manifest order; scores equal the checkpoints' own forward pass on that concatenation; the held-out AUROC is
scikit-learn's on the out-of-fold CSV.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from slidescope.errors import InvalidParameterError

ENC = "he-descriptor"
DIM = 8
N_TILES = 12
SMALL = '{"embed_dim": 16, "attn_dim": 8, "dropout": 0.0}'


def _write_store(path: Path, emb: np.ndarray) -> Path:
    from slidescope.features.encoders import get_encoder_config
    from slidescope.features.store import CacheKey, SlideStore

    n = len(emb)
    coords = np.stack([np.arange(n) % 4, np.arange(n) // 4], 1).astype(np.int64) * 224
    store = SlideStore.create_or_open(
        path,
        slide_attrs={"fingerprint": path.name, "mpp": [0.5, 0.5]},
        tiling={"tile_size": 224, "mpp": 0.5, "extent": [224, 224]},
        coords=coords,
        tissue_fraction=np.ones(n, np.float32),
    )
    enc = {**get_encoder_config(ENC).to_dict(), "embed_dim": DIM}
    key = CacheKey(
        encoder=enc, weights_digest=None, precision="fp32", dtype="float32", package_version="test"
    )
    writer = store.prepare_embeddings(key, embed_dim=DIM)
    for c in range(-(-n // writer.chunk_rows)):
        writer.write_chunk(c, emb[c * writer.chunk_rows : (c + 1) * writer.chunk_rows])
    writer.finish()
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("patient_bags")
    store = root / "stores"
    rng = np.random.default_rng(0)
    rows, arrays = [], {}
    for p in range(32):
        label = "tumour" if p % 2 else "normal"
        for half in ("a", "b"):
            emb = rng.normal(0, 1, (N_TILES, DIM)).astype(np.float32)
            if label == "tumour":  # half of the patient's 6 marker tiles in each slide
                emb[rng.choice(N_TILES, 3, replace=False), 0] += 6.0
            name = f"p{p:02d}{half}"
            arrays[name] = emb
            _write_store(store / f"{name}.zarr", emb)
            rows.append({"slide": f"{name}.svs", "patient": f"P{p:02d}", "label": label})
    # the b slide listed first for one patient: the bag follows the manifest's order
    rows[2], rows[3] = rows[3], rows[2]
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["slide", "patient", "label"])
        w.writeheader()
        w.writerows(rows)
    return root, manifest, store, rows, arrays


@pytest.fixture(scope="module")
def trained(cohort):
    from slidescope.cli import app

    root, manifest, store, _, _ = cohort
    out = root / "run"
    args = ["train", "--manifest", str(manifest), "--stores", str(store), "--encoder", ENC, "--out", str(out)]
    args += ["--bag", "patient", "--folds", "2", "--epochs", "30", "--batch-size", "4", "--lr", "3e-3"]
    args += [
        "--model-kwargs",
        SMALL,
        "--max-instances",
        "0",
        "--early-stopping-patience",
        "15",
        "--seed",
        "1",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    return out


def test_patient_bag_is_the_concatenation_of_its_slides_in_manifest_order(cohort) -> None:
    from slidescope.mil import patient_bags, read_manifest
    from slidescope.mil.data import BagDataset

    _, manifest, store, rows, arrays = cohort
    bags = patient_bags(read_manifest(manifest, store=store, encoder=ENC))
    assert [b.patient for b in bags] == list(dict.fromkeys(r["patient"] for r in rows))
    ds = BagDataset(bags, store=store, encoder=ENC, class_names=["normal", "tumour"])
    for i, b in enumerate(bags):
        names = [r["slide"].removesuffix(".svs") for r in rows if r["patient"] == b.patient]
        assert b.key == ";".join(names) and b.label == next(
            r["label"] for r in rows if r["patient"] == b.patient
        )
        item = ds[i]
        np.testing.assert_array_equal(item["features"].numpy(), np.concatenate([arrays[n] for n in names]))
        assert item["label"] == ["normal", "tumour"].index(b.label)
    assert bags[1].key == "p01b;p01a"  # the manifest's order, not the names'


def test_patient_with_mixed_labels_is_an_error_that_says_what_to_do(cohort, tmp_path) -> None:
    from slidescope.mil.train import train

    _, manifest, store, rows, _ = cohort
    bad = [dict(r) for r in rows]
    bad[0]["label"] = "tumour"  # P00's first slide; its second stays normal
    path = tmp_path / "mixed.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["slide", "patient", "label"])
        w.writeheader()
        w.writerows(bad)
    (tmp_path / "p00a.svs").touch()
    with pytest.raises(
        InvalidParameterError, match=r"P00.*different labels.*correct the manifest.*--bag slide"
    ):
        train(path, store=store, encoder=ENC, out=tmp_path / "run", bag="patient", folds=2)
    with pytest.raises(InvalidParameterError, match="unknown bag 'case'"):
        train(manifest, store=store, encoder=ENC, out=tmp_path / "run", bag="case", folds=2)


def test_patient_bags_train_and_oof_rows_are_patients(cohort, trained) -> None:
    import json

    _, _, _, rows, _ = cohort
    with open(trained / "oof_predictions.csv", newline="") as fh:
        oof = list(csv.DictReader(fh))
    patients = sorted({r["patient"] for r in rows})
    assert sorted(r["patient"] for r in oof) == patients  # one held-out row per patient
    assert all(len(r["slide"].split(";")) == 2 for r in oof)
    y = np.array([r["label"] == "tumour" for r in oof])
    auroc = roc_auc_score(y, [float(r["prob_tumour"]) for r in oof])
    assert auroc >= 0.85, auroc  # markers split across the two slides are found in the patient's bag
    assert json.loads((trained / "run.json").read_text())["config"]["bag"] == "patient"


def test_score_patients_concatenates_and_splits_attention_back(cohort, trained, tmp_path) -> None:
    import torch

    from slidescope.cli import app
    from slidescope.features.store import open_store
    from slidescope.mil import read_patients
    from slidescope.mil.score import score
    from slidescope.mil.task import load_task

    _, manifest, store, rows, arrays = cohort
    ckpts = sorted(trained.glob("fold*/best.ckpt"))
    res = score(ckpts, [store], patients=read_patients(manifest), out_csv=tmp_path / "p.csv", name="pb")
    assert [r.slide for r in res] == sorted({r["patient"] for r in rows})  # stores in name order
    tasks = [load_task(c) for c in ckpts]
    for r in res:
        bag = np.concatenate([arrays[n] for n in r.slides])
        with torch.no_grad():
            want = np.mean([t.predict_bag(bag)[0].numpy() for t in tasks], axis=0)
        np.testing.assert_allclose([r.probs["normal"], r.probs["tumour"]], want, atol=1e-6)
        parts = [open_store(store / f"{n}.zarr").scores("pb/attention") for n in r.slides]
        assert [len(p) for p in parts] == [N_TILES, N_TILES]
        np.testing.assert_allclose(np.concatenate(parts), r.attention, atol=1e-7)
    with open(tmp_path / "p.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0])[:2] == ["patient", "slides"] and table[0]["slides"] == "p00a;p00b"
    # the CLI: one line per patient
    out = CliRunner().invoke(
        app, ["score", str(store), "--model", str(ckpts[0]), "--patients", str(manifest), "--no-write-scores"]
    )
    assert out.exit_code == 0, (out.output, out.exception)
    assert sum(line.startswith("P") for line in out.output.splitlines()) == 32
    with pytest.raises(InvalidParameterError, match="no patient for slide"):
        score(ckpts, [store], patients={"p00a": "P00"})


def test_checkpoint_records_its_bag_and_score_warns_on_the_other_kind(
    cohort, trained, caplog, tmp_path
) -> None:
    """The bag kind travels in the checkpoint: a patient-bag model scored slide by slide (no --patients) is
    warned about, scored with its patients is not; a checkpoint without the record (older) warns of nothing;
    an ensemble mixing kinds is refused."""
    import logging

    import torch

    from slidescope.mil import read_patients
    from slidescope.mil.score import score
    from slidescope.mil.task import load_task

    _, manifest, store, _, _ = cohort
    ckpts = sorted(trained.glob("fold*/best.ckpt"))
    assert {load_task(c).bag for c in ckpts} == {"patient"}

    with caplog.at_level(logging.WARNING, logger="slidescope.mil.score"):
        score(ckpts[:1], [store], write_scores=False, patients=read_patients(manifest))
    assert "patient bags" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="slidescope.mil.score"):
        score(ckpts[:1], [store], write_scores=False)
    assert "trained on patient bags" in caplog.text and "--patients" in caplog.text
    # an older checkpoint (no record) and one marked "slide"
    data = torch.load(ckpts[0], weights_only=True)
    old, slide = tmp_path / "old.ckpt", tmp_path / "slide.ckpt"
    del data["hyper_parameters"]["bag"]
    torch.save(data, old)
    data["hyper_parameters"]["bag"] = "slide"
    torch.save(data, slide)
    assert load_task(old).bag is None and load_task(slide).bag == "slide"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="slidescope.mil.score"):
        score([old], [store], write_scores=False)
        score([slide], [store], write_scores=False)
    assert "bags" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="slidescope.mil.score"):
        score([slide], [store], write_scores=False, patients=read_patients(manifest))
    assert "trained on slide bags" in caplog.text
    with pytest.raises(InvalidParameterError, match="different bags"):
        score([ckpts[0], slide], [store], write_scores=False)
