"""`slidescope pretrain`, `zero-shot`, `report`, `prompt-spread`, `few-shot`: slide-text models on embedding stores
(a pretrained SlideTextModel, the published PRISM / TITAN, or patch-level CLIP models at tile level)."""

from __future__ import annotations

import csv
from pathlib import Path

import typer

from .._location import Location, location_name
from . import app
from ._executor import DASK_WORKERS, EXECUTOR, SCHEDULER, chosen_executor
from ._common import (
    ModelEncoder,
    ModelWeights,
    TrustRemoteCode,
    Accelerator,
    Device,
    Devices,
    NumNodes,
    StoreOpt,
    StoresArg,
    StoresOpt,
    Strategy,
)
from ._locations import stores_folder, STORE_HELP, STORES_HELP, local, location, renamed, store_list


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _manifest_rows(
    path: Path, store: Location, label_column: str = "label"
) -> tuple[list[Location], list[str | None]]:
    """Store paths and labels (None when the column is absent) of a manifest's slides, in file order."""
    from ..errors import InvalidParameterError
    from ..features.store import store_path

    if not path.is_file():
        raise InvalidParameterError(f"manifest {path} does not exist")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "slide" not in rows[0]:
        raise InvalidParameterError(f"{path.name} needs a 'slide' column and at least one row")
    return (
        [store_path(store, path.parent / r["slide"]) for r in rows],
        [r.get(label_column) or None for r in rows],
    )


def _patients_of(csvs: list[Path], store: Location) -> dict[str, str]:
    """Slide name -> patient, from the ``patient`` column of the manifests (``few-shot --patient-level``)."""
    from ..errors import InvalidParameterError
    from ..features.store import store_path

    out: dict[str, str] = {}
    for path in csvs:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if any(not r.get("patient") for r in rows):
            raise InvalidParameterError(f"{path.name}: --patient-level needs a patient on every row")
        for r in rows:
            name = location_name(store_path(store, path.parent / r["slide"])).removesuffix(".zarr")
            out[name] = r["patient"]
    return out


@app.command()
def pretrain(
    manifest: str = typer.Option(
        ..., help="CSV with slide, patient and report (free text); only training slides."
    ),
    stores: str | None = typer.Option(
        None,
        "--stores",
        help="Store folder with the slides' tile embeddings (required); a local path or an fsspec URL.",
    ),
    store_old: str | None = typer.Option(None, "--store", hidden=True, help="Deprecated name of --stores."),
    encoder: str = typer.Option(
        ..., help="Which tile embeddings feed the slide encoder (e.g. he-descriptor)."
    ),
    out: str = typer.Option(..., help="Run folder (local); the model is written to OUT/model."),
    text: str = typer.Option(
        "small",
        help="'small' (a text tower trained from scratch on the reports) or a folder "
        "with a Hugging Face encoder.",
    ),
    freeze_text: str = typer.Option(
        "none", "--freeze-text", help="none, all or partial (last layer trains)."
    ),
    epochs: int = typer.Option(60, help="Maximum epochs."),
    batch_size: int = typer.Option(
        32, "--batch-size", help="(slide, report) pairs per contrastive batch and device."
    ),
    lr: float = typer.Option(1e-3, help="AdamW learning rate."),
    seed: int = typer.Option(0, help="Seed of the split, sampling and initialisation."),
    max_instances: int = typer.Option(512, "--max-instances", help="Tiles per training bag (subsampled)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Fraction of patients for validation."),
    accelerator: Accelerator = "auto",
    devices: Devices = 1,
    num_nodes: NumNodes = 1,
    strategy: Strategy = "auto",
) -> None:
    """Pretrain a slide-text model (CLIP loss on slide tile embeddings and their reports)."""
    from ..vlm.pretrain import pretrain as run_pretrain

    store = stores_folder(stores, store_old)
    res = run_pretrain(
        local(manifest, "--manifest of pretrain"),
        store=store,
        encoder=encoder,
        out=local(out, "--out of pretrain (the run folder)"),
        text=text,
        freeze_text=freeze_text,  # type: ignore[arg-type]
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        max_instances=max_instances,
        val_fraction=val_fraction,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
    )
    if res is None:  # another DDP rank than 0: rank 0 reports
        return
    typer.echo(res.summary())
    typer.echo(f"model: {res.model_dir}")


