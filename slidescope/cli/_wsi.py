"""`slidescope info` and `slidescope tile`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..wsi import DEFAULT_MIN_TISSUE
from . import app
from ._locations import local

PEN_HELP = (
    "Pen-mark removal in tissue detection: auto (on, but off on slides that look like IHC, whose blue "
    "counterstain would be taken for ink), on or off."
)
SLIDE_MPP_HELP = (
    "Level-0 µm/px of the scan, filled in for slides whose metadata lacks it (a file's own wins)."
)
FORCE_SLIDE_MPP_HELP = "Level-0 µm/px imposed on the slide(s), overriding the metadata."


@app.command()
def info(
    slide: str = typer.Argument(..., help="Slide file (a local path or an fsspec URL)."),
    backend: str = typer.Option("auto", help="auto, openslide or tiffslide."),
    slide_mpp: float | None = typer.Option(None, "--slide-mpp", help=SLIDE_MPP_HELP),
    force_slide_mpp: float | None = typer.Option(None, "--force-slide-mpp", help=FORCE_SLIDE_MPP_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Describe a slide: format, size, levels, mpp (and where it came from), magnification, images."""
    from ..wsi import open_slide
    from ..errors import MissingMppError

    with open_slide(slide, backend=backend, force_slide_mpp=force_slide_mpp, slide_mpp=slide_mpp) as s:
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


@app.command()
def tile(
    slide: str = typer.Argument(..., help="Slide file (a local path or an fsspec URL)."),
    mpp: float = typer.Option(0.5, help="Target µm per pixel of the tiles (0.5 ~ 20x)."),
    tile_size: int = typer.Option(224, "--tile-size", help="Tile side in pixels at --mpp."),
    overlap: int = typer.Option(0, help="Pixels shared by neighbouring tiles, at --mpp."),
    min_tissue: float = typer.Option(
        DEFAULT_MIN_TISSUE, "--min-tissue", help="Keep tiles with at least this tissue fraction."
    ),
    out: str | None = typer.Option(None, help="Local output folder (default: ./<slide name>.tiles)."),
    backend: str = typer.Option("auto", help="auto, openslide or tiffslide."),
    slide_mpp: float | None = typer.Option(None, "--slide-mpp", help=SLIDE_MPP_HELP),
    force_slide_mpp: float | None = typer.Option(None, "--force-slide-mpp", help=FORCE_SLIDE_MPP_HELP),
    mask_mpp: float = typer.Option(8.0, "--mask-mpp", help="µm/px at which tissue is detected."),
    pen: str = typer.Option("auto", "--pen", help=PEN_HELP),
) -> None:
    """Find the tissue and tile it at an exact physical resolution.

    Writes grid.json (parameters), tiles.csv (index, x, y, tissue fraction; level-0 px, top-left),
    tissue.geojson (QuPath) and thumbnail.png (tissue and tiles drawn on the slide).
    """
    import numpy as np
    from PIL import Image

    from ..wsi import detect_tissue, make_tile_grid, open_slide
    from ..wsi._render import render_tiling

    with open_slide(slide, backend=backend, force_slide_mpp=force_slide_mpp, slide_mpp=slide_mpp) as s:
        mask = detect_tissue(s, mpp=mask_mpp, pen=pen)
        grid = make_tile_grid(
            s, tile_size=tile_size, mpp=mpp, overlap=overlap, min_tissue=min_tissue, mask=mask
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
    ex, ey = grid.extent
    typer.echo(
        f"{s.path.name}: {len(grid)} tiles of {tile_size} px at {grid.effective_mpp[0]:.4f} µm/px "
        f"(asked {mpp:g}; {ex}x{ey} level-0 px each, read at level {grid.level} as "
        f"{grid.read_size[0]} px), tissue {mask.area_um2 / 1e6:.2f} mm²"
    )
    typer.echo(f"wrote {folder}/grid.json, tiles.csv, tissue.geojson, thumbnail.png")
