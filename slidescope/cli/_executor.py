"""The `--executor/--scheduler/--dask-workers` options that `run`, `extract`, `score` and `zero-shot` share."""

from __future__ import annotations

import os

import typer

EXECUTOR = typer.Option(
    None,
    help="local (this process, the default) or dask (one task per slide or store on "
    "Dask distributed; each worker reads its slide's tiles itself, without reader processes).",
)
SCHEDULER = typer.Option(
    None,
    help="Dask: address of an existing scheduler (tcp://host:8786); default a LocalCluster on this machine.",
)
DASK_WORKERS = typer.Option(
    None,
    "--dask-workers",
    help="Dask: worker processes of the LocalCluster (default: one per GPU, else cores / 2).",
)


def chosen_executor(
    executor: str | None,
    scheduler: str | None,
    dask_workers: int | None,
    *,
    config: str | os.PathLike[str] | None = None,
):
    """The executor the options (over the config file's execution keys) ask for; None means in-process."""
    from ..pipeline import LocalExecutor, execution_options, make_executor

    runner = make_executor(
        execution_options(config, executor=executor, scheduler=scheduler, dask_workers=dask_workers)
    )
    return None if isinstance(runner, LocalExecutor) else runner
