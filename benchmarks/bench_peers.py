"""Tile reading against the fastest peer readers, and reader processes against decode threads.

    uv run --with cucim python benchmarks/bench_peers.py           # full: 40k x 30k slides + CMU-1-Small-Region
    uv run --with cucim python benchmarks/bench_peers.py --quick   # 12k x 9k slides, fewer rounds

cuCIM is not a slidescope dependency: its CPU wheel (``cucim`` 23.10, Linux x86-64) is added for the run with
``uv run --with cucim``; without it its arms are skipped, with the reason printed. fastslide is the
``fastslide`` extra (in the dev group).

Cases (the tissue tiles of our grid on each slide, read in our block order by every arm):
  * ``20x native``: 224 px at 0.5 µm/px from the 20x synthetic slide (JPEG 256 px file tiles);
  * ``40x -> 20x``: 224 px at 0.5 µm/px from the 40x synthetic slide: read 448 px, halve;
  * ``40x at 0.2527 -> 20x``: 224 px at 0.5 µm/px from a 40x synthetic slide at 0.2527 µm/px (an Aperio AT2's
    40x: real 40x scans are rarely exactly 0.25): read 443 px, area-average to 224 at a ratio of 1.98;
  * ``CMU small``: 224 px at the scan's mpp from the real CMU-1-Small-Region.svs (57 tiles).

Arms, each in a fresh process per round, 1 pass over the tiles, interleaved rounds (ours next to the fastest
peers, the order reversed every other round), medians of tiles/s; ours / best peer also as the median of the
per-round ratios, which a slow drift of the VM's speed moves less (a case of fewer than
:data:`SMALL_CASE` tiles, CMU small, takes :data:`SMALL_ROUNDS` times the rounds: one pass of 57 tiles lasts
~30 ms, and a scheduling hiccup in it moved the best peer from 640 to 1,845 tiles/s between runs):
  * ``ours``: ``iter_tiles`` with its default decode threads (the process's CPUs, at most 4), and ``ours 1 thread``;
  * ``ours jpeg-dct``: as ``ours`` on a grid with ``downscale="jpeg-dct"`` (file tiles decoded at 1/2 by libjpeg's
    scaled IDCT: not the exact 2x2 mean; its max abs difference from OpenSlide's is in the table), 40x -> 20x only;
  * ``openslide``: a plain ``OpenSlide.read_region`` loop;
  * ``cucim+cache``: ``CuImage.read_region`` per tile with a 256 MiB per-process tile cache;
  * ``cucim batch``: one ``read_region`` over all locations with ``num_workers`` = the CPUs (its thread pool);
  * ``fastslide+cache``: ``FastSlide.read_region`` per tile with a 256 MiB tile cache.
Peers halve with OpenCV's ``cv2.resize(..., INTER_AREA)``, the fastest exact 2x2 mean we know (SIMD; the same
pixels as Pillow's ``reduce(2)`` and as ours, which uses it too). ``--peer-resize pillow`` gives them Pillow's
``reduce(2)`` instead (4-9x slower per region; what the peers used until this release, and the Pillow resize
that TRIDENT- and CLAM-style pipelines call). Each arm's first tiles are compared with OpenSlide's (max abs
difference).

Scaling (unless ``--no-scaling``; not in ``run``): the 20x case through ``TileDataset`` + a DataLoader with 1 and 2
worker processes (1 decode thread each; tiles/s from the first batch, as worker start-up is not throughput)
against ``iter_tiles`` in-process with 1 and 2 decode threads: tiles/s and CPU ms per tile summed over the
process and its workers (worker start-up included).

``run(quick)`` returns the rows that ``benchmarks/run_all.py`` prints: per case ours against the best peer.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_wsi import CACHE, shared_slide, synthetic  # noqa: E402

PEERS = ("openslide", "cucim+cache", "cucim batch", "fastslide+cache")
#: the order the arms run in within a round: ours next to the peers that are closest to it, the slow OpenSlide
#: loop last (reversed every other round)
RUN_ORDER = (
    "ours",
    "cucim batch",
    "cucim+cache",
    "ours jpeg-dct",
    "fastslide+cache",
    "ours 1 thread",
    "openslide",
)
#: our arms: the default (exact area) with its threads and with one, and ``--downscale jpeg-dct`` (timed only
#: where it changes the read: a whole factor of 2, 4 or 8, i.e. 40x -> 20x)
OURS = ("ours", "ours jpeg-dct", "ours 1 thread")
#: a case with fewer tiles than this is timed in SMALL_ROUNDS times the rounds (each pass is too short to time once)
SMALL_CASE, SMALL_ROUNDS = 500, 3


def cases(quick: bool) -> list[tuple[str, Path, float]]:
    """(name, slide, target mpp); tile size 224 for all."""
    w, h = (12_000, 9_000) if quick else (40_000, 30_000)
    out = [("20x native", synthetic(w, h, 0.5), 0.5), ("40x -> 20x", synthetic(w, h, 0.25), 0.5)]
    w2, h2 = (12_000, 9_000) if quick else (20_000, 15_000)
    out.append(("40x at 0.2527 -> 20x", synthetic(w2, h2, 0.2527), 0.5))
    cmu = shared_slide()
    if cmu is not None:
        out.append(("CMU small", cmu, 0.499))
    return out


def grid_file(slide: Path, mpp: float) -> Path:
    """Our grid's tiles in our block order, saved once: coords (level px), level, read size, tile size."""
    from slidescope.wsi import detect_tissue, make_tile_grid, open_slide
    from slidescope.wsi._stream import block_order

    path = CACHE / f"peers_{slide.stem}_{mpp}.npz"
    if not path.exists():
        with open_slide(slide) as s:
            grid = make_tile_grid(s, tile_size=224, mpp=mpp, mask=detect_tissue(s))
            order = np.concatenate(block_order(grid))
            ds = np.asarray(grid.level_downsample)
            lxy = np.floor(grid.coords[order] / ds + 1e-9).astype(np.int64)
            np.savez(
                path, l0=grid.coords[order], lxy=lxy, level=grid.level, read=grid.read_size, size=224, mpp=mpp
            )
    return path


