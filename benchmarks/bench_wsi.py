"""Reading and tissue benchmark: our tile streaming against a plain OpenSlide loop and the raw JPEG
decode limit, measured in one run on the same grids.

    uv run python benchmarks/bench_wsi.py            # full: two 40k x 30k synthetic slides + CMU-1
    uv run python benchmarks/bench_wsi.py --quick    # 12k x 9k slides, for a smoke run

Slides (generated once into benchmarks/.cache/, reused afterwards):
  * 20x-native: 40,000 x 30,000 px at 0.5 µm/px, JPEG 256 px tiles, /4 pyramid;
  * 40x-native: 40,000 x 30,000 px at 0.25 µm/px, same layout;
  * CMU-1-Small-Region.svs from the shared test data (real Aperio file).

Cases, each on the tissue tiles of the same grid:
  * native: 224 px tiles at the scan's own mpp (no resize);
  * 40x -> 20x: 256 px at 0.5 µm/px from the 0.25 µm/px scan (read 512, resize once).

Columns: tiles/s for (a) a plain ``openslide.OpenSlide.read_region`` loop converting each tile to
an RGB array (and resizing with PIL in the 40x case), (b) the raw decode limit: imagecodecs decoding
the file tiles that the grid touches, no slide library, expressed per grid tile; (c) ours in-process
(``iter_tiles``); (d) ours through ``TileDataset`` + DataLoader with 1 and 2 worker processes.
Peak memory of the streaming process is reported too, and ``detect_tissue`` time against a plain
Otsu on an OpenSlide thumbnail at 1/16 and 1/64 scale.

Backends (``--backends``, also in ``run``): every reader's ``Slide.read_region`` loop over the same 224 px
tissue tiles, beside a plain OpenSlide loop on the SVS they come from. The synthetic slide and
CMU-1-Small-Region are read as SVS by OpenSlide, tiffslide and fastslide; CMU-1-Small-Region's level 0
(OpenSlide's decode) is also converted, losslessly, to the new backends' formats: CZI (pylibCZIrw's
writer, zstd, its <= 1800 px subblocks), OME-Zarr (NGFF 0.4, 256 px chunks, zarr's default codec), PNG,
and DICOM-WSI (wsidicomizer, which keeps the SVS's JPEG tiles). Each row gives the time to open the slide,
the first pass over the tiles (each read once, as a grid is read: compared with OpenSlide's one pass), the
best of 2 more passes (the reader's caches warm: Pillow has decoded the whole PNG, wsidicom and fastslide
cache tiles) and the largest pixel difference of its tiles from OpenSlide's.

``run(quick)`` returns the rows that ``benchmarks/run_all.py`` prints.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / ".cache"


def shared_slide() -> Path | None:
    env = os.environ.get("SLIDESCOPE_TEST_DATA")
    for base in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        p = base / "slides" / "CMU-1-Small-Region.svs"
        if p.exists():
            return p
    return None


def synthetic(width: int, height: int, mpp: float) -> Path:
    from slidescope.synthetic import make_synthetic_slide

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"synthetic_{width}x{height}_{mpp}.svs"
    if not path.exists():
        t = time.perf_counter()
        tmp = path.with_suffix(".partial.svs")
        make_synthetic_slide(tmp, width=width, height=height, mpp=mpp, seed=7, n_islands=4)
        tmp.rename(path)
        print(f"  generated {path.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return path


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def plain_openslide(path: Path, grid, indices: np.ndarray) -> float:
    import openslide
    from PIL import Image

    slide = openslide.OpenSlide(str(path))
    size = grid.read_size
    t = time.perf_counter()
    for i in indices:
        x, y = grid.coords[i]
        img = slide.read_region((int(x), int(y)), grid.level, size).convert("RGB")
        if size[0] != grid.tile_size:
            img = img.resize((grid.tile_size, grid.tile_size), Image.Resampling.BOX)
        np.asarray(img)
    return rate(len(indices), time.perf_counter() - t)


def raw_decode(path: Path, grid, indices: np.ndarray) -> tuple[float, int]:
    """Decode every file tile that the chosen grid tiles touch, once, with imagecodecs only.

    Returns grid tiles per second at that cost (so it compares with the other columns) and the
    number of file tiles decoded."""
    import imagecodecs
    import tifffile

    from slidescope.wsi import open_slide

    slide = open_slide(path)
    src = slide.tile_source()
    level = src._levels[grid.level]  # the same page mapping the reader uses
    ds = grid.level_downsample
    touched = set()
    for i in indices:
        x, y = grid.coords[i]
        lx, ly = int(x / ds[0]), int(y / ds[1])
        for ty in range(ly // level.th, (ly + grid.read_size[1] - 1) // level.th + 1):
            for tx in range(lx // level.tw, (lx + grid.read_size[0] - 1) // level.tw + 1):
                touched.add(ty * level.ntx + tx)
    with tifffile.TiffFile(str(path)) as tif:
        fh = tif.filehandle
        blobs = []
        for index in sorted(touched):
            fh.seek(int(level.offsets[index]))
            blobs.append(fh.read(int(level.counts[index])))
    tables = level.jpegtables
    t = time.perf_counter()
    for blob in blobs:
        data = imagecodecs.jpeg_decode(blob, tables=tables) if tables else imagecodecs.jpeg_decode(blob)
        assert data.shape[0] == level.th
    seconds = time.perf_counter() - t
    return rate(len(indices), seconds), len(blobs)


def ours_inprocess(path: Path, grid, indices: np.ndarray) -> float:
    from slidescope.wsi import iter_tiles, open_slide

    slide = open_slide(path)
    t = time.perf_counter()
    n = sum(1 for _ in iter_tiles(slide, grid, indices=indices))
    return rate(n, time.perf_counter() - t)


def ours_loader(path: Path, grid, indices: np.ndarray, workers: int) -> float:
    from slidescope.wsi import TileDataset, open_slide

    sub = grid.subset(indices)
    ds = TileDataset(open_slide(path), sub)
    batch = 32
    loader = ds.loader(batch_size=batch, num_workers=workers)
    it = iter(loader)
    if len(sub) > 4 * batch * workers:  # worker start-up is not throughput: time from the first batch
        next(it)
    t = time.perf_counter()
    n = sum(len(b["index"]) for b in it)
    return rate(n, time.perf_counter() - t)


def tissue_times(path: Path) -> tuple[float, float, float, int]:
    import openslide
    from skimage.color import rgb2gray
    from skimage.filters import threshold_otsu

    from slidescope.wsi import detect_tissue, open_slide

    slide = open_slide(path)
    detect_tissue(slide)  # first call pays one-time imports (scipy.ndimage...), not detection
    t = time.perf_counter()
    mask = detect_tissue(slide)
    ours = time.perf_counter() - t
    base = []
    for scale in (16, 64):
        o = openslide.OpenSlide(str(path))
        w, h = o.dimensions
        t = time.perf_counter()
        thumb = np.asarray(o.get_thumbnail((w // scale, h // scale)).convert("RGB"))
        grey = rgb2gray(thumb)
        _ = grey < threshold_otsu(grey)
        base.append(time.perf_counter() - t)
    return ours, base[0], base[1], int(mask.mask.sum())


def _cmu_conversions(cmu: Path) -> list[tuple[str, Path, str]]:
    """CMU-1-Small-Region's level 0 written as CZI, OME-Zarr, PNG and DICOM-WSI (once, into the cache)."""
    import openslide
    from PIL import Image

    out = CACHE / "formats"
    out.mkdir(parents=True, exist_ok=True)
    with openslide.OpenSlide(str(cmu)) as o:
        rgb = np.asarray(o.read_region((0, 0), 0, o.dimensions).convert("RGB"))
        mpp = float(o.properties["openslide.mpp-x"])
    made: list[tuple[str, Path, str]] = []
    czi = out / "cmu.czi"
    try:
        from pylibCZIrw import czi as czi_io

        if not czi.exists():
            with czi_io.create_czi(str(czi), exist_ok=True, compression_options="zstd0:ExplicitLevel=1") as w:
                w.write(np.ascontiguousarray(rgb[..., ::-1]))  # libCZI's Bgr24
                w.write_metadata(document_name="cmu", scale_x=mpp * 1e-6, scale_y=mpp * 1e-6)
        made.append(("CZI (zstd)", czi, "czi"))
    except ImportError:
        print("  pylibCZIrw not installed: no CZI row", file=sys.stderr)
    zarr_path = out / "cmu.ome.zarr"
    if not zarr_path.exists():
        import zarr

        group = zarr.open_group(str(zarr_path), mode="w", zarr_format=2)
        group.create_array("0", data=np.moveaxis(rgb, 2, 0).copy(), chunks=(3, 256, 256))
        axes = [{"name": "c", "type": "channel"}] + [
            {"name": a, "type": "space", "unit": "micrometer"} for a in ("y", "x")
        ]
        scale = [{"type": "scale", "scale": [1, mpp, mpp]}]
        group.attrs["multiscales"] = [
            {"version": "0.4", "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": scale}]}
        ]
    made.append(("OME-Zarr (NGFF 0.4)", zarr_path, "ome-zarr"))
    png = out / "cmu.png"
    if not png.exists():
        Image.fromarray(rgb).save(png)
    made.append(("PNG", png, "pil"))
    dicom = out / "cmu-dicom"
    try:
        if not dicom.exists():
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from wsidicomizer import WsiDicomizer

                WsiDicomizer.convert(cmu, dicom, workers=1)
        made.append(("DICOM-WSI (wsidicomizer, JPEG kept)", dicom, "wsidicom"))
    except ImportError:
        print("  wsidicomizer not installed: no DICOM row", file=sys.stderr)
    return made


