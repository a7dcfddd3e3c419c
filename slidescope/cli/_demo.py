"""`slidescope demo`: the whole pipeline on a synthetic cohort, offline, in a few minutes on a CPU."""

from __future__ import annotations


import typer

from . import app
from ._locations import local


@app.command()
def demo(
    out: str = typer.Option(
        "slidescope-demo", help="Local output folder (rerunning into it reuses what exists)."
    ),
    slides: int = typer.Option(36, help="Synthetic slides in the cohort (at least 12)."),
    seed: int = typer.Option(0, help="Seed of the cohort, the split and training."),
) -> None:
    """Synthetic cohort -> he-descriptor embeddings -> ABMIL CV + slide-text model -> held-out scores, heatmaps.

    Uses synthetic slides and a weight-free encoder (not a foundation model); prints how to run the same
    on real slides.
    """
    from ..demo import demo as run_demo

    run_demo(local(out, "--out of demo"), n_slides=slides, seed=seed, progress=True)
