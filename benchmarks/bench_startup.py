"""CLI start-up: wall and CPU time of the commands that should start fast (issue 19), each in a fresh process.

    uv run --locked python benchmarks/bench_startup.py                  # this checkout, 3 rounds
    uv run --locked python benchmarks/bench_startup.py --base /tmp/old  # and another tree, interleaved

``--base DIR``: a folder holding another version's ``slidescope`` package (e.g. ``git archive HEAD
slidescope | tar -x -C /tmp/old``), run with the same interpreter and compared in the same rounds. Each
command runs once per round and tree, in turn (interleaved: this machine's 2 cores are shared and its load
drifts); the table gives the median of the rounds, wall and CPU (user + system) seconds. ``run --dry-run``
plans a manifest of the real CMU-1-Small-Region and OS-1-detail slides (nothing is written); ``info`` and
``tile`` read CMU-1-Small-Region (``tile`` writes its outputs to a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _slides() -> Path:
    env = os.environ.get("SLIDESCOPE_TEST_DATA")
    base = Path(env) if env else REPO.parent / "shared" / "data"
    return base / "slides"


def commands(tmp: Path) -> dict[str, list[str]]:
    slides = _slides()
    cmu = slides / "CMU-1-Small-Region.svs"
    manifest = tmp / "slides.csv"
    manifest.write_text(f"slide\n{cmu}\n{slides / 'OS-1-detail.ome.tif'}\n")
    dry = ["run", str(manifest), "--out", str(tmp / "run"), "--dry-run", "--encoder"]
    return {
        "slidescope --help": ["--help"],
        "info --help": ["info", "--help"],
        "tile --help": ["tile", "--help"],
        "extract --help": ["extract", "--help"],
        "run --help": ["run", "--help"],
        "train --help": ["train", "--help"],
        "run --dry-run (he-descriptor)": [*dry, "he-descriptor"],
        "run --dry-run (uni)": [*dry, "uni"],
        "info SLIDE": ["info", str(cmu)],
        "tile SLIDE": ["tile", str(cmu), "--out", str(tmp / "tile")],
    }


def timed(argv: list[str], cwd: Path, tmp: Path) -> tuple[float, float]:
    shutil.rmtree(tmp / "tile", ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(cwd)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "slidescope", *argv], cwd=cwd, env=env, capture_output=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed in {cwd}:\n{proc.stderr.decode()[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base", type=Path, help="a folder with another version's slidescope package")
    args = ap.parse_args()
    trees = {"this": REPO} | ({"base": args.base.resolve()} if args.base else {})
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cmds = commands(tmp)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for name, argv in cmds.items():
                for tree, cwd in trees.items():
                    times.setdefault((name, tree), []).append(timed(argv, cwd, tmp))
    heads = [f"{t} {kind}" for t in trees for kind in ("wall", "CPU")]
    print(f"{'command':32}" + "".join(f"{h:>12}" for h in heads))
    for name in cmds:
        cells = []
        for tree in trees:
            runs = times[(name, tree)]
            cells += [statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)]
        print(f"{name:32}" + "".join(f"{v:12.2f}" for v in cells))
    print(f"(seconds, median of {args.rounds} interleaved rounds; {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
