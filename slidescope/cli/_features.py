"""`slidescope extract`, `export-h5`, `import-h5`, `encoders`."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path

from typing import Any

import typer

from .._location import Location, join, location_name, write_text
from ..options import DEFAULT_OFFLINE_ENCODER, SlideOptions, TilingOptions, option_info, options_of
from . import app
from ._executor import DASK_WORKERS, EXECUTOR, SCHEDULER, chosen_executor
from ._common import StoreOpt, StoresArg, StoresOpt
from ._locations import local, location, renamed, store_list
from ._schema import batch_size_option, schema_options
from ._wsi import SLIDE_MPP_HELP

#: exit code when some slides of a batch failed (the others are done)
EXIT_SOME_FAILED = 1


def write_report(out: Location, command: str, results: list, extra: dict | None = None) -> Location:
    """A per-run JSON report next to the outputs (``OUT/reports``; OUT a local folder or a URL): per-slide
    status, timings, errors."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = join(out, "reports")
    rows = [r.to_dict() for r in results]
    report = {
        "command": command,
        "argv": sys.argv,
        "finished": _dt.datetime.now().isoformat(timespec="seconds"),
        "counts": {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})},
        **(extra or {}),
        "slides": rows,
    }
    path = write_text(join(folder, f"{command}-{stamp}.json"), json.dumps(report, indent=2))
    write_text(join(folder, f"{command}-latest.json"), json.dumps(report, indent=2))
    return path


#: the options `extract` shares with the schema: every tiling and embedding option
_EXTRACT_OPTIONS = tuple(f.name for f in options_of(SlideOptions))


@app.command()
@schema_options(SlideOptions, _EXTRACT_OPTIONS, overrides={"encoder": {"default": DEFAULT_OFFLINE_ENCODER}})
def extract(
    slides: list[str] = typer.Argument(..., help="Slide files, folders, glob patterns or a CSV manifest."),
    stores: str | None = typer.Option(
        None,
        "--stores",
        help="Store folder: one <slide>.zarr per slide; a local "
        "path or an fsspec URL (s3://bucket/stores). Default: ./stores.",
    ),
    out_old: str | None = typer.Option(None, "--out", hidden=True, help="Deprecated name of --stores."),
    devices: str | None = typer.Option(None, help="Several devices, one process each: 'cuda:0,cuda:1'."),
    coords: str | None = typer.Option(
        None,
        "--coords",
        help="Embed the tiles another tool chose instead of the tissue: a TRIDENT/CLAM h5 or a CSV (x, y level-0 "
        "[, size_level0]) for one slide, or a folder with <slide>.h5 / <slide>_patches.h5 / <slide>.csv.",
    ),
    executor: str | None = EXECUTOR,
    scheduler: str | None = SCHEDULER,
    dask_workers: int | None = DASK_WORKERS,
    **options: Any,
) -> None:
    """Embed the tissue tiles of slides into Zarr stores (cached, resumable; bad slides are reported)."""
    from ..errors import InvalidParameterError
    from ..wsi import expand_slides, manifest_slide_mpp

    for name in ("pen", "tissue", "qc", "qc_model"):  # a usage error, not one failure per slide
        modes = option_info(TilingOptions, name).allowed() or ()
        if options[name] not in modes:
            raise InvalidParameterError(f"--{name} must be one of {', '.join(modes)}, got {options[name]!r}")
    from ..wsi import check_qc_thresholds

    check_qc_thresholds(options["qc_thresholds"])
    out = location(renamed(stores, out_old, new_name="--stores", old_name="--out") or "stores")
    assert out is not None  # the location of a name
    paths = expand_slides(slides)
    per_slide_mpp = manifest_slide_mpp(slides)  # a manifest's slide_mpp (or mpp) column
    if per_slide_mpp:
        options["slide_mpps"] = per_slide_mpp
    device_list = [d.strip() for d in devices.split(",")] if devices else None
    options["batch_size"] = batch_size_option(options["batch_size"])
    runner = chosen_executor(executor, scheduler, dask_workers)
    if coords is not None:
        if runner is not None:
            raise typer.BadParameter("--coords is for the local executor (not --executor dask)")
        coords_path = local(coords, "--coords of extract (a coordinates file or folder)")
        if coords_path is not None and coords_path.is_file() and len(paths) > 1:
            raise typer.BadParameter(
                f"--coords {coords} is one file for {len(paths)} slides; give a folder of <slide>.h5 / .csv files"
            )
        options["coords"] = coords_path
    if runner is not None:
        if device_list:
            raise typer.BadParameter(
                "--devices is for the local executor; with --executor dask each worker "
                "takes one GPU (--device cuda)"
            )
        results = _extract_on_executor(runner, paths, out, **options)
        _finish_extract(out, options["encoder"], results, digest=None)
        return
    results, digest = _extract_here(paths, out, device_list, **options)
    _finish_extract(out, options["encoder"], results, digest=digest)


