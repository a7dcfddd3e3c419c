"""Type-check gate: run mypy on the package and compare its errors with a baseline that may only shrink.

The baseline, ``.ci/mypy_baseline.txt``, holds the errors the code had when the type checker was brought
in, one per line as ``file:error-code:message`` (no line numbers, so editing a file does not move its
entries; an error that occurs twice in a file is listed twice). The gate

* fails when mypy reports an error that is not in the baseline (a new error: fix it);
* fails when a baseline entry no longer occurs (an error was fixed: run ``--update`` so the baseline
  shrinks and the error cannot come back unnoticed);
* passes when the two are equal.

Usage (from the repository root)::

    uv run --locked python .ci/mypy_gate.py            # the gate, as .ci/run runs it
    uv run --locked python .ci/mypy_gate.py --update   # rewrite the baseline to the current errors

``--update`` prints what it added and removed; additions show in the diff of the baseline file and need a
reason in the commit that makes them.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / ".ci" / "mypy_baseline.txt"
HEADER = (
    "# mypy errors accepted for now (file:error-code:message, no line numbers). This list may only shrink:\n"
    "# .ci/mypy_gate.py fails on an error not listed here and on an entry that no longer occurs.\n"
    "# Rewrite with: uv run --locked python .ci/mypy_gate.py --update\n"
)
ERROR = re.compile(
    r"^(?P<file>[^:\n]+):(?P<line>\d+)(?::\d+)?: error: (?P<msg>.*?)"
    r"(?:  \[(?P<code>[a-z0-9-]+)\])?$"
)


def normalise(line: str) -> str | None:
    """``file:code:message`` for a mypy error line, None for anything else (notes, the summary)."""
    m = ERROR.match(line.rstrip())
    if m is None:
        return None
    msg = re.sub(r"\bline \d+\b", "line N", m["msg"])  # "defined on line 12" moves with the code
    return f"{Path(m['file']).as_posix()}:{m['code'] or 'misc'}:{msg}"


def run_mypy() -> Counter[str]:
    """The current errors (a multiset). Exits with mypy's output when mypy itself fails to run."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-pretty", "--no-error-summary"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    errors = Counter(e for e in map(normalise, proc.stdout.splitlines()) if e is not None)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not errors):
        sys.exit(f"mypy did not run (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return errors


def read_baseline() -> Counter[str]:
    if not BASELINE.is_file():
        sys.exit(
            f"{BASELINE.relative_to(REPO)} is missing: create it with "
            "`uv run --locked python .ci/mypy_gate.py --update`"
        )
    lines = BASELINE.read_text().splitlines()
    return Counter(line for line in lines if line.strip() and not line.startswith("#"))


def show(title: str, entries: Counter[str]) -> None:
    print(f"{title} ({sum(entries.values())}):")
    for entry in sorted(entries.elements()):
        print(f"  {entry}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite the baseline to the current errors")
    args = parser.parse_args(argv)

    current = run_mypy()
    baseline = read_baseline() if (BASELINE.is_file() or not args.update) else Counter()
    new, fixed = current - baseline, baseline - current

    if args.update:
        BASELINE.write_text(HEADER + "".join(f"{e}\n" for e in sorted(current.elements())))
        if new:
            show("added to the baseline", new)
        if fixed:
            show("removed from the baseline", fixed)
        print(
            f"{BASELINE.relative_to(REPO)}: {sum(current.values())} entries "
            f"(+{sum(new.values())}, -{sum(fixed.values())})"
        )
        return 0

    if new:
        show("new mypy errors (not in the baseline): fix them", new)
        print("(line numbers: run `uv run --locked mypy` for the full report)")
    if fixed:
        show(
            "baseline entries that no longer occur: shrink the baseline with "
            "`uv run --locked python .ci/mypy_gate.py --update`",
            fixed,
        )
    if new or fixed:
        return 1
    print(f"mypy: {sum(current.values())} known errors, as in the baseline; no new ones")
    return 0


if __name__ == "__main__":
    sys.exit(main())
