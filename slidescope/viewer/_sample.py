"""napari sample data: the synthetic sample slide with its tissue, tiles and a heatmap, in seconds.

File > Open Sample cuts the sample slide into ``he-descriptor``'s tiles and writes the ground-truth
tumour fraction of every tile (from the slide's tumour mask) as ``ground-truth/tumour-fraction`` into
its store in the viewer's cache folder, without computing embeddings: no torch, so the window does not
freeze while the encoder loads. The Analyse widget extracts the embeddings into the same tiling (in its
background worker, with a progress bar) the first time it runs on the sample, and reuses them after.
:func:`prepare_sample` with ``embed=True`` (the default, for scripts and tests) extracts them at once.
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


def _sample_grid(slide: Any, tissue: Any) -> Any:
    """The sample's tiles for ``he-descriptor`` (its tile size and mpp; the registry entry needs no torch)."""
    from ..features import get_encoder_config
    from ..wsi import make_tile_grid

    config = get_encoder_config(SAMPLE_ENCODER)
    return make_tile_grid(slide, tile_size=config.tile_size, mpp=config.mpp, mask=tissue)


def _extract_sample(slide: Any, tissue: Any, root: Path) -> None:
    from ._compat import keep_triton_out

    keep_triton_out()  # before torch: napari's OpenGL may run on a system LLVM
    from ..features import extract_features

    grid = _sample_grid(slide, tissue)
    extract_features(slide, grid, SAMPLE_ENCODER, store=root, num_workers=0, progress=False, device="cpu")


def _tile_sample(slide: Any, tissue: Any, path: Any) -> None:
    """The sample's tiling in its store (coordinates, tissue fractions), without embeddings."""
    from ..features.store import SlideStore, slide_fingerprint

    grid = _sample_grid(slide, tissue)
    SlideStore.create_or_open(
        path,
        slide_attrs={
            "name": slide.path.name,
            "path": str(slide.path.resolve()),
            "fingerprint": slide_fingerprint(slide.path),
            "reader": slide.reader,
            "backend": slide.backend,
            "mpp": list(slide.mpp),
            "mpp_source": slide.mpp_source,
            "dimensions": list(slide.dimensions),
        },
        tiling=grid.to_dict(),
        coords=grid.coords,
        tissue_fraction=grid.tissue_fraction,
        pad_fraction=grid.pad_fraction,
    )


def prepare_sample(cache_dir: Path | None = None, *, embed: bool = True) -> tuple[Any, Any, Any]:
    """``(slide, store, tissue)`` of the sample slide, its store made or reused in ``cache_dir``.

    Parameters
    ----------
    cache_dir : folder of stores (default: ``<viewer cache>/stores``).
    embed : extract the ``he-descriptor`` embeddings now when they are not cached (imports torch);
        False: only the tiling and the ground truth (what File > Open Sample does).

    Returns
    -------
    (Slide, SlideStore, TissueMask)
        The store holds the ``ground-truth/tumour-fraction`` scores, and ``he-descriptor`` embeddings
        with ``embed`` (or when an earlier run extracted them).
    """
    from PIL import Image

    from ..features.store import SlideStore, store_path
    from ..wsi import detect_tissue, open_slide
    from ._analysis import cached_embeddings

    slide = open_slide(sample_slide_path())
    tissue = detect_tissue(slide)
    root = Path(cache_dir) if cache_dir is not None else viewer_cache_dir() / "stores"
    path = store_path(root, slide.path)
    if not cached_embeddings(path, slide.path, SAMPLE_ENCODER):
        if embed:  # the first time only: torch and a few seconds
            _extract_sample(slide, tissue, root)
        else:
            _tile_sample(slide, tissue, path)
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

    slide, store, tissue = prepare_sample(embed=False)
    _watch_current_viewer()
    return [
        slide_layer_data(slide),
        *result_layers(store, [SAMPLE_SCORE], slide.mpp, slide_path=slide.path, tissue=tissue),
    ]


def _watch_current_viewer() -> None:
    """Readable tile hover text, a read-only tile layer and thin outlines in the viewer the sample opens in
    (:func:`~slidescope.viewer._readout.watch_viewer`), with or without a slidescope widget open."""
    import napari

    from ._readout import watch_viewer

    viewer = napari.current_viewer()
    if viewer is not None:
        watch_viewer(viewer)