def _extract_here(
    paths: list, out: Location, device_list: list[str] | None, **options: Any
) -> tuple[list, str | None]:
    """The slides in this process (or one process per device of ``device_list``); results and weights digest."""
    from ..features import create_encoder
    from ..features.extract import extract_slides

    encoder, device, precision = options.pop("encoder"), options.pop("device"), options.pop("precision")
    if device_list and len(device_list) > 1:
        if precision:
            raise typer.BadParameter(
                "--precision is not supported with --devices yet; the model default is used"
            )
        enc, digest = encoder, None  # each device process builds its own
    else:
        enc = create_encoder(
            encoder, weights=options["weights"], device=(device_list or [device])[0], precision=precision
        )
        digest = enc.weights_digest
    return extract_slides(paths, enc, store=out, devices=device_list, **options), digest


def _extract_on_executor(executor, paths: list, out: Location, **options) -> list:
    """Each slide as one :func:`~slidescope.features.extract.extract_job` task; results in input order."""
    from ..features.extract import ExtractionResult, ExtractJob, extract_job

    if "slide_mpps" in options:  # the job is frozen and hashable: (slide, µm/px) pairs
        options["slide_mpps"] = tuple(sorted(options["slide_mpps"].items()))
    job = ExtractJob(out=str(out), **options)
    order = {str(p): i for i, p in enumerate(paths)}

    def failed(slide: str, err: BaseException) -> ExtractionResult:
        return ExtractionResult(slide=slide, status="failed", error=str(err), error_type=type(err).__name__)

    results = list(executor.map(extract_job, list(order), job, failed=failed))
    return sorted(results, key=lambda r: order.get(r.slide, len(order)))


def _finish_extract(out: Location, encoder: str, results: list, *, digest: str | None) -> None:
    report = write_report(out, "extract", results, {"encoder": encoder, "weights_digest": digest})
    from ..wsi import dicom_series_name

    failed = [r for r in results if r.status in ("failed", "claimed")]
    for r in results:
        line = f"{dicom_series_name(r.slide) or Path(r.slide).name}: {r.status}"  # a DICOM series: its folder
        if r.status in ("done", "reused", "empty"):
            line += f", {r.n_tiles} tiles" + (f", {r.tiles_per_s:.0f} tiles/s" if r.computed else "")
        else:
            line += f" ({r.error_type}: {r.error})"
        typer.echo(line)
    typer.echo(f"{len(results) - len(failed)} of {len(results)} slides ok; report: {report}")
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command("export-h5")
def export_h5_cmd(
    stores: StoresArg = None,
    stores_opt: StoresOpt = None,
    store: StoreOpt = None,
    encoder: str = typer.Option(..., help="Which embeddings to export."),
    out: str = typer.Option("h5", help="Local output folder for <slide>.h5 files."),
    flavor: str = typer.Option(
        "trident",
        help="Attributes for whose reader: 'trident' (patch_size at target_magnification; CLAM's patch_level "
        "too where a pyramid level matches) or 'clam' (patch_size level-0 px at patch_level 0).",
    ),
) -> None:
    """Export embeddings as TRIDENT/CLAM h5 files (features, coords + patch_size_level0...)."""
    from .._location import expand_stores
    from ..features import export_h5

    folder = local(out, "--out of export-h5 (the h5 folder)")
    for p in expand_stores(store_list(stores, stores_opt, store)):
        name = location_name(p)
        target = export_h5(p, encoder, folder / (name[: -len(".zarr")] + ".h5"), flavor=flavor)
        typer.echo(f"{name} -> {target}")


