"""Cold-product measurement (issue 6 item 5): the exact random expectation and Recall@k by
hand, and the ranker's text path beating random on a planted case where text tells the group."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluation.cold import cold_relevance, measure_cold, random_recall, recall_at_k
from recsys.model.base import RatingData
from recsys.model.ranker import RankerRecommender


def test_random_recall_is_the_exact_expectation() -> None:
    # 20 cold products; a user with 2 relevant: a random top-10 holds 10 * 2/20 = 1 of them,
    # recall 1/2; a user with 15 relevant: 10 * 15/20 = 7.5 hits over min(10, 15) -> 0.75
    assert random_recall(20, [{0, 1}]) == pytest.approx(0.5)
    assert random_recall(20, [set(range(15))]) == pytest.approx(0.75)
    assert random_recall(20, [{0, 1}, set(range(15))]) == pytest.approx(0.625)
    # fewer cold products than k: everything is shown, recall 1
    assert random_recall(5, [{1, 2}]) == pytest.approx(1.0)
    # and it matches a simulation
    rng = np.random.default_rng(0)
    rel = [{0, 1, 2}]
    hits = [len(rel[0] & set(rng.permutation(30)[:10].tolist())) / 3 for _ in range(20_000)]
    assert np.mean(hits) == pytest.approx(random_recall(30, rel), abs=0.01)


def test_recall_at_k_by_hand() -> None:
    scores = np.array([[0.9, 0.1, 0.5, 0.3], [0.0, 0.0, 1.0, 0.2]])
    # k=2: row 0 top = {0, 2}, relevant {2, 3} -> 1/2; row 1 top = {2, 3}, relevant {1} -> 0
    assert recall_at_k(scores, [{2, 3}, {1}], k=2) == pytest.approx(0.25)


def _planted(seed: int = 0) -> RatingData:
    """Two user groups; each rates (4-5 stars) products of its half; text names the half."""
    rng = np.random.default_rng(seed)
    n_users, n_products = 200, 240
    users, products, ratings = [], [], []
    for user in range(n_users):
        half = user % 2
        for product in rng.choice(120, 20, replace=False):
            users.append(user)
            products.append(half * 120 + int(product))
            ratings.append(float(rng.choice([4.0, 5.0])))
    text = np.zeros((n_products, 8), np.float32)
    text[:120, 0] = 1.0
    text[120:, 1] = 1.0
    text[:, 2:] = rng.normal(0, 0.3, (n_products, 6))
    n = len(users)
    return RatingData(
        users=np.array(users, np.int32),
        products=np.array(products, np.int32),
        ratings=np.array(ratings, np.float32),
        timestamps=np.arange(n, dtype=np.int64),
        user_ids=np.arange(1, n_users + 1, dtype=np.int64),
        product_ids=np.arange(1, n_products + 1, dtype=np.int64),
        text=text,
        has_text=np.ones(n_products, bool),
    )


def test_cold_split_holds_out_every_rating_of_the_cold_products() -> None:
    data = _planted()
    split, cold, users, relevant = cold_relevance(data)
    assert len(cold) == round(0.1 * len(np.unique(data.products)))
    assert not np.isin(split.train.products, cold).any()
    assert np.isin(split.test.products, cold).all()
    assert len(users) == len(relevant) > 0 and all(r for r in relevant)


def test_ranker_text_path_beats_random_on_cold_products() -> None:
    data = _planted()
    results = measure_cold(
        data,
        {
            "ranker": lambda: RankerRecommender(
                dim=16,
                epochs=30,
                batch_users=32,
                learning_rate=0.01,
                id_dropout=0.5,
                rating_head=False,
            )
        },
        seed=0,
    )
    by_name = {r.model: r for r in results}
    assert set(by_name) == {"ranker", "random"}
    assert by_name["ranker"].n_cold_products > 10
    # cold products of the user's own half are the relevant ones: text alone must find them
    assert by_name["ranker"].recall > by_name["random"].recall + 0.2
