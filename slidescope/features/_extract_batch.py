"""Batches of slides beyond one process: ``extract_slides`` on several devices (one spawned process per
device, the slides dealt out in turn) and one slide as a task for an executor (:class:`ExtractJob`,
:func:`extract_job`; public as ``slidescope.features.extract.ExtractJob`` / ``extract_job``).

Split from :mod:`slidescope.features.extract`, whose functions it calls (imported when called: that module
imports this one at its end).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidParameterError
from ..options import SlideOptions, TilingOptions, values_of
from .encoders import Encoder, create_encoder

if TYPE_CHECKING:
    from .extract import ExtractionResult

__all__ = ["ExtractJob", "extract_job", "extract_on_devices", "worker_message"]


def worker_message(err: BaseException) -> str:
    """The error's own message, without the worker traceback that torch's DataLoader wraps around
    an exception raised in a reader process ("Caught X in DataLoader worker process 0. Original
    Traceback ..."): the report gets one readable line."""
    text = str(err)
    if "Original Traceback" not in text:
        return text
    marker = f"{type(err).__module__}.{type(err).__qualname__}: "
    return text.rsplit(marker, 1)[-1].strip() if marker in text else text.strip().splitlines()[-1]


def _device_worker(args: tuple) -> list[dict[str, Any]]:
    from .extract import extract_slides

    slides, encoder, device, kwargs = args
    results = extract_slides(slides, encoder, device=device, **kwargs)
    return [r.to_dict() for r in results]


def extract_on_devices(slides: list, encoder: Any, devices: list[str], **kwargs: Any) -> list[Any]:
    """One process per device (spawned, so CUDA initialises cleanly in each)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from .extract import ExtractionResult

    if not isinstance(encoder, str):
        raise InvalidParameterError(
            "with several devices, pass the encoder by name: each process builds its own"
        )
    shares = [slides[i :: len(devices)] for i in range(len(devices))]
    jobs = [
        (share, encoder, dev, {**kwargs, "progress": False})
        for share, dev in zip(shares, devices, strict=True)
        if share
    ]
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=mp.get_context("spawn")) as pool:
        rows = [row for part in pool.map(_device_worker, jobs) for row in part]
    order = {str(p): i for i, p in enumerate(slides)}
    results = [ExtractionResult(**row) for row in rows]
    return sorted(results, key=lambda r: order.get(r.slide, len(order)))


# -- one slide as a task for an executor (``slidescope extract --executor dask``) -----------------------


@dataclass(frozen=True, kw_only=True)
class ExtractJob(SlideOptions):
    """The options of ``slidescope extract`` for one slide task; frozen and picklable (it goes to workers).

    The tiling and embedding options of :mod:`slidescope.options` (defaults defined there) and ``out``, the
    store folder (or an fsspec URL); ``device`` decides whether a task asks for a GPU. ``slide_mpps``:
    per-slide ``slide_mpp`` from a manifest, as (slide, µm/px) pairs (see
    :func:`~slidescope.features.extract.extract_slides`)."""

    out: str
    slide_mpps: tuple[tuple[str, float], ...] = ()

    @property
    def attempts_dir(self) -> Path | None:
        """Where a Dask run counts each slide's attempts (None for stores on a URL: not counted)."""
        from .store import is_remote

        return None if is_remote(self.out) else Path(self.out) / "reports" / ".attempts"


@functools.lru_cache(maxsize=2)
def _job_encoder(name: str, weights: str | None, device: str, precision: str | None) -> Encoder:
    """One encoder per worker process, reused by its following slides."""
    return create_encoder(name, weights=weights, device=device, precision=precision)


def extract_job(slide: str, job: ExtractJob) -> ExtractionResult:
    """Extract one slide with the options of ``job`` (a module-level function: executors pickle it)."""
    from .extract import extract_slides

    encoder = _job_encoder(job.encoder, job.weights, job.device, job.precision)
    return extract_slides(
        [slide],
        encoder,
        store=job.out,
        **values_of(job, TilingOptions),
        batch_size=job.batch_size,
        num_workers=job.num_workers,
        dtype=job.dtype,
        stain=job.stain,
        weights=job.weights,
        slide_mpps=dict(job.slide_mpps),
        progress=False,
    )[0]
