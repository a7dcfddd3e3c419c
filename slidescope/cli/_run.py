"""`slidescope run`: the whole pipeline over a folder, glob or manifest of slides, resumable, with a report."""

from __future__ import annotations

import logging
import sys

from typing import Any

import typer

from ..options import options_of
from ..pipeline import RunConfig
from . import app
from ._executor import DASK_WORKERS, EXECUTOR, SCHEDULER, chosen_executor
from ._locations import local
from ._schema import batch_size_option, schema_options

#: exit code when some slides failed (the others are done); 2 is a usage or configuration error
EXIT_SOME_FAILED = 1
#: exit code after Ctrl-C (128 + SIGINT), as the shell reports it
EXIT_INTERRUPTED = 130


def _logging(verbose: int, quiet: bool) -> None:
    if verbose or quiet:
        level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
        logging.basicConfig(
            level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
        )


def _show(value: object) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


#: the options of `run` that are fields of the run configuration (all of them but progress)
_RUN_OPTIONS = tuple(f.name for f in options_of(RunConfig))


@app.command("run")
@schema_options(RunConfig, _RUN_OPTIONS, from_schema=False)
def run_cmd(
    slides: list[str] = typer.Argument(
        None, help="Slide files, folders, glob patterns or a CSV manifest (or 'slides:' in --config)."
    ),
    config: str | None = typer.Option(
        None, help="YAML or TOML file with any of these options (long names as keys); flags override it."
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the resolved configuration and what would happen to each slide; write nothing.",
    ),
    executor: str | None = EXECUTOR,
    scheduler: str | None = SCHEDULER,
    dask_workers: int | None = DASK_WORKERS,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar (slides/s, tiles/s)."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv for debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors; no progress bar."),
    **options: Any,
) -> None:
    """Score slides end to end: open, tissue, tiles, embeddings (cached), MIL and/or zero-shot, heatmaps.

    Writes OUT/predictions.csv, OUT/report.json, OUT/report.md, heatmaps, tissue GeoJSON and stores.

    Running the same command again skips finished slides and retries failed ones.

    Exit code 0: all slides done; 1: some failed (see the report); 2: bad options; 130: interrupted.
    """
    from ..pipeline import run

    _logging(verbose, quiet)
    config = local(config, "--config of run")
    runner = chosen_executor(executor, scheduler, dask_workers, config=config)
    options["batch_size"] = batch_size_option(options["batch_size"])
    options["model"] = options["model"] or None
    try:
        res = run(
            slides or None,
            config=config,
            executor=runner,
            dry_run=dry_run,
            progress=progress and not quiet,
            **options,
        )
    except KeyboardInterrupt:
        typer.echo(
            "interrupted: finished slides are kept (see the report); run the same command again to go on",
            err=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if dry_run:
        typer.echo("dry run: nothing is written\n")
        typer.echo("configuration:")
        for k, v in res.config.to_dict(kebab=True).items():
            typer.echo(f"  {k}: {_show(v)}")
        counts: dict[str, int] = {}
        for p in res.plan:
            counts[p.action] = counts.get(p.action, 0) + 1
        typer.echo(
            f"\nslides ({len(res.plan)}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + "):"
        )
        for p in res.plan:
            typer.echo(f"  {p.action:<5}  {p.slide}  ({p.reason})")
        return
    failed = res.failed
    c = res.counts
    typer.echo(
        f"{c.get('done', 0)} slides done, {c.get('skipped', 0)} skipped (finished before), {len(failed)} "
        f"failed, of {len(res.outcomes)}"
    )
    for o in failed[:20]:
        typer.echo(f"  {o.key}: {o.status} ({o.error_class}: {o.error_message})")
    if len(failed) > 20:
        typer.echo(f"  ... and {len(failed) - 20} more (see the report)")
    typer.echo(f"predictions: {res.predictions}\nreport: {res.report} ({res.out / 'report.md'})")
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
