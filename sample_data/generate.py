"""Regenerate the sample slide and its tumour mask.

    python sample_data/generate.py

Writes ``sample_slide.tiff`` (4096 x 3072 px at 0.5 um/px, Aperio-SVS-style pyramid) and
``sample_slide.tumour.png`` (the ground-truth tumour mask at 8 um/px, 0 / 255) next to this file.
The output is deterministic: rerunning gives the same bytes with the same library versions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from slidescope.synthetic import make_synthetic_slide

HERE = Path(__file__).resolve().parent
SLIDE = HERE / "sample_slide.tiff"
TUMOUR_MASK = HERE / "sample_slide.tumour.png"

PARAMS = {
    "width": 4096,
    "height": 3072,
    "mpp": 0.5,
    "tumour": True,
    "n_islands": 3,
    "tile_size": 256,
    "n_levels": None,  # -> 2 levels: 4096 x 3072 and 1024 x 768
    "jpeg_quality": 85,
    "seed": 0,
    "background": (242, 242, 242),
    "mask_mpp": 8.0,  # 16 level-0 pixels per mask pixel -> 256 x 192 mask
}


def main() -> None:
    syn = make_synthetic_slide(SLIDE, **PARAMS)
    mask = np.where(syn.tumour_mask, 255, 0).astype(np.uint8)
    # PNG pHYs carries the mask's pixel size too: 8 um/px = 3175 dpi
    Image.fromarray(mask).save(TUMOUR_MASK, dpi=(25400 / syn.mask_mpp, 25400 / syn.mask_mpp))
    tissue_fraction = syn.tissue_mask.mean()
    tumour_fraction = syn.tumour_mask.sum() / max(1, syn.tissue_mask.sum())
    print(
        f"wrote {SLIDE.name} ({SLIDE.stat().st_size / 2**20:.2f} MiB, {syn.width} x {syn.height} px at "
        f"{syn.mpp} um/px) and {TUMOUR_MASK.name} ({mask.shape[1]} x {mask.shape[0]} px at {syn.mask_mpp} um/px); "
        f"tissue {tissue_fraction:.1%} of the glass, tumour {tumour_fraction:.1%} of the tissue"
    )


if __name__ == "__main__":
    main()
