"""Batch runs: the whole pipeline over many slides (``slidescope run`` / :func:`slidescope.run`).

* :func:`run` - the driver: resolve the configuration, plan every slide (skip / do / retry), hand the
  slides to an executor, rewrite the report and the predictions after each slide;
* :func:`process_slide` - one slide, start to finish: a module-level function of ``(slide, config)``
  returning a :class:`SlideOutcome`, so any executor can run it in other processes;
* :func:`embed_slide` - one slide's tissue -> tile grid -> stored embeddings, shared with the viewer's
  analysis (:class:`EmbeddedSlide`);
* :class:`RunConfig` - the frozen configuration (from options and/or a YAML/TOML file);
* :class:`Executor` - the seam: ``executor.map(process_slide, slides, config)`` yields outcomes;
  :class:`LocalExecutor` (this process, in order) is the default; :class:`DaskExecutor` runs one Dask
  task per slide (LocalCluster, an existing scheduler, or SLURM/PBS through dask-jobqueue).

Importing this package is light: torch and the slide libraries load when a slide is processed.
"""

from __future__ import annotations

from ._config import (
    CONFIG_KEYS,
    EXECUTION_KEYS,
    RunConfig,
    execution_options,
    expand_models,
    load_config_file,
    resolve_config,
    result_signature,
)
from ._dask import DaskExecutor, StoreCall, map_stores
from ._embed import EmbeddedSlide, embed_slide
from ._run import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    Executor,
    LocalExecutor,
    PlannedSlide,
    RunResult,
    make_executor,
    run,
)
from ._slide import SlideOutcome, plan_slide, process_slide, record_path

__all__ = [
    "CONFIG_KEYS",
    "DaskExecutor",
    "EXECUTION_KEYS",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EmbeddedSlide",
    "Executor",
    "LocalExecutor",
    "PlannedSlide",
    "RunConfig",
    "RunResult",
    "SlideOutcome",
    "StoreCall",
    "embed_slide",
    "execution_options",
    "expand_models",
    "load_config_file",
    "make_executor",
    "map_stores",
    "plan_slide",
    "process_slide",
    "record_path",
    "resolve_config",
    "result_signature",
    "run",
]
