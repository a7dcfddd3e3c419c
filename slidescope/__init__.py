"""slidescope: whole-slide pathology images from slide to prediction.

``import slidescope`` is cheap: it imports neither torch, napari nor the slide libraries. The public
functions are loaded on first use::

    import slidescope as ss
    slide = ss.open_slide("CMU-1-Small-Region.svs")
    grid = ss.make_tile_grid(slide, tile_size=224, mpp=0.5)
    res = ss.run("slides/", encoder="uni", model=["runs/abmil"], out="results")   # a whole cohort, resumable
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from .errors import *  # noqa: F403  (exceptions are light and part of the public API)
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

_EXPORTS = {
    "open_slide": "slidescope.wsi",
    "Slide": "slidescope.wsi",
    "detect_tissue": "slidescope.wsi",
    "TissueMask": "slidescope.wsi",
    "make_tile_grid": "slidescope.wsi",
    "TileGrid": "slidescope.wsi",
    "iter_tiles": "slidescope.wsi",
    "TileDataset": "slidescope.wsi",
    "create_encoder": "slidescope.features",
    "list_encoders": "slidescope.features",
    "extract_features": "slidescope.features",
    "open_store": "slidescope.features",
    "create_aggregator": "slidescope.mil",
    # the defining modules: slidescope.mil.train/score/heatmap are also submodule names, and once a submodule
    # is imported the package attribute is the module, not the function
    "train": "slidescope.mil.train",
    "score": "slidescope.mil.score",
    "heatmap": "slidescope.mil.heatmap",
    "zero_shot": "slidescope.vlm",
    "few_shot": "slidescope.vlm",
    "run": "slidescope.pipeline",
}

__all__ = sorted([*_EXPORTS, *_errors_all, "__version__"])

if TYPE_CHECKING:  # pragma: no cover
    from .features import (
        create_encoder as create_encoder,
        extract_features as extract_features,
        list_encoders as list_encoders,
        open_store as open_store,
    )
    from .mil import create_aggregator as create_aggregator
    from .mil.heatmap import heatmap as heatmap
    from .mil.score import score as score
    from .mil.train import train as train
    from .pipeline import run as run
    from .vlm import few_shot as few_shot, zero_shot as zero_shot
    from .wsi import (
        TileDataset as TileDataset,
        TileGrid as TileGrid,
        TissueMask as TissueMask,
        detect_tissue as detect_tissue,
        iter_tiles as iter_tiles,
        make_tile_grid as make_tile_grid,
        open_slide as open_slide,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
