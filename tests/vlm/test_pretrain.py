"""Slide-text pretraining on the synthetic cohort: it trains in CI time, learns retrieval, saves a model that
rebuilds itself, keeps held-out slides out, and refuses manifests it cannot use."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch

from slidescope.errors import InvalidParameterError

ENCODER = "he-descriptor"


def test_pretrain_learns_retrieval_in_ci_time(pretrained, vlm_cohort) -> None:
    res = pretrained.result
    m = res.metrics
    # measured 33-58 s on 2 shared CPU cores; the bound leaves room for a loaded CI runner
    assert pretrained.seconds < 120, f"pretraining took {pretrained.seconds:.0f} s"
    assert set(m) >= {"val_loss", "slide2text_r@1", "slide2text_r@5", "text2slide_r@1", "text2slide_r@5"}
    n_val = sum(1 for r in vlm_cohort.train_rows if r["patient"] in set(res.val_patients))
    print(f"\npretraining: {pretrained.seconds:.1f} s, {res.summary()} ({n_val} validation slides)")
    # chance recall@1 is 1/n_val (the validation set is small: instance-level recall is coarse evidence)
    assert m["slide2text_r@1"] > 1 / n_val and m["text2slide_r@1"] > 1 / n_val, (m, n_val)
    assert m["slide2text_r@5"] >= min(1.0, 5 / n_val) and m["text2slide_r@5"] >= min(1.0, 5 / n_val), m
    saved = json.loads((res.model_dir.parent / "metrics.json").read_text())
    assert saved["metrics"] == pytest.approx(m) and saved["best_epoch"] == res.best_epoch


def test_held_out_reports_retrieve_slides_of_their_class(pretrained, vlm_cohort) -> None:
    """Reports of one class say the same thing in other words, so retrieval is judged by class on held-out pairs."""
    from slidescope.features.store import open_store
    from slidescope.vlm.model import SlideTextModel
    from slidescope.vlm.pretrain import retrieval_metrics

    model = SlideTextModel.load(pretrained.model_dir)
    rows = vlm_cohort.test_rows
    with torch.inference_mode():
        v = torch.cat(
            [
                model.encode_slide(
                    torch.from_numpy(
                        open_store(vlm_cohort.store_of(r)).embeddings(ENCODER).astype("float32")
                    )[None]
                )
                for r in rows
            ]
        )
        t = model.encode_text([r["report"] for r in rows])
    labels = [r["label"] for r in rows]
    sim = v @ t.T
    s2t = sum(labels[int(j)] == labels[i] for i, j in enumerate(sim.argmax(1))) / len(rows)
    t2s = sum(labels[int(j)] == labels[i] for i, j in enumerate(sim.argmax(0))) / len(rows)
    inst = retrieval_metrics(v, t)
    print(
        f"\nheld-out retrieval ({len(rows)} pairs): class-level slide->text {s2t:.3f}, text->slide {t2s:.3f}; "
        f"instance-level {inst}"
    )
    assert s2t >= 0.875 and t2s >= 0.875


def test_split_is_by_patient_and_excludes_held_out_slides(pretrained, vlm_cohort) -> None:
    res = pretrained.result
    splits = json.loads((res.model_dir.parent / "splits.json").read_text())
    assert not set(splits["train_patients"]) & set(splits["val_patients"])
    held_out = {Path(r["slide"]).stem for r in vlm_cohort.test_rows}
    assert not held_out & (set(splits["train_slides"]) | set(splits["val_slides"]))
    assert len(splits["val_slides"]) >= 2


def test_saved_model_rebuilds_itself_and_its_tokenizer_saw_only_training_reports(
    pretrained, vlm_cohort
) -> None:
    from slidescope.features.store import open_store
    from slidescope.vlm.model import SlideTextModel

    a = SlideTextModel.load(pretrained.model_dir)
    b = SlideTextModel.load(pretrained.model_dir)
    store = open_store(vlm_cohort.store_of(vlm_cohort.test_rows[0]))
    tiles = torch.from_numpy(store.embeddings(ENCODER).astype("float32"))
    with torch.inference_mode():
        torch.testing.assert_close(a.encode_slide(tiles[None]), b.encode_slide(tiles[None]))
        t = a.encode_text(["invasive carcinoma"])
    assert t.shape == (1, a.dim_latents) and torch.isfinite(t).all()
    splits = json.loads((pretrained.model_dir.parent / "splits.json").read_text())
    train_words = {
        w
        for r in vlm_cohort.train_rows
        if Path(r["slide"]).stem in set(splits["train_slides"])
        for w in re.findall(r"\w+", r["report"].lower())
    }
    vocab = {w for w in a.text_tower.tokenizer.get_vocab() if re.fullmatch(r"\w+", w)}
    assert vocab and vocab <= train_words | {str(d) for d in range(10)}


def test_retrieval_metrics_rank_matches() -> None:
    from slidescope.vlm.pretrain import retrieval_metrics

    e = torch.eye(6)
    perfect = retrieval_metrics(e, e)
    assert perfect == {
        "slide2text_r@1": 1.0,
        "slide2text_r@5": 1.0,
        "text2slide_r@1": 1.0,
        "text2slide_r@5": 1.0,
    }
    shifted = retrieval_metrics(e, e.roll(1, dims=0))
    assert shifted["slide2text_r@1"] == 0.0 and shifted["text2slide_r@1"] == 0.0


@pytest.mark.parametrize("mode", ["all", "partial"])
def test_freeze_text(mode: str) -> None:
    from slidescope.vlm.pretrain import _freeze_text
    from slidescope.vlm.text import SmallTextTower

    tower = SmallTextTower.from_texts(["benign stroma", "invasive carcinoma"], width=32, depth=3, heads=4)
    _freeze_text(tower, mode)  # type: ignore[arg-type]
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    if mode == "all":
        assert not trainable
    else:
        assert trainable and all(".2." in n or n.startswith("norm") for n in trainable), trainable
        assert not tower.token_embed.weight.requires_grad
    with pytest.raises(InvalidParameterError, match="freeze_text"):
        _freeze_text(tower, "some")  # type: ignore[arg-type]


def test_pretrain_refuses_unusable_manifests(vlm_cohort, tmp_path: Path) -> None:
    from slidescope.vlm.pretrain import pretrain

    no_report = tmp_path / "no_report.csv"
    no_report.write_text(
        "slide,patient\n"
        + "\n".join(
            f"{vlm_cohort.manifest.parent / r['slide']},{r['patient']}" for r in vlm_cohort.train_rows
        )
        + "\n"
    )
    with pytest.raises(InvalidParameterError, match="report"):
        pretrain(no_report, store=vlm_cohort.store, encoder=ENCODER, out=tmp_path / "a", epochs=1)
    with pytest.raises(InvalidParameterError, match="slidescope extract"):
        pretrain(
            vlm_cohort.train_manifest, store=tmp_path / "empty", encoder=ENCODER, out=tmp_path / "b", epochs=1
        )
    with pytest.raises(InvalidParameterError, match="context_dim"):
        from slidescope.vlm.slide_encoder import PerceiverSlideEncoderConfig

        pretrain(
            vlm_cohort.train_manifest,
            store=vlm_cohort.store,
            encoder=ENCODER,
            out=tmp_path / "c",
            epochs=1,
            slide_encoder=PerceiverSlideEncoderConfig.tiny(),
        )


def test_cli_pretrain(vlm_cohort, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "slidescope",
            "-q",
            "pretrain",
            "--manifest",
            str(vlm_cohort.train_manifest),
            "--store",
            str(vlm_cohort.store),
            "--encoder",
            ENCODER,
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "2",
            "--accelerator",
            "cpu",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "slide2text_r@1" in out.stdout and (tmp_path / "run" / "model" / "config.json").is_file()
    with open(vlm_cohort.train_manifest, newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(vlm_cohort.train_rows)