def missing(arm: str) -> str | None:
    """Why an arm cannot run here, or None."""
    if arm.startswith("cucim") and importlib.util.find_spec("cucim") is None:
        return "cucim not installed (run with `uv run --with cucim`)"
    if arm.startswith("fastslide") and importlib.util.find_spec("fastslide") is None:
        return "fastslide not installed (the `fastslide` extra)"
    return None


#: how peers halve their regions: "opencv" (cv2.resize INTER_AREA) or "pillow" (Image.reduce(2)); same pixels
PEER_RESIZE = os.environ.get("SLIDESCOPE_PEER_RESIZE", "opencv")


def _reduce(a: np.ndarray, size: int) -> np.ndarray:
    """A peer's region shrunk to ``size``: halved with :data:`PEER_RESIZE`; other ratios (443 -> 224) with
    OpenCV's INTER_AREA in both settings (the area averaging ours does; Pillow has none at those ratios)."""
    if a.shape[0] == size:
        return a
    if PEER_RESIZE == "pillow" and a.shape[0] == 2 * size:
        from PIL import Image

        return np.asarray(Image.fromarray(np.ascontiguousarray(a)).reduce(2))
    import cv2

    return cv2.resize(np.ascontiguousarray(a), (size, size), interpolation=cv2.INTER_AREA)


