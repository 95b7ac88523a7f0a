"""Cold products: how well a model ranks products that had no rating at all in training.

Protocol (../shared/ANCHORS.md, "Cold products"): ``cold_product_split`` holds out EVERY rating
of 10% of the rated products (``default_rng(42)`` over sorted ids); the model trains on the
rest. For each user with a rating >= 4 on a cold product, all cold products are ranked and
Recall@10 = hits / min(10, |relevant cold|), averaged over those users.

A model scores cold products through ``score_new_products(users, text)`` (the text path: the
ranker's text projection, LightFM's text features), never through an id embedding trained on
them (there is none). Random is the exact expectation, not a draw: with ``m`` cold products of
which ``r`` are relevant, a random top-``k`` holds ``min(k, m) * r / m`` relevant products.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from recsys.data import RatingData, Recommender
from recsys.errors import DataError
from recsys.evaluation.metrics import RELEVANT_RATING
from recsys.evaluation.splits import cold_product_split

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ColdResult:
    """Recall@k among cold products for one model (or random)."""

    model: str
    recall: float
    n_cold_products: int
    n_users: int
    seconds: float = 0.0


def cold_relevance(data: RatingData, *, seed: int = 42, share: float = 0.1):
    """The split, the cold product indices and, per evaluated user, the relevant cold products.

    Returns:
        ``(split, cold, users, relevant)``: ``relevant[j]`` is the set of positions (into
        ``cold``) that ``users[j]`` rated >= 4.
    """
    split, cold = cold_product_split(data, seed=seed, share=share)
    position = {int(p): i for i, p in enumerate(cold.tolist())}
    rows = split.test.ratings >= RELEVANT_RATING
    relevant: dict[int, set[int]] = {}
    for user, product in zip(
        split.test.users[rows].tolist(), split.test.products[rows].tolist(), strict=True
    ):
        relevant.setdefault(int(user), set()).add(position[int(product)])
    users = np.array(sorted(relevant), dtype=np.int64)
    return split, cold, users, [relevant[int(u)] for u in users]


def random_recall(n_cold: int, relevant: Sequence[set[int]], k: int = 10) -> float:
    """Exact expected Recall@k of a uniformly random ranking of ``n_cold`` products."""
    if not relevant:
        return 0.0
    shown = min(k, n_cold)
    return float(np.mean([shown * len(r) / n_cold / min(k, len(r)) for r in relevant]))


def recall_at_k(scores: np.ndarray, relevant: Sequence[set[int]], k: int = 10) -> float:
    """Mean Recall@k of score rows over the cold products (ties: lower position first)."""
    total = 0.0
    for row, rel in zip(scores, relevant, strict=True):
        order = np.lexsort((np.arange(len(row)), -row))[:k]
        total += len(rel & set(order.tolist())) / min(k, len(rel))
    return total / max(1, len(relevant))


def measure_cold(
    data: RatingData,
    models: dict[str, Callable[[], Recommender]],
    *,
    seed: int = 0,
    k: int = 10,
) -> list[ColdResult]:
    """Train each model on the non-cold ratings and measure Recall@k among cold products.

    Args:
        data: all ratings, with product text vectors (the cold path needs them).
        models: name -> factory of an untrained model that has ``score_new_products``.
        seed: training seed.

    Returns:
        One result per model, then ``random`` (exact expectation).
    """
    if data.text is None:
        raise DataError("the cold-product measurement needs product text vectors (a feature set)")
    split, cold, users, relevant = cold_relevance(data)
    if len(users) == 0:
        raise DataError("no user rated a cold product 4 or more: nothing to measure")
    cold_text = data.text[cold]
    results = []
    for name, factory in models.items():
        started = time.perf_counter()
        model = factory()
        if not hasattr(model, "score_new_products"):
            raise DataError(f"model {name!r} cannot score products it never saw (no text path)")
        model.fit(split.train, seed=seed)
        scores = np.asarray(model.score_new_products(users, cold_text))
        recall = recall_at_k(scores, relevant, k)
        seconds = time.perf_counter() - started
        _log.info(
            "cold: %s Recall@%d %.4f (%d cold products, %d users)",
            name,
            k,
            recall,
            len(cold),
            len(users),
        )
        results.append(ColdResult(name, recall, len(cold), len(users), seconds))
    results.append(
        ColdResult("random", random_recall(len(cold), relevant, k), len(cold), len(users))
    )
    return results
