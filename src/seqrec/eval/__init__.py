"""Model-independent ranking evaluation.

* :mod:`seqrec.eval.metrics` — ranks of targets (tie and NaN policies) and HR / NDCG / MRR /
  Recall at K, accumulated batch by batch.
* :mod:`seqrec.eval.protocols` — full ranking over all items (with history exclusion) and
  sampled-negative ranking.
* :mod:`seqrec.eval.stats` — paired comparison of two models on the same users.

Items are ids ``1..n_items``; column 0 of every score matrix is padding and never ranked.
"""

from seqrec.eval.metrics import (
    DEFAULT_KS,
    METRICS,
    TIES,
    MetricAccumulator,
    metric_keys,
    metrics_from_ranks,
    per_user_metrics,
    rank_of_targets,
)
from seqrec.eval.protocols import (
    SAMPLERS,
    History,
    ItemScoreFn,
    ScoreFn,
    full_ranking,
    gather_scorer,
    sample_negatives,
    sampled,
)
from seqrec.eval.stats import paired_difference

__all__ = [
    "DEFAULT_KS",
    "METRICS",
    "SAMPLERS",
    "TIES",
    "History",
    "ItemScoreFn",
    "MetricAccumulator",
    "ScoreFn",
    "full_ranking",
    "gather_scorer",
    "metric_keys",
    "paired_difference",
    "metrics_from_ranks",
    "per_user_metrics",
    "rank_of_targets",
    "sample_negatives",
    "sampled",
]