def _backend_loop(
    path: Path, backend: str, coords: np.ndarray, size: int, **kw
) -> tuple[float, float, float, list]:
    """``Slide.read_region`` through one backend: seconds to open the slide, tiles/s of the first pass
    (each tile read once, as a grid is read) and of the best of 2 more (the reader's caches warm), and
    the tiles of the last pass."""
    from slidescope.wsi import open_slide

    rates, tiles = [], []
    t = time.perf_counter()
    with open_slide(path, backend=backend, **kw) as slide:
        opened = time.perf_counter() - t
        for _ in range(3):
            t = time.perf_counter()
            tiles = [slide.read_region((int(x), int(y)), 0, (size, size)) for x, y in coords]
            rates.append(rate(len(coords), time.perf_counter() - t))
    return opened, rates[0], max(rates[1:]), tiles


def backend_rows(quick: bool = True, max_tiles: int = 300) -> list[dict]:
    """Per-backend reading rows: ``{file, backend, tiles, open_s, ours, warm, openslide, max_diff}``: seconds
    to open, tiles/s of the first pass (``ours``) and with warm caches, the plain OpenSlide loop's tiles/s."""
    import openslide

    from slidescope.wsi import detect_tissue, make_tile_grid, open_slide

    w, h = (12000, 9000) if quick else (40000, 30000)
    sources = [(f"synthetic SVS {w // 1000}k px", synthetic(w, h, 0.5))]
    cmu = shared_slide()
    if cmu:
        sources.append(("CMU-1-Small-Region.svs", cmu))
    rows = []
    for name, svs in sources:
        with open_slide(svs) as slide:
            grid = make_tile_grid(slide, tile_size=224, mpp=slide.mpp[0], mask=detect_tissue(slide))
        coords = grid.coords[: min(len(grid), max_tiles)]
        with openslide.OpenSlide(str(svs)) as o:
            t = time.perf_counter()
            reference = [
                np.asarray(o.read_region((int(x), int(y)), 0, (224, 224)).convert("RGB")) for x, y in coords
            ]
            plain = rate(len(coords), time.perf_counter() - t)
        files = [(f"{name} (SVS)", svs, b) for b in ("openslide", "tiffslide", "fastslide")]
        if svs == cmu:
            files += [(f"CMU-1-Small-Region as {fmt}", p, b) for fmt, p, b in _cmu_conversions(cmu)]
        for label, path, backend in files:
            try:
                opened, ours, warm, tiles = _backend_loop(path, backend, coords, 224, slide_mpp=0.499)
            except Exception as err:  # noqa: BLE001 - an optional reader missing: say so, go on
                print(f"  {label} / {backend}: {type(err).__name__}: {err}", file=sys.stderr)
                continue
            diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(tiles, reference))
            rows.append(
                {
                    "file": label,
                    "backend": backend,
                    "tiles": len(coords),
                    "open_s": opened,
                    "ours": ours,
                    "warm": warm,
                    "openslide": plain,
                    "max_diff": diff,
                }
            )
    return rows


