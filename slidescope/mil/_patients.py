"""Patient bags: one MIL bag per patient, the tiles of all its slides one after the other.

``slidescope train --bag patient`` (``train(..., bag="patient")``) trains on them; ``slidescope score
--patients manifest.csv`` scores them (:func:`slidescope.mil.score.score` with ``patients=``).
"""

from __future__ import annotations

import collections
import dataclasses
import os

from ..errors import InvalidParameterError
from ..manifests import read_rows, short_list
from .data import SlideRow

__all__ = ["BAGS", "patient_bags", "read_patients"]

#: what one MIL bag is: one slide's tiles, or all the tiles of a patient's slides
BAGS = ("slide", "patient")


def _outcome(row: SlideRow) -> tuple:
    return (row.label, row.target, row.time, row.event)


def patient_bags(rows: list[SlideRow]) -> list[SlideRow]:
    """One row per patient, in order of first appearance: ``slides`` holds its slides in manifest order
    (their bag is the concatenation of their tiles in that order), ``slide`` the first of them.

    Parameters
    ----------
    rows : list of SlideRow
        The manifest's rows (:func:`~slidescope.mil.data.read_manifest`).

    Returns
    -------
    list of SlideRow
        The patients' rows; label (or target, or time and event), split and site are the slides' (the site:
        the most common one).

    Raises
    ------
    InvalidParameterError
        A patient whose slides have different labels (targets, times or events) or different predefined
        splits: a patient bag has one outcome and one fold.
    """
    by_patient: dict[str, list[SlideRow]] = collections.defaultdict(list)
    for r in rows:
        by_patient[r.patient].append(r)
    mixed = sorted(p for p, rs in by_patient.items() if len({_outcome(r) for r in rs}) > 1)
    if mixed:
        p = mixed[0]
        seen = ", ".join(f"{r.key}: {r.label}" for r in by_patient[p])
        raise InvalidParameterError(
            f"patient(s) {short_list(mixed)} have slides with different labels (e.g. {p}: {seen}); a patient "
            f"bag has one label: correct the manifest, or train one bag per slide (--bag slide)"
        )
    split = sorted(p for p, rs in by_patient.items() if len({r.split for r in rs}) > 1)
    if split:
        raise InvalidParameterError(
            f"patient(s) {short_list(split)} have slides in different predefined splits; give all of a "
            f"patient's slides the same split"
        )
    out = []
    for rs in by_patient.values():
        sites = collections.Counter(r.site for r in rs).most_common(1)[0][0]
        out.append(dataclasses.replace(rs[0], site=sites, slides=tuple(r.slide for r in rs)))
    return out


def read_patients(path: str | os.PathLike[str]) -> dict[str, str]:
    """Slide (store) name -> patient from a CSV with ``slide`` and ``patient`` columns (a training manifest
    will do), for :func:`~slidescope.mil.score.score`'s ``patients=``."""
    from ..features.store import slide_key

    path, _, rows = read_rows(path, ("slide", "patient"), needs="scoring patients needs slide and patient")
    out: dict[str, str] = {}
    for r in rows:
        key = slide_key(r["slide"])
        if not r["patient"]:
            raise InvalidParameterError(f"{path.name}: slide {r['slide']!r} has no patient")
        if out.setdefault(key, r["patient"]) != r["patient"]:
            raise InvalidParameterError(f"{path.name}: slide {key!r} is given two patients")
    return out
