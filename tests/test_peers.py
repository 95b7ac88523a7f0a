"""Evaluation peers (issue 6): EASE against a closed form computed by hand here, ALS and
LightFM on a tiny planted case, tuning on a train-internal split, save/load round trips."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluation.metrics import ranking_metrics
from recsys.evaluation.splits import rank_split
from recsys.evaluation.tuning import internal_rank_split
from recsys.model import catalog
from recsys.model.als import ALSRecommender, implicit_available
from recsys.model.base import RatingData
from recsys.model.ease import EASERecommender
from recsys.model.lightfm import PEERS, LightFMPeer


def _data(
    users: list[int],
    products: list[int],
    n_users: int,
    n_products: int,
    text: np.ndarray | None = None,
) -> RatingData:
    n = len(users)
    return RatingData(
        users=np.array(users, np.int32),
        products=np.array(products, np.int32),
        ratings=np.full(n, 5.0, np.float32),
        timestamps=np.arange(n, dtype=np.int64),
        user_ids=np.arange(1, n_users + 1, dtype=np.int64),
        product_ids=np.arange(1, n_products + 1, dtype=np.int64),
        text=text,
        has_text=None if text is None else np.ones(n_products, bool),
    )


def _blocks(
    seed: int = 0, n_users: int = 120, n_products: int = 40, per_user: int = 8
) -> RatingData:
    """Two user groups, each rating products from its own half of the catalogue."""
    rng = np.random.default_rng(seed)
    users, products = [], []
    half = n_products // 2
    for user in range(n_users):
        offset = 0 if user % 2 == 0 else half
        for product in rng.choice(half, per_user, replace=False):
            users.append(user)
            products.append(offset + int(product))
    text = np.zeros((n_products, 4), np.float32)
    text[:half, 0] = 1.0
    text[half:, 1] = 1.0
    text += rng.normal(0, 0.05, text.shape).astype(np.float32)
    return _data(users, products, n_users, n_products, text)


def test_ease_equals_the_closed_form_by_hand() -> None:
    # 3 users x 3 products: X = [[1,1,0],[0,1,1],[1,0,1]]
    data = _data([0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 0, 2], 3, 3)
    x = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=np.float64)
    lam = 2.0
    # Steck's B_ij = -P^-1_ij / P^-1_jj (i != j), diag 0, with P = X^T X + lambda I
    p_inv = np.linalg.inv(x.T @ x + lam * np.eye(3))
    expected_b = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            if i != j:
                expected_b[i, j] = -p_inv[i, j] / p_inv[j, j]
    # this Gram matrix is [[2,1,1],[1,2,1],[1,1,2]]: + 2I -> [[4,1,1],...]; off-diagonal of
    # its inverse / diagonal = -1/5 exactly, so every B_ij (i != j) is 0.2
    np.testing.assert_allclose(expected_b[0, 1], 0.2, rtol=1e-12)
    model = EASERecommender(lam=lam)
    model.fit(data)
    np.testing.assert_allclose(model.weights, expected_b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        model.score_users(np.arange(3)), x @ expected_b, rtol=1e-6, atol=1e-7
    )
    assert np.all(np.diag(model.weights) == 0)


def test_ease_tunes_lambda_on_a_train_internal_split() -> None:
    data = _blocks()
    model = EASERecommender(lambdas=(1.0, 10.0, 100.0))
    model.fit(data)
    assert model.params["tuned_lam"] in (1.0, 10.0, 100.0)
    # the internal split is made from the training data only: 20% per user, its own seed
    fit_part, val_part = internal_rank_split(data)
    assert len(fit_part) + len(val_part) == len(data)
    assert len(val_part) == sum(max(1, round(0.2 * 8)) for _ in range(120))


@pytest.mark.skipif(not implicit_available(), reason="needs the peers extra (implicit)")
def test_als_searches_alpha_and_regularization_then_factors() -> None:
    from recsys.model import als

    data = _blocks()
    model = ALSRecommender(iterations=3)
    model.fit(data)
    searched = {tuple(s[:3]): s[3] for s in model.params["searched"]}
    stage1 = [
        (als.SEARCH_FACTORS, reg, alpha)
        for alpha in als.SEARCH_ALPHAS
        for reg in als.SEARCH_REGULARIZATIONS
    ]
    assert list(searched)[:12] == stage1
    best1 = max(stage1, key=searched.get)
    stage2 = [(best1[0], best1[1] * f, best1[2]) for f in (als.REFINE_STEP, 1 / als.REFINE_STEP)]
    assert list(searched)[12:14] == stage2
    best2 = max(stage1 + stage2, key=searched.get)
    assert list(searched)[14:] == [(f, best2[1], best2[2]) for f in als.SEARCH_FACTOR_CHOICES]
    # the served setting is the best one searched (the first of equal scores), refitted
    assert tuple(model.params["tuned"]) == max(searched, key=searched.get)
    assert model.params["fitted"] == list(model.params["tuned"])
    assert model.user_factors.shape == (data.n_users, model.params["tuned"][0])


@pytest.mark.parametrize(
    "factory",
    [
        lambda: EASERecommender(),
        lambda: ALSRecommender(grid=((8, 0.1, 5.0),)),
        lambda: LightFMPeer(components=8, epoch_grid=(15,)),
        lambda: LightFMPeer(text=True, components=8, epochs=15),
    ],
    ids=["ease", "als", "lightfm", "lightfm_text"],
)
def test_peer_ranks_the_planted_groups(factory, tmp_path) -> None:
    data = _blocks()
    split = rank_split(data)
    model = factory()
    model.fit(split.train, seed=0)
    scores = model.score_users(np.arange(data.n_users))
    assert scores.shape == (data.n_users, data.n_products) and scores.dtype == np.float32
    # each user's own half of the catalogue outranks the other half on average
    own = np.where(
        (np.arange(data.n_users) % 2 == 0)[:, None], np.arange(40) < 20, np.arange(40) >= 20
    )
    assert (
        scores[own].reshape(data.n_users, 20).mean(1)
        > scores[~own].reshape(data.n_users, 20).mean(1)
    ).mean() > 0.9
    metrics = ranking_metrics(model.score_users, split.train, split.test)
    # random lists hit ~10/40 of relevant; the planted structure gives far better
    assert metrics["recall@10"] > 0.4
    with pytest.raises(NotImplementedError):
        model.predict(np.array([0]), np.array([0]))
    model.save(tmp_path / "m")
    loaded = catalog.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.score_users(np.arange(5)), model.score_users(np.arange(5)))


def test_lightfm_text_scores_cold_products_through_text() -> None:
    data = _blocks()
    model = LightFMPeer(text=True, components=8, epochs=20)
    model.fit(data)
    # two new products: one with the first group's text, one with the second's
    text = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32)
    scores = model.score_new_products(np.arange(data.n_users), text)
    first_group = np.arange(data.n_users) % 2 == 0
    assert (scores[first_group, 0] > scores[first_group, 1]).mean() > 0.8
    assert (scores[~first_group, 1] > scores[~first_group, 0]).mean() > 0.8


def test_peers_are_in_the_catalogue_and_deterministic() -> None:
    for name in PEERS:
        assert name in catalog.MODELS
    data = _blocks()
    a = catalog.create("als", grid=((8, 0.1, 5.0),))
    b = catalog.create("als", grid=((8, 0.1, 5.0),))
    a.fit(data, seed=3)
    b.fit(data, seed=3)
    np.testing.assert_allclose(a.score_users(np.arange(4)), b.score_users(np.arange(4)), rtol=1e-5)


@pytest.mark.slow
def test_evaluate_command_compares_peers_and_the_ranker(
    engine, settings, cli_env, tmp_path
) -> None:
    import json

    from click.testing import CliRunner

    from recsys.cli import cli
    from recsys.features.store import build_features
    from recsys.ingest.load import load_files
    from recsys.ingest.sample import write_sample

    files = write_sample(tmp_path / "sample", users=120, products=50, ratings=2000, seed=5)
    load_files(engine, settings, ratings=[files.ratings_path], metadata=[files.metadata_path])
    build_features(engine, settings, dim=8, epochs=2, min_count=1, create_hnsw=False)
    out = tmp_path / "eval.json"
    args = [
        "evaluate",
        "--models",
        "popularity,ease,lightfm_text,ranker",
        "--min-ratings",
        "0",
        "--epochs",
        "3",
        "--json",
        str(out),
    ]
    result = CliRunner().invoke(cli, args, env=cli_env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert set(payload) == {"popularity", "ease", "lightfm_text", "ranker"}
    for name in ("popularity", "ease", "lightfm_text"):
        assert payload[name]["seed"] is None  # peers rank, they predict no ratings
    assert payload["ranker"]["seed"]["rmse"] > 0
    # same rank split for every model: the same evaluated users
    users = {payload[n]["rank"]["n_eval_users"] for n in payload}
    assert len(users) == 1 and users.pop() > 0
    # the sample has planted tastes: the item-item peer beats the one list for everyone
    assert payload["ease"]["rank"]["ndcg@10"] > payload["popularity"]["rank"]["ndcg@10"]
