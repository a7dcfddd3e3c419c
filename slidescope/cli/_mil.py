"""`slidescope train`, `score`, `heatmap`: supervised MIL on embedding stores."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from . import app
from ._executor import DASK_WORKERS, EXECUTOR, SCHEDULER, chosen_executor
from ._common import Accelerator, Device, Devices, NumNodes, StoreOpt, StoresArg, StoresOpt, Strategy
from ._locations import stores_folder, local, location, store_list


_N_BINS = typer.Option(4, "--n-bins", help="Discrete survival: time bins (quantiles of event times).")
_BAG = typer.Option(
    "slide",
    "--bag",
    help="slide: one bag per slide; patient: one per patient, the tiles of all its slides (score with --patients).",
)


@app.command()
def train(
    manifest: str = typer.Option(
        ...,
        help="CSV with slide, patient and label (classification, regression) or "
        "time and event (survival); optional site, split.",
    ),
    stores: str | None = typer.Option(
        None,
        "--stores",
        help="Store folder with the slides' embeddings (required); a local path or an fsspec URL.",
    ),
    store_old: str | None = typer.Option(None, "--store", hidden=True, help="Deprecated name of --stores."),
    encoder: str = typer.Option(..., help="Which embeddings to train on (e.g. he-descriptor, uni)."),
    model: str = typer.Option("abmil", help="Aggregator name (abmil, mean, clam-sb, transmil...)."),
    model_kwargs: str | None = typer.Option(
        None, "--model-kwargs", help="Aggregator kwargs as JSON, e.g. '{\"embed_dim\": 256}'."
    ),
    folds: int = typer.Option(5, help="Patient-level cross-validation folds."),
    epochs: int = typer.Option(20, help="Maximum epochs per fold (the cosine schedule spans them)."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Bags per batch (default 8; 32 for Cox)."
    ),
    lr: float = typer.Option(2e-4, help="AdamW learning rate (peak of the cosine schedule)."),
    weight_decay: float = typer.Option(1e-2, "--weight-decay", help="AdamW (decoupled) weight decay."),
    seed: int = typer.Option(0, help="Seed of splits, sampling and initialisation."),
    max_instances: int = typer.Option(
        512,
        "--max-instances",
        help="Tiles per training bag (a random subset, "
        "drawn anew each epoch); 0 = every tile. Evaluation uses every tile.",
    ),
    early_stopping_patience: int = typer.Option(
        5, "--early-stopping-patience", help="Epochs without a lower validation loss before a fold stops."
    ),
    site_preserving: bool = typer.Option(False, "--site-preserving", help="Hold out whole sites per fold."),
    class_weighting: bool = typer.Option(
        True,
        "--class-weighting/--no-class-weighting",
        help="Classification: "
        "weight the cross-entropy by inverse class frequency in each fold's "
        "training set.",
    ),
    accelerator: Accelerator = "auto",
    devices: Devices = 1,
    num_nodes: NumNodes = 1,
    strategy: Strategy = "auto",
    precision: str | None = typer.Option(None, help="Lightning precision, e.g. bf16-mixed or 16-mixed."),
    num_workers: int = typer.Option(0, "--num-workers", help="DataLoader workers."),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Reuse finished folds, continue interrupted ones."
    ),
    out: str = typer.Option("runs/mil", help="Run folder (local)."),
    task: str = typer.Option("classification", help="classification, regression or survival."),
    label_column: str = typer.Option(
        "label",
        "--label-column",
        help="Column with the class (classification) or "
        "the numeric target (regression), e.g. tumour_fraction.",
    ),
    survival_model: str = typer.Option("cox", "--survival-model", help="Survival head: cox or discrete."),
    time_column: str = typer.Option("time", "--time-column", help="Survival: time to event or censoring."),
    event_column: str = typer.Option("event", "--event-column", help="Survival: 1 = event, 0 = censored."),
    n_bins: int = _N_BINS,
    bag: str = _BAG,
) -> None:
    """Train a MIL model (classification, regression or survival) with patient-level cross-validation;
    prints held-out metrics with 95% CIs.

    Training recipe: slidescope's own, not a published one (short runs for small cohorts on CPUs): AdamW, lr
    2e-4, weight decay 1e-2, cosine schedule over at most 20 epochs, early stopping after 5 epochs without a
    lower validation loss (best checkpoint kept), 8 bags per batch of at most 512 random tiles each,
    class-weighted cross-entropy (CLAM: 0.7 x that + 0.3 x its instance loss).

    CLAM's recipe (mahmoodlab/CLAM README commands and main.py) differs: Adam with a constant lr 2e-4 (main.py's
    default: 1e-4) and L2 weight decay 1e-5, up to 200 epochs, early stopping with patience 20 but never
    before epoch 50, one bag with every tile per step, classes balanced by weighted sampling rather than
    loss weights. The closest here: --lr 2e-4 --weight-decay 1e-5 --epochs 200 --early-stopping-patience 20
    --batch-size 1 --max-instances 0 (class weighting stands in for weighted sampling; AdamW, the cosine
    schedule and early stopping from the first epoch stay ours).
    """
    from ..errors import InvalidParameterError
    from ..mil.train import train as run_train

    try:
        kwargs = json.loads(model_kwargs) if model_kwargs else None
    except json.JSONDecodeError as err:
        raise InvalidParameterError(f"--model-kwargs is not valid JSON: {err}") from err
    if max_instances < 0:
        raise InvalidParameterError(f"--max-instances must be >= 0 (0 = every tile), got {max_instances}")
    store = stores_folder(stores, store_old)
    res = run_train(
        local(manifest, "--manifest of train"),
        store=store,
        encoder=encoder,
        out=local(out, "--out of train (the run folder)"),
        model=model,
        model_kwargs=kwargs,
        folds=folds,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        max_instances=max_instances or None,
        early_stopping_patience=early_stopping_patience,
        site_preserving=site_preserving,
        class_weighting=class_weighting,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
        num_workers=num_workers,
        resume=resume,
        task=task,
        label_column=label_column,
        survival_model=survival_model,
        time_column=time_column,
        event_column=event_column,
        n_bins=n_bins,
        bag=bag,
    )
    if res is None:  # another DDP rank than 0: rank 0 reports
        return
    for f in res.folds:
        typer.echo(
            f"fold {f.fold}: {f.status}, {f.epochs} epochs, {f.n_train} train / {f.n_val} val / "
            f"{f.n_test} held-out slides"
        )
    typer.echo(res.summary())
    typer.echo(
        f"out-of-fold predictions: {res.oof_csv}\nmetrics: {res.results_csv}\n"
        f"checkpoints: {' '.join(str(c) for c in res.checkpoints)}"
    )


@app.command()
def score(
    stores: StoresArg = None,
    stores_opt: StoresOpt = None,
    store: StoreOpt = None,
    model: list[str] = typer.Option(..., "--model", help="Checkpoint (best.ckpt); repeat for an ensemble."),
    out: str | None = typer.Option(None, help="Predictions CSV (local)."),
    name: str | None = typer.Option(None, help="Scores name in the stores (default: the run folder's name)."),
    write_scores: bool = typer.Option(
        True, "--write-scores/--no-write-scores", help="Write the attention into each store."
    ),
    device: Device = "cpu",
    executor: str | None = EXECUTOR,
    scheduler: str | None = SCHEDULER,
    dask_workers: int | None = DASK_WORKERS,
    patients: str | None = typer.Option(
        None,
        "--patients",
        help="CSV with slide and patient (e.g. the training manifest): score each patient's slides as one bag "
        "(models trained with --bag patient).",
        show_default=False,
    ),
) -> None:
    """Predict slides with MIL checkpoints (probabilities, regression predictions or survival risks averaged)
    and store the tile attention."""
    from .._location import expand_stores
    from ..mil import read_patients
    from ..mil.score import run_name, write_predictions
    from ..mil.score import score as run_score

    locations = store_list(stores, stores_opt, store)
    models = [local(m, "--model of score (a checkpoint)") for m in model]
    out_csv = local(out, "--out of score (the predictions CSV)")
    patients_csv = local(patients, "--patients of score")
    runner = chosen_executor(executor, scheduler, dask_workers)
    if patients is not None and runner is not None:
        from ..errors import InvalidParameterError

        raise InvalidParameterError(
            "--patients scores each patient's slides together here: leave out --executor"
        )
    if runner is not None:
        from ..pipeline import StoreCall, map_stores

        call = StoreCall(
            "slidescope.mil.score:score",
            before=([str(m) for m in models],),
            device=device,
            kwargs={
                "write_scores": write_scores,
                "name": name or run_name(models[0]),
                "device": device,
                "errors": "report",
            },
        )
        results = map_stores(runner, call, [str(p) for p in expand_stores(locations)])
        if out_csv is not None:
            write_predictions(out_csv, results)
    else:
        results = run_score(
            models,
            locations,
            out_csv=out_csv,
            write_scores=write_scores,
            name=name,
            device=device,
            errors="report",
            patients=None if patients_csv is None else read_patients(patients_csv),
        )
    for r in results:
        if r.status != "scored":
            typer.echo(f"{r.slide}: not scored, {r.status} ({r.error})", err=True)
        elif r.risk is not None:
            typer.echo(f"{r.slide}: risk {r.risk:.4f}")
        elif r.prediction is not None:
            typer.echo(f"{r.slide}: {r.prediction:.4g}")
        else:
            probs = ", ".join(f"{c}={p:.3f}" for c, p in r.probs.items())
            typer.echo(f"{r.slide}: {r.predicted} ({probs})")
    if write_scores:
        typer.echo(f"tile scores written as '{name or run_name(models[0])}/attention'")
    if out_csv is not None:
        typer.echo(f"predictions: {out_csv}")
    exit_if_not_all_scored([(r.slide, r.status, r.error or "") for r in results], len(results), out_csv)


def exit_if_not_all_scored(skipped: list[tuple[str, str, str]], total: int, out_csv: Path | None) -> None:
    """The end of a batch scoring command (score, zero-shot): exit status 1 when a store failed (damaged,
    unfinished, other embeddings) or nothing was scored; stores without tiles alone are no failure."""
    skipped = [s for s in skipped if s[1] != "scored"]
    if not skipped:
        return
    where = f"; listed in {out_csv.with_name(out_csv.stem + '.skipped.csv')}" if out_csv is not None else ""
    typer.echo(f"{total - len(skipped)} of {total} slides scored{where}", err=True)
    if any(s[1] == "failed" for s in skipped) or len(skipped) == total:
        raise typer.Exit(1)


@app.command()
def heatmap(
    slide: str = typer.Argument(..., help="The slide file (a local path or an fsspec URL)."),
    store: str | None = typer.Option(
        None, help="The slide's store (<slide>.zarr); a local path or an fsspec URL."
    ),
    stores: str | None = typer.Option(
        None,
        "--stores",
        help="The store folder (the slide's store is found in it; "
        "a local path or an fsspec URL). Give --store or --stores.",
    ),
    scores: str = typer.Option(..., help="Scores name in the store, e.g. <run>/attention."),
    out: str = typer.Option(..., help="PNG to write (local)."),
    geojson: str | None = typer.Option(None, help="Also write the scored tiles as QuPath GeoJSON (local)."),
    size: int = typer.Option(1024, help="Thumbnail size (px, longest side)."),
    cmap: str = typer.Option("inferno", help="inferno, viridis, magma or jet."),
    normalize: str = typer.Option("rank", help="rank or minmax."),
    alpha: float = typer.Option(0.5, help="Opacity of the tiles."),
) -> None:
    """Paint per-tile scores over the slide thumbnail (PNG with colour bar, optional GeoJSON)."""
    from ..errors import InvalidParameterError
    from ..mil.heatmap import heatmap as run_heatmap

    if (store is None) == (stores is None):
        raise InvalidParameterError(
            "give the slide's store (--store SLIDE.zarr) or the store folder (--stores), one of them"
        )
    png = run_heatmap(
        location(slide),
        location(store or stores),
        scores=scores,
        out_png=local(out, "--out of heatmap (the PNG)"),
        out_geojson=local(geojson, "--geojson of heatmap"),
        size=size,
        cmap=cmap,
        normalize=normalize,
        alpha=alpha,
    )
    typer.echo(f"heatmap: {png}" + (f"; GeoJSON: {geojson}" if geojson else ""))
