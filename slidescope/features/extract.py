"""The extraction engine: tiles -> patch encoder -> the Zarr store, resumable and fast.

With a GPU, producer/consumer: DataLoader worker processes read and decode tiles (each with its
own slide handle); the main process moves uint8 batches to the device (pinned memory, non-blocking
copies), encodes them under autocast at the encoder's precision, and hands finished chunks to a
background writer thread, so the device never waits on disk. On a CPU, each worker process reads
*and* encodes its share with one thread (process parallelism instead of intra-op threads that would
fight the readers for the cores). A run resumes from the last complete chunk.
"""

from __future__ import annotations

import copy
import functools
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidParameterError
from ..options import EmbeddingOptions, TilingOptions
from ..wsi import MPP_FILLED_IN, MPP_FROM_MANIFEST, Slide, TileDataset, TileGrid, open_slide, qc_tiles
from .encoders import Encoder, create_encoder
from .store import (
    DEFAULT_CHUNK_ROWS,
    BackgroundWriter,
    CacheKey,
    SlideStore,
    claim,
    settle_qc,
    slide_fingerprint,
    store_path,
)

log = logging.getLogger(__name__)

__all__ = [
    "extract_features",
    "extract_slides",
    "ExtractionResult",
    "ExtractJob",
    "extract_job",
    "default_num_workers",
    "in_daemonic_process",
]


@dataclass
class ExtractionResult:
    """What happened to one slide."""

    slide: str
    status: str  # "done", "reused", "empty", "failed", "claimed", "cancelled"
    store: str | None = None
    n_tiles: int = 0
    computed: int = 0
    seconds: float = 0.0
    tiles_per_s: float = 0.0
    effective_mpp: list[float] | None = None
    error: str | None = None
    error_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def in_daemonic_process() -> bool:
    """True in a daemonic process, which Python does not allow to start child processes.

    Dask distributed workers are daemonic by default (LocalCluster, ``dask worker`` behind an external
    scheduler, dask-jobqueue jobs): a DataLoader with reader processes would fail there with
    "daemonic processes are not allowed to have children". :func:`extract_features` then reads in the
    worker itself (``num_workers=0``). That is the design on Dask, not only a fallback: the cluster's
    worker processes and threads already process several slides at once (a LocalCluster has cores / 2
    processes x 2 threads), so reader processes per slide would oversubscribe the cores (up to
    cores² processes) and escape the nanny's memory accounting. Workers started with
    ``distributed.worker.daemon: false`` (e.g. ``DASK_DISTRIBUTED__WORKER__DAEMON=False``, useful for
    one-worker-per-GPU clusters whose GPU waits on the reading) are not daemonic and get reader
    processes again: the check is on the flag itself, not on being inside Dask.
    """
    import multiprocessing

    return bool(multiprocessing.current_process().daemon)


def default_num_workers(device: torch.device | None = None) -> int:
    """Reader processes. On a CPU, one per core (each reads and encodes); with a GPU, one per core
    but one left for the main process, at most 8."""
    cores = os.cpu_count() or 2
    if device is not None and device.type == "cpu":
        return max(1, cores)
    return max(1, min(8, cores - 1))


def _slide_attrs(slide: Slide) -> dict[str, Any]:
    return {
        "name": slide.path.name,
        "path": str(slide.path.resolve()),
        "fingerprint": slide_fingerprint(slide.path),
        "reader": slide.reader,
        "backend": slide.backend,
        "mpp": list(slide.mpp),
        "mpp_source": slide.mpp_source,
        "dimensions": list(slide.dimensions),
    }


