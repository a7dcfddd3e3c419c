"""`slidescope info` and `slidescope tile`."""

from __future__ import annotations

import json
from pathlib import Path

from typing import Any

import typer

from ..options import TilingOptions, option_info
from . import app
from ._locations import local
from ._schema import help_text, schema_options

#: ``--slide-mpp`` of the commands that read slides without tiling them (import-h5)
SLIDE_MPP_HELP = help_text(option_info(TilingOptions, "slide_mpp"), None, None)


#: the options of the slide reader
_READING = ("backend", "slide_mpp", "force_slide_mpp")


@app.command()
@schema_options(TilingOptions, (*_READING, "qc_thresholds", "allow_darkfield"))
def info(
    slide: str = typer.Argument(..., help="Slide file (a local path or an fsspec URL)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    qc: bool = typer.Option(
        False, "--qc", help="Also the tile QC summary (224 px tiles at 0.5 µm/px: tissue, flags, focus)."
    ),
    **reading: Any,
) -> None:
    """Describe a slide: format, size, levels, mpp (and where it came from), magnification, images."""
    from ..wsi import open_slide
    from ..errors import MissingMppError

    thresholds = reading.pop("qc_thresholds")
    allow_darkfield = reading.pop("allow_darkfield")
    with open_slide(slide, **reading) as s:
        try:
            mpp, mpp_source = list(s.mpp), s.mpp_source
        except MissingMppError as err:
            mpp, mpp_source = None, f"missing: {err}"
        props = s.properties
        report = {
            "path": str(s.path),
            "backend": s.backend,
            "reader": s.reader,
            "format": s.vendor or "unknown",
            "dimensions": list(s.dimensions),
            "level_count": s.level_count,
            "level_dimensions": [list(d) for d in s.level_dimensions],
            "level_downsamples": [round(d, 4) for d in s.level_downsamples],
            "mpp": mpp,
            "mpp_source": mpp_source,
            "magnification": s.magnification,
            "magnification_source": s.magnification_source,
            "vendor": s.vendor,
            "associated_images": {k: list(v.shape[1::-1]) for k, v in s.associated_images.items()},
            "properties": len(props),
        }
        q = _qc_summary(s, thresholds, allow_darkfield) if qc else None
        if q is not None:
            report["qc"] = q
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"{report['path']}")
    typer.echo(f"  format        {report['format']} (read by {report['reader']})")
    typer.echo(f"  dimensions    {report['dimensions'][0]} x {report['dimensions'][1]} px")
    for i, (d, ds) in enumerate(zip(report["level_dimensions"], report["level_downsamples"], strict=True)):
        typer.echo(f"  level {i:<7} {d[0]} x {d[1]} px (downsample {ds:g})")
    if mpp:
        typer.echo(f"  mpp           {mpp[0]:.4f} x {mpp[1]:.4f} µm/px  [{mpp_source}]")
    else:
        typer.echo(f"  mpp           {mpp_source}")
    mag = report["magnification"]
    typer.echo(f"  magnification {f'{mag:.1f}x' if mag else 'unknown'}  [{report['magnification_source']}]")
    assoc = ", ".join(f"{k} ({v[0]}x{v[1]})" for k, v in report["associated_images"].items()) or "none"
    typer.echo(f"  associated    {assoc}")
    typer.echo(f"  properties    {report['properties']} metadata keys")
    if q is not None:
        flags = ", ".join(f"{k} {v:.1%}" for k, v in (q.get("flagged_fraction") or {}).items())
        fq = q.get("focus_quantiles") or {}
        tiles = f"{q.get('n_tiles', 0)} tiles of 224 px at 0.5 µm/px"
        typer.echo(f"  tissue        {q['tissue_mm2']} mm², {tiles}")
        typer.echo(f"  QC flagged    {flags or '-'} (any {q.get('flagged_any', 0):.1%})")
        typer.echo(f"  focus         {', '.join(f'{k} {v:g}' for k, v in fq.items()) or '-'}")


def _qc_summary(s: Any, thresholds: str | None = None, allow_darkfield: bool = False) -> dict[str, Any]:
    """The tile QC summary of an open slide (:func:`~slidescope.wsi.qc_summary`; 224 px at 0.5 µm/px), its
    checks with ``thresholds`` (``--qc-thresholds``) instead of the defaults where given."""
    from ..wsi import detect_tissue, make_tile_grid, qc_tiles

    mask = detect_tissue(s, allow_darkfield=allow_darkfield)
    grid = make_tile_grid(s, tile_size=224, mpp=0.5, mask=mask, allow_empty=True)
    return qc_tiles(s, grid, "flag", mask=mask, thresholds=thresholds).qc_summary  # type: ignore[attr-defined]


