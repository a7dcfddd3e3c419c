"""Extract patch embeddings for a cohort of slides into Zarr stores.

Cached and resumable: run it again and finished slides are reused, an interrupted slide resumes from its
last complete chunk, and a bad slide is reported instead of stopping the batch.

    python examples/extract_cohort.py slides/ --encoder uni --weights /models/uni --out work
    python examples/extract_cohort.py --out work          # offline: a synthetic cohort, he-descriptor

Writes ``WORK/stores/<slide>.zarr`` (one store per slide) and ``WORK/extraction.csv`` (per slide: status,
tiles, tiles/s, effective mpp, error). Without slides it first writes a labelled synthetic cohort to
``WORK/cohort`` (``--n-slides``, ``--size``), which the other examples reuse.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import slidescope as ss
from slidescope.features import extract_slides
from slidescope.synthetic import make_synthetic_cohort
from slidescope.wsi import expand_slides


def synthetic_cohort(out: Path, n_slides: int, size: int) -> Path:
    """``OUT/cohort/manifest.csv`` of a synthetic cohort (slide, label, patient, report...), made once."""
    manifest = out / "cohort" / "manifest.csv"
    if not manifest.exists():
        make_synthetic_cohort(out / "cohort", n_slides=n_slides, width=size, height=size * 3 // 4, seed=0)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "slides",
        nargs="*",
        help="slide files, folders, glob patterns or a CSV manifest "
        "(default: a synthetic cohort in OUT/cohort)",
    )
    ap.add_argument("--encoder", default="he-descriptor", help="see `slidescope encoders`")
    ap.add_argument("--weights", help="local weights file or folder of the encoder")
    ap.add_argument("--out", type=Path, default=Path("examples-out"))
    ap.add_argument("--num-workers", type=int, default=None, help="reader processes (default: one per core)")
    ap.add_argument("--n-slides", type=int, default=12, help="synthetic cohort: slides")
    ap.add_argument("--size", type=int, default=1536, help="synthetic cohort: slide width in px (height 3/4)")
    args = ap.parse_args(argv)

    inputs = args.slides or [synthetic_cohort(args.out, args.n_slides, args.size)]
    slides = expand_slides(inputs)  # folders, globs and manifests -> slide paths
    encoder = ss.create_encoder(args.encoder, weights=args.weights)
    results = extract_slides(
        slides, encoder, store=args.out / "stores", num_workers=args.num_workers, progress=False
    )

    with open(args.out / "extraction.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide", "status", "tiles", "tiles_per_s", "effective_mpp", "error"])
        for r in results:
            mpp = f"{r.effective_mpp[0]:.4f}" if r.effective_mpp else ""
            error = f"{r.error_type}: {r.error}" if r.error else ""
            writer.writerow([Path(r.slide).name, r.status, r.n_tiles, f"{r.tiles_per_s:.1f}", mpp, error])
            print(f"{Path(r.slide).name:<32} {r.status:<8} {r.n_tiles:>6} tiles  {error}")

    ok = [r for r in results if r.status in ("done", "reused")]
    if ok:  # how the embeddings are read back (this is what MIL training and zero-shot use)
        store = ss.open_store(ok[0].store)
        emb = store.embeddings(args.encoder)  # (N, D) float16, row i = tile at store.coords[i]
        print(
            f"\n{store.path.name}: embeddings {emb.shape} {emb.dtype}, coords {store.coords.shape} "
            f"(level-0 top-left x, y), tiles {store.tile_extent} level-0 px"
        )
    print(
        f"{len(ok)} of {len(results)} slides ready in {args.out / 'stores'}; per-slide table: "
        f"{args.out / 'extraction.csv'}"
    )
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
