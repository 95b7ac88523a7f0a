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
FOLD_RATINGS = 250_000
"""Default fitting budget of a repeated internal search, in ratings (:func:`fold_count`)."""
MAX_FOLDS = 5
"""Default cap on the internal folds of a repeated search."""


def fold_count(
    n_ratings: int, rating_budget: int = FOLD_RATINGS, max_folds: int = MAX_FOLDS
) -> int:
    """Internal folds of a repeated search: ``clamp(rating_budget // n_ratings, 1, max_folds)``.

    Each fold fits once on about 80% of the ratings, so a search fits at most
    ``max(rating_budget, n_ratings)`` ratings per setting: small data, whose single 20%
    hold-out is noisiest, gets up to ``max_folds`` folds at little cost; data at or above the
    budget gets one fold.
    """
    if n_ratings <= 0:
        return 1
    return int(min(max(1, max_folds), max(1, int(rating_budget) // int(n_ratings))))


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