def arm_tiles(arm: str, slide: Path, plan: dict) -> Iterator[np.ndarray]:
    """The arm's tiles in plan order (runs inside the arm's own process). Opening the slide (and, for ours,
    the tissue grid) happens here, before the iterator is returned and timed."""
    level, (rw, rh), size = int(plan["level"]), tuple(int(v) for v in plan["read"]), int(plan["size"])
    l0 = [(int(x), int(y)) for x, y in plan["l0"]]
    if arm.startswith("ours"):
        from slidescope.wsi import detect_tissue, iter_tiles, make_tile_grid, open_slide

        s = open_slide(slide)
        downscale = "jpeg-dct" if arm == "ours jpeg-dct" else "area"
        grid = make_tile_grid(
            s, tile_size=size, mpp=float(plan["mpp"]), mask=detect_tissue(s), downscale=downscale
        )
        threads = 1 if arm == "ours 1 thread" else None
        return (tile for _, tile in iter_tiles(s, grid, threads=threads))  # block order: the plan's
    if arm == "openslide":
        import openslide

        o = openslide.OpenSlide(str(slide))
        return (_reduce(np.asarray(o.read_region(xy, level, (rw, rh)).convert("RGB")), size) for xy in l0)
    if arm.startswith("cucim"):
        from cucim import CuImage

        CuImage.cache("per_process", memory_capacity=256)
        img = CuImage(str(slide))
        if arm == "cucim batch":
            workers = len(os.sched_getaffinity(0))
            batches = img.read_region(l0, (rw, rh), level, batch_size=32, num_workers=workers)
            return (_reduce(a, size) for batch in batches for a in np.asarray(batch))
        return (_reduce(np.asarray(img.read_region(xy, (rw, rh), level)), size) for xy in l0)
    if arm == "fastslide+cache":
        import fastslide

        f = fastslide.FastSlide.from_file_path(str(slide))
        f.set_cache(256 * 2**20)
        lxy = [(int(x), int(y)) for x, y in plan["lxy"]]
        return (_reduce(f.read_region(xy, level, (rw, rh)).numpy()[..., :3], size) for xy in lxy)
    raise ValueError(arm)


def time_arm(arm: str, slide: Path, plan_path: Path) -> dict:
    """One pass of one arm (in this process): tiles/s, CPU ms per tile (this process and its children),
    and the largest difference of its first 20 tiles from OpenSlide's."""
    plan = dict(np.load(plan_path))
    tiles = arm_tiles(arm, slide, plan)
    first = []
    t, c = time.perf_counter(), time.process_time()
    n = 0
    for tile in tiles:
        if n < 20:
            first.append(np.array(tile))
        n += 1
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    diff = 0
    if arm != "openslide":
        for a, b in zip(first, arm_tiles("openslide", slide, plan), strict=False):
            diff = max(diff, int(np.abs(a.astype(int) - b[..., :3].astype(int)).max()))
    return {"arm": arm, "n": n, "tiles_s": n / wall, "cpu_ms": 1000 * cpu / max(n, 1), "diff": diff}


def scaling_arm(arm: str, slide: Path, mpp: float) -> dict:
    """The 20x case in-process (``inproc-1``/``inproc-2`` decode threads) or through the DataLoader
    (``loader-1``/``loader-2`` worker processes, 1 thread each)."""
    from slidescope.wsi import TileDataset, detect_tissue, iter_tiles, make_tile_grid, open_slide

    s = open_slide(slide)
    grid = make_tile_grid(s, tile_size=224, mpp=mpp, mask=detect_tissue(s))
    kind, k = arm.split("-")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    c = time.process_time()
    if kind == "inproc":
        t = time.perf_counter()
        n = sum(1 for _ in iter_tiles(s, grid, threads=int(k)))
        wall, steady = time.perf_counter() - t, n
    else:
        loader = TileDataset(s, grid, read_threads=1).loader(batch_size=32, num_workers=int(k))
        it = iter(loader)
        n = len(
            next(it)["index"]
        )  # worker start-up is not throughput: the rate is timed from the first batch
        t = time.perf_counter()
        steady = sum(len(b["index"]) for b in it)
        wall = time.perf_counter() - t
        n += steady
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - c + (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"arm": arm, "n": n, "tiles_s": steady / wall, "cpu_ms": 1000 * cpu / n, "diff": 0}