@app.command("export-qc")
def export_qc_cmd(
    stores: StoresArg = None,
    stores_opt: StoresOpt = None,
    store: StoreOpt = None,
    out: str = typer.Option("qc", help="Local output folder for <slide>.qc.geojson files."),
    all_tiles: bool = typer.Option(False, "--all-tiles", help="Every tile, not only the flagged ones."),
) -> None:
    """Export the tile QC of stores (extracted with --qc) as QuPath GeoJSON: one square per flagged tile,
    classified by its first check, with its measures and flags as measurements."""
    import json

    from .._location import expand_stores
    from ..features.store import open_qc_store, qc_geojson

    folder = local(out, "--out of export-qc (the GeoJSON folder)")
    assert folder is not None  # a local folder of a name
    folder.mkdir(parents=True, exist_ok=True)
    for p in expand_stores(store_list(stores, stores_opt, store)):
        name = location_name(p)
        collection = qc_geojson(open_qc_store(p), flagged_only=not all_tiles)
        target = folder / (name[: -len(".zarr")] + ".qc.geojson")
        target.write_text(json.dumps(collection))
        typer.echo(f"{name} -> {target} ({len(collection['features'])} tiles)")


@app.command("import-h5")
def import_h5_cmd(
    files: list[str] = typer.Argument(..., help="TRIDENT/CLAM h5 feature files (local)."),
    encoder: str = typer.Option(..., help="Name of the encoder that made the features (e.g. uni)."),
    stores: str | None = typer.Option(
        None, "--stores", help="Store folder to write into; a local path or an fsspec URL. Default: ./stores."
    ),
    out_old: str | None = typer.Option(None, "--out", hidden=True, help="Deprecated name of --stores."),
    slides: str | None = typer.Option(
        None, help="Local folder with the slides (matched by name) for provenance."
    ),
    slide_mpp: float | None = typer.Option(None, "--slide-mpp", help=SLIDE_MPP_HELP),
    patch_size_level0: int | None = typer.Option(
        None, help="Level-0 px per tile, for files that do not say it (CLAM feature files)."
    ),
    patch_size: int | None = typer.Option(
        None, help="Px per tile handed to the encoder; with --patch-mpp, the footprint for files without one."
    ),
    patch_mpp: float | None = typer.Option(None, help="µm/px of --patch-size (e.g. 0.5 for 20x)."),
) -> None:
    """Import TRIDENT/CLAM h5 features into slidescope stores (a file without tiles gives an empty store;
    a file that cannot be imported is reported and the others go on; exit status 1 then)."""
    from ..errors import SlidescopeError
    from .._location import require_local
    from ..features import import_h5

    out = location(renamed(stores, out_old, new_name="--stores", old_name="--out") or "stores")
    slide_folder = local(slides, "--slides of import-h5 (the slides folder)")
    failed = 0
    for name in files:
        f = require_local(name, "an h5 file of import-h5")
        slide = None
        if slide_folder is not None:
            matches = [p for p in slide_folder.iterdir() if p.is_file() and p.name.split(".")[0] == f.stem]
            slide = matches[0] if matches else None
        try:
            target = import_h5(
                f,
                encoder=encoder,
                store=out,
                slide=slide,
                slide_mpp=slide_mpp,
                patch_size_level0=patch_size_level0,
                patch_size=patch_size,
                patch_mpp=patch_mpp,
            )
        except SlidescopeError as err:
            failed += 1
            typer.echo(f"{f.name}: failed ({type(err).__name__}: {err})", err=True)
            continue
        typer.echo(f"{f.name} -> {target}")
    if failed:
        typer.echo(f"{len(files) - failed} of {len(files)} files imported", err=True)
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command()
def encoders() -> None:
    """List the registered patch encoders (dims, tile size, mpp, licence) and slide encoders (the patch encoder
    and tiling each needs, width, size, whether its layout was derived from the publisher's code, licence)."""
    from ..features import get_encoder_config, list_encoders

    typer.echo(f"patch encoders ({len(list_encoders())}):")
    typer.echo(f"{'name':<18} {'dim':>7}  {'tiling':<22} {'layout':<8} licence")
    for name in list_encoders():
        c = get_encoder_config(name)
        gated = " (gated)" if c.gated else ""
        tiling = f"{c.tile_size} px @ {c.mpp:g} µm/px"
        typer.echo(f"{name:<18} {c.embed_dim:>5}-d  {tiling:<22} {_layout_word(c):<8} {c.license}{gated}")
    from ..features.slide_encoders import describe, get_slide_encoder_config, list_slide_encoders

    typer.echo("\nslide encoders (tile embeddings -> slide embedding; `slidescope embed-slides`):")
    typer.echo(
        f"{'name':<19} {'patch encoder':<17} {'tiling':<20} {'dim':>7} {'params':>7}  layout    licence"
    )
    for name in list_slide_encoders():
        r = describe(get_slide_encoder_config(name))
        typer.echo(
            f"{r['name']:<19} {r['patch']:<17} {r['geometry']:<20} {r['dim']!s:>7} {r['params']:>7}  "
            f"{r['layout']:<9} {r['licence']}"
        )
    typer.echo(
        "\nlayout: ref-run = the state-dict keys and shapes equal what the publisher's or TRIDENT's own code "
        "builds (run outside slidescope, tests/golden); derived = from the model card and code, not run; read = "
        "read from the published checkpoint. `slidescope.features.get_encoder_config(name).layout_source` says "
        "which source."
    )
    from .._plugins import plugin_failures

    for group in ("encoders", "slide_encoders"):
        for plugin, why in plugin_failures(group).items():
            typer.secho(f"plugin {plugin!r} failed to load: {why}", fg=typer.colors.YELLOW, err=True)