def print_backend_rows(rows: list[dict]) -> None:
    print()
    print("Reading through each backend: Slide.read_region, 224 px tissue tiles, tiles/s")
    print(
        "| file | backend | tiles | open (s) | first pass | warm (best of 2 more) | plain OpenSlide loop "
        "on the SVS | first pass / OpenSlide | max abs diff vs OpenSlide |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['file']} | {r['backend']} | {r['tiles']} | {r['open_s']:.2f} | {r['ours']:.0f} | "
            f"{r['warm']:.0f} | {r['openslide']:.0f} | {r['ours'] / r['openslide']:.2f}x | {r['max_diff']} |"
        )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(quick: bool = False, *, max_tiles: int | None = None) -> list[dict]:
    """Rows ``{stage, ours, baseline, unit, ratio}`` for ``run_all.py`` (ratio > 1: ours faster).

    Reading: ``iter_tiles`` in one process against a plain OpenSlide ``read_region`` loop (also one
    process), on the tissue tiles of the 20x synthetic slide (native 224 px), of the 40x one resized to
    256 px at 0.5 µm/px, and of CMU-1-Small-Region when present. Tissue: ``detect_tissue`` (an 8 µm/px
    mask, 1/16 of this slide) against Otsu on an OpenSlide thumbnail at 1/16 scale (which does much less:
    no pen marks, holes or area filter). Then one row per backend and file of :func:`backend_rows`.
    Reading rates are the best of 2 interleaved runs of each.
    """
    from slidescope.wsi import detect_tissue, make_tile_grid, open_slide

    w, h = (12000, 9000) if quick else (40000, 30000)
    n = max_tiles or (1000 if quick else 3000)
    s20, s40 = synthetic(w, h, 0.5), synthetic(w, h, 0.25)
    cases = [
        (f"read tiles: 20x scan, 224 px native ({w // 1000}k px slide)", s20, 0.5, 224),
        ("read tiles: 40x scan -> 256 px at 0.5 µm/px (resize)", s40, 0.5, 256),
    ]
    cmu = shared_slide()
    if cmu:
        cases.append(("read tiles: CMU-1-Small-Region (real SVS), 224 px", cmu, 0.499, 224))
    rows = []
    for label, path, mpp, size in cases:
        slide = open_slide(path)
        grid = make_tile_grid(slide, tile_size=size, mpp=mpp, mask=detect_tissue(slide))
        indices = np.arange(min(len(grid), n))
        plain, ours = 0.0, 0.0
        for _ in range(2):  # this VM's speed drifts: interleave, keep the best of each
            plain = max(plain, plain_openslide(path, grid, indices))
            ours = max(ours, ours_inprocess(path, grid, indices))
        rows.append(
            {
                "stage": f"{label}, {len(indices)} tiles",
                "ours": ours,
                "baseline": plain,
                "unit": "tiles/s",
                "ratio": ours / plain,
            }
        )
    for r in backend_rows(quick, 300):
        rows.append(
            {
                "stage": f"read via --backend {r['backend']}: {r['file']}, {r['tiles']} tiles "
                f"(max abs diff vs OpenSlide {r['max_diff']})",
                "ours": r["ours"],
                "baseline": r["openslide"],
                "unit": "tiles/s",
                "ratio": r["ours"] / r["openslide"],
            }
        )
    ours_t, b16, _, _ = tissue_times(s20)
    rows.append(
        {
            "stage": f"tissue: detect_tissue (8 µm/px mask) vs Otsu on a 1/16 thumbnail "
            f"({w // 1000}k px slide)",
            "ours": ours_t,
            "baseline": b16,
            "unit": "s",
            "ratio": b16 / ours_t,
        }
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="12k x 9k slides instead of 40k x 30k")
    ap.add_argument("--max-tiles", type=int, default=3000, help="tiles per case (first N of the tissue grid)")
    ap.add_argument("--backends", action="store_true", help="only the per-backend reading table")
    args = ap.parse_args()
    if args.backends:
        print_backend_rows(backend_rows(args.quick, min(args.max_tiles, 300)))
        return

    from slidescope.wsi import detect_tissue, make_tile_grid, open_slide

    w, h = (12000, 9000) if args.quick else (40000, 30000)
    print(f"building slides ({w} x {h})...", file=sys.stderr)
    slides = [
        ("synthetic 20x (0.5 µm/px)", synthetic(w, h, 0.5), 0.5, 224),
        ("synthetic 40x (0.25 µm/px)", synthetic(w, h, 0.25), 0.25, 224),
    ]
    cmu = shared_slide()
    if cmu:
        slides.append(("CMU-1-Small-Region (real SVS)", cmu, 0.499, 224))
    cases = []
    for name, path, native_mpp, size in slides:
        cases.append((f"{name}, native {size} px", path, native_mpp, size))
    cases.append((f"{slides[1][0]}, 40x->20x 256 px", slides[1][1], 0.5, 256))

    rows = []
    for label, path, mpp, size in cases:
        slide = open_slide(path)
        mask = detect_tissue(slide)
        grid = make_tile_grid(slide, tile_size=size, mpp=mpp, mask=mask)
        indices = np.arange(min(len(grid), args.max_tiles))
        print(f"{label}: {len(grid)} tissue tiles, timing {len(indices)}", file=sys.stderr)
        plain = plain_openslide(path, grid, indices)
        raw, nfile = raw_decode(path, grid, indices)
        ours = ours_inprocess(path, grid, indices)
        w1 = ours_loader(path, grid, indices, 1)
        w2 = ours_loader(path, grid, indices, 2)
        rows.append((label, len(indices), nfile, plain, raw, ours, w1, w2))

    print()
    print(f"Tile reading, tiles/s (machine: {os.cpu_count()} cores; peak RSS {peak_rss_mb():.0f} MB)")
    head = "| case | tiles | file tiles decoded | openslide loop | raw decode limit | ours (in-process) | ours 1 worker | ours 2 workers | ours in-process / openslide | best ours / openslide | ours in-process / raw | 2w / 1w |"
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, n, nfile, plain, raw, ours, w1, w2 in rows:
        best = max(ours, w1, w2)
        print(
            f"| {label} | {n} | {nfile} | {plain:.0f} | {raw:.0f} | {ours:.0f} | {w1:.0f} | {w2:.0f} | "
            f"{ours / plain:.2f}x | {best / plain:.2f}x | {ours / raw:.0%} | {w2 / w1:.2f}x |"
        )

    print()
    print("Tissue detection, seconds")
    print(
        "| slide | detect_tissue (ours) | Otsu on openslide thumbnail 1/16 | Otsu 1/64 | ours / 1/64 Otsu |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, path, _, _ in slides:
        ours, b16, b64, _ = tissue_times(path)
        print(f"| {name} | {ours:.2f} | {b16:.2f} | {b64:.2f} | {ours / b64:.2f}x |")


if __name__ == "__main__":
    main()