@app.command("zero-shot")
def zero_shot(
    stores: StoresArg = None,
    stores_opt: StoresOpt = None,
    store: StoreOpt = None,
    model: str = typer.Option(
        ...,
        help="A saved slide-text model folder (pretrain's OUT/model), a published slide "
        "model (prism, titan) or a patch-level CLIP model (plip, quiltnet, conch-v1: tile level).",
    ),
    prompts: str = typer.Option(
        ..., help="YAML: 'classes: {name: [phrasing, ...]}', optional 'templates: [...]'."
    ),
    encoder: str | None = typer.Option(
        None,
        help="The tile embeddings to read (default for named models: the one "
        "they need; required for a saved slide-text model).",
    ),
    weights: str | None = typer.Option(
        None,
        help="A named model's local files: a downloaded copy of its hub "
        "repository, or the CLIP weights file/folder (default: the hub).",
    ),
    trust_remote_code: bool = typer.Option(
        False,
        "--trust-remote-code",
        help="Allow PRISM's / TITAN's own model code (from their repositories) to run; required for them.",
    ),
    out: str | None = typer.Option(None, help="Probabilities CSV (local)."),
    ensemble: str | None = typer.Option(
        None, help="mean-embedding or sum-probability (default: the model's)."
    ),
    level: str | None = typer.Option(
        None,
        help="slide, or tile (per-tile similarity maps + MI-Zero pooling); "
        "default slide, tile for CLIP models.",
    ),
    k: int = typer.Option(10, help="Tiles pooled per class at tile level (MI-Zero top-k)."),
    pooling: str = typer.Option(
        "mean",
        help="Tile-level top-k pooling: mean (CONCH's run_mizero) or sum "
        "(MI-Zero's topj_pooling: same prediction, k times sharper probabilities).",
    ),
    device: Device = "cpu",
    executor: str | None = EXECUTOR,
    scheduler: str | None = SCHEDULER,
    dask_workers: int | None = DASK_WORKERS,
) -> None:
    """Zero-shot class probabilities of slides from prompts; level=tile also writes scores/zero-shot/<class>.

    Stores without tiles or that cannot be opened are reported and listed in <out>.skipped.csv; the others
    are scored (exit status 1 when a store failed or none was scored)."""
    from ..mil.score import check_stores, write_skipped
    from ..vlm.api import zero_shot as run_zero_shot
    from ._mil import exit_if_not_all_scored

    locations, skipped = check_stores(store_list(stores, stores_opt, store), encoder)
    for slide, status, error in skipped:
        typer.echo(f"{slide}: not scored, {status} ({error})", err=True)
    prompts_file = local(prompts, "--prompts of zero-shot")
    out_csv = local(out, "--out of zero-shot (the probabilities CSV)")
    options = dict(
        model=model,
        encoder=encoder,
        weights=local(weights, "--weights of zero-shot"),
        trust_remote_code=trust_remote_code,
        ensemble=ensemble,
        level=level,
        k=k,
        pooling=pooling,
        device=device,
    )
    runner = chosen_executor(executor, scheduler, dask_workers)
    if not locations:
        rows = []
    elif runner is not None:
        from ..pipeline import StoreCall, map_stores

        call = StoreCall("slidescope.vlm.api:zero_shot", after=(prompts_file,), kwargs=options, device=device)
        rows = map_stores(runner, call, [str(p) for p in locations])
    else:
        rows = run_zero_shot(locations, prompts_file, **options)  # type: ignore[arg-type]
    for r in rows:
        probs = ", ".join(f"{c}={p:.3f}" for c, p in r.probs.items())
        typer.echo(f"{r.slide}: {r.predicted} ({probs})")
    from ..features.encoders.clip import list_clip_text_towers

    if level == "tile" or (level is None and model in list_clip_text_towers()):
        typer.echo("tile similarity maps written as 'zero-shot/<class>'")
    if out_csv is not None:
        if rows:  # nothing scored: --out is left as it was (never deleted: it may not be ours); exit 1 below
            _write_csv(out_csv, [r.as_dict() for r in rows])
            typer.echo(f"probabilities: {out_csv}")
        write_skipped(out_csv, skipped)
    exit_if_not_all_scored(skipped, len(rows) + len(skipped), out_csv)


