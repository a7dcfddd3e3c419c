"""Regression and survival MIL: metrics, losses, manifests, splits, training that learns, CLI and scoring.

Runs on the synthetic cohort of ``conftest.py`` (he-descriptor embeddings, real aggregator registry).
The survival cohort is built from the same manifest: tumour slides get shorter times (the more tumour,
the shorter), about 30% of patients are censored (seeded).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from slidescope.errors import InvalidParameterError
from slidescope.mil.data import make_splits, read_manifest
from slidescope.mil.score import score
from slidescope.mil.task import MILTask, cox_loss, discrete_time_nll, load_task
from slidescope.mil.train import concordance_index, regression_metrics, train

ENC = "he-descriptor"
SMALL = {"embed_dim": 64, "attn_dim": 32, "dropout": 0.1}


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, rows: list[dict], cohort_dir: Path) -> Path:
    rows = [{**r, "slide": str(cohort_dir / r["slide"])} for r in rows]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _survival_rows(cohort, *, seed: int = 0) -> list[dict]:
    """Event times per patient ``10 * exp(-12 * mean tumour fraction) * lognormal(0, 0.25)`` (tumour
    fractions are 0.08-0.16, so tumour patients die about 4x sooner); censoring times uniform on
    [3, 16]: about 30% censored, mostly long-lived tumour-free patients."""
    rng = np.random.default_rng(seed)
    patients = sorted({r["patient"] for r in cohort.rows})
    frac = {
        p: np.mean([float(r["tumour_fraction"]) for r in cohort.rows if r["patient"] == p]) for p in patients
    }
    event_time = {
        p: 10.0 * math.exp(-12.0 * frac[p]) * float(np.exp(0.25 * rng.standard_normal())) for p in patients
    }
    censor_time = {p: float(rng.uniform(3.0, 16.0)) for p in patients}
    out = []
    for r in cohort.rows:
        t, c = event_time[r["patient"]], censor_time[r["patient"]]
        out.append({**r, "time": f"{min(t, c):.4f}", "event": int(t <= c)})
    return out


@pytest.fixture(scope="module")
def survival_manifest(mil_cohort, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("survival")
    return _write(d / "survival.csv", _survival_rows(mil_cohort), mil_cohort.manifest.parent)


def _train(cohort, manifest, out: Path, **kw):
    args = dict(
        store=cohort.store,
        encoder=ENC,
        out=out,
        model="abmil",
        model_kwargs=SMALL,
        folds=3,
        epochs=20,
        lr=1e-3,
        early_stopping_patience=8,
        bootstrap=200,
    )
    args.update(kw)
    return train(manifest, **args)


# -- metrics ----------------------------------------------------------------------------------------


def test_concordance_index_hand_computed() -> None:
    # comparable pairs (i had the event first): (0,1) (0,2) (0,3) (1,2) (1,3) (2,3); 3 is censored
    t = np.array([1.0, 2.0, 3.0, 4.0])
    e = np.array([1, 1, 1, 0])
    assert concordance_index(t, np.array([4.0, 3.0, 2.0, 1.0]), e) == 1.0
    assert concordance_index(t, np.array([1.0, 2.0, 3.0, 4.0]), e) == 0.0
    # pair (0,1) discordant, the other five concordant: (0,2) (0,3) (1,2) (1,3) (2,3) -> 5/6
    assert concordance_index(t, np.array([3.0, 4.0, 2.0, 1.0]), e) == pytest.approx(5 / 6)
    # risk ties count 1/2: risks 0 and 1 tied -> (5 + 0.5) / 6
    assert concordance_index(t, np.array([3.0, 3.0, 2.0, 1.0]), e) == pytest.approx(5.5 / 6)


def test_concordance_index_censoring_and_time_ties() -> None:
    # a censored slide is never the earlier one of a pair; censored at 2 vs event at 3: not comparable
    t = np.array([1.0, 2.0, 3.0])
    e = np.array([0, 0, 1])
    assert math.isnan(concordance_index(t, np.array([1.0, 2.0, 3.0]), e))
    # event and censoring at the same time: comparable (the censored one outlived it); two events tied: not
    t = np.array([2.0, 2.0, 2.0, 5.0])
    e = np.array([1, 0, 1, 1])
    # pairs: (0,1) (0,3) (2,1) (2,3) -> risks make (0,1) discordant, others concordant -> 3/4
    r = np.array([1.0, 2.0, 3.0, 0.0])
    assert concordance_index(t, r, e) == pytest.approx(3 / 4)


def test_regression_metrics_hand_computed() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    m = regression_metrics(y, y * 2 + 1)
    assert m["pearson"] == pytest.approx(1.0) and m["spearman"] == pytest.approx(1.0)
    assert m["mae"] == pytest.approx(np.mean(y + 1))
    m = regression_metrics(y, np.array([1.0, 2.0, 4.0, 3.0]))
    assert m["spearman"] == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert m["r2"] == pytest.approx(1 - 2 / 5)
    assert m["mae"] == pytest.approx(0.5)


# -- losses -----------------------------------------------------------------------------------------


def test_cox_loss_matches_direct_formula_with_ties() -> None:
    risk = torch.tensor([0.5, -0.2, 1.0, 0.3, -1.0])
    time = torch.tensor([2.0, 3.0, 3.0, 5.0, 1.0])
    event = torch.tensor([1, 1, 0, 1, 0])
    expected = 0.0
    r, t, e = risk.tolist(), time.tolist(), event.tolist()
    for i in range(5):
        if e[i]:
            expected -= r[i] - math.log(sum(math.exp(r[j]) for j in range(5) if t[j] >= t[i]))
    expected /= sum(e)
    assert float(cox_loss(risk, time, event)) == pytest.approx(expected, rel=1e-6)
    # invariant to shifting every risk; lower when the early event has the higher risk
    assert float(cox_loss(risk + 3.0, time, event)) == pytest.approx(expected, rel=1e-5)
    t2, e2 = torch.tensor([1.0, 2.0]), torch.tensor([1, 1])
    assert cox_loss(torch.tensor([2.0, 0.0]), t2, e2) < cox_loss(torch.tensor([0.0, 2.0]), t2, e2)
    # no event in the batch: 0 with a gradient path
    x = torch.zeros(3, requires_grad=True)
    loss = cox_loss(x, torch.ones(3), torch.zeros(3, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0 and x.grad is not None


def test_discrete_time_nll_censored_vs_uncensored() -> None:
    logits = torch.tensor([[0.0, 1.0, -1.0]])
    h = torch.sigmoid(logits)[0].tolist()
    # event in bin 1: survived bin 0, hazard in bin 1
    got = float(discrete_time_nll(logits, torch.tensor([1]), torch.tensor([1])))
    assert got == pytest.approx(-(math.log(1 - h[0]) + math.log(h[1])), rel=1e-6)
    # censored in bin 1: survived bins 0 and 1
    got = float(discrete_time_nll(logits, torch.tensor([1]), torch.tensor([0])))
    assert got == pytest.approx(-(math.log(1 - h[0]) + math.log(1 - h[1])), rel=1e-6)
    # censored in the last bin: the whole survival curve
    got = float(discrete_time_nll(logits, torch.tensor([2]), torch.tensor([0])))
    assert got == pytest.approx(-sum(math.log(1 - v) for v in h), rel=1e-6)
    # batch mean
    both = float(discrete_time_nll(logits.repeat(2, 1), torch.tensor([1, 1]), torch.tensor([1, 0])))
    assert both == pytest.approx(
        (-(math.log(1 - h[0]) + math.log(h[1])) - (math.log(1 - h[0]) + math.log(1 - h[1]))) / 2, rel=1e-6
    )


def test_task_heads_check_their_outputs() -> None:
    from slidescope.mil.task import CheckpointError

    with pytest.raises(CheckpointError, match="num_classes=1"):
        MILTask("mean", None, in_dim=8, num_classes=2, class_names=[], encoder="x", task="regression")
    with pytest.raises(CheckpointError, match="time_bins"):
        MILTask(
            "mean",
            None,
            in_dim=8,
            num_classes=4,
            class_names=[],
            encoder="x",
            task="survival",
            survival_model="discrete",
        )
    t = MILTask(
        "mean",
        None,
        in_dim=8,
        num_classes=1,
        class_names=[],
        encoder="x",
        task="regression",
        target_mean=5.0,
        target_std=2.0,
    )
    pred, scores = t.predict_bag(torch.zeros(4, 8))
    assert pred.shape == (1,) and scores.shape == (4,)


# -- manifests and splits ---------------------------------------------------------------------------


def test_bad_survival_manifests_raise_before_training(mil_cohort, tmp_path) -> None:
    d = mil_cohort.manifest.parent
    good = _survival_rows(mil_cohort)
    cases = {
        "negative": ([{**r, "time": "-1"} if i == 3 else r for i, r in enumerate(good)], "numbers >= 0"),
        "missing": ([{**r, "time": ""} if i == 2 else r for i, r in enumerate(good)], "empty"),
        "text": ([{**r, "time": "soon"} if i == 2 else r for i, r in enumerate(good)], "numbers >= 0"),
        "nonbinary": ([{**r, "event": 2} if i == 1 else r for i, r in enumerate(good)], "1 \\(event\\) or 0"),
        "noevents": ([{**r, "event": 0} for r in good], "every slide is censored"),
        "nocolumn": ([{k: v for k, v in r.items() if k != "event"} for r in good], "lacks the column"),
    }
    for name, (rows, match) in cases.items():
        m = _write(tmp_path / f"{name}.csv", rows, d)
        with pytest.raises(InvalidParameterError, match=match):
            read_manifest(m, task="survival")
        with pytest.raises(InvalidParameterError, match=match):  # train() checks first, writes nothing
            train(
                m,
                store=mil_cohort.store,
                encoder=ENC,
                out=tmp_path / f"run_{name}",
                task="survival",
                folds=2,
                epochs=1,
            )
        assert not (tmp_path / f"run_{name}").exists()
    with pytest.raises(InvalidParameterError, match="finite numbers"):
        read_manifest(mil_cohort.manifest, task="regression", label_column="report")


def test_splits_stratify_regression_and_survival(mil_cohort, survival_manifest) -> None:
    rows = read_manifest(mil_cohort.manifest, task="regression", label_column="tumour_fraction")
    assert rows[0].target == float(mil_cohort.rows[0]["tumour_fraction"])
    splits = make_splits(rows, folds=3, seed=0)
    by_fold = [[r.target for r in splits.rows_in(rows, k)] for k in range(3)]
    # every fold spans the bottom and the top third of the targets (quantile-binned stratification)
    low, high = np.quantile([r.target for r in rows], [1 / 3, 2 / 3])
    assert all(min(v) <= low and max(v) >= high for v in by_fold), by_fold
    patients = {}
    for r in rows:
        assert patients.setdefault(r.patient, splits.fold_of(r)) == splits.fold_of(r)
    srows = read_manifest(survival_manifest, task="survival")
    ssplits = make_splits(srows, folds=3, seed=0)
    events = [sum(r.event for r in ssplits.rows_in(srows, k)) for k in range(3)]
    censored = [sum(1 - r.event for r in ssplits.rows_in(srows, k)) for k in range(3)]
    assert min(events) >= 3 and min(censored) >= 1, (events, censored)


# -- training ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression_run(mil_cohort, tmp_path_factory):
    return _train(
        mil_cohort,
        mil_cohort.manifest,
        tmp_path_factory.mktemp("reg") / "reg",
        task="regression",
        label_column="tumour_fraction",
    )


def test_regression_learns_tumour_fraction(regression_run, mil_cohort) -> None:
    res = regression_run
    assert res.task == "regression"
    print("regression pooled", res.pooled, res.pooled_ci)
    assert res.pooled["pearson"] >= 0.8, res.summary()
    lo, hi = res.pooled_ci["pearson"]
    assert lo <= res.pooled["pearson"] <= hi
    oof = _csv(res.oof_csv)
    assert len(oof) == len(mil_cohort.rows)
    assert set(oof[0]) == {"slide", "patient", "target", "fold", "prediction"}
    # predictions come back in original units (fractions), not standardised
    preds = np.array([float(r["prediction"]) for r in oof])
    assert -0.2 < preds.mean() < 0.6 and preds.max() < 1.5
    metrics = {(r["fold"], r["metric"]) for r in _csv(res.results_csv)}
    assert {("pooled", m) for m in ("pearson", "spearman", "r2", "mae")} <= metrics
    assert "pearson" in res.summary()
    task = load_task(res.checkpoints[0], encoder=ENC)
    assert task.task == "regression" and task.hparams.target_std > 0


@pytest.mark.parametrize("survival_model", ["cox", "discrete"])
def test_survival_learns_risk(survival_model, mil_cohort, survival_manifest, tmp_path) -> None:
    res = _train(
        mil_cohort,
        survival_manifest,
        tmp_path / survival_model,
        task="survival",
        survival_model=survival_model,
        epochs=60,
        lr=3e-3,
        early_stopping_patience=20,
    )  # the Cox batch holds every training bag: one step per epoch
    print(survival_model, "pooled", res.pooled, res.pooled_ci, [f.metrics for f in res.folds])
    assert res.pooled["c_index"] >= 0.75, res.summary()
    oof = _csv(res.oof_csv)
    assert set(oof[0]) == {"slide", "patient", "time", "event", "fold", "risk"}
    assert len(oof) == len(mil_cohort.rows)
    task = load_task(res.checkpoints[0], encoder=ENC)
    assert task.hparams.survival_model == survival_model
    if survival_model == "discrete":
        assert len(task.hparams.time_bins) == 3 and task.hparams.num_classes == 4
        # risk = -sum of survival: between -n_bins and 0
        risks = np.array([float(r["risk"]) for r in oof])
        assert ((risks < 0) & (risks > -4)).all()
    # scoring writes risks
    out_csv = tmp_path / f"{survival_model}_scores.csv"
    results = score(res.checkpoints, [mil_cohort.store], out_csv=out_csv, write_scores=False)
    rows = _csv(out_csv)
    assert list(rows[0]) == ["slide", "risk"] and len(rows) == len(mil_cohort.rows)
    tumour = [r.risk for r in results if r.slide.endswith("_T")]
    normal = [r.risk for r in results if r.slide.endswith("_N")]
    assert np.mean(tumour) > np.mean(normal)


def test_cli_regression_and_score(regression_run, mil_cohort, tmp_path) -> None:
    from typer.testing import CliRunner

    from slidescope.cli import app

    runner = CliRunner()
    out_csv = tmp_path / "pred.csv"
    r = runner.invoke(
        app,
        [
            "score",
            str(mil_cohort.store),
            "--model",
            str(regression_run.checkpoints[0]),
            "--out",
            str(out_csv),
            "--no-write-scores",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = _csv(out_csv)
    assert list(rows[0]) == ["slide", "prediction"]
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
            "mean",
            "--folds",
            "2",
            "--epochs",
            "1",
            "--task",
            "regression",
            "--label-column",
            "tumour_fraction",
            "--out",
            str(tmp_path / "cli"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "pearson" in r.output and (tmp_path / "cli" / "oof_predictions.csv").exists()
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
            "--task",
            "survival",
            "--out",
            str(tmp_path / "cli2"),
        ],
    )
    assert r.exit_code != 0 and "time" in str(r.output) + str(r.exception)