@app.command()
@schema_options(
    TilingOptions,
    (
        "mpp",
        "tile_size",
        "overlap",
        "min_tissue",
        "edge",
        "downscale",
        "pen",
        "tissue",
        "segmenter_weights",
        "allow_darkfield",
        *_READING,
    ),
    overrides={  # no encoder here to take the resolution from
        "mpp": {"default": 0.5, "help": "Target µm per pixel of the tiles (0.5 ~ 20x)."},
        "tile_size": {"default": 224, "help": "Tile side in pixels at --mpp."},
    },
)
def tile(
    slide: str = typer.Argument(..., help="Slide file (a local path or an fsspec URL)."),
    out: str | None = typer.Option(None, help="Local output folder (default: ./<slide name>.tiles)."),
    mask_mpp: float = typer.Option(8.0, "--mask-mpp", help="µm/px at which tissue is detected."),
    save_patches: str | None = typer.Option(
        None,
        "--save-patches",
        help="Also write every tile, as the encoder sees it, to this local folder, with an index "
        "<slide>.patches.csv (file, x, y, size_level0, mpp, tissue_fraction).",
    ),
    patch_format: str = typer.Option("png", help="png, jpeg, or tar (one tar of PNG files)."),
    jpeg_quality: int = typer.Option(90, help="JPEG quality of --patch-format jpeg."),
    **options: Any,
) -> None:
    """Find the tissue and tile it at an exact physical resolution.

    Writes grid.json (parameters), tiles.csv (index, x, y, tissue fraction; level-0 px, top-left),
    tissue.geojson (QuPath) and thumbnail.png (tissue and tiles drawn on the slide); with
    --save-patches, the tiles themselves.
    """
    import numpy as np
    from PIL import Image

    from ..wsi import detect_tissue, make_tile_grid, open_slide, render_tiling

    from ..wsi.patches import PATCH_FORMATS

    if save_patches is not None and patch_format not in PATCH_FORMATS:
        raise typer.BadParameter(
            f"--patch-format must be one of {', '.join(PATCH_FORMATS)}, got {patch_format!r}"
        )
    t = TilingOptions(**options)
    mpp, tile_size = (
        float(options["mpp"]),
        int(options["tile_size"]),
    )  # given: their defaults are numbers here
    with open_slide(slide, **{k: getattr(t, k) for k in _READING}) as s:
        if t.tissue == "classic":
            mask = detect_tissue(s, mpp=mask_mpp, pen=t.pen, allow_darkfield=t.allow_darkfield)
        else:  # a learned segmenter (at its own µm/px; torch is imported only here)
            from ..features.segmenters import find_tissue

            mask = find_tissue(s, t.tissue, weights=t.segmenter_weights)
        grid = make_tile_grid(
            s,
            tile_size=tile_size,
            mpp=mpp,
            overlap=t.overlap,
            min_tissue=t.min_tissue,
            mask=mask,
            edge=t.edge,
            downscale=t.downscale,
        )
        folder = local(out, "--out of tile (the tiles folder)") or Path.cwd() / f"{s.path.name}.tiles"
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "slide": str(s.path),
            "backend": s.backend,
            "reader": s.reader,
            "mpp_source": s.mpp_source,
            **grid.to_dict(),
            "tissue_area_mm2": mask.area_um2 / 1e6,
        }
        (folder / "grid.json").write_text(json.dumps(meta, indent=2))
        table = np.column_stack([np.arange(len(grid)), grid.coords, grid.tissue_fraction])
        np.savetxt(
            folder / "tiles.csv",
            table,
            fmt=["%d", "%d", "%d", "%.4f"],
            delimiter=",",
            header="index,x,y,tissue_fraction",
            comments="",
        )
        mask.save_geojson(folder / "tissue.geojson")
        Image.fromarray(render_tiling(s, grid, mask)).save(folder / "thumbnail.png")
        if save_patches is not None:
            from .._location import require_local
            from ..wsi.patches import save_patches as write_patches

            patches = require_local(save_patches, "--save-patches of tile (the patches folder)")
            index = write_patches(s, grid, patches, format=patch_format, quality=jpeg_quality)
    ex, ey = grid.extent
    typer.echo(
        f"{s.path.name}: {len(grid)} tiles of {tile_size} px at {grid.effective_mpp[0]:.4f} µm/px "
        f"(asked {mpp:g}; {ex}x{ey} level-0 px each, read at level {grid.level} as "
        f"{grid.read_size[0]} px), tissue {mask.area_um2 / 1e6:.2f} mm²"
    )
    typer.echo(f"wrote {folder}/grid.json, tiles.csv, tissue.geojson, thumbnail.png")
    if save_patches is not None:
        typer.echo(f"wrote {len(grid)} patches ({patch_format}), index {index}")
