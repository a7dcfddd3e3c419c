"""The Dask executor: the same per-slide work as :class:`LocalExecutor`, one Dask task per slide.

``DaskExecutor`` plugs into the driver's seam (:class:`~slidescope.pipeline.Executor`): it submits
``process_slide(slide, config)`` once per slide to a Dask distributed cluster and yields the outcomes
as they complete. Where the cluster comes from:

* ``scheduler="tcp://host:8786"``: an existing scheduler (its workers must see the slides, the
  results folder and the stores: a shared file system, or stores on an fsspec URL);
* ``cluster={"kind": "slurm" | "pbs" | "sge" | "lsf", "jobs": N, ...}``: a dask-jobqueue cluster,
  the other keys going to its constructor (``cores``, ``memory``, ``queue``, ``walltime``...);
* neither: a ``LocalCluster`` on this machine, worker *processes*: one per GPU when the run uses
  GPUs (each pinned to its GPU with ``CUDA_VISIBLE_DEVICES``), else ``n_workers`` (default: cores / 2,
  each with 2 threads for its reader and encoder).

Reading tiles: Dask workers are daemonic processes (LocalCluster, ``dask worker`` behind an external
scheduler and dask-jobqueue jobs alike), and a daemonic process may not start children, so the
per-slide DataLoader reader processes of local mode cannot run there ("daemonic processes are not
allowed to have children"). Each slide's tiles are therefore read *in the worker process*, on the
thread that runs the task (``num_workers`` 0; :func:`~slidescope.features.extract.in_daemonic_process`
decides). We chose this over starting non-daemonic LocalCluster workers
(``distributed.worker.daemon: False``) because (1) workers of an external scheduler or of a jobqueue
are daemonic anyway, so the in-worker path is needed in every case, and one path is simpler to keep
right; (2) the cluster already runs several slides at once (cores / 2 worker processes x 2 threads), so
reader processes per slide on top would oversubscribe the cores (up to cores² processes) and escape
the nanny's memory monitoring. Where reading does starve a GPU worker, start the workers with
``DASK_DISTRIBUTED__WORKER__DAEMON=False``: they are then not daemonic and get reader processes again.

Guarantees, the same as in local mode:

* a slide is never processed twice at the same time: ``process_slide`` claims the slide's record and
  store (lock files created exclusively; a claim whose process died on this host is taken over);
* a worker that dies loses only its current slide: Dask reschedules the task on another worker (up
  to ``distributed.scheduler.allowed-failures`` times, 3 by default) and the rerun resumes the
  slide's store from its last complete chunk; the report counts the attempts (``attempts`` > 1);
* GPU tasks ask for the ``GPU`` resource (one per worker), so a worker never runs two GPU slides at
  once. Workers of an external scheduler must be started with ``--resources GPU=1``.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError, MissingDependencyError
from ._config import RunConfig
from ._slide import SlideOutcome, slide_key

log = logging.getLogger(__name__)

__all__ = ["DaskExecutor", "JOBQUEUE_KINDS", "StoreCall", "call_on_store", "map_stores"]

#: cluster kinds of dask-jobqueue that ``cluster={"kind": ...}`` accepts
JOBQUEUE_KINDS = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
    "htcondor": "HTCondorCluster",
    "moab": "MoabCluster",
    "oar": "OARCluster",
}


def _import_distributed():
    try:
        import distributed
    except ImportError as err:  # pragma: no cover - the extra is installed in CI
        raise MissingDependencyError(
            "the Dask executor needs dask distributed: pip install 'slidescope[dask]'"
        ) from err
    return distributed


def _attempts_file(config: Any, slide: str) -> Path | None:
    """``OUT/slides/.<key>.attempts`` for a run; a job may name its own ``attempts_dir`` (None: no count)."""
    folder = config.attempts_dir if hasattr(config, "attempts_dir") else Path(config.out) / "slides"
    return None if folder is None else Path(folder) / f".{slide_key(slide)}.attempts"


def run_counted(fn: Callable[[str, Any], Any], slide: str, config: Any) -> Any:
    """Run ``fn(slide, config)`` on a worker, counting its attempts in a small file next to the results.

    The count is written before the work starts, so an attempt whose worker died still counts. It is
    returned in the outcome's ``attempts`` (a :class:`SlideOutcome`) or ``extra["attempts"]``."""
    marker = _attempts_file(config, slide)
    previous = 0
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        try:
            previous = int(marker.read_text() or 0)
        except (FileNotFoundError, ValueError):
            previous = 0
        marker.write_text(str(previous + 1))
    outcome = fn(slide, config)
    if hasattr(outcome, "attempts"):
        outcome.attempts = previous + 1
    elif isinstance(getattr(outcome, "extra", None), dict):
        outcome.extra["attempts"] = previous + 1
    return outcome