def _layout_word(c: Any) -> str:
    """How a patch encoder's layout is known, in one word (see the legend ``encoders`` prints)."""
    if c.weight_free:
        return "-"
    source = str(c.layout_source)
    if source.startswith("read"):
        return "read"
    return "ref-run" if source and not source.startswith("derived") else "derived"


@app.command("embed-slides")
def embed_slides_command(
    slide_stores: StoresArg = None,
    slide_encoder: str = typer.Option(
        ..., "--slide-encoder", help="A slide encoder from `slidescope encoders` (feather-uni2, mean...)."
    ),
    encoder: str | None = typer.Option(
        None,
        help="The stores' tile embeddings (default: the one the slide encoder was trained on).",
        show_default=False,
    ),
    weights: str | None = typer.Option(
        None, help="The slide encoder's weights file or folder (default: the hub).", show_default=False
    ),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Allow PRISM's / TITAN's own model code to run; required for them."
    ),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1..."),
    out: str | None = typer.Option(
        None,
        help="Also write the embeddings to this CSV (slide, then one column per dim).",
        show_default=False,
    ),
    stores: StoresOpt = None,
    store: StoreOpt = None,
) -> None:
    """Slide embeddings from the stores' tile embeddings, written into each store (slide_embeddings/<name>)."""
    import numpy as np

    from ..features.slide_encoders import embed_slides

    paths = store_list(slide_stores, stores, store)
    res = embed_slides(
        [str(p) for p in paths],
        slide_encoder,
        encoder=encoder,
        weights=weights,
        device=device,
        trust_remote_code=trust_remote_code,
    )
    if out is not None:
        names = [location_name(p).removesuffix(".zarr") for p in res.paths]
        header = "slide," + ",".join(f"d{i}" for i in range(res.embeddings.shape[1]))
        lines = [
            f"{n}," + ",".join(np.format_float_positional(v, 7) for v in row)
            for n, row in zip(names, res.embeddings, strict=True)
        ]
        write_text(out, "\n".join([header, *lines]) + "\n")
    typer.echo(
        f"{len(res.paths)} slide embeddings ({res.embeddings.shape[1]}-d) written as {res.name!r}", err=True
    )
    for path, why in res.failed.items():
        typer.secho(f"{location_name(path)}: {why}", fg=typer.colors.YELLOW, err=True)
    if res.failed:
        raise typer.Exit(EXIT_SOME_FAILED)
