"""Splits and metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.evaluation.metrics import ranking_metrics, rating_metrics, rmse_mae, top_k
from recsys.evaluation.splits import cold_product_split, rank_split, seed_split
from recsys.model.base import RatingData


def _data(users, products, ratings, timestamps=None, n_users=None, n_products=None) -> RatingData:
    users = np.asarray(users, dtype=np.int32)
    products = np.asarray(products, dtype=np.int32)
    n_users = n_users or int(users.max()) + 1
    n_products = n_products or int(products.max()) + 1
    ts = np.arange(len(users), dtype=np.int64) if timestamps is None else np.asarray(timestamps)
    return RatingData(
        users=users,
        products=products,
        ratings=np.asarray(ratings, dtype=np.float32),
        timestamps=ts,
        user_ids=np.arange(100, 100 + n_users, dtype=np.int64),
        product_ids=np.arange(500, 500 + n_products, dtype=np.int64),
    )


def test_rmse_mae_clip_to_scale() -> None:
    rmse, mae = rmse_mae(np.array([0.0, 6.0, 3.0]), np.array([1.0, 5.0, 4.0]), (1.0, 5.0))
    assert rmse == pytest.approx(math.sqrt(1 / 3))
    assert mae == pytest.approx(1 / 3)


def test_rating_metrics_skip_unknown_users_and_products() -> None:
    train = _data([0, 1], [0, 1], [4, 2], n_users=3, n_products=3)
    test = _data([0, 2, 1], [1, 0, 2], [5, 1, 1], n_users=3, n_products=3)

    def predict(u, p):
        return np.full(len(u), 4.0)

    result = rating_metrics(predict, train, test)
    assert result["n_test"] == 1  # (0,1) only: user 2 and product 2 are not in training
    assert result["rmse"] == pytest.approx(1.0)


def test_top_k_breaks_ties_by_lower_index_and_skips_minus_inf() -> None:
    scores = np.array([[1.0, 3.0, 3.0, -np.inf, 2.0], [-np.inf, -np.inf, 0.5, -np.inf, -np.inf]])
    assert top_k(scores, 3).tolist() == [[1, 2, 4], [2, -1, -1]]


def test_ranking_metrics_hand_computed() -> None:
    # 2 users, 5 products. Training: user 0 rated p0; user 1 rated p1. Products 0..3 are training
    # products (p2, p3 via other ratings of user 1), p4 is never in training.
    train = _data([0, 1, 1, 1], [0, 1, 2, 3], [5, 5, 3, 3], n_users=2, n_products=5)
    # test: user 0 likes p1 (rel) and p4 (rel, not a training product);
    # user 1 likes p0 (rating 2: not rel)
    test = _data([0, 0, 1], [1, 4, 0], [5, 4, 2], n_users=2, n_products=5)
    table = np.array(
        [
            [
                9.0,
                1.0,
                3.0,
                2.0,
                100.0,
            ],  # user 0: p0 rated (masked), p4 not training: list [2, 3, 1]
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ],
        dtype=np.float32,
    )
    result = ranking_metrics(lambda users: table[users], train, test, k=3)
    assert result["n_eval_users"] == 1
    # user 0: relevant {1, 4}; list [2, 3, 1]: one hit at rank 3; recall = 1 / min(3, 2)
    assert result["recall@3"] == pytest.approx(0.5)
    ideal = 1 + 1 / math.log2(3)
    assert result["ndcg@3"] == pytest.approx((1 / math.log2(4)) / ideal)
    assert result["coverage@3"] == pytest.approx(3 / 4)


def test_rank_split_holds_out_a_fifth_per_user_and_keeps_single_ratings() -> None:
    users = [0] * 10 + [1] * 1 + [2] * 3
    products = list(range(10)) + [0] + [1, 2, 3]
    data = _data(users, products, [5] * 14)
    split = rank_split(data)
    assert len(split.train) + len(split.test) == 14
    per_user = np.bincount(split.test.users, minlength=3)
    assert per_user.tolist() == [
        2,
        0,
        1,
    ]  # round(0.2*10)=2; single rating stays; max(1, round(0.6))=1
    assert rank_split(data).test.products.tolist() == split.test.products.tolist()  # deterministic


def test_seed_split_is_30_percent_ceiling() -> None:
    data = _data(list(range(11)), list(range(11)), [3] * 11)
    split = seed_split(data)
    assert len(split.test) == 4 and len(split.train) == 7
    expected = np.sort(np.random.default_rng(10).permutation(11)[:4])
    assert np.sort(split.test.users).tolist() == expected.tolist()


def test_cold_product_split_removes_every_rating_of_cold_products() -> None:
    rng = np.random.default_rng(0)
    data = _data(rng.integers(0, 20, 300), rng.integers(0, 50, 300), rng.integers(1, 6, 300))
    split, cold = cold_product_split(data)
    assert len(cold) == round(0.1 * len(np.unique(data.products)))
    assert not np.isin(split.train.products, cold).any()
    assert np.isin(split.test.products, cold).all()
