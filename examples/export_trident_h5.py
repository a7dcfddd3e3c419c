"""Export slidescope embedding stores as TRIDENT/CLAM h5 files (and read one back with plain h5py).

    python examples/export_trident_h5.py --stores work/stores --encoder uni --out work/h5
    python examples/export_trident_h5.py --out work       # offline: embeds sample_data/sample_slide.tiff first

Each ``<slide>.h5`` holds ``features`` (N, D) float32 and ``coords`` (N, 2) int64, level-0 top-left (x, y),
with TRIDENT's attributes on ``coords`` (``patch_size``, ``patch_size_level0``, ``level0_magnification``,
``target_magnification``...) plus slidescope provenance (``slidescope.effective_mpp``, encoder, weights
digest): what CLAM, TRIDENT and most MIL code read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slidescope.features import export_h5, extract_slides
from slidescope.mil.score import expand_stores

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "sample_slide.tiff"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--stores", type=Path, help="slide stores or store folders (default: embed the sample slide)"
    )
    ap.add_argument("--encoder", default="he-descriptor", help="which embeddings to export")
    ap.add_argument("--out", type=Path, default=Path("examples-out"), help="h5 files go to OUT/h5")
    args = ap.parse_args(argv)

    if args.stores is None:
        (res,) = extract_slides([SAMPLE], args.encoder, store=args.out / "sample_stores", progress=False)
        stores = [Path(res.store)]
    else:
        stores = expand_stores([args.stores])

    import h5py

    for store in stores:
        h5 = export_h5(store, args.encoder, args.out / "h5" / (store.name[: -len(".zarr")] + ".h5"))
        with h5py.File(h5, "r") as f:  # what a TRIDENT/CLAM user sees
            feats, coords = f["features"], f["coords"]
            print(
                f"{h5.name}: features {feats.shape} {feats.dtype}, coords {coords.shape} {coords.dtype}, "
                f"patch_size {coords.attrs['patch_size']} px = {coords.attrs['patch_size_level0']} level-0 px, "
                f"{coords.attrs['target_magnification']:.0f}x of {coords.attrs['level0_magnification']:.0f}x"
            )
    print(f"{len(stores)} h5 file(s) in {args.out / 'h5'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
