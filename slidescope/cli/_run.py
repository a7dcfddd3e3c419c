"""`slidescope run`: the whole pipeline over a folder, glob or manifest of slides, resumable, with a report."""

from __future__ import annotations

import logging
import sys

import typer

from ..wsi import DEFAULT_MIN_TISSUE
from . import app
from ._executor import DASK_WORKERS, EXECUTOR, SCHEDULER, chosen_executor
from ._locations import local

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


@app.command("run")
def run_cmd(
    slides: list[str] = typer.Argument(
        None, help="Slide files, folders, glob patterns or a CSV manifest (or 'slides:' in --config)."
    ),
    encoder: str | None = typer.Option(None, help="Patch encoder (see `slidescope encoders`)."),
    model: list[str] = typer.Option(
        None, "--model", help="MIL checkpoint (best.ckpt) or training run folder; repeat for an ensemble."
    ),
    prompts: str | None = typer.Option(None, help="Zero-shot prompts YAML (needs --slide-text-model)."),
    slide_text_model: str | None = typer.Option(
        None, "--slide-text-model", help="Saved slide-text model folder for zero-shot (pretrain's OUT/model)."
    ),
    out: str | None = typer.Option(None, help="Results folder (local; required, here or in --config)."),
    config: str | None = typer.Option(
        None, help="YAML or TOML file with any of these options (long names as keys); flags override it."
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the resolved configuration and what would happen to each slide; write nothing.",
    ),
    weights: str | None = typer.Option(None, help="Local encoder weights file or folder (offline use)."),
    stores: str | None = typer.Option(
        None,
        help="Embedding-store folder (default: OUT/stores); a local path or an "
        "fsspec URL (s3://bucket/stores).",
    ),
    mpp: float | None = typer.Option(None, help="Tile µm/px (default: the encoder's)."),
    tile_size: int | None = typer.Option(None, "--tile-size", help="Tile px (default: the encoder's)."),
    overlap: int | None = typer.Option(None, help="Pixels shared by neighbouring tiles (default: 0)."),
    min_tissue: float | None = typer.Option(
        None, "--min-tissue", help=f"Minimum tissue fraction of a tile (default: {DEFAULT_MIN_TISSUE:g})."
    ),
    pen: str | None = typer.Option(
        None,
        "--pen",
        help="Pen-mark removal in tissue detection: auto (on, but off "
        "on slides that look like IHC), on or off (default: auto).",
    ),
    slide_mpp: float | None = typer.Option(
        None,
        "--slide-mpp",
        help="Level-0 pixel size (µm/px) filled in for "
        "slides whose metadata lacks it; a slide's own pixel size wins.",
    ),
    force_slide_mpp: float | None = typer.Option(
        None,
        "--force-slide-mpp",
        help="Level-0 pixel size (µm/px) imposed on every slide, overriding its metadata.",
    ),
    backend: str | None = typer.Option(None, help="auto, openslide or tiffslide (default: auto)."),
    stain: str | None = typer.Option(None, help="Stain normalisation: macenko or reinhard (default: none)."),
    dtype: str | None = typer.Option(
        None, help="Stored embedding dtype: float16 or float32 (default: float16)."
    ),
    precision: str | None = typer.Option(
        None, help="fp32, fp16 or bf16 (default: the model's on GPU, fp32 on CPU)."
    ),
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:1... (default: auto)."),
    batch_size: str | None = typer.Option(
        None, "--batch-size", help="Tiles per batch or 'auto' (default: auto)."
    ),
    num_workers: int | None = typer.Option(
        None, "--num-workers", help="Reader processes per slide (default: one per core on CPU)."
    ),
    zero_shot_level: str | None = typer.Option(
        None, "--zero-shot-level", help="slide, or tile: MI-Zero top-k pooling (default: slide)."
    ),
    prompt_ensemble: str | None = typer.Option(
        None, "--prompt-ensemble", help="mean-embedding or sum-probability (default: mean-embedding)."
    ),
    heatmaps: bool | None = typer.Option(
        None, "--heatmaps/--no-heatmaps", help="Heatmap PNG + GeoJSON per slide (default: on)."
    ),
    heatmap_size: int | None = typer.Option(
        None, "--heatmap-size", help="Heatmap thumbnail px (default: 1024)."
    ),
    cmap: str | None = typer.Option(None, help="inferno, viridis, magma or jet (default: inferno)."),
    normalize: str | None = typer.Option(None, help="Heatmap scores: rank or minmax (default: rank)."),
    executor: str | None = EXECUTOR,
    scheduler: str | None = SCHEDULER,
    dask_workers: int | None = DASK_WORKERS,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar (slides/s, tiles/s)."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv for debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors; no progress bar."),
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
    bs: int | str | None = batch_size
    if batch_size is not None and batch_size != "auto":
        try:
            bs = int(batch_size)
        except ValueError:
            raise typer.BadParameter(
                f"--batch-size must be a whole number or 'auto', got {batch_size!r}"
            ) from None
    options = dict(
        encoder=encoder,
        model=model or None,
        prompts=prompts,
        slide_text_model=slide_text_model,
        out=out,
        weights=weights,
        stores=stores,
        mpp=mpp,
        tile_size=tile_size,
        overlap=overlap,
        min_tissue=min_tissue,
        pen=pen,
        slide_mpp=slide_mpp,
        force_slide_mpp=force_slide_mpp,
        backend=backend,
        stain=stain,
        dtype=dtype,
        precision=precision,
        device=device,
        batch_size=bs,
        num_workers=num_workers,
        zero_shot_level=zero_shot_level,
        prompt_ensemble=prompt_ensemble,
        heatmaps=heatmaps,
        heatmap_size=heatmap_size,
        cmap=cmap,
        normalize=normalize,
    )
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
