"""The train-internal tuning split: what models tune hyper-parameters and epochs on.

A model never tunes on a test part. It holds out 20% of each user's TRAINING ratings
(:func:`internal_rank_split`: the rank protocol with another seed), fits each candidate on the
rest and compares candidates by :func:`validation_ndcg`. Depends on the data types, the splits
and the metrics only, so models may use it without depending on the evaluation harness.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recsys.data import RatingData
from recsys.evaluation.metrics import RELEVANT_RATING, ranking_metrics
from recsys.evaluation.splits import rank_split

INTERNAL_SEED = 4242
"""The internal split's seed (the protocol's rank split uses another)."""


def internal_rank_split(
    train: RatingData, seed: int = INTERNAL_SEED
) -> tuple[RatingData, RatingData]:
    """A train-internal validation split for tuning: 20% of each user's ratings, another seed."""
    split = rank_split(train, seed=seed)
    return split.train, split.test


def validation_ndcg(model: Any, fit_part: RatingData, validation: RatingData) -> float:
    """NDCG@10 of an already fitted model on the internal validation part (0 without relevant)."""
    if not np.any(validation.ratings >= RELEVANT_RATING):
        return 0.0
    return float(ranking_metrics(model.score_users, fit_part, validation)["ndcg@10"])
