"""Metrics of both protocols: rating error and top-k list quality.

Ranking (../shared/ANCHORS.md): relevant = test rating >= 4; each model ranks every training
product the user did not rate in training; Recall@k = hits / min(k, |relevant|); NDCG@k with
binary gains and ideal = min(k, |relevant|) hits; averaged over users with >= 1 relevant test
product (a user without a list scores 0); coverage@k = distinct products in those lists /
training products; popularity percentile = mean, over all recommended slots, of the product's
percentile in training popularity (1.0 = the most rated product).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recsys.data import RatingData
from recsys.data.topk import top_k_indices

RELEVANT_RATING = 4.0


def rmse_mae(
    predicted: np.ndarray, actual: np.ndarray, scale: tuple[float, float]
) -> tuple[float, float]:
    """RMSE and MAE of predictions clipped to the rating scale."""
    if len(actual) == 0:
        return float("nan"), float("nan")
    error = np.clip(predicted.astype(np.float64), scale[0], scale[1]) - actual.astype(np.float64)
    return float(np.sqrt(np.mean(error**2))), float(np.mean(np.abs(error)))


def rating_metrics(
    predict: Callable[[np.ndarray, np.ndarray], np.ndarray], train: RatingData, test: RatingData
) -> dict[str, float]:
    """Test RMSE/MAE on rows whose user and product are both in training."""
    known_user = np.zeros(train.n_users, dtype=bool)
    known_user[train.users] = True
    known_product = np.zeros(train.n_products, dtype=bool)
    known_product[train.products] = True
    rows = known_user[test.users] & known_product[test.products]
    predicted = predict(test.users[rows], test.products[rows])
    rmse, mae = rmse_mae(np.asarray(predicted), test.ratings[rows], train.rating_scale)
    return {"rmse": rmse, "mae": mae, "n_test": int(rows.sum())}


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores per row, best first; ties go to the lower index.

    -inf entries are never returned unless a row has fewer than k finite scores (then the
    list is cut at the finite ones and padded with -1). This is the nightly scorer's own cut
    (:func:`recsys.data.topk.top_k_indices`, numpy only), so evaluated lists are cut
    exactly like published ones.
    """
    return top_k_indices(scores, k)


BATCH_SCORES = 1 << 24
"""Scores one batch of :func:`ranking_metrics` holds at most (64 MiB of float32), unless one
user's row is longer."""


def ranking_metrics(
    score_users: Callable[[np.ndarray], np.ndarray],
    train: RatingData,
    test: RatingData,
    *,
    k: int = 10,
    batch_size: int | None = None,
) -> dict[str, float]:
    """Recall@k, NDCG@k, coverage@k and popularity percentile of a model's top-k lists.

    ``batch_size``: users scored at a time (None: up to 512, fewer on a large catalogue, so a
    batch's scores stay within :data:`BATCH_SCORES`).
    """
    if batch_size is None:
        batch_size = max(1, min(512, BATCH_SCORES // max(1, train.n_products)))
    relevant = test.ratings >= RELEVANT_RATING
    eval_users = np.unique(test.users[relevant])
    popularity = np.bincount(train.products, minlength=train.n_products)
    training_products = popularity > 0
    n_training_products = int(training_products.sum())
    # percentile of each product in training popularity (ties share the lower rank)
    ranks = np.searchsorted(np.sort(popularity[training_products]), popularity, side="left")
    percentile = ranks / max(1, n_training_products - 1)

    # sparse lookups: training items per user, relevant test items per user
    train_order = np.argsort(train.users, kind="stable")
    train_users_sorted = train.users[train_order]
    rel_users = test.users[relevant]
    rel_products = test.products[relevant]
    rel_order = np.argsort(rel_users, kind="stable")
    rel_users_sorted = rel_users[rel_order]

    recall_sum = ndcg_sum = 0.0
    recommended: set[int] = set()
    pop_sum = 0.0
    pop_count = 0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for start in range(0, len(eval_users), batch_size):
        users = eval_users[start : start + batch_size]
        scores = np.array(score_users(users), dtype=np.float32, copy=True)
        scores[:, ~training_products] = -np.inf
        lo = np.searchsorted(train_users_sorted, users, side="left")
        hi = np.searchsorted(train_users_sorted, users, side="right")
        for row, (a, b) in enumerate(zip(lo, hi, strict=True)):
            scores[row, train.products[train_order[a:b]]] = -np.inf
        lists = top_k(scores, k)
        rlo = np.searchsorted(rel_users_sorted, users, side="left")
        rhi = np.searchsorted(rel_users_sorted, users, side="right")
        for row in range(len(users)):
            items = lists[row][lists[row] >= 0]
            rel = set(rel_products[rel_order[rlo[row] : rhi[row]]].tolist())
            hits = np.array([item in rel for item in items.tolist()], dtype=bool)
            ideal = min(k, len(rel))
            recall_sum += hits.sum() / ideal
            ndcg_sum += float((hits * discounts[: len(hits)]).sum()) / float(
                discounts[:ideal].sum()
            )
            recommended.update(items.tolist())
            pop_sum += float(percentile[items].sum())
            pop_count += len(items)
    n = max(1, len(eval_users))
    return {
        f"recall@{k}": recall_sum / n,
        f"ndcg@{k}": ndcg_sum / n,
        f"coverage@{k}": len(recommended) / max(1, n_training_products),
        "popularity_percentile": pop_sum / max(1, pop_count),
        "n_eval_users": int(len(eval_users)),
    }
