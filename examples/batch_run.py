"""Score a batch of slides end to end from Python: ``slidescope.run`` (the ``slidescope run`` command).

    python examples/batch_run.py slides/ --encoder uni --weights /models/uni --model runs/abmil --out results
    python examples/batch_run.py --out work             # offline: the synthetic cohort, a quick ABMIL

Each slide is opened, its tissue found and tiled, its tiles embedded (cached in the stores), scored with the
MIL checkpoints (an ensemble of the folds) and, with ``--prompts`` and ``--slide-text-model``, zero-shot;
heatmaps are drawn. ``RESULTS/predictions.csv`` has one row per slide, ``RESULTS/report.md`` says what
happened to each (failures with their reason). Running it again skips finished slides and retries failed ones.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import slidescope as ss
from slidescope.features import extract_slides
from slidescope.synthetic import make_synthetic_cohort


def quick_model(out: Path, n_slides: int, size: int, encoder: str) -> tuple[Path, Path]:
    """The synthetic cohort (made once) and a small 2-fold ABMIL on it: (manifest, run folder)."""
    manifest = out / "cohort" / "manifest.csv"
    if not manifest.exists():
        make_synthetic_cohort(out / "cohort", n_slides=n_slides, width=size, height=size * 3 // 4, seed=0)
    run_dir = out / "abmil"
    if not list(run_dir.glob("fold*/best.ckpt")):
        with open(manifest, newline="") as fh:
            slides = [manifest.parent / row["slide"] for row in csv.DictReader(fh)]
        extract_slides(slides, encoder, store=out / "stores", progress=False)
        ss.train(
            manifest, store=out / "stores", encoder=encoder, out=run_dir, model="abmil", folds=2, epochs=10
        )
    return manifest, run_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slides", nargs="*", help="slide files, folders, globs or a CSV manifest")
    ap.add_argument("--encoder", default="he-descriptor")
    ap.add_argument("--weights", help="local weights of the encoder")
    ap.add_argument("--model", action="append", help="MIL checkpoint or training run folder (repeatable)")
    ap.add_argument("--prompts", help="zero-shot prompts YAML (with --slide-text-model)")
    ap.add_argument("--slide-text-model", help="saved slide-text model folder")
    ap.add_argument("--out", type=Path, default=Path("examples-out"))
    ap.add_argument("--n-slides", type=int, default=24, help="synthetic cohort: slides")
    ap.add_argument("--size", type=int, default=1536, help="synthetic cohort: slide width in px")
    args = ap.parse_args(argv)

    slides, models = args.slides, args.model
    if not slides:
        manifest, run_dir = quick_model(args.out, args.n_slides, args.size, args.encoder)
        slides, models = [str(manifest)], models or [str(run_dir)]

    result = ss.run(
        slides,
        encoder=args.encoder,
        weights=args.weights,
        model=models,
        prompts=args.prompts,
        slide_text_model=args.slide_text_model,
        out=args.out / "results",
        stores=args.out / "stores",
        progress=False,
    )
    print(f"{result.counts}; predictions: {result.predictions}; report: {result.out / 'report.md'}")
    for o in result.outcomes[:5]:
        print(f"{o.key}: {o.status}, {o.n_tiles} tiles at {o.effective_mpp} µm/px, {o.predictions}")
    for o in result.failed:
        print(f"{o.key}: {o.error_class}: {o.error_message}")
    return result.exit_code  # 0: all slides done; 1: some failed (see the report)


if __name__ == "__main__":
    sys.exit(main())