def _failed_outcome(slide: str, err: BaseException) -> SlideOutcome:
    return SlideOutcome(
        slide=str(slide),
        key=slide_key(slide),
        status="failed",
        error_class=type(err).__name__,
        error_message=str(err),
    )


class _PinGPU:
    """Worker plugin: worker ``i`` of a LocalCluster sees GPU ``i`` only (set before CUDA starts)."""

    name = "slidescope-pin-gpu"

    def __init__(self, n_gpus: int) -> None:
        self.n_gpus = n_gpus

    def setup(self, worker) -> None:
        index = int(worker.name) if str(worker.name).isdigit() else 0
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index % self.n_gpus)


def _uses_gpu(config: Any) -> bool:
    device = getattr(config, "device", "auto") or "auto"
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


class DaskExecutor:
    """Run each slide as one task on Dask distributed (see the module docstring).

    Parameters
    ----------
    scheduler : address of an existing scheduler (``tcp://host:8786``); None starts a cluster.
    cluster : a dask-jobqueue cluster description, ``{"kind": "slurm", "jobs": 4, "cores": 8, ...}``.
    n_workers : worker processes of the LocalCluster (default: one per GPU, else cores // 2, >= 1).
    threads_per_worker : threads of each LocalCluster worker (default 2 on CPU, 1 per GPU worker).
    retries : extra attempts Dask makes when a slide's task raised (a worker that *died* is handled
        by the scheduler's ``allowed-failures``, independently).
    """

    def __init__(
        self,
        scheduler: str | None = None,
        *,
        cluster: dict[str, Any] | None = None,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        retries: int = 1,
    ) -> None:
        if scheduler and cluster:
            raise InvalidParameterError("give either a scheduler address or a cluster description, not both")
        if cluster is not None and cluster.get("kind", "local") not in ("local", *JOBQUEUE_KINDS):
            raise InvalidParameterError(
                f"unknown cluster kind {cluster.get('kind')!r}; use local or one of "
                f"{', '.join(JOBQUEUE_KINDS)}"
            )
        self.scheduler, self.cluster = scheduler, dict(cluster or {})
        self.n_workers, self.threads_per_worker, self.retries = n_workers, threads_per_worker, retries

    # -- connecting ---------------------------------------------------------------------------------
    def _start(self, gpu: bool):
        """``(client, cluster we own or None)``."""
        distributed = _import_distributed()
        if self.scheduler:
            return distributed.Client(self.scheduler), None
        spec = dict(self.cluster)
        kind = spec.pop("kind", "local")
        if kind != "local":
            try:
                import dask_jobqueue
            except ImportError as err:  # pragma: no cover
                raise MissingDependencyError(
                    f"a {kind} cluster needs dask-jobqueue: pip install 'slidescope[dask]'"
                ) from err
            jobs = int(spec.pop("jobs", 1))
            cluster = getattr(dask_jobqueue, JOBQUEUE_KINDS[kind])(**spec)
            cluster.scale(jobs=jobs)
            return distributed.Client(cluster), cluster
        n_gpus = 0
        if gpu:
            import torch

            n_gpus = torch.cuda.device_count()
        n = self.n_workers or spec.get("n_workers") or n_gpus or max(1, (os.cpu_count() or 2) // 2)
        threads = self.threads_per_worker or (1 if n_gpus else 2)
        cluster = distributed.LocalCluster(
            n_workers=n,
            threads_per_worker=threads,
            processes=True,
            resources={"GPU": 1} if n_gpus else None,
            # a free port, never the default 8787: two runs (or a user's own cluster) on one machine must not
            # collide over the dashboard port
            dashboard_address=":0",
        )
        client = distributed.Client(cluster)
        if n_gpus:
            client.register_plugin(_PinGPU(n_gpus))
        return client, cluster

    # -- the seam ---------------------------------------------------------------------------------
    def map(
        self,
        fn: Callable[[str, Any], Any],
        slides: Sequence[str],
        config: RunConfig | Any,
        *,
        failed: Callable[[str, BaseException], Any] = _failed_outcome,
    ) -> Iterator[Any]:
        """Submit one task per slide; yield the outcomes as they complete (see :class:`Executor`).

        ``fn(slide, config)`` is :func:`process_slide` for ``run`` (or
        :func:`~slidescope.features.extract.extract_job` for ``extract``); ``failed(slide, error)`` makes
        the outcome of a task that died for good (e.g. ``KilledWorker`` after the allowed failures)."""
        if not slides:
            return
        distributed = _import_distributed()
        gpu = _uses_gpu(config)
        for slide in slides:  # attempts are counted per run
            marker = _attempts_file(config, slide)
            if marker is not None:
                marker.unlink(missing_ok=True)
        client, cluster = self._start(gpu)
        futures: list[Any] = []
        try:
            log.info("Dask: %d slides on %s", len(slides), client.dashboard_link or client.scheduler.address)
            futures = [
                client.submit(
                    run_counted,
                    fn,
                    slide,
                    config,
                    key=f"slide-{i}-{slide_key(slide)}",
                    pure=False,
                    retries=self.retries,
                    resources={"GPU": 1} if gpu else None,
                )
                for i, slide in enumerate(slides)
            ]
            by_key = {f.key: s for f, s in zip(futures, slides, strict=True)}
            for future in distributed.as_completed(futures):
                try:
                    yield future.result()
                except Exception as err:  # the task itself died (KilledWorker after allowed-failures...)
                    yield failed(by_key[future.key], err)
        except BaseException:
            if futures:
                client.cancel(futures)
            raise
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


# -- store-level commands (score, zero-shot) as one task per store ----------------------------------------


@dataclass(frozen=True)
class StoreCall:
    """``function(*before, [store], *after, **kwargs)[0]`` for one store: how ``slidescope score`` and
    ``slidescope zero-shot`` run on an executor. ``function`` is ``"module:name"`` (pickles by name)."""

    function: str
    before: tuple[Any, ...] = ()
    after: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    attempts_dir: str | None = None  # attempts are not counted for these short tasks


def call_on_store(store: str, call: StoreCall) -> tuple[str, Any]:
    """Run ``call`` on one store; returns ``(store, result)``."""
    module, name = call.function.split(":")
    function = getattr(importlib.import_module(module), name)
    return store, function(*call.before, [store], *call.after, **call.kwargs)[0]


def map_stores(executor: Any, call: StoreCall, stores: Sequence[str]) -> list[Any]:
    """Results of ``call`` for every store, in store order. As in-process, the first error is raised
    (after every task has finished), with its own type and message."""
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def failed(store: str, err: BaseException) -> tuple[str, None]:
        errors.append(err)
        return store, None

    for store, result in executor.map(call_on_store, list(stores), call, failed=failed):
        results[store] = result
    if errors:
        raise errors[0]
    return [results[s] for s in stores]
