"""``slidescope demo``: the whole pipeline, offline, on a synthetic cohort, in a couple of minutes on a CPU.

Everything here is **synthetic** and the encoder is the weight-free ``he-descriptor`` (hand-designed
H&E features, *not a foundation model*): the numbers show that the pipeline works end to end, not
how well anything works on real slides. The demo only calls the public functions the commands call:

1. :func:`~slidescope.synthetic.make_synthetic_cohort` - labelled slides, patients, reports (``OUT/cohort``);
   about a quarter of the patients of each label are held out (``heldout.csv``), the rest is
   the development set (``dev.csv``);
2. :func:`~slidescope.features.extract.extract_slides` - ``he-descriptor`` embeddings (``OUT/stores``);
3. :func:`~slidescope.mil.train.train` - ABMIL, 3-fold patient-level cross-validation on the development
   slides (``OUT/runs/abmil``);
4. :func:`~slidescope.vlm.pretrain.pretrain` - the small slide-text model on the development slides'
   reports (``OUT/runs/slidetext``);
5. :func:`~slidescope.mil.score.score` (ensemble of the fold checkpoints) and
   :func:`~slidescope.vlm.api.zero_shot` (``OUT/prompts.yaml``, phrasings that never occur in the
   reports) on the held-out slides (``OUT/predictions``);
6. :func:`~slidescope.mil.heatmap.heatmap` - attention maps (PNG + GeoJSON) and a zero-shot tile
   similarity map (``OUT/heatmaps``).

Running it again into the same folder reuses the cohort and the stores, skips finished folds (and
resumes interrupted ones) and reuses the pretrained slide-text model.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._compat import renamed_attribute, renamed_kwargs
from .errors import InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    from .mil.train import TrainResult

__all__ = ["DemoResult", "demo", "DEMO_PROMPTS"]

ENCODER = "he-descriptor"

#: zero-shot phrasings that never occur in a synthetic report (the demo checks it on the development reports)
DEMO_PROMPTS: dict[str, list[str]] = {
    "tumour": ["sheets of atypical epithelial cells", "cancer", "malignant cells with pleomorphic nuclei"],
    "normal": ["bland connective tissue", "benign collagen with sparse regular nuclei"],
}

#: a small ABMIL (the synthetic bags have 10-20 tiles)
_ABMIL = {"embed_dim": 64, "attn_dim": 32, "dropout": 0.1}

INTRO = """\
slidescope demo
===============
This demo runs on SYNTHETIC slides (generated here, no patient data) with the weight-free
`he-descriptor` encoder: 98 hand-designed H&E features, not a foundation model. The numbers show that
the pipeline works end to end offline; they say nothing about performance on real slides."""


def _real_slides_help(out: Path) -> str:
    return f"""\
The same on real slides with a foundation model (download the weights once, e.g. UNI from Hugging Face
after accepting its terms; make a manifest slides.csv with columns slide, label, patient[, report]):

  slidescope extract slides/ --encoder uni --weights /models/uni/pytorch_model.bin --stores stores
  slidescope train --manifest slides.csv --stores stores --encoder uni --model abmil --folds 5 --out runs/abmil
  slidescope score $(for k in 0 1 2 3 4; do echo --model runs/abmil/fold$k/best.ckpt; done) \\
      stores --out predictions.csv
  slidescope pretrain --manifest slides.csv --stores stores --encoder uni --out runs/slidetext
  slidescope zero-shot --model runs/slidetext/model --prompts {out / "prompts.yaml"} --encoder uni stores --out zs.csv

