"""Zero-shot slide classification from a prompt file with a slide-text model, plus a tile similarity heatmap.

    python examples/zero_shot_prompts.py --slide-text-model runs/slidetext/model --stores work/stores \
        --encoder he-descriptor --prompts examples/prompts.yaml --out work
    python examples/zero_shot_prompts.py --out work       # offline: pretrains a small model on the synthetic cohort

The slide-text model must have been pretrained on the same encoder's tile embeddings (``slidescope pretrain``
on slide-report pairs). Without ``--slide-text-model`` this script pretrains one on the synthetic cohort's
reports, holding every fourth patient out, and classifies those held-out slides with prompts whose phrasings
never occur in the reports. Writes ``WORK/zero_shot.csv`` and ``WORK/zero_shot_<slide>.png``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import slidescope as ss
from slidescope.features import extract_slides
from slidescope.features.store import store_path
from slidescope.mil.score import expand_stores
from slidescope.vlm import load_prompts
from slidescope.synthetic import make_synthetic_cohort

HERE = Path(__file__).resolve().parent


def synthetic_split(
    out: Path, n_slides: int, size: int, encoder: str
) -> tuple[Path, list[dict[str, str]], Path]:
    """A synthetic cohort with embeddings, split by patient: (development manifest, held-out rows, stores)."""
    manifest = out / "cohort" / "manifest.csv"
    if not manifest.exists():
        make_synthetic_cohort(out / "cohort", n_slides=n_slides, width=size, height=size * 3 // 4, seed=0)
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    extract_slides(
        [manifest.parent / r["slide"] for r in rows], encoder, store=out / "stores", progress=False
    )
    held = set(sorted({r["patient"] for r in rows})[::4])
    dev = manifest.parent / "pretrain.csv"
    with open(dev, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["patient"] not in held)
    return dev, [r for r in rows if r["patient"] in held], out / "stores"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--slide-text-model", type=Path, help="a saved slide-text model folder (pretrain's OUT/model)"
    )
    ap.add_argument("--stores", type=Path, help="slide stores or a store folder to classify")
    ap.add_argument("--prompts", type=Path, default=HERE / "prompts.yaml")
    ap.add_argument("--encoder", default="he-descriptor")
    ap.add_argument("--out", type=Path, default=Path("examples-out"))
    ap.add_argument("--epochs", type=int, default=60, help="pretraining epochs (synthetic cohort only)")
    ap.add_argument("--n-slides", type=int, default=24, help="synthetic cohort: slides")
    ap.add_argument("--size", type=int, default=1536, help="synthetic cohort: slide width in px")
    args = ap.parse_args(argv)

    labels: dict[str, str] = {}
    if args.slide_text_model is None:
        dev, held, store_dir = synthetic_split(args.out, args.n_slides, args.size, args.encoder)
        from slidescope.vlm.pretrain import pretrain

        model_dir = args.out / "slidetext" / "model"
        if not model_dir.is_dir():
            res = pretrain(
                dev,
                store=store_dir,
                encoder=args.encoder,
                out=args.out / "slidetext",
                epochs=args.epochs,
                seed=0,
            )
            print(f"pretrained: {res.summary()}")
        stores = [store_path(store_dir, dev.parent / r["slide"]) for r in held]
        labels = {Path(r["slide"]).stem: r["label"] for r in held}
    else:
        model_dir = args.slide_text_model
        stores = expand_stores([args.stores or args.out / "stores"])

    prompts = load_prompts(args.prompts)  # classes + templates, checked
    rows = ss.zero_shot(stores, prompts, model=model_dir, encoder=args.encoder)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "zero_shot.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].as_dict()))
        writer.writeheader()
        writer.writerows(r.as_dict() for r in rows)
    for r in rows:
        truth = f"  (label: {labels[r.slide]})" if r.slide in labels else ""
        print(f"{r.slide}: {r.predicted} ({', '.join(f'{c}={p:.3f}' for c, p in r.probs.items())}){truth}")
    if labels:
        right = sum(r.predicted == labels[r.slide] for r in rows)
        print(
            f"{right} of {len(rows)} held-out slides right (synthetic slides; prompts unseen in pretraining)"
        )

    # where does "tumour" match? per-tile similarity maps written into the store, drawn over the slide
    first = rows[0]
    ss.zero_shot([first.store], prompts, model=model_dir, encoder=args.encoder, level="tile")
    slide_file = ss.open_store(first.store).attrs["slide"]["path"]
    name = prompts.names[0]
    png = ss.heatmap(
        slide_file, first.store, scores=f"zero-shot/{name}", out_png=args.out / f"zero_shot_{first.slide}.png"
    )
    print(f"probabilities: {args.out / 'zero_shot.csv'}; '{name}' similarity map: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