def _spawn(args: list[str]) -> dict | None:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"  arm {args} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(
    quick: bool, rounds: int | None = None, scaling: bool = True, only: list[str] | None = None
) -> dict:
    """Every case (or those named in ``only``) x arm, ``rounds`` interleaved rounds, each arm in a fresh
    process; medians."""
    rounds = rounds or (3 if quick else 5)
    arms = [*OURS, *PEERS]
    skipped = {a: why for a in arms if (why := missing(a))}
    result: dict = {"cases": {}, "skipped": skipped, "rounds": rounds, "case_rounds": {}}
    for name, slide, mpp in cases(quick):
        if only and name not in only:
            continue
        plan = grid_file(slide, mpp)
        n_tiles = len(np.load(plan)["l0"])
        case_rounds = rounds * SMALL_ROUNDS if n_tiles < SMALL_CASE else rounds
        result["case_rounds"][name] = case_rounds
        runs: dict[str, list[dict]] = {a: [] for a in arms if a not in skipped}
        saved = np.load(plan)
        if [int(v) for v in saved["read"]] != [
            2 * int(saved["size"])
        ] * 2:  # jpeg-dct reads as the default here
            runs.pop("ours jpeg-dct", None)
        for k in range(case_rounds):
            # the order reversed every other round (ABBA), so that a drift of the VM's speed over a round
            # does not always favour the arms that run first
            order = sorted(runs, key=RUN_ORDER.index)
            for arm in order if k % 2 == 0 else order[::-1]:
                got = _spawn(["--arm", arm, "--slide", str(slide), "--plan", str(plan)])
                if got is not None:
                    runs[arm].append({**got, "round": k})
        result["cases"][name] = {
            arm: {
                "tiles_s": statistics.median(r["tiles_s"] for r in rs),
                "cpu_ms": statistics.median(r["cpu_ms"] for r in rs),
                "diff": max(r["diff"] for r in rs),
                "n": rs[0]["n"],
            }
            for arm, rs in runs.items()
            if rs
        }
        result.setdefault("ratios", {})[name] = round_ratios(runs, result["cases"][name])
        if "ours jpeg-dct" in runs:
            result.setdefault("dct_ratios", {})[name] = round_ratios(
                runs, result["cases"][name], "ours jpeg-dct"
            )
        print(f"  {name}: done", file=sys.stderr, flush=True)
    if scaling:
        name, slide, mpp = cases(quick)[0]
        sruns: dict[str, list[dict]] = {a: [] for a in ("inproc-1", "inproc-2", "loader-1", "loader-2")}
        for _ in range(rounds):
            for arm in sruns:
                got = _spawn(["--scaling", arm, "--slide", str(slide), "--mpp", str(mpp)])
                if got is not None:
                    sruns[arm].append(got)
        result["scaling"] = {
            arm: {k: statistics.median(r[k] for r in rs) for k in ("tiles_s", "cpu_ms")}
            for arm, rs in sruns.items()
            if rs
        }
    return result


def round_ratios(runs: dict[str, list[dict]], medians: dict, ours: str = "ours") -> dict | None:
    """Ours against the best peer (highest median) round by round: the median of the per-round ratios of
    tiles/s and their range. Arms of one round run minutes apart at most, so a slow drift of the VM's speed
    moves both sides of a round's ratio together; it moves the ratio of the two medians more."""
    peer = best_peer(medians)
    if peer is None or ours not in runs:
        return None
    theirs = {r["round"]: r["tiles_s"] for r in runs[peer[0]]}
    per_round = [r["tiles_s"] / theirs[r["round"]] for r in runs[ours] if r["round"] in theirs]
    if not per_round:
        return None
    return {"peer": peer[0], "per_round": per_round, "median": statistics.median(per_round)}


def best_peer(arms: dict) -> tuple[str, dict] | None:
    peers = [(a, v) for a, v in arms.items() if a in PEERS and a != "openslide"]
    return max(peers, key=lambda p: p[1]["tiles_s"]) if peers else None


def rows_from(result: dict) -> list[dict]:
    rows = []
    for name, arms in result["cases"].items():
        peer = best_peer(arms)
        if peer is None or "ours" not in arms:
            continue
        n = arms["ours"]["n"]
        row = {
            "stage": f"read tiles vs the fastest peer: {name}, {n} tiles (best of {', '.join(a for a in arms if a in PEERS[1:])}: {peer[0]})",
            "ours": arms["ours"]["tiles_s"],
            "baseline": peer[1]["tiles_s"],
            "unit": "tiles/s",
        }
        ratios = result.get("ratios", {}).get(name)
        if ratios is not None:  # medians of tiles/s; the ratio is the median of the per-round ratios
            k = len(ratios["per_round"])
            row["stage"] += (
                f"; ratio: median of {k} per-round ratios ({min(ratios['per_round']):.2f}-"
                f"{max(ratios['per_round']):.2f}x)"
            )
            row["ratio"] = ratios["median"]
        rows.append(row)
        dct = result.get("dct_ratios", {}).get(name)
        if dct is not None and "ours jpeg-dct" in arms:
            k = len(dct["per_round"])
            rows.append(
                {
                    "stage": f"  the same with --downscale jpeg-dct (max abs diff vs OpenSlide "
                    f"{arms['ours jpeg-dct']['diff']}); ratio: median of {k} per-round ratios "
                    f"({min(dct['per_round']):.2f}-{max(dct['per_round']):.2f}x)",
                    "ours": arms["ours jpeg-dct"]["tiles_s"],
                    "baseline": peer[1]["tiles_s"],
                    "unit": "tiles/s",
                    "ratio": dct["median"],
                }
            )
    return rows


