"""napari sample data: the synthetic sample slide with its tissue, tiles and a heatmap, in seconds.

The first call extracts ``he-descriptor`` embeddings of the sample slide into the viewer's cache
folder (a few seconds on a laptop CPU) and writes the ground-truth tumour fraction of every tile
(from the slide's tumour mask) into the same store as ``ground-truth/tumour-fraction``; later calls
reuse the store. The Analyse widget then finds the embeddings cached and goes straight to scoring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._paths import SAMPLE_MASK_MPP, sample_mask_path, sample_slide_path, viewer_cache_dir

__all__ = ["SAMPLE_ENCODER", "SAMPLE_SCORE", "prepare_sample", "tumour_fraction", "make_sample_data"]

SAMPLE_ENCODER = "he-descriptor"
SAMPLE_SCORE = "ground-truth/tumour-fraction"


def tumour_fraction(
    coords: np.ndarray, extent: tuple[int, int], mask: np.ndarray, downsample: float
) -> np.ndarray:
    """(N,) fraction of each tile (level-0 top-left ``coords``, ``extent`` (w, h)) that the boolean
    ``mask`` marks, the mask having ``downsample`` level-0 pixels per mask pixel."""
    out = np.zeros(len(coords), np.float32)
    for i, (x, y) in enumerate(np.asarray(coords).tolist()):
        r0, r1 = int(y // downsample), int(np.ceil((y + extent[1]) / downsample))
        c0, c1 = int(x // downsample), int(np.ceil((x + extent[0]) / downsample))
        window = mask[r0:r1, c0:c1]
        out[i] = float(window.mean()) if window.size else 0.0
    return out


def _has_scores(store: Any, name: str) -> bool:
    from ..features.store import StoreError

    try:
        store.scores(name)
    except StoreError:
        return False
    return True


def _extract_sample(slide: Any, tissue: Any, root: Path) -> None:
    from ._compat import keep_triton_out

    keep_triton_out()  # before torch: napari's OpenGL may run on a system LLVM
    from ..features import extract_features, get_encoder_config
    from ..wsi import make_tile_grid

    config = get_encoder_config(SAMPLE_ENCODER)
    grid = make_tile_grid(slide, tile_size=config.tile_size, mpp=config.mpp, mask=tissue)
    extract_features(slide, grid, SAMPLE_ENCODER, store=root, num_workers=0, progress=False, device="cpu")


def prepare_sample(cache_dir: Path | None = None) -> tuple[Any, Any, Any]:
    """``(slide, store, tissue)`` of the sample slide, its store made or reused in ``cache_dir``.

    Parameters
    ----------
    cache_dir : folder of stores (default: ``<viewer cache>/stores``).

    Returns
    -------
    (Slide, SlideStore, TissueMask)
        The store holds ``he-descriptor`` embeddings and the ``ground-truth/tumour-fraction`` scores.
    """
    from PIL import Image

    from ..features.store import SlideStore, store_path
    from ..wsi import detect_tissue, open_slide
    from ._analysis import cached_embeddings

    slide = open_slide(sample_slide_path())
    tissue = detect_tissue(slide)
    root = Path(cache_dir) if cache_dir is not None else viewer_cache_dir() / "stores"
    path = store_path(root, slide.path)
    if not cached_embeddings(
        path, slide.path, SAMPLE_ENCODER
    ):  # the first time only: torch and a few seconds
        _extract_sample(slide, tissue, root)
    store = SlideStore.open(path, mode="r+")
    if not _has_scores(store, SAMPLE_SCORE):
        mask = np.asarray(Image.open(sample_mask_path())) > 127
        fraction = tumour_fraction(store.coords, store.tile_extent, mask, SAMPLE_MASK_MPP / slide.mpp[0])
        store.write_scores(
            SAMPLE_SCORE,
            fraction,
            attrs={"kind": "fraction", "source": "sample_slide.tumour.png (ground truth, not a model)"},
        )
    return slide, store, tissue


def make_sample_data() -> list[tuple[Any, dict[str, Any], str]]:
    """npe2 sample data: the sample slide, its tissue outline, the tumour-fraction heatmap and the tiles."""
    from ._reader import slide_layer_data
    from ._results import result_layers

    slide, store, tissue = prepare_sample()
    return [
        slide_layer_data(slide),
        *result_layers(store, [SAMPLE_SCORE], slide.mpp, slide_path=slide.path, tissue=tissue),
    ]
