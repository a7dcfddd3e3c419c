"""One slide's embeddings: tissue -> tile grid -> stored embeddings (:func:`embed_slide`).

The per-slide orchestration shared by a batch run (:func:`~slidescope.pipeline.process_slide`) and the
viewer's analysis (:func:`~slidescope.viewer._analysis.run_analysis`): each wraps it in what only it needs
(timings, records and outputs for the run; a worker thread, progress and cancel for the viewer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

from ..errors import EmptyTissueError
from ..options import EmbeddingOptions, TilingOptions

__all__ = ["EmbeddedSlide", "embed_slide"]


@dataclass
class EmbeddedSlide:
    """What :func:`embed_slide` made: the tissue mask, the tile grid and the extraction's result."""

    mask: Any  # slidescope.wsi.TissueMask
    grid: Any  # slidescope.wsi.TileGrid
    result: Any  # slidescope.features.ExtractionResult


def _untimed(stage: str) -> ContextManager[None]:
    return contextlib.nullcontext()


def _no_step(step: str, value: Any) -> None:
    pass


def embed_slide(
    slide_obj: Any,
    encoder: Any,
    *,
    stores: str | Path,
    tiling: TilingOptions | None = None,
    mask: Any = None,
    batch_size: int | str = EmbeddingOptions.batch_size,
    num_workers: int | None = EmbeddingOptions.num_workers,
    dtype: str = EmbeddingOptions.dtype,
    stain: str | None = EmbeddingOptions.stain,
    progress: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[str, Any], None] | None = None,
    timer: Callable[[str], ContextManager[None]] | None = None,
    name: str | None = None,
) -> EmbeddedSlide:
    """Find the tissue, tile it and embed the tiles into the slide's store under ``stores``.

    Parameters
    ----------
    slide_obj : an open :class:`~slidescope.wsi.Slide`.
    encoder : a patch encoder (:func:`~slidescope.features.create_encoder`).
    stores : the folder of stores (the slide's store is ``<stores>/<slide>.zarr``; cached and resumable).
    tiling : ``mpp`` and ``tile_size`` (None: the encoder's), ``overlap``, ``min_tissue``, ``edge``, ``pen``
        (tissue detection) and ``qc`` (the tile QC, :func:`~slidescope.wsi.qc_tiles`: with it the grid is a
        ``QCGrid``, without the flagged tiles for ``"exclude"``); None: the schema's defaults.
    mask : a tissue mask already found (its detection is skipped then); None: detect it with ``tiling.pen``.
    batch_size, num_workers, dtype, stain : as for :func:`~slidescope.features.extract_features`.
    progress : show a progress bar while extracting.
    on_progress, should_stop : called between batches with ``(tiles done, tiles in all)``; stop the
        extraction (status ``"cancelled"``) when it returns True.
    on_step : called with ``("tissue", mask)`` once the mask is known and ``("grid", grid)`` once the
        grid is (before the checks that may fail), e.g. to write the tissue outline.
    name : the slide's name in error messages; None: its file name.
    timer : ``timer(stage)`` gives a context manager around each stage (``"tissue"``, ``"tiles"``, ``"qc"``,
        ``"extract"``); e.g. to record timings.

    Returns
    -------
    EmbeddedSlide

    Raises
    ------
    EmptyTissueError
        No tile has enough tissue; the message says what to lower (and to try ``--pen off`` when pen
        removal took most of the tissue).
    """
    from ..features.extract import extract_features
    from ..features.segmenters import device_of, find_tissue, run_tile_qc
    from ..wsi import make_tile_grid, pen_hint

    tiling = tiling if tiling is not None else TilingOptions()
    timed = timer if timer is not None else _untimed
    mpp = tiling.mpp if tiling.mpp is not None else encoder.config.mpp
    tile_size = tiling.tile_size if tiling.tile_size is not None else encoder.config.tile_size
    if mask is None:
        with timed("tissue"):
            mask = find_tissue(
                slide_obj,
                tiling.tissue,
                pen=tiling.pen,
                weights=tiling.segmenter_weights,
                device=device_of(encoder),
                allow_darkfield=tiling.allow_darkfield,
            )
    step = on_step if on_step is not None else _no_step
    step("tissue", mask)
    with timed("tiles"):
        grid = make_tile_grid(
            slide_obj,
            tile_size=tile_size,
            mpp=mpp,
            overlap=tiling.overlap,
            min_tissue=tiling.min_tissue,
            mask=mask,
            allow_empty=True,
            edge=tiling.edge,
            downscale=tiling.downscale,
        )
    if tiling.qc != "off":
        with timed("qc"):
            grid = run_tile_qc(
                slide_obj,
                grid,
                tiling.qc,
                mask=mask,
                qc_model=tiling.qc_model,
                thresholds=tiling.qc_thresholds,
                weights=tiling.segmenter_weights,
                device=device_of(encoder),
            )
    step("grid", grid)
    if len(grid) == 0:
        raise EmptyTissueError(
            f"{name or Path(str(slide_obj.path)).name}: no tile of {tile_size} px at {mpp:g} µm/px has at least "
            f"{tiling.min_tissue:g} tissue ({round(mask.area_um2 / 1e6, 4):g} mm² of tissue found). Check the "
            f"slide, or lower --min-tissue / --tile-size." + pen_hint(mask)
        )
    with timed("extract"):
        result = extract_features(
            slide_obj,
            grid,
            encoder,
            store=stores,
            batch_size=batch_size,
            num_workers=num_workers,
            dtype=dtype,
            stain=stain,
            progress=progress,
            on_progress=on_progress,
            should_stop=should_stop,
        )
    return EmbeddedSlide(mask=mask, grid=grid, result=result)