def _check_slide_unchanged(slide: Slide, store: SlideStore) -> None:
    """Refuse to mark embeddings complete when the slide file changed while they were computed.

    The store recorded the slide's fingerprint when the extraction began; a file replaced meanwhile
    would leave embeddings of the old file (or a mix of both) behind. They stay incomplete, and the
    next run, seeing another fingerprint, starts the store afresh."""
    from .store import SlideMismatchError

    recorded = store.attrs.get("slide", {}).get("fingerprint")
    try:
        now = slide_fingerprint(slide.path)
    except OSError as err:
        raise SlideMismatchError(
            f"{slide.path}: the slide cannot be read any more ({err}) after its tiles were "
            f"embedded; its embeddings are not marked complete. Run again."
        ) from err
    if now != recorded:
        raise SlideMismatchError(
            f"{slide.path} changed while it was processed (fingerprint {recorded} when the extraction began, {now} "
            f"now); its embeddings are not marked complete. Run `slidescope extract` (or `slidescope run`) again once "
            f"the file is in place: the slide is extracted afresh."
        )


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _encode(encoder: Encoder, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    use_autocast = encoder.autocast_dtype != torch.float32
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=encoder.autocast_dtype, enabled=use_autocast),
    ):
        out = encoder(images)
    return out.float()


def _encode_adaptive(
    encoder: Encoder, images: torch.Tensor, device: torch.device, state: dict[str, int]
) -> torch.Tensor:
    """Encode, splitting the batch when the device runs out of memory (and remembering the size)."""
    limit = state.get("limit", len(images))
    parts = []
    start = 0
    while start < len(images):
        part = images[start : start + limit]
        try:
            parts.append(_encode(encoder, part, device))
            start += len(part)
        except RuntimeError as err:
            if not _is_oom(err) or limit == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            limit = max(1, limit // 2)
            state["limit"] = limit
            log.warning("out of memory at batch %d; going on with batches of %d", len(part), limit)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _has_conv(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) and m.kernel_size != m.stride for m in module.modules())


def _auto_batch_size(device: torch.device, encoder: Encoder) -> int:
    if device.type != "cuda":
        return 32
    return 256 if encoder.config.embed_dim <= 1024 else 128


def _ready_encoder(encoder: Encoder | str, device: str | torch.device) -> tuple[Encoder, torch.device]:
    """The encoder (built on ``device`` when given by name) and the device it is on; convolutional
    encoders on a GPU in channels-last memory format (faster convolutions on tensor cores)."""
    if isinstance(encoder, str):
        encoder = create_encoder(encoder, device=device)
    dev = next((p.device for p in encoder.parameters()), None) or next(
        (b.device for b in encoder.buffers()), torch.device("cpu")
    )
    if dev.type == "cuda" and _has_conv(encoder):
        encoder = encoder.to(memory_format=torch.channels_last)
    return encoder, dev


def _batch_and_workers(
    encoder: Encoder, dev: torch.device, batch_size: int | str, num_workers: int | None, name: str
) -> tuple[int, int]:
    """The batch size (``"auto"`` resolved) and the reader processes (none in a daemonic process)."""
    if batch_size == "auto":
        batch_size = _auto_batch_size(dev, encoder)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidParameterError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    workers = default_num_workers(dev) if num_workers is None else int(num_workers)
    if workers > 0 and in_daemonic_process():
        # a Dask worker (or a multiprocessing.Pool worker) may not start reader processes
        (log.info if num_workers is None else log.warning)(
            "%s: reading tiles in this process (num_workers=0): a daemonic process such as a Dask worker "
            "cannot start reader processes",
            name,
        )
        workers = 0
    return batch_size, workers


