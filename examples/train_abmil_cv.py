"""Train ABMIL with patient-level cross-validation on cached embeddings, then score slides with the folds.

    python examples/train_abmil_cv.py --manifest slides.csv --stores work/stores --encoder uni --out work
    python examples/train_abmil_cv.py --out work          # offline: the synthetic cohort of extract_cohort.py

The manifest has one row per slide with columns ``slide`` (path, relative to the manifest), ``label`` and
``patient`` (optional ``site``). Writes ``WORK/abmil/`` (``fold<k>/best.ckpt``, ``splits.json``,
``results.csv`` with per-fold and pooled AUROC / balanced accuracy / F1 / kappa and 95% bootstrap CIs,
``oof_predictions.csv``) and ``WORK/abmil_scores.csv`` (the fold ensemble applied to every slide).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import slidescope as ss
from slidescope.features import extract_slides
from slidescope.features.store import store_path
from slidescope.synthetic import make_synthetic_cohort


def synthetic_cohort(out: Path, n_slides: int, size: int, encoder: str) -> tuple[Path, Path]:
    """A synthetic labelled cohort and its embeddings (reused when present): (manifest, store folder)."""
    manifest = out / "cohort" / "manifest.csv"
    if not manifest.exists():
        make_synthetic_cohort(out / "cohort", n_slides=n_slides, width=size, height=size * 3 // 4, seed=0)
    with open(manifest, newline="") as fh:
        slides = [manifest.parent / row["slide"] for row in csv.DictReader(fh)]
    extract_slides(slides, encoder, store=out / "stores", progress=False)
    return manifest, out / "stores"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, help="CSV: slide, label, patient[, site]")
    ap.add_argument("--stores", type=Path, help="store folder with the slides' embeddings")
    ap.add_argument("--encoder", default="he-descriptor")
    ap.add_argument("--out", type=Path, default=Path("examples-out"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-slides", type=int, default=24, help="synthetic cohort: slides")
    ap.add_argument("--size", type=int, default=1536, help="synthetic cohort: slide width in px")
    args = ap.parse_args(argv)

    if args.manifest is None:
        manifest, stores = synthetic_cohort(args.out, args.n_slides, args.size, args.encoder)
    else:
        manifest, stores = args.manifest, args.stores or args.out / "stores"

    run = ss.train(
        manifest,
        store=stores,
        encoder=args.encoder,
        out=args.out / "abmil",
        model="abmil",
        folds=args.folds,
        epochs=args.epochs,
        seed=args.seed,
    )
    print(run.summary())  # per-fold and pooled held-out metrics with 95% CIs
    print(f"out-of-fold predictions: {run.oof_csv}\ncheckpoints: {', '.join(map(str, run.checkpoints))}")

    # apply the ensemble of fold checkpoints (here to every slide of the manifest; in a study, to new slides)
    with open(manifest, newline="") as fh:
        slide_stores = [store_path(stores, manifest.parent / row["slide"]) for row in csv.DictReader(fh)]
    scores = ss.score(run.checkpoints, slide_stores, out_csv=args.out / "abmil_scores.csv", name="abmil")
    for s in scores[:5]:
        print(
            f"{s.slide}: {s.predicted} ({', '.join(f'{c}={p:.3f}' for c, p in s.probs.items())}), "
            f"attention over {len(s.attention)} tiles"
        )
    print(
        f"scores of {len(scores)} slides: {args.out / 'abmil_scores.csv'}; tile attention in each store as "
        f"'abmil/attention' (draw it with ss.heatmap)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