(`zero-shot` needs a slide-text model pretrained on reports of the same encoder's embeddings.)

Then score new slides end to end in one resumable command (tissue, tiles, embeddings, MIL, zero-shot,
heatmaps, a report; add --executor dask to spread the slides over workers or GPUs):

  slidescope run new_slides/ --encoder uni --weights /models/uni/pytorch_model.bin --model runs/abmil \
      --prompts {out / "prompts.yaml"} --slide-text-model runs/slidetext/model --out results"""


@dataclass
class DemoResult:
    """What :func:`demo` made and measured (AUROCs with 95% bootstrap CIs, paths of every output)."""

    out: Path
    manifest: Path
    dev_manifest: Path
    heldout_manifest: Path
    stores: Path
    abmil_run: Path
    checkpoints: list[Path]
    slide_text_model: Path
    prompts: Path
    n_dev: int
    n_heldout: int
    cv_auroc: float
    cv_ci: tuple[float, float]
    heldout_auroc: float
    heldout_ci: tuple[float, float]
    zero_shot_auroc: float
    zero_shot_ci: tuple[float, float]
    supervised_csv: Path
    zero_shot_csv: Path
    heatmaps: list[Path] = field(default_factory=list)
    geojson: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        def ci(v: float, c: tuple[float, float]) -> str:
            return f"{v:.3f}  (95% CI {c[0]:.3f}-{c[1]:.3f})"

        rows = [
            (
                "ABMIL, 3-fold patient-level CV AUROC",
                f"{ci(self.cv_auroc, self.cv_ci)}  [{self.n_dev} dev slides]",
            ),
            (
                "held-out AUROC, supervised (fold ensemble)",
                f"{ci(self.heldout_auroc, self.heldout_ci)}  [{self.n_heldout} held-out slides]",
            ),
            (
                "held-out AUROC, zero-shot (unseen prompts)",
                f"{ci(self.zero_shot_auroc, self.zero_shot_ci)}  [{self.n_heldout} held-out slides]",
            ),
        ]
        files = [
            ("cohort (synthetic)", self.manifest.parent),
            ("embedding stores", self.stores),
            ("ABMIL run", self.abmil_run),
            ("slide-text model", self.slide_text_model),
            ("zero-shot prompts", self.prompts),
            ("held-out predictions", self.supervised_csv.parent),
            ("heatmaps", self.out / "heatmaps"),
        ]
        w = max(len(k) for k, _ in rows + files)
        lines = ["results (synthetic slides, he-descriptor encoder)", "-" * (w + 50)]
        lines += [f"{k:<{w}}  {v}" for k, v in rows]
        lines.append("-" * (w + 50))
        lines += [f"{k:<{w}}  {v}" for k, v in files]
        lines.append(f"{'time':<{w}}  {self.seconds:.0f} s")
        return "\n".join(lines)


# the old spelling, for one release (docs/GLOSSARY.md)
DemoResult.__init__ = renamed_kwargs(slidetext_model="slide_text_model")(DemoResult.__init__)  # type: ignore
DemoResult.slidetext_model = renamed_attribute("slidetext_model", "slide_text_model")  # type: ignore


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _split(rows: list[dict[str, str]], fraction: float) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(development, held-out): every ``round(1/fraction)``-th patient of each label, so patients never straddle."""
    step = max(2, int(round(1 / fraction)))
    label_of = {r["patient"]: r["label"] for r in rows}
    held: set[str] = set()
    for label in sorted(set(label_of.values())):
        held.update(
            sorted(p for p, lab in label_of.items() if lab == label)[step - 1 :: step]
            or sorted(p for p, lab in label_of.items() if lab == label)[:1]
        )
    return [r for r in rows if r["patient"] not in held], [r for r in rows if r["patient"] in held]


def _auroc_ci(labels: np.ndarray, probs: np.ndarray, seed: int) -> tuple[float, tuple[float, float]]:
    from .metrics import bootstrap_ci

    ci = bootstrap_ci(labels, probs, "auroc", n=1000, seed=seed)  # probs: of tumour (class 1)
    return ci.estimate, (ci.low, ci.high)


@dataclass
class _Cohort:
    """The synthetic cohort of a demo and its patient-level split."""

    folder: Path
    manifest: Path
    rows: list[dict[str, str]]
    dev_rows: list[dict[str, str]]
    held_rows: list[dict[str, str]]
    dev_manifest: Path
    held_manifest: Path


@dataclass
class _Scores:
    """Held-out scores of step 5: AUROCs with their 95% CIs and the prediction files."""

    held_stores: list[Path | str]
    supervised_csv: Path
    zero_shot_csv: Path
    sup_auc: float
    sup_ci: tuple[float, float]
    zs_auc: float
    zs_ci: tuple[float, float]


Say = Callable[[str], None]


def _check_config(out: Path, config: dict[str, Any]) -> None:
    """Refuse a folder that holds a demo of another configuration, then record this one."""
    config_path = out / "demo.json"
    if config_path.exists():
        old = json.loads(config_path.read_text()).get("config")
        if old != config:
            raise InvalidParameterError(
                f"{out} holds a demo with another configuration ({old}); use another --out "
                f"or delete the folder"
            )
    config_path.write_text(json.dumps({"config": config}, indent=2))


def _make_cohort(
    cohort: Path, *, n_slides: int, width: int, height: int, seed: int, heldout_fraction: float, say: Say
) -> _Cohort:
    """Step 1: the synthetic slides (reused when all there) and the development / held-out manifests."""
    from .synthetic import make_synthetic_cohort

    manifest = cohort / "manifest.csv"
    if manifest.exists() and all((cohort / r["slide"]).exists() for r in _read(manifest)):
        say(f"1/6 cohort: reusing {manifest}")
    else:
        say(
            f"1/6 cohort: writing {n_slides} synthetic slides of {width}x{height} px at 0.5 µm/px to {cohort}"
        )
        make_synthetic_cohort(cohort, n_slides=n_slides, width=width, height=height, mpp=0.5, seed=seed)
    rows = _read(manifest)
    dev_rows, held_rows = _split(rows, heldout_fraction)
    dev_manifest = _write(cohort / "dev.csv", dev_rows)
    held_manifest = _write(cohort / "heldout.csv", held_rows)
    n_pat = len({r["patient"] for r in rows})
    say(
        f"    {len(rows)} slides of {n_pat} patients; held out: {len(held_rows)} slides of "
        f"{len({r['patient'] for r in held_rows})} patients"
    )
    return _Cohort(cohort, manifest, rows, dev_rows, held_rows, dev_manifest, held_manifest)


def _extract(c: _Cohort, stores: Path, say: Say) -> None:
    """Step 2: ``he-descriptor`` embeddings of every slide (cached in the stores)."""
    from .features.extract import extract_slides

    say(f"2/6 extract: {ENCODER} embeddings into {stores} (cached)")
    results = extract_slides(
        [c.folder / r["slide"] for r in c.rows], ENCODER, store=stores, num_workers=0, progress=False
    )
    bad = [r for r in results if r.status not in ("done", "reused")]
    if bad:
        raise InvalidParameterError(
            f"extraction failed for {len(bad)} slide(s): "
            + "; ".join(f"{Path(r.slide).name}: {r.error}" for r in bad[:3])
        )
    say(
        f"    {sum(r.status == 'reused' for r in results)} reused, {sum(r.status == 'done' for r in results)} "
        f"computed; {sum(r.n_tiles for r in results)} tiles"
    )


def _train_abmil(c: _Cohort, stores: Path, runs: Path, seed: int, say: Say) -> TrainResult:
    """Step 3: ABMIL, 3-fold patient-level cross-validation on the development slides (resumable)."""
    from .mil.train import train

    say(
        f"3/6 train: ABMIL, 3-fold patient-level cross-validation on {len(c.dev_rows)} slides -> {runs / 'abmil'}"
    )
    run = train(
        c.dev_manifest,
        store=stores,
        encoder=ENCODER,
        out=runs / "abmil",
        model="abmil",
        model_kwargs=_ABMIL,
        folds=3,
        epochs=20,
        batch_size=4,
        lr=1e-3,
        early_stopping_patience=8,
        seed=seed,
        bootstrap=1000,
        accelerator="cpu",
        resume=True,
    )
    for f in run.folds:
        say(f"    fold {f.fold}: {f.status}, {f.epochs} epochs, AUROC {f.metrics['auroc']:.3f}")
    return run


def _pretrain(c: _Cohort, stores: Path, runs: Path, seed: int, say: Say) -> Path:
    """Step 4: the slide-text model on the development reports (reused when there); its folder."""
    from .vlm.pretrain import pretrain

    slidetext = runs / "slidetext"
    model_dir = slidetext / "model"
    if (slidetext / "metrics.json").exists() and model_dir.is_dir():
        say(f"4/6 pretrain: reusing {model_dir}")
    else:
        say(f"4/6 pretrain: slide-text model on {len(c.dev_rows)} development reports -> {slidetext}")
        res = pretrain(
            c.dev_manifest,
            store=stores,
            encoder=ENCODER,
            out=slidetext,
            epochs=60,
            seed=seed,
            accelerator="cpu",
        )
        say(f"    {res.summary()}")
    return model_dir


def _write_prompts(out: Path, dev_rows: list[dict[str, str]]) -> Path:
    """``OUT/prompts.yaml`` with :data:`DEMO_PROMPTS`, checked to occur in no development report."""
    import yaml

    corpus = " ".join(r["report"].lower() for r in dev_rows)
    seen = [p for ps in DEMO_PROMPTS.values() for p in ps if p in corpus]
    if seen:  # pragma: no cover - the synthetic reports never use these words
        raise InvalidParameterError(f"prompt phrasings occur in the training reports: {seen}")
    prompts = out / "prompts.yaml"
    prompts.write_text(
        "# zero-shot classes: phrasings that never occur in the synthetic reports\n"
        + yaml.safe_dump({"classes": DEMO_PROMPTS}, sort_keys=False)
    )
    return prompts


def _score_heldout(
    c: _Cohort, stores: Path, run: TrainResult, model_dir: Path, prompts: Path, out: Path, seed: int, say: Say
) -> _Scores:
    """Step 5: the held-out slides scored by the fold ensemble and zero-shot; AUROCs with 95% CIs."""
    from .features.store import store_path
    from .mil.score import score
    from .vlm.api import zero_shot

    held_stores = [store_path(stores, c.folder / r["slide"]) for r in c.held_rows]
    labels = np.array([r["label"] == "tumour" for r in c.held_rows], dtype=int)
    preds = out / "predictions"
    say(
        f"5/6 score: {len(c.held_rows)} held-out slides, supervised (ensemble of {len(run.checkpoints)} folds) "
        f"and zero-shot ({prompts})"
    )
    sup_csv = preds / "heldout_supervised.csv"
    sup = score(run.checkpoints, held_stores, out_csv=sup_csv, name="abmil")
    zs = zero_shot(held_stores, prompts, model=model_dir, encoder=ENCODER)
    zs_csv = preds / "heldout_zero_shot.csv"
    _write(zs_csv, [r.as_dict() for r in zs])
    sup_auc, sup_ci = _auroc_ci(labels, np.array([r.probs["tumour"] for r in sup]), seed)
    zs_auc, zs_ci = _auroc_ci(labels, np.array([r.probs["tumour"] for r in zs]), seed)
    return _Scores(held_stores, sup_csv, zs_csv, sup_auc, sup_ci, zs_auc, zs_ci)


def _heatmaps(
    c: _Cohort, held_stores: list[Path | str], model_dir: Path, prompts: Path, heat: Path, say: Say
) -> tuple[list[Path], list[Path]]:
    """Step 6: attention maps of two held-out tumour slides, a zero-shot tile map of one; (PNGs, GeoJSONs)."""
    from .mil.heatmap import heatmap
    from .vlm.api import zero_shot

    heat.mkdir(exist_ok=True)
    tumour = [(r, s) for r, s in zip(c.held_rows, held_stores, strict=True) if r["label"] == "tumour"]
    pngs: list[Path] = []
    geo: list[Path] = []
    say(
        f"6/6 heatmaps: attention of {min(2, len(tumour))} held-out tumour slides, zero-shot tile similarity "
        f"of 1 -> {heat}"
    )
    for r, s in tumour[:2]:
        name = Path(r["slide"]).stem
        g = heat / f"{name}.attention.geojson"
        pngs.append(
            heatmap(
                c.folder / r["slide"],
                s,
                scores="abmil/attention",
                out_png=heat / f"{name}.attention.png",
                out_geojson=g,
            )
        )
        geo.append(g)
    if tumour:
        r, s = tumour[0]
        zero_shot([s], prompts, model=model_dir, encoder=ENCODER, level="tile")
        name = Path(r["slide"]).stem
        pngs.append(
            heatmap(
                c.folder / r["slide"],
                s,
                scores="zero-shot/tumour",
                out_png=heat / f"{name}.zero-shot-tumour.png",
            )
        )
    return pngs, geo


def _write_results(result: DemoResult, config: dict[str, Any]) -> None:
    """``OUT/results.json``: the configuration, the AUROCs with their CIs and the heatmap files."""
    (result.out / "results.json").write_text(
        json.dumps(
            {
                "config": config,
                "cv_auroc": result.cv_auroc,
                "cv_ci": list(result.cv_ci),
                "heldout_auroc_supervised": result.heldout_auroc,
                "heldout_ci_supervised": list(result.heldout_ci),
                "heldout_auroc_zero_shot": result.zero_shot_auroc,
                "heldout_ci_zero_shot": list(result.zero_shot_ci),
                "n_dev": result.n_dev,
                "n_heldout": result.n_heldout,
                "seconds": result.seconds,
                "heatmaps": [str(p) for p in result.heatmaps],
                "geojson": [str(p) for p in result.geojson],
            },
            indent=2,
        )
    )


def demo(
    out: str | os.PathLike[str] = "slidescope-demo",
    *,
    n_slides: int = 36,
    seed: int = 0,
    progress: bool = True,
    width: int = 1536,
    height: int = 1152,
    heldout_fraction: float = 0.25,
) -> DemoResult:
    """Run the whole pipeline on a synthetic cohort into ``out`` and print a results table.

    Parameters
    ----------
    out : output folder; rerunning into it reuses the cohort, the stores, finished folds and the
        pretrained slide-text model.
    n_slides : slides in the synthetic cohort (half with tumour), at least 12.
    seed : seed of the cohort, the split, training and pretraining.
    progress : print each step as it runs (the introduction, the table and the pointers to real
        slides are always printed).
    width, height : slide size in level-0 px (0.5 µm/px).
    heldout_fraction : about this fraction of the patients of each label is held out.

    Returns
    -------
    DemoResult
    """
    if n_slides < 12:
        raise InvalidParameterError(
            f"the demo needs at least 12 slides (3 folds and a held-out set), got {n_slides}"
        )
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        if progress:
            print(f"[{time.perf_counter() - t0:5.0f} s] {msg}", flush=True)

    print(INTRO, flush=True)
    print(flush=True)

    config = {
        "n_slides": n_slides,
        "seed": seed,
        "width": width,
        "height": height,
        "mpp": 0.5,
        "heldout_fraction": heldout_fraction,
        "encoder": ENCODER,
    }
    _check_config(out, config)
    c = _make_cohort(
        out / "cohort",
        n_slides=n_slides,
        width=width,
        height=height,
        seed=seed,
        heldout_fraction=heldout_fraction,
        say=say,
    )
    stores, runs = out / "stores", out / "runs"
    _extract(c, stores, say)
    run = _train_abmil(c, stores, runs, seed, say)
    model_dir = _pretrain(c, stores, runs, seed, say)
    prompts = _write_prompts(out, c.dev_rows)
    sc = _score_heldout(c, stores, run, model_dir, prompts, out, seed, say)
    pngs, geo = _heatmaps(c, sc.held_stores, model_dir, prompts, out / "heatmaps", say)

    result = DemoResult(
        out=out,
        manifest=c.manifest,
        dev_manifest=c.dev_manifest,
        heldout_manifest=c.held_manifest,
        stores=stores,
        abmil_run=run.out,
        checkpoints=run.checkpoints,
        slide_text_model=model_dir,
        prompts=prompts,
        n_dev=len(c.dev_rows),
        n_heldout=len(c.held_rows),
        cv_auroc=float(run.pooled["auroc"]),
        cv_ci=tuple(run.pooled_ci["auroc"]),  # type: ignore[arg-type]
        heldout_auroc=sc.sup_auc,
        heldout_ci=sc.sup_ci,
        zero_shot_auroc=sc.zs_auc,
        zero_shot_ci=sc.zs_ci,
        supervised_csv=sc.supervised_csv,
        zero_shot_csv=sc.zero_shot_csv,
        heatmaps=pngs,
        geojson=geo,
        seconds=time.perf_counter() - t0,
    )
    _write_results(result, config)
    print(flush=True)
    print(result.table(), flush=True)
    print(flush=True)
    print("Reminder: these slides are synthetic and he-descriptor is not a foundation model.", flush=True)
    print(_real_slides_help(out), flush=True)
    return result
