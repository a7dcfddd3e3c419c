"""Supervised slide prediction from cached tile embeddings: aggregators, training, scoring, heatmaps.

Public names load on first use (torch and lightning are imported only then). The training, scoring
and heatmap *functions* are ``slidescope.train``, ``slidescope.score`` and ``slidescope.heatmap``: here
``slidescope.mil.train``, ``.score`` and ``.heatmap`` are their modules (a package attribute cannot
reliably name both a submodule and a function of the same name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "create_aggregator": ".aggregators",
    "list_aggregators": ".aggregators",
    "register_aggregator": ".aggregators",
    "AggregatorOutput": ".aggregators",
    "read_manifest": ".data",
    "patient_bags": "._patients",
    "read_patients": "._patients",
    "make_splits": ".data",
    "BagDataModule": ".data",
    "MILTask": ".task",
    "load_task": ".task",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from ._patients import patient_bags as patient_bags, read_patients as read_patients
    from .aggregators import (
        AggregatorOutput as AggregatorOutput,
        create_aggregator as create_aggregator,
        list_aggregators as list_aggregators,
        register_aggregator as register_aggregator,
    )
    from .data import (
        BagDataModule as BagDataModule,
        make_splits as make_splits,
        read_manifest as read_manifest,
    )
    from .task import MILTask as MILTask, load_task as load_task

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
