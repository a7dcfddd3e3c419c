"""The run report (``report.json``, ``report.md``) and ``predictions.csv``, rewritten atomically after each slide.

``report.json``/``report.md`` describe one run (its command, its slides). ``predictions.csv`` is the results
folder's table: it is rebuilt under a lock (on the folder ``OUT`` itself) from this run's outcomes and every
other finished slide record of the same configuration in ``OUT/slides``, so two runs sharing a results
folder (say, on two halves of a cohort) never drop each other's rows, whichever finishes last.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import json
import os
import sys
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._config import RunConfig
from ._slide import SlideOutcome, write_json_atomic, write_text_atomic

__all__ = ["write_report", "write_predictions", "REPORT_SCHEMA"]

REPORT_SCHEMA = 1


def _counts(outcomes: Sequence[SlideOutcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return dict(sorted(counts.items()))


def report_dict(
    outcomes: Sequence[SlideOutcome],
    cfg: RunConfig,
    *,
    started: str,
    seconds: float,
    finished: bool,
    signature: dict[str, Any],
    exit_code: int | None,
) -> dict[str, Any]:
    from .. import __version__

    processed = [o for o in outcomes if o.status in ("done", "failed")]
    tiles = sum(o.computed_tiles for o in processed)
    return {
        "schema": REPORT_SCHEMA,
        "slidescope_version": __version__,
        "argv": sys.argv,
        "started": started,
        "updated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "finished": finished,
        "exit_code": exit_code,
        "config": cfg.to_dict(kebab=True),
        "signature": signature,
        "counts": _counts(outcomes),
        "totals": {
            "slides": len(outcomes),
            "tiles": sum(o.n_tiles for o in outcomes if o.ok),
            "tiles_computed": tiles,
            "seconds": round(seconds, 3),
            "slides_per_s": round(len(processed) / seconds, 4) if seconds > 0 else 0.0,
            "tiles_per_s": round(tiles / seconds, 2) if seconds > 0 else 0.0,
        },
        "slides": [o.to_dict() for o in outcomes],
    }


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def report_markdown(report: dict[str, Any]) -> str:
    cfg, totals, counts = report["config"], report["totals"], report["counts"]
    state = "finished" if report["finished"] else "in progress (or interrupted)"
    lines = [
        "# slidescope run",
        "",
        f"{state}; started {report['started']}, updated {report['updated']}; exit code "
        f"{report['exit_code'] if report['exit_code'] is not None else '-'}.",
        "",
        f"- slides: {totals['slides']} ({', '.join(f'{v} {k}' for k, v in counts.items())})",
        f"- tiles: {totals['tiles']} ({totals['tiles_computed']} embedded in this run, "
        f"{totals['tiles_per_s']:.1f} tiles/s, {totals['slides_per_s']:.3f} slides/s, {totals['seconds']:.1f} s)",
        f"- encoder: {cfg['encoder']}; models: {', '.join(cfg['model']) or '-'}; prompts: {cfg['prompts'] or '-'}",
        "",
    ]
    failed = [s for s in report["slides"] if s["status"] in ("failed", "claimed")]
    if failed:
        lines += ["## Failed", "", "| slide | error | message |", "|---|---|---|"]
        lines += [
            f"| {s['key']} | {s['error_class']} | {_md_escape(s['error_message'] or '')} |" for s in failed
        ]
        lines.append("")
    lines += [
        "## Slides",
        "",
        "| slide | status | tiles | mpp | slide µm/px (source) | seconds | prediction |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for s in report["slides"]:
        mpp = f"{s['effective_mpp'][0]:.4g}" if s.get("effective_mpp") else "-"
        slide_mpp = (
            f"{s['slide_mpp'][0]:.4g} ({_md_escape(s.get('mpp_source') or '?')})"
            if s.get("slide_mpp")
            else "-"
        )
        p = s.get("predictions") or {}
        pred = (
            ", ".join(f"{k}={v}" for k, v in p.items() if k.endswith(("predicted", "prediction", "risk")))
            or "-"
        )
        lines.append(
            f"| {s['key']} | {s['status']} | {s['n_tiles']} | {mpp} | {slide_mpp} | {s['seconds']:.1f} "
            f"| {pred} |"
        )
    return "\n".join(lines + _qc_markdown(report["slides"])) + "\n"


def _qc_markdown(slides: Sequence[dict[str, Any]]) -> list[str]:
    """The "Quality control" section: one row per slide with a tile QC summary (``--qc flag/exclude``)."""
    rows = [s for s in slides if s.get("qc")]
    if not rows:
        return []
    checks = sorted({c for s in rows for c in (s["qc"].get("flagged_fraction") or {})})
    lines = [
        "",
        "## Quality control",
        "",
        "Fraction of the tiles each check flags (before exclusion), and the focus median (q05-q95).",
        "",
        f"| slide | policy | tissue mm² | tiles | {' | '.join(checks)} | excluded | focus median (q05-q95) |",
        f"|---|---|---:|---:|{'---:|' * len(checks)}---:|---|",
    ]
    for s in rows:
        q = s["qc"]
        flagged = q.get("flagged_fraction") or {}
        fq = q.get("focus_quantiles") or {}
        focus = f"{fq['q50']:.0f} ({fq['q05']:.0f}-{fq['q95']:.0f})" if fq else "-"
        lines.append(
            f"| {s['key']} | {q.get('policy')} | {q.get('tissue_mm2') if q.get('tissue_mm2') is not None else '-'} "
            f"| {q.get('n_tiles', '-')} | {' | '.join(f'{flagged.get(c, 0):.1%}' for c in checks)} "
            f"| {q.get('excluded', 0)} | {focus} |"
        )
    return lines


def write_report(out: Path, report: dict[str, Any]) -> Path:
    """``OUT/report.json`` and ``OUT/report.md``, each replaced atomically."""
    path = out / "report.json"
    write_json_atomic(path, report)
    write_text_atomic(out / "report.md", report_markdown(report))
    return path


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock (``fcntl.flock``, waited for) on the folder itself: serialises the
    read-merge-write of ``predictions.csv`` between runs sharing a results folder, and leaves no lock file
    behind (the lock goes with the process, even when it is killed). Without ``fcntl`` (Windows) no lock is
    taken; the rewrite is still atomic."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _finished_elsewhere(out: Path, keys: set[str], signature: dict[str, Any]) -> list[SlideOutcome]:
    """The finished slides of ``OUT/slides`` that are not among ``keys`` (another run's), with the same result
    signature (another configuration's rows would not belong in this table), sorted by name."""
    found = []
    for path in sorted((out / "slides").glob("[!.]*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # unreadable: being written (atomically) or damaged; a rerun redoes that slide
        if (
            isinstance(rec, dict)
            and rec.get("status") == "done"
            and rec.get("key") == path.stem
            and path.stem not in keys
            and rec.get("signature") == signature
        ):
            found.append(SlideOutcome.from_dict(rec))
    return found


def write_predictions(
    out: Path, outcomes: Sequence[SlideOutcome], signature: dict[str, Any] | None = None
) -> Path:
    """``OUT/predictions.csv``: one row per finished slide, its predictions as columns.

    ``outcomes`` (this run's, in input order) come first; with ``signature``, the finished records of other
    slides in ``OUT/slides`` with that result signature follow (sorted by name), read and written under
    :func:`folder_lock`, so concurrent runs into one folder keep each other's rows.
    """
    if signature is None:
        return _write_predictions(out, [o for o in outcomes if o.ok])
    with folder_lock(out):
        rows = [o for o in outcomes if o.ok]
        rows += _finished_elsewhere(out, {o.key for o in outcomes}, signature)
        return _write_predictions(out, rows)


def _write_predictions(out: Path, rows: Sequence[SlideOutcome]) -> Path:
    columns: list[str] = []
    for o in rows:
        columns += [c for c in o.predictions if c not in columns]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["slide", "path", "n_tiles", *columns])
    for o in rows:
        w.writerow([o.key, o.slide, o.n_tiles, *[o.predictions.get(c, "") for c in columns]])
    path = out / "predictions.csv"
    write_text_atomic(path, buf.getvalue())
    return path
