"""MIL aggregators: a registry of published slide-level models over tile embeddings.

>>> from slidescope.mil.aggregators import create_aggregator, list_aggregators
>>> list_aggregators()  # doctest: +NORMALIZE_WHITESPACE
['abmil', 'acmil', 'clam-mb', 'clam-sb', 'dsmil', 'dtfd', 'max', 'mean', 'pl-maxpool', 'transmil']

Every model follows one contract (see :mod:`slidescope.mil.aggregators._base`): features (B, N, D),
mask (B, N) bool, optional labels (B,) in training -> :class:`AggregatorOutput`
(logits (B, C), scores (B, N), aux_loss, extra). The trainer optimises
``model.task_loss_weight * task_loss + out.aux_loss``.
"""

from ._base import Aggregator, AggregatorOutput
from ._registry import create_aggregator, list_aggregators, register_aggregator

__all__ = ["Aggregator", "AggregatorOutput", "create_aggregator", "list_aggregators", "register_aggregator"]
