"""Supervised MIL: manifests, patient-level splits, training that learns, checkpoints, scoring, heatmaps.

Everything runs on the synthetic cohort of ``conftest.py`` (he-descriptor embeddings) on the CPU and
uses the real aggregator registry (``slidescope.mil.aggregators``).
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from slidescope.errors import InvalidParameterError
from slidescope.features.store import open_store, store_path
from slidescope.mil.data import (
    BagDataset,
    SlideRow,
    Splits,
    collate_bags,
    make_splits,
    read_manifest,
)
from slidescope.mil.heatmap import heatmap
from slidescope.mil.score import score
from slidescope.mil.task import EncoderMismatchError, MILTask, load_task
from slidescope.mil.train import auroc, train

ENC = "he-descriptor"
SMALL = {"embed_dim": 64, "attn_dim": 32, "dropout": 0.1}


def _train(cohort, out: Path, **kw):
    args = dict(
        store=cohort.store,
        encoder=ENC,
        out=out,
        model="abmil",
        model_kwargs=SMALL,
        folds=3,
        epochs=20,
        batch_size=4,
        lr=1e-3,
        early_stopping_patience=8,
        bootstrap=200,
    )
    args.update(kw)
    return train(cohort.manifest, **args)


@pytest.fixture(scope="module")
def run(mil_cohort, tmp_path_factory):
    return _train(mil_cohort, tmp_path_factory.mktemp("runs") / "abmil", bootstrap=1000)


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_manifest(path: Path, rows: list[dict[str, str]], cohort_dir: Path) -> Path:
    rows = [{**r, "slide": str(cohort_dir / r["slide"])} for r in rows]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _tumour_tiles(cohort, row: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(is_tumour (N,), store coords) : a tile is tumour if >= 50% of its footprint is tumour in the mask."""
    from PIL import Image

    st = open_store(store_path(cohort.store, row["slide"]))
    mask = np.asarray(Image.open(cohort.manifest.parent / row["tumour_mask"])) > 127
    f = float(row["mask_mpp"]) / st.attrs["slide"]["mpp"][0]
    tw, th = st.tile_extent
    y = []
    for x0, y0 in st.coords.tolist():
        sub = mask[int(y0 // f) : int(np.ceil((y0 + th) / f)), int(x0 // f) : int(np.ceil((x0 + tw) / f))]
        y.append(sub.size > 0 and sub.mean() >= 0.5)
    return np.array(y), st.coords


# -- learning ---------------------------------------------------------------------------------------


def test_abmil_learns_and_attention_localises_tumour(run, mil_cohort) -> None:
    oof = _csv(run.oof_csv)
    assert len(oof) == 24 and {o["fold"] for o in oof} == {"0", "1", "2"}
    labels = np.array([o["label"] == "tumour" for o in oof], dtype=int)
    probs = np.array([float(o["prob_tumour"]) for o in oof])
    oof_auc = auroc(labels, probs)
    assert oof_auc >= 0.95, oof_auc
    assert run.pooled["auroc"] == pytest.approx(oof_auc)
    lo, hi = run.pooled_ci["auroc"]
    assert lo <= oof_auc <= hi
    # attention of each tumour slide from the fold model that never saw it
    rows = {Path(r["slide"]).stem: r for r in mil_cohort.rows}
    ys, atts = [], []
    for o in oof:
        if o["label"] != "tumour":
            continue
        res = score(
            [run.out / f"fold{o['fold']}" / "best.ckpt"],
            [store_path(mil_cohort.store, o["slide"] + ".svs")],
            write_scores=False,
        )[0]
        y, _ = _tumour_tiles(mil_cohort, rows[o["slide"]])
        ys.append(y)
        atts.append(res.attention)
    y = np.concatenate(ys)
    assert 5 <= y.sum() < len(y)
    tile_auc = auroc(y.astype(int), np.concatenate(atts))
    print(
        f"OOF AUROC {oof_auc:.3f}; attention tile AUROC {tile_auc:.3f} ({int(y.sum())} tumour of {len(y)} tiles)"
    )
    assert tile_auc >= 0.85, tile_auc
    # results.csv: every fold and the pooled row, with CIs
    res = _csv(run.results_csv)
    assert {r["fold"] for r in res} == {"0", "1", "2", "pooled"}
    pooled = {r["metric"]: r for r in res if r["fold"] == "pooled"}
    assert float(pooled["auroc"]["value"]) == pytest.approx(oof_auc, abs=1e-5)
    assert pooled["auroc"]["ci_low"] and pooled["balanced_accuracy"]["value"]
    assert "pooled" in run.summary()


def test_folds_hold_out_whole_patients(run, mil_cohort) -> None:
    splits = Splits.load(run.splits)
    oof = _csv(run.oof_csv)
    for o in oof:
        assert int(o["fold"]) == splits.patients[o["patient"]]
    for f in run.folds:
        assert f.n_train + f.n_val + f.n_test == 24
        assert (run.out / f"fold{f.fold}" / "best.ckpt").is_file()
        assert (run.out / f"fold{f.fold}" / "done.json").is_file()


# -- splits -----------------------------------------------------------------------------------------


def _rows(mil_cohort) -> list[SlideRow]:
    return read_manifest(mil_cohort.manifest, store=mil_cohort.store, encoder=ENC)


def test_splits_patient_level_and_stratified(mil_cohort, tmp_path) -> None:
    rows = _rows(mil_cohort)
    assert any(
        n == 2 for n in Counter(r.patient for r in rows).values()
    )  # the cohort has multi-slide patients
    splits = make_splits(rows, folds=4, seed=3)
    fold_of_slide = {r.key: splits.fold_of(r) for r in rows}
    by_patient: dict[str, set[int]] = {}
    for r in rows:
        by_patient.setdefault(r.patient, set()).add(fold_of_slide[r.key])
    assert all(len(f) == 1 for f in by_patient.values())
    # stratified: each fold holds both labels, patient counts per label differ by at most one
    for label in ("tumour", "normal"):
        counts = Counter(splits.patients[p] for p in {r.patient for r in rows if r.label == label})
        assert set(counts) == {0, 1, 2, 3}
        assert max(counts.values()) - min(counts.values()) <= 1
    # seeded and saved identically
    assert make_splits(rows, folds=4, seed=3) == splits
    assert make_splits(rows, folds=4, seed=4) != splits
    assert Splits.load(splits.save(tmp_path / "splits.json")) == splits


def test_site_preserving_folds_hold_out_sites(mil_cohort, tmp_path) -> None:
    # the synthetic cohort deals sites per slide; give every patient the site of its first slide
    first: dict[str, str] = {}
    rows = [{**r, "site": first.setdefault(r["patient"], r["site"])} for r in mil_cohort.rows]
    rows = read_manifest(_write_manifest(tmp_path / "m.csv", rows, mil_cohort.manifest.parent))
    splits = make_splits(rows, folds=3, site_preserving=True)
    assert splits.site_preserving and sorted(splits.sites) == ["A", "B", "C"]
    for k in range(3):
        held = {r.site for r in splits.rows_in(rows, k)}
        train_sites = {r.site for r in rows if splits.fold_of(r) != k}
        assert held and not held & train_sites
    with pytest.raises(InvalidParameterError, match="at least as many sites as folds"):
        make_splits(rows, folds=4, site_preserving=True)
    # a patient seen at two sites goes with one of them (never into two folds), with a warning
    with pytest.warns(UserWarning, match="several sites"):
        mixed = make_splits(_rows(mil_cohort), folds=3, site_preserving=True)
    assert set(mixed.patients) == {r.patient for r in rows}


def test_patient_with_mixed_labels_warns() -> None:
    rows = [
        SlideRow(f"/x/s{i}.svs", "tumour" if i % 2 else "normal", f"P{i // 2 if i < 2 else i}")
        for i in range(8)
    ]
    with pytest.warns(UserWarning, match="different labels"):
        make_splits(rows, folds=2)


# -- manifests --------------------------------------------------------------------------------------


def test_bad_manifests(mil_cohort, tmp_path) -> None:
    cdir = mil_cohort.manifest.parent
    rows = mil_cohort.rows
    m = tmp_path / "m.csv"
    (tmp_path / "nolabel.csv").write_text("slide,patient\na.svs,P1\n")
    with pytest.raises(InvalidParameterError, match="lacks the column.*label"):
        read_manifest(tmp_path / "nolabel.csv")
    _write_manifest(m, rows, cdir)
    with pytest.raises(InvalidParameterError, match=r"unknown label\(s\) tumour"):
        read_manifest(m, labels=["normal", "benign"])
    _write_manifest(m, [r for r in rows if r["label"] == "normal"], cdir)
    with pytest.raises(InvalidParameterError, match="a classifier needs at least two classes"):
        read_manifest(m)
    # slides without a store or without embeddings: all listed in one error, before any training
    store = tmp_path / "store"
    shutil.copytree(mil_cohort.store, store)
    gone = Path(rows[0]["slide"]).stem
    shutil.rmtree(store / f"{gone}.zarr")
    no_emb = Path(rows[1]["slide"]).stem
    (feats,) = (store / f"{no_emb}.zarr").glob("tilings/*/features")
    shutil.move(feats / ENC, feats / "other")
    _write_manifest(m, rows, cdir)
    with pytest.raises(InvalidParameterError) as err:
        read_manifest(m, store=store, encoder=ENC)
    msg = str(err.value)
    assert f"{gone} (no store" in msg and f"{no_emb} (no complete 'he-descriptor' embeddings)" in msg
    assert "2 of 24 slides" in msg and "slidescope extract --encoder he-descriptor" in msg
    with pytest.raises(InvalidParameterError, match="2 of 24 slides"):
        train(m, store=store, encoder=ENC, out=tmp_path / "run", folds=2, epochs=1)
    assert not (tmp_path / "run").exists()


# -- bags -------------------------------------------------------------------------------------------


def test_bags_subsample_training_and_pad_with_mask(mil_cohort) -> None:
    rows = _rows(mil_cohort)[:3]
    full = BagDataset(rows, store=mil_cohort.store, encoder=ENC, class_names=["normal", "tumour"])
    capped = BagDataset(
        rows, store=mil_cohort.store, encoder=ENC, class_names=["normal", "tumour"], max_instances=5, seed=1
    )
    again = BagDataset(
        rows, store=mil_cohort.store, encoder=ENC, class_names=["normal", "tumour"], max_instances=5, seed=1
    )
    n = [full[i]["features"].shape[0] for i in range(3)]
    assert all(k > 5 for k in n) and full[0]["features"].dtype == torch.float32
    a, b = capped[0]["features"], again[0]["features"]
    assert a.shape == (5, 98) and torch.equal(a, b)
    batch = collate_bags([full[i] for i in range(3)])
    assert batch["features"].shape == (3, max(n), 98)
    assert batch["mask"].sum(1).tolist() == n
    assert float(batch["features"][~batch["mask"]].abs().sum()) == 0.0
    assert batch["labels"].tolist() == [["normal", "tumour"].index(r.label) for r in rows]


# -- checkpoints ------------------------------------------------------------------------------------


def test_checkpoint_rebuilds_itself_and_refuses_other_encoder(run, mil_cohort) -> None:
    ckpt = run.out / "fold0" / "best.ckpt"
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    hp = raw["hyper_parameters"]
    assert hp["aggregator"] == "abmil" and hp["encoder"] == ENC and hp["embed_dim"] == 98
    assert hp["slidescope_version"] and json.loads(json.dumps(dict(hp))) == dict(hp)  # primitives only
    task = load_task(ckpt, encoder=ENC, embed_dim=98)
    lit = MILTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    oof = {o["slide"]: o for o in _csv(run.oof_csv) if o["fold"] == "0"}
    for slide, o in oof.items():
        emb = open_store(store_path(mil_cohort.store, slide + ".svs")).embeddings(ENC)
        p1, s1 = task.predict_bag(emb)
        p2, s2 = lit.predict_bag(emb)
        assert torch.allclose(p1, p2) and torch.allclose(s1, s2)
        assert float(p1[1]) == pytest.approx(float(o["prob_tumour"]), abs=1e-5)
    with pytest.raises(
        EncoderMismatchError,
        match=r"trained on 'he-descriptor' 98-d embeddings; these are 'uni' "
        r"1024-d: extract with --encoder he-descriptor",
    ):
        load_task(ckpt, encoder="uni", embed_dim=1024)


# -- scoring and heatmaps ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored(run, mil_cohort, tmp_path_factory):
    store = tmp_path_factory.mktemp("scored") / "store"
    shutil.copytree(mil_cohort.store, store)
    out_csv = store.parent / "preds.csv"
    results = score(run.checkpoints, [store], out_csv=out_csv)
    return store, out_csv, results


def test_score_ensemble_csv_and_store(run, scored, mil_cohort) -> None:
    store, out_csv, results = scored
    rows = _csv(out_csv)
    assert len(rows) == 24 and list(rows[0]) == ["slide", "prob_normal", "prob_tumour", "predicted"]
    truth = {Path(r["slide"]).stem: r["label"] for r in mil_cohort.rows}
    for r in rows:
        assert float(r["prob_normal"]) + float(r["prob_tumour"]) == pytest.approx(1, abs=1e-5)
        assert r["predicted"] == ("tumour" if float(r["prob_tumour"]) > 0.5 else "normal")
    assert sum(r["predicted"] == truth[r["slide"]] for r in rows) >= 22  # the fold models saw most slides
    # the ensemble is the mean of the single checkpoints
    one = results[0]
    singles = [score([c], [store / f"{one.slide}.zarr"], write_scores=False)[0] for c in run.checkpoints]
    assert one.probs["tumour"] == pytest.approx(np.mean([s.probs["tumour"] for s in singles]), abs=1e-6)
    np.testing.assert_allclose(one.attention, np.mean([s.attention for s in singles], axis=0), atol=1e-6)
    # written into the store under scores/<run name>/attention with the probabilities
    st = open_store(store / f"{one.slide}.zarr")
    att = st.scores("abmil/attention")
    assert att.shape == (st.n_tiles,) and att.sum() == pytest.approx(1, abs=1e-4)
    attrs = dict(st._group["scores"]["abmil/attention"].attrs)
    assert attrs["probabilities"]["tumour"] == pytest.approx(one.probs["tumour"])
    assert attrs["predicted"] == one.predicted and len(attrs["checkpoints"]) == 3


def test_score_refuses_store_without_the_encoder(run, mil_cohort, tmp_path) -> None:
    name = Path(mil_cohort.rows[0]["slide"]).stem
    shutil.copytree(mil_cohort.store / f"{name}.zarr", tmp_path / f"{name}.zarr")
    (feats,) = (tmp_path / f"{name}.zarr").glob("tilings/*/features")
    shutil.move(feats / ENC, feats / "uni")
    with pytest.raises(
        EncoderMismatchError, match="trained on 'he-descriptor' 98-d embeddings.*--encoder he-descriptor"
    ):
        score(run.checkpoints[:1], [tmp_path / f"{name}.zarr"])


def test_heatmap_paints_high_scores_hot_and_geojson_matches_coords(scored, mil_cohort, tmp_path) -> None:
    from PIL import Image

    from slidescope.mil.heatmap import colormap

    store, _, results = scored
    res = max((r for r in results if r.slide.endswith("_T")), key=lambda r: r.probs["tumour"])
    slide = mil_cohort.manifest.parent / "slides" / f"{res.slide}.svs"
    png = heatmap(
        slide,
        store,
        scores="abmil/attention",
        out_png=tmp_path / "h.png",
        out_geojson=tmp_path / "h.json",
        size=768,
    )
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    st = open_store(store / f"{res.slide}.zarr")
    att, coords, (tw, th) = st.scores("abmil/attention"), st.coords, st.tile_extent
    scale = 768 / 1536
    assert img.shape[1] > 768  # thumbnail + colour bar

    def centre(i: int) -> np.ndarray:
        x, y = coords[i]
        return img[int((y + th / 2) * scale), int((x + tw / 2) * scale)]

    from slidescope.wsi import open_slide

    with open_slide(slide) as sl:
        thumb = sl.get_thumbnail((768, 768)).astype(float)

    def painted(i: int) -> np.ndarray:
        """The colour painted over tile i: undo the 50% blend with the thumbnail."""
        x, y = coords[i]
        r, c = int((y + th / 2) * scale), int((x + tw / 2) * scale)
        a = 128 / 255
        return (img[r, c] - (1 - a) * thumb[r, c]) / a

    hot, cold = painted(int(att.argmax())), painted(int(att.argmin()))
    assert np.abs(hot - colormap(np.array(1.0))).max() <= 6, hot  # the yellow-white end of inferno
    assert np.abs(cold - colormap(np.array(0.0))).max() <= 6, cold  # the black end
    # the colour bar runs from the hottest colour at the top to the coldest at the bottom
    bar_x = 768 + 10 + 3
    assert np.abs(img[12, bar_x] - colormap(np.array(1.0))).max() <= 12
    assert np.abs(img[img.shape[0] - 12, bar_x] - colormap(np.array(0.0))).max() <= 12
    gj = json.loads((tmp_path / "h.json").read_text())
    assert len(gj["features"]) == st.n_tiles
    for f, (x, y), s in zip(gj["features"], coords.tolist(), att.tolist(), strict=True):
        ring = f["geometry"]["coordinates"][0]
        assert f["geometry"]["type"] == "Polygon" and ring[0] == [x, y] and ring[2] == [x + tw, y + th]
        assert f["properties"]["objectType"] == "tile"
        assert f["properties"]["measurements"]["score"] == pytest.approx(s)


# -- resume -----------------------------------------------------------------------------------------


class _Interrupt(RuntimeError):
    pass


def test_interrupted_training_resumes_from_last_checkpoint(mil_cohort, tmp_path) -> None:
    import lightning as L

    class StopInFold1(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.default_root_dir.endswith("fold1") and trainer.current_epoch == 3:
                raise _Interrupt("power cut")

    out = tmp_path / "run"
    kw = dict(folds=2, epochs=6, early_stopping_patience=100, bootstrap=50)
    with pytest.raises(_Interrupt):
        _train(mil_cohort, out, callbacks=[StopInFold1()], **kw)
    assert (out / "fold0" / "done.json").exists() and not (out / "fold1" / "done.json").exists()
    last = torch.load(out / "fold1" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2
    best0 = (out / "fold0" / "best.ckpt").read_bytes()
    res = _train(mil_cohort, out, **kw)
    assert [f.status for f in res.folds] == ["skipped", "resumed"]
    assert (out / "fold0" / "best.ckpt").read_bytes() == best0
    assert torch.load(out / "fold1" / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] == 5
    assert len((_csv(res.oof_csv))) == 24
    with pytest.raises(InvalidParameterError, match="another configuration.*seed"):
        _train(mil_cohort, out, seed=1, **kw)


# -- CLI --------------------------------------------------------------------------------------------


def test_cli_train_score_heatmap(mil_cohort, tmp_path) -> None:
    from typer.testing import CliRunner

    from slidescope.cli import app

    runner = CliRunner()
    out = tmp_path / "runs" / "cli"
    r = runner.invoke(
        app,
        [
            "train",
            "--manifest",
            str(mil_cohort.manifest),
            "--store",
            str(mil_cohort.store),
            "--encoder",
            ENC,
            "--model",
            "abmil",
            "--model-kwargs",
            json.dumps(SMALL),
            "--folds",
            "2",
            "--epochs",
            "3",
            "--lr",
            "1e-3",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "pooled" in r.output and "auroc" in r.output and (out / "results.csv").exists()
    store = tmp_path / "store"
    shutil.copytree(mil_cohort.store, store)
    r = runner.invoke(
        app,
        [
            "score",
            "--model",
            str(out / "fold0" / "best.ckpt"),
            "--model",
            str(out / "fold1" / "best.ckpt"),
            str(store),
            "--out",
            str(tmp_path / "p.csv"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert len((_csv(tmp_path / "p.csv"))) == 24 and "'cli/attention'" in r.output
    slide = mil_cohort.manifest.parent / mil_cohort.rows[0]["slide"]
    r = runner.invoke(
        app,
        [
            "heatmap",
            str(slide),
            "--store",
            str(store),
            "--scores",
            "cli/attention",
            "--out",
            str(tmp_path / "h.png"),
            "--geojson",
            str(tmp_path / "h.geojson"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "h.png").stat().st_size > 1000 and (tmp_path / "h.geojson").exists()


def test_relative_output_folder(mil_cohort, tmp_path, monkeypatch) -> None:
    """`slidescope train --out runs/x` from the current folder (the demo's default) works."""
    monkeypatch.chdir(tmp_path)
    res = _train(mil_cohort, Path("runs") / "rel", folds=2, epochs=1)
    assert all((tmp_path / "runs" / "rel" / f"fold{k}" / "best.ckpt").exists() for k in range(2))
    assert len(res.folds) == 2
