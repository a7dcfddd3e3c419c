"""``run()``: the whole pipeline over many slides, resumable, with a report.

The driver plans each slide (skip / do / retry), hands the slides to do to an **executor** through one
seam, ``executor.map(process_slide, slides, config)``, and rewrites the report and the predictions
(atomically) after every outcome; on very large runs, where the files grow with the slides, at most as
often as keeps rewriting them under a tenth of the time. :class:`LocalExecutor` runs the slides one after another in this process; any
object with the same ``map`` (a process pool, a Dask client wrapper...) can replace it: it must call
``fn(slide, config)`` for every slide (``fn`` and ``config`` pickle) and yield each
:class:`SlideOutcome` as it completes, in any order.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import InvalidParameterError
from ._config import RunConfig, execution_options, resolve_config, result_signature
from ._report import report_dict, write_predictions, write_report
from ._slide_embeddings import check_slide_encoder, write_slide_embeddings
from ._slide import (
    SlideOutcome,
    get_encoder,
    output_error,
    plan_slide,
    process_slide,
    remove_stale_partials,
    skipped_outcome,
    slide_key,
)

log = logging.getLogger(__name__)

__all__ = [
    "run",
    "RunResult",
    "PlannedSlide",
    "Executor",
    "LocalExecutor",
    "make_executor",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
]

EXIT_OK = 0
#: some slides failed (or are held by another run); the others are done
EXIT_SOME_FAILED = 1

SlideFn = Callable[[str, RunConfig], SlideOutcome]


class Executor(Protocol):
    """Where the per-slide work runs: the seam between the driver and the compute.

    ``map(fn, slides, config)`` calls ``fn(slide, config)`` once per slide and yields the outcomes as
    they complete (any order; each names its slide). ``fn`` is :func:`process_slide`, a module-level
    function, and ``config`` a frozen :class:`RunConfig`, so both pickle to other processes or
    machines. An executor must let ``KeyboardInterrupt`` through (after cancelling pending work).
    """

    def map(self, fn: SlideFn, slides: Sequence[str], config: RunConfig) -> Iterator[SlideOutcome]: ...


class LocalExecutor:
    """This process, one slide after another, in input order (the default)."""

    def map(self, fn: SlideFn, slides: Sequence[str], config: RunConfig) -> Iterator[SlideOutcome]:
        for slide in slides:
            yield fn(slide, config)


def make_executor(options: dict[str, Any]) -> Executor:
    """The executor described by :func:`~slidescope.pipeline.execution_options`' result."""
    if options.get("executor", "local") == "local":
        return LocalExecutor()
    from ._dask import DaskExecutor

    return DaskExecutor(
        options.get("scheduler"), cluster=options.get("dask_cluster"), n_workers=options.get("dask_workers")
    )


@dataclass(frozen=True)
class PlannedSlide:
    """What a run does with one slide: ``action`` is ``"do"``, ``"retry"`` or ``"skip"``, with the reason."""

    slide: str
    key: str
    action: str
    reason: str