@app.command("report")
def report(
    stores: StoresArg = None,
    stores_opt: StoresOpt = None,
    store: StoreOpt = None,
    model: str = typer.Option("prism", help="The report-generating model (prism)."),
    weights: str | None = typer.Option(None, help="A downloaded copy of paige-ai/Prism (default: the hub)."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Allow PRISM's own model code to run (required)."
    ),
    encoder: str | None = typer.Option(None, help="Tile embeddings to read (default: virchow)."),
    num_beams: int = typer.Option(5, "--num-beams", help="Beam search width (1: greedy)."),
    max_length: int = typer.Option(100, "--max-length", help="Longest report in tokens."),
    out: str | None = typer.Option(None, help="CSV with slide and report (local)."),
    device: Device = "cpu",
) -> None:
    """Generate a report per slide with PRISM's decoder (from Virchow tile embeddings)."""
    from ..vlm.api import generate_reports

    locations = store_list(stores, stores_opt, store)
    out_csv = local(out, "--out of report (the reports CSV)")
    rows = generate_reports(
        locations,
        model=model,
        encoder=encoder,
        weights=local(weights, "--weights of report"),
        trust_remote_code=trust_remote_code,
        num_beams=num_beams,
        max_length=max_length,
        device=device,
    )
    for r in rows:
        typer.echo(f"{r['slide']}: {r['report']}")
    if out_csv is not None:
        _write_csv(out_csv, rows)
        typer.echo(f"reports: {out_csv}")


@app.command("prompt-spread")
def prompt_spread(
    stores: list[str] = typer.Argument(
        None,
        help="Slide stores or store folders; local paths or fsspec URLs (or "
        "give --stores / --store, or --manifest with --stores).",
    ),
    stores_opt: str | None = typer.Option(
        None, "--stores", help=STORES_HELP + " With --manifest: the folder of its slides' stores."
    ),
    store: list[str] = typer.Option(
        None, "--store", help=STORE_HELP + " (With --manifest, a deprecated name of --stores.)"
    ),
    model: str = typer.Option(
        ..., help="A saved slide-text model folder, or a published slide model (prism, titan)."
    ),
    prompts: str = typer.Option(..., help="Prompts YAML."),
    encoder: ModelEncoder = None,
    weights: ModelWeights = None,
    trust_remote_code: TrustRemoteCode = False,
    manifest: str | None = typer.Option(
        None, help="CSV with slide and a label column: report AUROC per subset."
    ),
    label_column: str = typer.Option("label", "--label-column", help="Manifest column with the class name."),
    n_subsets: int = typer.Option(50, "--n-subsets", help="Random prompt subsets."),
    subset_size: int = typer.Option(1, "--subset-size", help="Prompts per class in each subset."),
    ensemble: str | None = typer.Option(
        None, help="mean-embedding or sum-probability (default: the model's)."
    ),
    seed: int = typer.Option(0, help="Seed of the subset draws."),
    out: str | None = typer.Option(
        None, help="CSV of the per-slide spread (mean/std/min/max per class; local)."
    ),
) -> None:
    """How much zero-shot results move across random prompt subsets (AUROC spread with --manifest)."""
    import numpy as np

    from ..errors import InvalidParameterError
    from ..vlm.api import load_prompts, load_slide_model, slide_embeddings
    from ..vlm.zeroshot import prompt_spread as run_spread

    labels = None
    out_csv = local(out, "--out of prompt-spread (the spread CSV)")
    if manifest is not None:
        folder = location(
            renamed(
                stores_opt,
                store[-1] if store else None,
                new_name="--stores",
                old_name="--store (with --manifest)",
            )
        )
        if folder is None:
            raise InvalidParameterError("--manifest needs --stores (the folder of the slides' stores)")
        paths, raw = _manifest_rows(local(manifest, "--manifest of prompt-spread"), folder, label_column)
    else:
        paths, raw = store_list(stores, [stores_opt] if stores_opt else None, store), []
    spec = load_prompts(local(prompts, "--prompts of prompt-spread"))
    net = load_slide_model(
        model, weights=local(weights, "--weights of prompt-spread"), trust_remote_code=trust_remote_code
    )
    paths, emb = slide_embeddings(paths, model=net, encoder=encoder)
    ensemble = ensemble or getattr(net, "ensemble", "mean-embedding")
    texts, prompt_class = spec.build()
    import torch

    with torch.inference_mode():
        text_emb = net.encode_text(texts)
    if manifest is not None:
        missing = [str(p.name) for p, lab in zip(paths, raw, strict=True) if lab not in spec.names]
        if missing:
            raise InvalidParameterError(
                f"{len(missing)} slide(s) have a {label_column!r} that is not a prompt class "
                f"{spec.names}: {', '.join(missing[:5])}"
            )
        labels = np.array([spec.names.index(lab) for lab in raw])
    res = run_spread(
        emb,
        text_emb,
        prompt_class,
        labels=labels,
        n_subsets=n_subsets,
        subset_size=subset_size,
        ensemble=ensemble,
        logit_scale=float(net.scale().detach()),
        seed=seed,
    )  # type: ignore[arg-type]
    if res.auroc is not None:
        a = res.auroc.numpy()
        typer.echo(
            f"AUROC over {n_subsets} prompt subsets of {subset_size}/class: mean {a.mean():.3f}, "
            f"std {a.std():.3f}, min {a.min():.3f}, max {a.max():.3f}"
        )
    rows = []
    for i, p in enumerate(paths):
        name = location_name(p)
        name = name[: -len(".zarr")] if name.endswith(".zarr") else name
        row: dict = {"slide": name}
        for c, cname in enumerate(spec.names):
            row.update(
                {
                    f"{cname}_mean": float(res.mean[i, c]),
                    f"{cname}_std": float(res.std[i, c]),
                    f"{cname}_min": float(res.min[i, c]),
                    f"{cname}_max": float(res.max[i, c]),
                }
            )
        rows.append(row)
        if res.auroc is None:
            first = spec.names[-1] if len(spec.names) == 2 else spec.names[0]
            c = spec.names.index(first)
            typer.echo(
                f"{name}: p({first}) mean {res.mean[i, c]:.3f}, std {res.std[i, c]:.3f}, "
                f"min {res.min[i, c]:.3f}, max {res.max[i, c]:.3f}"
            )
    if out_csv is not None:
        _write_csv(out_csv, rows)
        typer.echo(f"spread: {out_csv}")