def print_report(result: dict) -> None:
    for arm, why in result["skipped"].items():
        print(f"skipped {arm}: {why}")
    print(
        f"\nmedians of {result['rounds']} interleaved rounds, each arm in a fresh process; tiles/s (CPU ms/tile)\n"
    )
    arms = [*OURS, *PEERS]
    print(
        "| case | "
        + " | ".join(arms)
        + " | ours / best peer (ratio of medians; per-round ratios) | max abs diff vs OpenSlide |"
    )
    print("|---|" + "---:|" * (len(arms) + 2))
    for name, got in result["cases"].items():
        cells = [
            f"{got[a]['tiles_s']:,.0f} ({got[a]['cpu_ms']:.2f})"
            if a in got
            else "skipped"
            if a in result["skipped"]
            else "-"
            for a in arms
        ]
        peer = best_peer(got)
        per = result.get("ratios", {}).get(name)
        ratio = (
            f"{got['ours']['tiles_s'] / peer[1]['tiles_s']:.2f}x ({peer[0]})"
            if peer and "ours" in got
            else "-"
        )
        if per is not None:
            ratio += (
                f"; per round: median {per['median']:.2f}x, {min(per['per_round']):.2f}-"
                f"{max(per['per_round']):.2f}x"
            )
        dct = result.get("dct_ratios", {}).get(name)
        if dct is not None:
            ratio += (
                f"; jpeg-dct per round: median {dct['median']:.2f}x, {min(dct['per_round']):.2f}-"
                f"{max(dct['per_round']):.2f}x"
            )
        diffs = ", ".join(f"{a} {v['diff']}" for a, v in got.items() if a != "openslide")
        k = result.get("case_rounds", {}).get(name, result["rounds"])
        shown = f"{name} ({got['ours']['n']} tiles{f', {k} rounds' if k != result['rounds'] else ''})"
        print(f"| {shown} | " + " | ".join(cells) + f" | {ratio} | {diffs} |")
    if "scaling" in result:
        sc = result["scaling"]
        print(
            "\n| 20x native | tiles/s (loader: from its first batch) | CPU ms/tile (all processes, start-up "
            "included) |\n|---|---:|---:|"
        )
        for arm, v in sc.items():
            print(f"| {arm} | {v['tiles_s']:,.0f} | {v['cpu_ms']:.3f} |")
        for kind in ("inproc", "loader"):
            if f"{kind}-1" in sc and f"{kind}-2" in sc:
                print(f"{kind}: 1 -> 2 = {sc[f'{kind}-2']['tiles_s'] / sc[f'{kind}-1']['tiles_s']:.2f}x")


def run(quick: bool = True) -> list[dict]:
    result = measure(quick, rounds=1 if quick else None, scaling=False)
    for arm, why in result["skipped"].items():
        print(f"  bench_peers: skipped {arm}: {why}", file=sys.stderr)
    return rows_from(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--cases", help="comma-separated case names (default: all), e.g. '40x -> 20x'")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--peer-resize", choices=("opencv", "pillow"), default="opencv", help="how peers halve (same pixels)"
    )
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--scaling", help=argparse.SUPPRESS)
    ap.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mpp", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["SLIDESCOPE_PEER_RESIZE"] = args.peer_resize  # read by the arms' processes
    global PEER_RESIZE
    PEER_RESIZE = args.peer_resize
    if args.arm:
        print(json.dumps(time_arm(args.arm, args.slide, args.plan)))
        return
    if args.scaling:
        print(json.dumps(scaling_arm(args.scaling, args.slide, args.mpp)))
        return
    only = [c.strip() for c in args.cases.split(",")] if args.cases else None
    result = measure(args.quick, args.rounds, scaling=not args.no_scaling, only=only)
    print(f"\npeers halve with {PEER_RESIZE}")
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
