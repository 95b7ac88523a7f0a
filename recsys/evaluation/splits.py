"""The two evaluation splits, exactly as ../shared/ANCHORS.md defines them.

* ``rank_split`` (top-10 quality): users visited in ascending user index with ONE
  ``numpy.random.default_rng(seed=42)``; a user with n >= 2 ratings has them sorted by
  (timestamp, product); ``max(1, round(0.2 n))`` positions drawn by
  ``rng.choice(n, n_test, replace=False)`` go to test. Users with one rating stay in training.
* ``seed_split`` (the notebook's random 70/30): ``default_rng(10).permutation(n)`` over the rows;
  the first ``ceil(0.3 n)`` are test.

User indices follow ``users.id`` order (the order users first reached the database), which
stands in for the anchors' "ascending id order".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recsys.data import RatingData


@dataclass(frozen=True)
class Split:
    """A train/test partition of one RatingData (same index space)."""

    train: RatingData
    test: RatingData
    name: str


def rank_split(data: RatingData, *, seed: int = 42, test_share: float = 0.2) -> Split:
    """Per user, ``max(1, round(test_share * n))`` of their ratings go to test."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((data.products, data.timestamps, data.users))
    users_sorted = data.users[order]
    starts = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)]
    is_test = np.zeros(len(data), dtype=bool)
    for start, end in zip(starts, ends, strict=True):
        n = int(end - start)
        if n < 2:
            continue
        n_test = max(1, round(test_share * n))
        picked = rng.choice(n, n_test, replace=False)
        is_test[order[start + picked]] = True
    return Split(data.subset(~is_test), data.subset(is_test), "rank")


def seed_split(data: RatingData, *, seed: int = 10, test_share: float = 0.3) -> Split:
    """The notebook's random split: the first ``ceil(test_share * n)`` of a permutation are test."""
    n = len(data)
    permutation = np.random.default_rng(seed).permutation(n)
    n_test = math.ceil(test_share * n)
    is_test = np.zeros(n, dtype=bool)
    is_test[permutation[:n_test]] = True
    return Split(data.subset(~is_test), data.subset(is_test), "seed")


def cold_product_split(
    data: RatingData, *, seed: int = 42, share: float = 0.1
) -> tuple[Split, np.ndarray]:
    """Hold out every rating of ``share`` of the products (``default_rng(seed)`` over sorted ids).

    Returns:
        The split (test = all ratings of the cold products) and the cold product indices.
    """
    rated = np.unique(data.products)
    order = np.argsort(data.product_ids[rated], kind="stable")
    candidates = rated[order]
    n_cold = max(1, round(share * len(candidates)))
    cold = np.sort(np.random.default_rng(seed).choice(candidates, n_cold, replace=False))
    is_test = np.isin(data.products, cold)
    return Split(data.subset(~is_test), data.subset(is_test), "cold"), cold