@app.command("few-shot")
def few_shot(
    model: str | None = typer.Option(
        None,
        help="A saved slide-text model folder, or a published slide model (prism, titan); or --slide-encoder.",
        show_default=False,
    ),
    slide_encoder: str | None = typer.Option(
        None,
        "--slide-encoder",
        help="Instead of --model: a slide encoder from `slidescope encoders` (mean, feather-uni2...); no prompts.",
        show_default=False,
    ),
    patient_level: bool = typer.Option(
        False,
        "--patient-level",
        help="Classify patients (the CSVs' patient column): each the mean of its slides' embeddings; "
        "--shots then counts patients.",
    ),
    train: str = typer.Option(..., help="CSV with slide and label: the labelled support slides."),
    test: str = typer.Option(..., help="CSV with slide (and optionally label): the slides to predict."),
    stores: str | None = typer.Option(
        None,
        "--stores",
        help="Store folder of the manifests' slides (required); a local path or an fsspec URL.",
    ),
    store_old: str | None = typer.Option(None, "--store", hidden=True, help="Deprecated name of --stores."),
    encoder: ModelEncoder = None,
    weights: ModelWeights = None,
    trust_remote_code: TrustRemoteCode = False,
    method: str = typer.Option("gda", help="linear, simpleshot, simpleshot-cosine, knn, gda or tip-adapter."),
    shots: int | None = typer.Option(None, help="Slides per class drawn from --train (default: all)."),
    val: str | None = typer.Option(
        None,
        help="CSV with slide and label: validation slides, used only to choose "
        "hyperparameters (default: leave-one-out on the support, else the papers' "
        "defaults).",
    ),
    base: str | None = typer.Option(
        None,
        help="CSV with slide: unlabelled slides whose mean SimpleShot's CL2N "
        "subtracts (default: the support's mean).",
    ),
    prompts: str | None = typer.Option(None, help="Prompts YAML: a zero-shot prior for gda / tip-adapter."),
    label_column: str = typer.Option("label", "--label-column", help="Column with the class name."),
    seed: int = typer.Option(0, help="Seed of the shot draw and the bootstrap."),
    out: str | None = typer.Option(None, help="Probabilities CSV (local)."),
) -> None:
    """Few-shot classification on slide embeddings; prints AUROC/accuracy with 95% CIs when --test has labels."""
    import numpy as np

    from ..errors import InvalidParameterError
    from ..vlm.api import few_shot as run_few_shot

    store = stores_folder(stores, store_old, "the manifests' slides' stores")
    train_csv, test_csv = local(train, "--train of few-shot"), local(test, "--test of few-shot")
    val_csv, base_csv = local(val, "--val of few-shot"), local(base, "--base of few-shot")
    out_csv = local(out, "--out of few-shot (the probabilities CSV)")
    train_paths, train_labels = _manifest_rows(train_csv, store, label_column)
    if any(lab is None for lab in train_labels):
        raise InvalidParameterError(f"{train_csv.name}: every support slide needs a {label_column!r}")
    csvs = [c for c in (train_csv, test_csv, val_csv, base_csv) if c is not None]
    patients = _patients_of(csvs, store) if patient_level else None
    if shots is not None:
        if shots < 1:
            raise InvalidParameterError(f"--shots must be >= 1, got {shots}")
        rng = np.random.default_rng(seed)
        keep: list[int] = []
        for lab in sorted(set(train_labels)):  # type: ignore[type-var]
            idx = [i for i, v in enumerate(train_labels) if v == lab]
            if patients is None:
                keep.extend(sorted(rng.choice(idx, min(shots, len(idx)), replace=False).tolist()))
                continue
            # --patient-level: draw patients; each brings all its support slides
            owner = {i: patients[location_name(train_paths[i]).removesuffix(".zarr")] for i in idx}
            units = sorted(set(owner.values()))
            drawn = set(rng.choice(units, min(shots, len(units)), replace=False).tolist())
            keep.extend(i for i in idx if owner[i] in drawn)
        train_paths = [train_paths[i] for i in keep]
        train_labels = [train_labels[i] for i in keep]
    test_paths, test_labels = _manifest_rows(test_csv, store, label_column)
    labelled = all(lab is not None for lab in test_labels)
    val_paths = val_labels = base_paths = None
    if val_csv is not None:
        val_paths, val_labels = _manifest_rows(val_csv, store, label_column)
        if any(lab is None for lab in val_labels):
            raise InvalidParameterError(f"{val_csv.name}: every validation slide needs a {label_column!r}")
    if base_csv is not None:
        base_paths, _ = _manifest_rows(base_csv, store, label_column)
    res = run_few_shot(
        train_paths,
        train_labels,
        test_paths,  # type: ignore[arg-type]
        model=model,
        slide_encoder=slide_encoder,
        patients=patients,
        encoder=encoder,
        method=method,
        classes=local(prompts, "--prompts of few-shot"),
        test_labels=test_labels if labelled else None,
        seed=seed,  # type: ignore[arg-type]
        val_stores=val_paths,
        val_labels=val_labels,
        base_stores=base_paths,  # type: ignore[arg-type]
        weights=local(weights, "--weights of few-shot"),
        trust_remote_code=trust_remote_code,
    )
    typer.echo(f"{method}: {len(train_paths)} support slides, {len(test_paths)} test slides")
    if patients is not None:
        typer.echo(f"patient level: {len(res.slides)} test patients (the mean of their slides' embeddings)")
    chosen = ", ".join(f"{k}={v:.4g}" for k, v in res.hyperparameters.items())
    typer.echo(f"hyperparameters: {res.tuning}" + (f" ({chosen})" if chosen else ""))
    for name, ci in res.metrics.items():
        typer.echo(f"{name}: {ci.estimate:.3f} (95% CI {ci.low:.3f}-{ci.high:.3f})")
    if out_csv is not None:
        _write_csv(out_csv, res.rows())
        typer.echo(f"probabilities: {out_csv}")
