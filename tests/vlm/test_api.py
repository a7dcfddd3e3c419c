"""Zero-shot and few-shot on held-out synthetic slides with a model pretrained on the training reports only:
unseen phrasings classify, 4-shot GDA classifies, the tile similarity map finds the tumour; plus the prompt
file format, the errors a user meets, and the CLI."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slidescope.errors import InvalidParameterError

ENCODER = "he-descriptor"
#: phrasings that never occur in a synthetic report (checked below against the training reports)
UNSEEN = {
    "tumour": ["sheets of atypical epithelial cells", "cancer", "malignant cells with pleomorphic nuclei"],
    "normal": ["bland connective tissue", "benign collagen with sparse regular nuclei"],
}


def _labels(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([r["label"] == "tumour" for r in rows], dtype=int)


def _tile_truth(store, row: dict[str, str], manifest: Path) -> np.ndarray:
    """Tile = tumour when >= 50% of its level-0 footprint is tumour; mask pixel (i, j) covers
    level-0 px [i*f, (i+1)*f)^2 with f = mask_mpp / mpp."""
    mask = np.asarray(Image.open(manifest.parent / row["tumour_mask"])) > 127
    mpp = float(store.attrs["slide"]["mpp"][0])
    f = float(row["mask_mpp"]) / mpp
    w, h = store.tile_extent
    out = []
    for x, y in store.coords:
        ii = np.minimum(((y + np.arange(h)) // f).astype(int), mask.shape[0] - 1)
        jj = np.minimum(((x + np.arange(w)) // f).astype(int), mask.shape[1] - 1)
        out.append(mask[np.ix_(ii, jj)].mean() >= 0.5)
    return np.array(out, dtype=int)


def test_unseen_phrasings_never_occur_in_training_reports(vlm_cohort) -> None:
    corpus = " ".join(r["report"].lower() for r in vlm_cohort.train_rows)
    for phrasings in UNSEEN.values():
        for p in phrasings:
            assert p not in corpus, p
    assert "cancer" not in set(re.findall(r"\w+", corpus))


@pytest.mark.parametrize("ensemble", ["mean-embedding", "sum-probability"])
def test_zero_shot_with_unseen_phrasings_classifies_held_out_slides(pretrained, vlm_cohort, ensemble) -> None:
    from slidescope.features.store import open_store
    from slidescope.vlm.api import zero_shot
    from slidescope.vlm.zeroshot import auroc

    stores = [vlm_cohort.store_of(r) for r in vlm_cohort.test_rows]
    rows = zero_shot(stores, UNSEEN, model=pretrained.model_dir, encoder=ENCODER, ensemble=ensemble)
    assert [r.store for r in rows] == stores
    p = np.array([r.probs["tumour"] for r in rows])
    assert np.allclose([sum(r.probs.values()) for r in rows], 1.0, atol=1e-5)
    value = auroc(_labels(vlm_cohort.test_rows), p)
    print(f"\nzero-shot AUROC ({ensemble}, unseen phrasings, {len(rows)} held-out slides): {value:.3f}")
    assert value >= 0.9
    emb = open_store(stores[0]).slide_embedding(f"slidetext-{ENCODER}")
    assert emb.shape == (128,) and abs(float(np.linalg.norm(emb)) - 1) < 1e-4


def test_zero_shot_from_prompts_yaml_with_templates(pretrained, vlm_cohort, tmp_path: Path) -> None:
    import yaml

    from slidescope.vlm.api import zero_shot
    from slidescope.vlm.zeroshot import auroc

    path = tmp_path / "prompts.yaml"
    path.write_text(yaml.safe_dump({"classes": UNSEEN, "templates": ["a slide showing {}.", "{}."]}))
    rows = zero_shot([vlm_cohort.store], path, model=pretrained.model_dir, encoder=ENCODER, write=False)
    assert len(rows) == len(vlm_cohort.rows) and set(rows[0].probs) == {"tumour", "normal"}
    held_out = {Path(r["slide"]).stem for r in vlm_cohort.test_rows}
    by_slide = {r.slide: r.probs["tumour"] for r in rows}
    test = vlm_cohort.test_rows
    assert auroc(_labels(test), np.array([by_slide[Path(r["slide"]).stem] for r in test])) >= 0.9
    assert held_out <= set(by_slide)


def test_gda_four_shots_per_class(pretrained, vlm_cohort) -> None:
    from slidescope.vlm.api import few_shot

    rng = np.random.default_rng(0)
    support = []
    for label in ("tumour", "normal"):
        rows = [r for r in vlm_cohort.train_rows if r["label"] == label]
        support += [rows[i] for i in rng.choice(len(rows), 4, replace=False)]
    test = vlm_cohort.test_rows
    res = few_shot(
        [vlm_cohort.store_of(r) for r in support],
        [r["label"] for r in support],
        [vlm_cohort.store_of(r) for r in test],
        model=pretrained.model_dir,
        encoder=ENCODER,
        method="gda",
        test_labels=[r["label"] for r in test],
        n_bootstrap=200,
    )
    assert res.probs.shape == (len(test), 2) and res.class_names == ["normal", "tumour"]
    ci = res.metrics["auroc"]
    print(
        f"\nGDA 4-shot AUROC: {ci.estimate:.3f} (95% CI {ci.low:.3f}-{ci.high:.3f}); "
        f"accuracy {res.metrics['accuracy'].estimate:.3f}"
    )
    assert ci.estimate >= 0.9 and ci.low <= ci.estimate <= ci.high
    # with prompts, GDA blends the zero-shot prior; class order then follows the prompts
    prior = few_shot(
        [vlm_cohort.store_of(r) for r in support],
        [r["label"] for r in support],
        [vlm_cohort.store_of(r) for r in test],
        model=pretrained.model_dir,
        encoder=ENCODER,
        method="gda",
        classes=UNSEEN,
        test_labels=[r["label"] for r in test],
        n_bootstrap=50,
    )
    assert prior.class_names == ["tumour", "normal"] and prior.metrics["auroc"].estimate >= 0.9


@pytest.mark.parametrize("method", ["linear", "simpleshot", "knn", "tip-adapter"])
def test_other_few_shot_methods_run(pretrained, vlm_cohort, method: str) -> None:
    from slidescope.vlm.api import few_shot

    train = vlm_cohort.train_rows
    test = vlm_cohort.test_rows
    res = few_shot(
        [vlm_cohort.store_of(r) for r in train],
        [r["label"] for r in train],
        [vlm_cohort.store_of(r) for r in test],
        model=pretrained.model_dir,
        encoder=ENCODER,
        method=method,
        test_labels=[r["label"] for r in test],
        n_bootstrap=50,
    )
    assert torch.allclose(res.probs.sum(1), torch.ones(len(test)), atol=1e-5)
    assert res.metrics["auroc"].estimate >= 0.8, res.metrics


def test_few_shot_never_tunes_on_the_support_it_scores(pretrained, vlm_cohort) -> None:
    """With a prior and no validation slides, alpha/beta come from leave-one-out (not from the support scoring
    itself); with validation slides, from them; with one shot, the reference defaults. The result says which."""
    from slidescope.vlm.api import few_shot

    train, test = vlm_cohort.train_rows, vlm_cohort.test_rows
    stores = lambda rows: [vlm_cohort.store_of(r) for r in rows]  # noqa: E731
    labels = lambda rows: [r["label"] for r in rows]  # noqa: E731
    common = dict(model=pretrained.model_dir, encoder=ENCODER, classes=UNSEEN, n_bootstrap=10)
    loo = few_shot(stores(train), labels(train), stores(test), method="tip-adapter", **common)
    assert loo.tuning == "leave-one-out" and set(loo.hyperparameters) == {"alpha", "beta"}
    val = few_shot(
        stores(train),
        labels(train),
        stores(test),
        method="gda",
        val_stores=stores(test[:4]),
        val_labels=labels(test[:4]),
        **common,
    )
    assert val.tuning == "validation" and set(val.hyperparameters) == {"alpha"}
    one = [next(r for r in train if r["label"] == c) for c in ("tumour", "normal")]
    assert few_shot(stores(one), labels(one), stores(test), method="gda", **common).tuning == "default"
    with pytest.raises(InvalidParameterError, match="val_labels"):
        few_shot(
            stores(train), labels(train), stores(test), method="gda", val_stores=stores(test[:2]), **common
        )


def test_tile_similarity_map_localises_tumour(pretrained, vlm_cohort) -> None:
    from slidescope.features.store import open_store
    from slidescope.vlm.api import zero_shot
    from slidescope.vlm.zeroshot import auroc

    rows = vlm_cohort.rows  # pretraining saw slide-level reports only, never where the tumour is
    zero_shot(
        [vlm_cohort.store_of(r) for r in rows],
        UNSEEN,
        model=pretrained.model_dir,
        encoder=ENCODER,
        level="tile",
    )
    scores, truth, held_scores, held_truth = [], [], [], []
    held_out = {r["slide"] for r in vlm_cohort.test_rows}
    for r in rows:
        store = open_store(vlm_cohort.store_of(r))
        s = store.scores("zero-shot/tumour") - store.scores("zero-shot/normal")
        assert s.shape == (store.n_tiles,)
        t = _tile_truth(store, r, vlm_cohort.manifest)
        scores.append(s)
        truth.append(t)
        if r["slide"] in held_out:
            held_scores.append(s)
            held_truth.append(t)
    y, s = np.concatenate(truth), np.concatenate(scores)
    value = auroc(y, s)
    yh, sh = np.concatenate(held_truth), np.concatenate(held_scores)
    print(
        f"\ntile AUROC of the similarity map: {value:.3f} ({int(y.sum())} tumour / {len(y)} tiles, all slides); "
        f"held-out {auroc(yh, sh):.3f} ({int(yh.sum())} / {len(yh)})"
    )
    assert value >= 0.85


def test_tile_level_with_an_external_text_encoder(vlm_cohort) -> None:
    """Patch-level CLIP encoders: tile embeddings already in the text space, text from a callable."""
    from slidescope.features.store import open_store
    from slidescope.vlm.api import zero_shot

    row = vlm_cohort.test_rows[0]
    tiles = open_store(vlm_cohort.store_of(row)).embeddings(ENCODER).astype(np.float32)
    target = torch.from_numpy(tiles[0])

    def text_encoder(texts: list[str]) -> torch.Tensor:  # "first" points at tile 0, "other" away from it
        return torch.stack([target if t.startswith("first") else -target for t in texts])

    res = zero_shot(
        [vlm_cohort.store_of(row)],
        {"first-tile": ["first"], "rest": ["other"]},
        encoder=ENCODER,
        level="tile",
        text_encoder=text_encoder,
        k=1,
    )
    sim = open_store(vlm_cohort.store_of(row)).scores("zero-shot/first-tile")
    assert int(np.argmax(sim)) == 0 and sim[0] == pytest.approx(1.0, abs=1e-5)
    assert res[0].predicted == "first-tile"
    with pytest.raises(InvalidParameterError, match="needs model="):
        zero_shot([vlm_cohort.store_of(row)], UNSEEN, encoder=ENCODER)


def test_prompt_file_errors(pretrained, vlm_cohort, tmp_path: Path) -> None:
    from slidescope.vlm.api import load_prompts, zero_shot

    empty = tmp_path / "empty.yaml"
    empty.write_text("classes: {}\n")
    with pytest.raises(InvalidParameterError, match="empty"):
        load_prompts(empty)
    no_phrasings = tmp_path / "nophr.yaml"
    no_phrasings.write_text("classes:\n  tumour: [carcinoma]\n  normal: []\n")
    with pytest.raises(InvalidParameterError, match="'normal' has no phrasings"):
        zero_shot([vlm_cohort.store], no_phrasings, model=pretrained.model_dir, encoder=ENCODER)
    bad_template = tmp_path / "tmpl.yaml"
    bad_template.write_text("classes:\n  a: [x]\n  b: [y]\ntemplates: ['no placeholder']\n")
    with pytest.raises(InvalidParameterError, match="placeholder"):
        load_prompts(bad_template)
    with pytest.raises(InvalidParameterError, match="does not exist"):
        load_prompts(tmp_path / "missing.yaml")


def test_embedding_dimension_mismatch_is_a_clear_error(pretrained, vlm_cohort, tmp_path: Path) -> None:
    from slidescope.vlm.api import few_shot, zero_shot
    from slidescope.vlm.model import SlideTextModel
    from slidescope.vlm.slide_encoder import PerceiverSlideEncoderConfig
    from slidescope.vlm.text import SmallTextTower

    other = SlideTextModel(
        PerceiverSlideEncoderConfig.tiny(),
        SmallTextTower.from_texts(["a b"], width=32, depth=1),
        dim_latents=16,
    )
    with pytest.raises(InvalidParameterError, match="98 dimensions but the model expects 24"):
        zero_shot([vlm_cohort.store], UNSEEN, model=other, encoder=ENCODER)
    with pytest.raises(InvalidParameterError, match=r"shape \(B, 128\)"):
        few_shot(
            np.zeros((4, 64)),
            ["tumour", "tumour", "normal", "normal"],
            np.zeros((2, 64)),
            model=pretrained.model_dir,
            encoder=ENCODER,
        )


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slidescope", "-q", *args], capture_output=True, text=True)


def test_cli_zero_shot_prompt_spread_and_few_shot(pretrained, vlm_cohort, tmp_path: Path) -> None:
    import yaml

    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(yaml.safe_dump({"classes": UNSEEN}))
    stores = [str(vlm_cohort.store_of(r)) for r in vlm_cohort.test_rows]
    out = _run(
        "zero-shot",
        *stores,
        "--model",
        str(pretrained.model_dir),
        "--prompts",
        str(prompts),
        "--encoder",
        ENCODER,
        "--out",
        str(tmp_path / "probs.csv"),
        "--ensemble",
        "sum-probability",
    )
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "probs.csv", newline="") as fh:
        probs = list(csv.DictReader(fh))
    assert len(probs) == len(stores) and {"slide", "prob_tumour", "prob_normal", "predicted"} <= set(probs[0])

    spread = _run(
        "prompt-spread",
        "--model",
        str(pretrained.model_dir),
        "--prompts",
        str(prompts),
        "--encoder",
        ENCODER,
        "--manifest",
        str(vlm_cohort.test_manifest),
        "--store",
        str(vlm_cohort.store),
        "--n-subsets",
        "10",
    )
    assert spread.returncode == 0, spread.stderr
    m = re.search(r"mean ([\d.]+), std ([\d.]+), min ([\d.]+), max ([\d.]+)", spread.stdout)
    assert m and 0 <= float(m[3]) <= float(m[1]) <= float(m[4]) <= 1, spread.stdout
    per_slide = _run(
        "prompt-spread",
        *stores[:2],
        "--model",
        str(pretrained.model_dir),
        "--prompts",
        str(prompts),
        "--encoder",
        ENCODER,
        "--n-subsets",
        "5",
    )
    assert per_slide.returncode == 0 and per_slide.stdout.count("std") == 2, per_slide.stderr

    few = _run(
        "few-shot",
        "--model",
        str(pretrained.model_dir),
        "--train",
        str(vlm_cohort.train_manifest),
        "--test",
        str(vlm_cohort.test_manifest),
        "--store",
        str(vlm_cohort.store),
        "--encoder",
        ENCODER,
        "--method",
        "gda",
        "--shots",
        "4",
        "--out",
        str(tmp_path / "fs.csv"),
    )
    assert few.returncode == 0, few.stderr
    assert "8 support slides" in few.stdout and re.search(r"auroc: [\d.]+ \(95% CI", few.stdout)

    bad = _run(
        "zero-shot",
        stores[0],
        "--model",
        str(pretrained.model_dir),
        "--prompts",
        str(tmp_path / "nope.yaml"),
        "--encoder",
        ENCODER,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_conch_prompt_files_load_as_published(tmp_path) -> None:
    """A prompt file in CONCH's published format (mahmoodlab/CONCH prompts/*_prompts_all_per_class.json:
    entry "0" with classnames and CLASSNAME templates) loads as it is; each class gets every template filled
    with every phrasing, as CONCH's zero-shot code expands them (template.replace("CLASSNAME", name))."""
    import json

    from slidescope.vlm.api import load_prompts

    classnames = {"tumour": ["carcinoma", "malignant cells"], "normal": ["benign mucosa"]}
    templates = ["CLASSNAME.", "an H&E image of CLASSNAME.", "presence of CLASSNAME."]
    path = tmp_path / "task_prompts_all_per_class.json"
    path.write_text(json.dumps({"0": {"classnames": classnames, "templates": templates}}, indent=4))
    prompts = load_prompts(path)
    texts, owner = prompts.build()
    assert prompts.names == ["tumour", "normal"]
    for c, name in enumerate(prompts.names):
        ours = sorted(t for t, k in zip(texts, owner.tolist(), strict=True) if k == c)
        conch = sorted(t.replace("CLASSNAME", n) for t in templates for n in classnames[name])
        assert ours == conch
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"1": {"classnames": classnames}, "2": {"classnames": classnames}}))
    with pytest.raises(InvalidParameterError, match="no entry '0'"):
        load_prompts(two)