def extract_features(
    slide: Slide | str | os.PathLike[str],
    grid: TileGrid,
    encoder: Encoder | str,
    *,
    store: str | os.PathLike[str],
    batch_size: int | str = EmbeddingOptions.batch_size,
    num_workers: int | None = EmbeddingOptions.num_workers,
    device: str | torch.device = EmbeddingOptions.device,
    dtype: str = EmbeddingOptions.dtype,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    stain: str | None = EmbeddingOptions.stain,
    qc: str = TilingOptions.qc,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ExtractionResult:
    """Embed every tile of ``grid`` with ``encoder`` into the slide's store under ``store``.

    Cached and resumable: embeddings already complete for the same slide, tiling, encoder, weights,
    precision and dtype are reused (``status="reused"``); an interrupted extraction resumes from its last
    complete chunk. The slide's store is claimed while it is written, so two processes never write it at
    once.

    Parameters
    ----------
    slide : Slide or str or os.PathLike
        An open slide or a path.
    grid : TileGrid
        The tiles (:func:`~slidescope.wsi.make_tile_grid`), usually at the encoder's ``config.tile_size``
        and ``config.mpp``.
    encoder : Encoder or str
        An encoder from :func:`create_encoder`, or a registry name.
    store : str or os.PathLike
        The folder that holds one ``<slide>.zarr`` store per slide.
    batch_size : int or "auto", default "auto"
        Tiles per batch (32 on CPU, 128-256 on GPU; lowered automatically on out-of-memory).
    num_workers : int, optional
        Reader processes (default: one per core on CPU, each reading and encoding; cores - 1 with a GPU);
        0 reads in this process, which is also what happens in a daemonic process (a Dask worker), which
        may not start processes (see :func:`in_daemonic_process`).
    device : str or torch.device, default "auto"
        Used only when ``encoder`` is a name.
    dtype : {"float16", "float32"}, default "float16"
        Stored embedding dtype.
    chunk_rows : int, default 1024
        Tiles per store chunk (the unit of resuming and of checksums).
    stain : {None, "macenko", "reinhard"}
        Stain normalisation before the encoder (part of the cache key).
    qc : {"off", "flag", "exclude"}, default "off"
        Tile QC (:func:`~slidescope.wsi.qc_tiles`; measures stored with the tiles; "exclude" drops the flagged).
    progress : bool, default True
        A tile progress bar on stderr.
    on_progress : callable, optional
        Called after every batch with ``(tiles done, tiles to do)`` in this run, from the calling
        thread (e.g. to drive a GUI progress bar).
    should_stop : callable, optional
        Called between batches; when it returns True the run stops there with ``status="cancelled"``.
        The chunks written so far are kept: the next run resumes from them.

    Returns
    -------
    ExtractionResult
        ``status`` (``"done"``, ``"reused"``, ``"empty"`` or ``"cancelled"``), ``store`` (its path), ``n_tiles``, ``computed``
        (tiles embedded now), ``seconds``, ``tiles_per_s``, ``effective_mpp``. The embeddings are then
        ``open_store(result.store).embeddings(name)``: shape (N, D), row i the embedding of ``grid.coords[i]``.

    Raises
    ------
    SlideClaimedError
        Another live process is writing this slide's store.
    SlideReadError
        A tile cannot be decoded (corrupt file).
    ForeignPathError, NewerStoreError
        Something slidescope did not write (e.g. an OME-Zarr named like the slide), or a store of a newer
        schema, is where the store goes; it is left as it is (use another ``store`` folder, or upgrade).
    SlideMismatchError
        The slide file changed while it was processed; its embeddings are not marked complete (run again).
    DiskFullError
        No space left for the claim or the store.

    Notes
    -----
    Damaged stores are rebuilt, not reused: complete embeddings are read back whole (every chunk present,
    checksums and metadata valid) before ``"reused"`` is returned, and damaged parts are recomputed.

    Examples
    --------
    >>> import tempfile
    >>> import slidescope as ss
    >>> slide = ss.open_slide("sample_data/sample_slide.tiff")
    >>> enc = ss.create_encoder("he-descriptor", device="cpu")
    >>> grid = ss.make_tile_grid(slide, tile_size=enc.config.tile_size, mpp=enc.config.mpp)
    >>> stores = tempfile.mkdtemp()
    >>> res = ss.extract_features(slide, grid, enc, store=stores, num_workers=0, progress=False)
    >>> res.status, res.n_tiles
    ('done', 93)
    >>> ss.open_store(res.store).embeddings("he-descriptor").shape     # (N, D)
    (93, 98)
    >>> ss.extract_features(slide, grid, enc, store=stores, num_workers=0, progress=False).status
    'reused'
    """
    if dtype not in ("float16", "float32"):
        raise InvalidParameterError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    if not isinstance(slide, Slide):
        slide = open_slide(slide)
    encoder, dev = _ready_encoder(encoder, device)
    batch_size, workers = _batch_and_workers(encoder, dev, batch_size, num_workers, slide.path.name)
    normalizer = None
    if stain:
        from .stain import make_normalizer

        normalizer = make_normalizer(stain)

    grid = qc_tiles(slide, grid, qc, defer=True)  # "flag": measured on the tiles as the extraction reads them
    path = store_path(store, slide.path)
    t0 = time.perf_counter()
    result = ExtractionResult(slide=str(slide.path), status="done", store=str(path), n_tiles=len(grid))
    result.effective_mpp = list(grid.effective_mpp)
    with claim(path):
        st = SlideStore.create_or_open(
            path,
            slide_attrs=_slide_attrs(slide),
            tiling=grid.to_dict(),
            coords=grid.coords,
            tissue_fraction=grid.tissue_fraction,
            pad_fraction=grid.pad_fraction,
            qc=getattr(grid, "qc", None),
            qc_thresholds=getattr(grid, "qc_thresholds", None),
        )
        key = CacheKey(
            encoder={**encoder.config.to_dict(), "stain": stain},
            weights_digest=encoder.weights_digest,
            precision=encoder.precision,
            dtype=dtype,
            package_version=st.attrs["package_version"],
        )
        writer = st.prepare_embeddings(key, embed_dim=encoder.config.embed_dim, chunk_rows=chunk_rows)
        if writer.complete:
            result.extra["qc"] = settle_qc(st, slide, grid)
            result.status = "reused" if len(grid) else "empty"
            result.seconds = time.perf_counter() - t0
            return result
        pending = writer.pending_indices()
        if len(pending) < len(grid):
            log.info("%s: resuming, %d of %d tiles left", slide.path.name, len(pending), len(grid))
        result.computed = int(len(pending))
        if len(pending) and not _run(
            slide,
            grid,
            encoder,
            dev,
            writer,
            pending,
            batch_size,
            workers,
            normalizer,
            progress,
            on_progress,
            should_stop,
        ):
            result.status = "cancelled"
            result.seconds = time.perf_counter() - t0
            log.info(
                "%s: extraction cancelled; the next run resumes from the last written chunk", slide.path.name
            )
            return result
        result.seconds = time.perf_counter() - t0
        result.tiles_per_s = result.computed / result.seconds if result.seconds > 0 else 0.0
        _check_slide_unchanged(slide, st)  # before the embeddings count as complete
        writer.finish(
            seconds=round(result.seconds, 3),
            tiles_per_s=round(result.tiles_per_s, 2),
            stain=stain,
            batch_size=batch_size,
            num_workers=workers,
        )
        result.extra["qc"] = settle_qc(st, slide, grid)
        if not len(grid):
            result.status = "empty"
    return result


class _EncodeInWorkers(torch.utils.data.IterableDataset):
    """CPU mode: each reader process also runs the encoder (one thread each) on its own tiles.

    On a CPU, processes that each read and encode their share scale better than one process whose
    intra-op threads fight the readers for the same cores (measured on 2 cores: 94% of the
    model-only rate for the H&E descriptor, against 72-76% with separate readers)."""

    def __init__(self, dataset: TileDataset, encoder: Encoder, normalizer, batch_size: int) -> None:
        super().__init__()
        self.dataset = copy.copy(dataset)
        self.dataset.batch_size = batch_size
        self.encoder = encoder
        self.normalizer = normalizer

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None:
            torch.set_num_threads(1)
        for batch in self.dataset:
            images = batch["image"]
            if self.normalizer is not None:
                images = self.normalizer(images)
            emb = _encode(self.encoder, images, torch.device("cpu"))
            yield {"embedding": emb, **{k: v for k, v in batch.items() if k != "image"}}


def _run(
    slide,
    grid,
    encoder,
    dev,
    writer,
    pending,
    batch_size,
    workers,
    normalizer,
    progress,
    on_progress=None,
    should_stop=None,
) -> bool:
    """Encode the pending tiles; False when ``should_stop`` asked to stop before the end."""
    from tqdm.auto import tqdm

    # a daemonic process (a Dask worker) already runs several tasks on its cores: one decode thread per task
    threads = 1 if multiprocessing.current_process().daemon else None
    dataset = TileDataset(slide, grid, indices=pending, read_threads=threads)
    workers = min(workers, max(1, -(-len(pending) // batch_size)))
    if dev.type == "cpu" and workers > 0:
        source = _EncodeInWorkers(dataset, encoder, normalizer, batch_size)
        loader = torch.utils.data.DataLoader(source, batch_size=None, num_workers=workers, prefetch_factor=2)
    else:
        loader = dataset.loader(batch_size=batch_size, num_workers=workers, pin_memory=dev.type == "cuda")
    background = BackgroundWriter(writer)
    state: dict[str, int] = {}
    bar = tqdm(
        total=len(pending),
        desc=slide.path.name,
        unit="tile",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    done = 0
    try:
        for batch in loader:
            if should_stop is not None and should_stop():
                return False
            if "embedding" in batch:
                emb = batch["embedding"].numpy()
            else:
                images = batch["image"]
                if normalizer is not None:
                    images = normalizer(images)
                emb = _encode_adaptive(encoder, images, dev, state).cpu().numpy()
            if "qc" in batch:  # the deferred tile QC, measured by the readers
                grid.record_batch(batch["index"], batch["qc"])
            for chunk in writer.add(batch["index"].numpy(), emb):
                background.put(chunk)
            bar.update(len(emb))
            done += len(emb)
            if on_progress is not None:
                on_progress(done, len(pending))
    finally:
        bar.close()
        background.close()
    return True


def extract_slides(
    slides: Iterable[str | os.PathLike[str]],
    encoder: Encoder | str,
    *,
    store: str | os.PathLike[str],
    mpp: float | None = TilingOptions.mpp,
    tile_size: int | None = TilingOptions.tile_size,
    overlap: int = TilingOptions.overlap,
    min_tissue: float = TilingOptions.min_tissue,
    edge: str = TilingOptions.edge,
    downscale: str = TilingOptions.downscale,
    pen: str = TilingOptions.pen,
    tissue: str = TilingOptions.tissue,
    segmenter_weights: str | None = TilingOptions.segmenter_weights,
    qc_model: str = TilingOptions.qc_model,
    qc_thresholds: str | None = TilingOptions.qc_thresholds,
    allow_darkfield: bool = TilingOptions.allow_darkfield,
    slide_mpp: float | None = TilingOptions.slide_mpp,
    force_slide_mpp: float | None = TilingOptions.force_slide_mpp,
    slide_mpps: dict[str, float] | None = None,
    backend: str = TilingOptions.backend,
    weights: str | None = EmbeddingOptions.weights,
    device: str = EmbeddingOptions.device,
    devices: list[str] | None = None,
    coords: str | os.PathLike[str] | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> list[ExtractionResult]:
    """Extract a batch of slides; one bad slide never stops the batch (its failure is recorded).

    ``mpp`` and ``tile_size`` default to what the encoder was trained on; ``pen`` is the pen-mark
    removal of :func:`~slidescope.wsi.detect_tissue` (``"auto"``: off on IHC slides); ``tissue`` the tissue
    detector (``"classic"``, or a learned segmenter with ``segmenter_weights``, see
    :func:`~slidescope.features.segmenters.find_tissue`); ``qc`` (in ``kwargs``) and ``qc_model`` (the learned
    artefact QC, :func:`~slidescope.features.segmenters.artefact_measures`)
    the tile QC of :func:`extract_features`; ``edge`` the edge policy and ``downscale`` how tiles are shrunk
    (``"jpeg-dct"``: not for ``coords`` grids) of :func:`~slidescope.wsi.make_tile_grid`. ``slide_mpp`` is the level-0
    µm/px filled in for slides without one (a file's own wins); ``force_slide_mpp`` overrides every
    slide's (``slide_mpp`` and ``force_slide_mpp`` of :func:`~slidescope.wsi.open_slide`); ``slide_mpps``
    (slide path as given -> µm/px, from a manifest's ``slide_mpp``/``mpp`` column:
    :func:`~slidescope.wsi.manifest_slide_mpp`) takes the place of ``slide_mpp`` for its slide, recorded as
    mpp source ``"manifest"``. ``devices`` (e.g.
    ``["cuda:0", "cuda:1"]``) runs one process per device, each with its own encoder and reader
    workers, dealing the slides out in turn; the per-slide claims keep them from colliding. ``coords`` (a file,
    or a folder of per-slide files) gives the tiles instead of the tissue (:mod:`slidescope.features.coords`).
    """
    from tqdm.auto import tqdm

    from ..wsi import make_tile_grid, pen_hint
    from .coords import coords_file_for, coords_grid
    from .segmenters import device_of, find_tissue, run_tile_qc

    slides = list(slides)
    if devices is not None and len(devices) > 1:
        from ._extract_batch import extract_on_devices

        return extract_on_devices(
            slides,
            encoder,
            devices,
            store=store,
            mpp=mpp,
            tile_size=tile_size,
            overlap=overlap,
            min_tissue=min_tissue,
            edge=edge,
            downscale=downscale,
            pen=pen,
            tissue=tissue,
            segmenter_weights=segmenter_weights,
            qc_model=qc_model,
            qc_thresholds=qc_thresholds,
            allow_darkfield=allow_darkfield,
            slide_mpp=slide_mpp,
            backend=backend,
            force_slide_mpp=force_slide_mpp,
            slide_mpps=slide_mpps,
            weights=weights,
            coords=coords,
            progress=progress,
            **kwargs,
        )
    if devices:
        device = devices[0]
    if isinstance(encoder, str):
        encoder = create_encoder(encoder, weights=weights, device=device)
    mpp = encoder.config.mpp if mpp is None else mpp
    tile_size = encoder.config.tile_size if tile_size is None else tile_size
    results = []
    segmenting: dict[str, Any] = {"weights": segmenter_weights, "device": device_of(encoder)}
    tile_qc = functools.partial(run_tile_qc, qc_model=qc_model, thresholds=qc_thresholds, **segmenting)
    for path in tqdm(slides, desc="slides", unit="slide", disable=not progress):
        t0 = time.perf_counter()
        try:
            fill = (slide_mpps or {}).get(str(path))  # the manifest's value for this slide
            with open_slide(
                path,
                backend=backend,
                force_slide_mpp=force_slide_mpp,
                slide_mpp=slide_mpp if fill is None else fill,
                slide_mpp_source=MPP_FILLED_IN if fill is None else MPP_FROM_MANIFEST,
            ) as slide:
                mask = find_tissue(slide, tissue, pen=pen, allow_darkfield=allow_darkfield, **segmenting)
                if coords is not None:  # the tiles another tool chose
                    grid = coords_grid(
                        coords_file_for(coords, path), slide, tile_size=tile_size, mpp=mpp, mask=mask
                    )
                else:
                    grid = make_tile_grid(
                        slide,
                        tile_size=tile_size,
                        mpp=mpp,
                        overlap=overlap,
                        min_tissue=min_tissue,
                        mask=mask,
                        allow_empty=True,
                        edge=edge,
                        downscale=downscale,
                    )
                grid = tile_qc(slide=slide, grid=grid, policy=kwargs.get("qc", "off"), mask=mask)
                if len(grid) == 0:
                    log.warning(
                        "%s: no tissue tiles; writing an empty store.%s", Path(path).name, pen_hint(mask)
                    )
                res = extract_features(slide, grid, encoder, store=store, progress=progress, **kwargs)
                res.extra["tissue_mm2"] = round(mask.area_um2 / 1e6, 4)
        except Exception as err:  # noqa: BLE001 - any failure of one slide is that slide's, never the batch's
            res = _failed(path, err, time.perf_counter() - t0)
        results.append(res)
    return results


def _failed(path: str | os.PathLike[str], err: Exception, seconds: float) -> ExtractionResult:
    """The result row of a slide that failed (``claimed``: another process is extracting it), logged."""
    from ._extract_batch import worker_message

    message = worker_message(err)
    log.error("%s: %s: %s", Path(path).name, type(err).__name__, message)
    return ExtractionResult(
        slide=str(path),
        status="claimed" if type(err).__name__ == "SlideClaimedError" else "failed",
        error=message,
        error_type=type(err).__name__,
        seconds=seconds,
    )


# the per-slide task of ``slidescope extract --executor dask`` lives in ._extract_batch (public here)
from ._extract_batch import ExtractJob, extract_job  # noqa: E402 - after extract_slides, which it calls