@dataclass
class RunResult:
    """The outcome of :func:`run`.

    Attributes
    ----------
    out : the results folder.
    config : the resolved :class:`RunConfig`.
    plan : per slide, what was (or, with ``dry_run``, would be) done.
    outcomes : per slide (input order), its :class:`SlideOutcome`; empty for a dry run.
    report, predictions : paths of ``report.json`` and ``predictions.csv`` (None for a dry run).
    """

    out: Path
    config: RunConfig
    plan: list[PlannedSlide]
    outcomes: list[SlideOutcome] = field(default_factory=list)
    report: Path | None = None
    predictions: Path | None = None
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for o in self.outcomes:
            c[o.status] = c.get(o.status, 0) + 1
        return c

    @property
    def failed(self) -> list[SlideOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def exit_code(self) -> int:
        """0 when every slide is done (now or before), 1 when some failed or are held by another run."""
        return EXIT_SOME_FAILED if self.failed else EXIT_OK


def _duplicate_keys(paths: Sequence[Path]) -> None:
    seen: dict[str, Path] = {}
    for p in paths:
        k = slide_key(p)
        if k in seen and seen[k] != p:
            raise InvalidParameterError(
                f"{seen[k]} and {p} have the same name {k!r}: their results would overwrite "
                f"each other. Rename one, or run them into different --out folders."
            )
        seen[k] = p


def run(
    slides: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
    executor: Executor | str | None = None,
    dry_run: bool = False,
    progress: bool = True,
    **options: Any,
) -> RunResult:
    """Run the pipeline over many slides: open, tissue, tiles, embeddings (cached), MIL scoring and/or
    zero-shot, heatmaps; resumable, with a per-slide report.

    Parameters
    ----------
    slides : slide files, folders, glob patterns or a CSV manifest (column ``slide``), or a list of these.
        May come from the config file (``slides:``) instead.
    config : a YAML or TOML file whose keys are the options below (kebab- or snake-case); options given
        here override it. See :data:`slidescope.pipeline.CONFIG_KEYS`.
    executor : where the per-slide work runs: an :class:`Executor` object, or ``"local"`` (this process, the
        default) or ``"dask"`` (:class:`~slidescope.pipeline.DaskExecutor` built from the config file's
        ``scheduler``, ``dask-workers`` and ``dask-cluster`` keys). None: the config file's ``executor``.
    dry_run : plan only: resolve the configuration and say what would happen to each slide; write nothing.
    progress : a progress bar over the slides (slides/s, tiles/s) on stderr.
    **options : the :class:`RunConfig` fields: ``out`` and ``encoder`` (required), ``model`` (MIL
        checkpoints or training run folders), ``slide_text_model`` and ``prompts`` (zero-shot),
        ``weights``, ``stores``, ``mpp``, ``tile_size``, ``overlap``, ``min_tissue``, ``slide_mpp`` (fills in a
        missing pixel size), ``force_slide_mpp`` (overrides every slide's),
        ``backend``, ``stain``, ``dtype``, ``precision``, ``device``, ``batch_size``, ``num_workers``,
        ``zero_shot_level``, ``prompt_ensemble``, ``heatmaps``, ``heatmap_size``, ``cmap``, ``normalize``,
        ``slide_encoder`` (each finished slide's embedding from a registered slide encoder, see Notes).

    Returns
    -------
    RunResult
        Per-slide outcomes in input order; ``exit_code`` is 0 when all slides are done, 1 otherwise.

    Raises
    ------
    InvalidParameterError
        A bad configuration (unknown key, wrong type, missing file, checkpoint of another encoder...),
        raised before any slide is processed.
    KeyboardInterrupt
        Interrupted: the report is written first (the slide in progress is marked ``interrupted``; it has
        no record, so the next run redoes it).

    Notes
    -----
    Results folder ``out``::

        predictions.csv           one row per finished slide: slide, path, n_tiles, mil_prob_<class>...,
                                  mil_predicted, zero_shot_prob_<class>..., zero_shot_predicted; this run's
                                  slides, then those other runs of the same configuration finished in
                                  this folder (rebuilt from the records under a lock)
        report.json, report.md    this run, per slide: status, timings, tiles, effective mpp, the slide's
                                  pixel size and its source, error class and message
        slides/<key>.json         the slide's record, written last (what makes it "finished")
        heatmaps/<key>.<run>.png  MIL attention over the thumbnail (+ .geojson for QuPath)
        heatmaps/<key>.zero-shot-<class>.png   zero-shot tile similarity per class (+ .geojson)
        tissue/<key>.geojson      the tissue contours
        stores/<key>.zarr         the embedding store (or ``stores=``)
        slide_embeddings.csv      with ``slide_encoder``: slide, d0, d1... per finished slide (also in its store
                                  as ``slide_embeddings/<name>``; the report's outputs say where, or why not)

    Running again skips finished slides whose configuration (encoder, weights, tiling, models, prompts,
    heatmap settings) and slide file are unchanged and whose outputs exist, and retries failed ones.

    Examples
    --------
    >>> import tempfile
    >>> import slidescope as ss
    >>> out = tempfile.mkdtemp()
    >>> res = ss.run("sample_data/sample_slide.tiff", encoder="he-descriptor", out=out, num_workers=0,
    ...              progress=False)                              # embeddings only: no model, no prompts
    >>> res.exit_code, res.counts, res.outcomes[0].n_tiles, res.outcomes[0].effective_mpp
    (0, {'done': 1}, 93, [0.5, 0.5])
    >>> again = ss.run("sample_data/sample_slide.tiff", encoder="he-descriptor", out=out, dry_run=True)
    >>> [(p.key, p.action) for p in again.plan]
    [('sample_slide', 'skip')]

    On real slides, with a foundation model, fold checkpoints and zero-shot prompts:

    >>> res = ss.run("slides/", encoder="uni", weights="/models/uni", model=["runs/abmil"],
    ...              prompts="prompts.yaml", slide_text_model="runs/slidetext/model",
    ...              out="results")                               # doctest: +SKIP
    """
    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    if "progress" in options:
        raise InvalidParameterError("progress is an argument of run(), not a configuration option")
    # per-slide tile bars only on a terminal (in a log file they are noise); the slide bar always when asked
    paths, cfg = resolve_config(slides, config=config, progress=progress and sys.stderr.isatty(), **options)
    _duplicate_keys(paths)
    check_slide_encoder(cfg)
    signature = result_signature(cfg)
    plan, records = _plan(paths, cfg)
    result = RunResult(out=cfg.out_dir, config=cfg, plan=plan, dry_run=dry_run)
    if dry_run:
        return result

    todo = [p.slide for p in plan if p.action != "skip"]
    executor = _ready_executor(executor, config, cfg, todo)
    slide_model = None
    if cfg.slide_encoder is not None:  # built (weights found) before any slide
        from ..features.slide_encoders import create_slide_encoder

        slide_model = create_slide_encoder(
            cfg.slide_encoder, weights=cfg.slide_encoder_weights, trust_remote_code=cfg.trust_remote_code
        )
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for stem in ("report", "predictions"):  # left by a run killed while rewriting them
        remove_stale_partials(out, stem)
    outcomes = {
        p.slide: skipped_outcome(p.slide, records[p.slide])
        if p.action == "skip"
        else SlideOutcome(slide=p.slide, key=p.key, status="pending")
        for p in plan
    }

    pace = {"next": 0.0}

    def flush(finished: bool, *, force: bool = True) -> None:
        """Rewrite the report and the predictions. After each slide (``force=False``) this is skipped while
        rewriting would take more than a tenth of the time (large cohorts: the files grow with the slides);
        the per-slide records, not the report, are what a rerun trusts."""
        now = time.perf_counter()
        if not force and now < pace["next"]:
            return
        ordered = [outcomes[p.slide] for p in plan]
        _write_outputs(result, ordered, signature, started=started, seconds=now - t0, finished=finished)
        pace["next"] = time.perf_counter() + 10 * (time.perf_counter() - now)

    if not cfg.model and cfg.prompts is None:
        log.info("no model and no prompts: embeddings and tissue only")
    skipped = len(plan) - len(todo)
    log.info(
        "%d slides: %d to do (%d retried), %d finished before",
        len(plan),
        len(todo),
        sum(p.action == "retry" for p in plan),
        skipped,
    )
    flush(False)
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(
        total=len(todo), desc="slides", unit="slide", disable=not progress or not todo, dynamic_ncols=True
    )
    with contextlib.ExitStack() as stack:
        if progress and todo:  # log lines go above the bar instead of through it
            stack.enter_context(logging_redirect_tqdm())
        _drive(executor, todo, cfg, outcomes, bar, flush, t0)
    if slide_model is not None:
        write_slide_embeddings(slide_model, cfg, [outcomes[p.slide] for p in plan])
    flush(True)
    result.outcomes = [outcomes[p.slide] for p in plan]
    result.seconds = time.perf_counter() - t0
    return result


def _write_outputs(
    result: RunResult,
    ordered: list[SlideOutcome],
    signature: dict[str, Any],
    *,
    started: str,
    seconds: float,
    finished: bool,
) -> None:
    """Rewrite ``report.json``/``report.md`` and ``predictions.csv`` (their paths go into ``result``); a full
    disk stops the run with what to do (the slides' records are what a rerun trusts)."""
    out, cfg = result.out, result.config
    code = (EXIT_SOME_FAILED if any(not o.ok for o in ordered) else EXIT_OK) if finished else None
    try:
        result.report = write_report(
            out,
            report_dict(
                ordered,
                cfg,
                started=started,
                seconds=seconds,
                finished=finished,
                signature=signature,
                exit_code=code,
            ),
        )
        result.predictions = write_predictions(out, ordered, signature)
    except OSError as err:
        clear = output_error(err, out)
        if clear is err:
            raise
        raise clear from err


def _plan(paths: Sequence[Path], cfg: RunConfig) -> tuple[list[PlannedSlide], dict[str, dict[str, Any]]]:
    """What to do with each slide, and the records of the slides finished before (to skip)."""
    plan: list[PlannedSlide] = []
    records: dict[str, dict[str, Any]] = {}
    for p in paths:
        action, reason, rec = plan_slide(p, cfg)
        plan.append(PlannedSlide(slide=str(p), key=slide_key(p), action=action, reason=reason))
        if action == "skip" and rec is not None:
            records[str(p)] = rec
    return plan, records


def _ready_executor(
    executor: Executor | str | None, config: str | os.PathLike[str] | None, cfg: RunConfig, todo: list[str]
) -> Executor:
    """The executor (built from its name or the config file), after checking the encoder's weights once:
    a missing or gated weight fails the run here, not once per slide."""
    if executor is None or isinstance(executor, str):
        executor = make_executor(execution_options(config, executor=executor))
    if todo:
        if isinstance(executor, LocalExecutor):
            get_encoder(cfg)  # built once; process_slide reuses it in this process
        else:
            _check_weights(cfg)  # the workers build their own: only find the file here
    return executor


def _check_weights(cfg: RunConfig) -> None:
    from ..features.encoders import get_encoder_config
    from ..features.encoders import resolve_weights

    config = get_encoder_config(cfg.encoder)
    if not config.weight_free:
        resolve_weights(config, cfg.weights)


def _drive(
    executor: Executor,
    todo: list[str],
    cfg: RunConfig,
    outcomes: dict[str, SlideOutcome],
    bar: Any,
    flush: Callable[..., None],
    t0: float,
) -> None:
    """The loop over the executor's outcomes: record each, update the bar, rewrite the report."""
    tiles = 0
    failed = 0
    try:
        for outcome in executor.map(process_slide, todo, cfg):
            outcomes[outcome.slide] = outcome
            tiles += outcome.computed_tiles
            failed += not outcome.ok
            if outcome.ok:
                log.info(
                    "%s: done, %d tiles (%d embedded), %.1f s",
                    outcome.key,
                    outcome.n_tiles,
                    outcome.computed_tiles,
                    outcome.seconds,
                )
            elapsed = time.perf_counter() - t0
            bar.set_postfix({"tiles/s": f"{tiles / elapsed:.1f}", "failed": failed}, refresh=False)
            bar.update(1)
            flush(False, force=False)
    except KeyboardInterrupt:
        for o in outcomes.values():
            if o.status == "pending":
                o.status = "interrupted"
        flush(False)
        raise
    finally:
        bar.close()
