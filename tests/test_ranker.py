"""The ranking hybrid (issue 6): planted favourites recovered better than popularity on a
`recsys sample` set loaded through the real loader and feature store; exact scoring equals the
Keras model; cold products through text; save/load; determinism; the rating head. (Negatives
and the training step: tests/test_rank_trainer.py.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from recsys.evaluation.metrics import rating_metrics
from recsys.features.store import build_features
from recsys.ingest.load import load_files
from recsys.ingest.sample import expected_ratings, load_truth, write_sample
from recsys.model import catalog
from recsys.model.base import RatingData
from recsys.model.baselines import PopularityRecommender
from recsys.model.data import read_rating_data
from recsys.model.ranker import RankerRecommender, history_matrix

pytestmark = pytest.mark.slow

FAST = {"dim": 32, "epochs": 15, "batch_users": 32, "learning_rate": 0.01, "rating_epochs": 5}


@pytest.fixture(scope="module")
def sample(tmp_path_factory, pg_admin_url: str, template_db: str) -> Iterator[tuple]:
    """A `recsys sample` set through load_files -> build_features -> read_rating_data, once per
    module, in a fresh database of its own (made from the migrated template like ``engine``)."""
    from sqlalchemy.engine import make_url

    from recsys.config import Settings

    name = f"recsys_ranker_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    engine = sa.create_engine(url)
    out = tmp_path_factory.mktemp("ranker-sample")
    settings = Settings(database_url=url, home=out / "home")
    try:
        files = write_sample(out, users=300, products=120, ratings=9000, seed=11)
        load_files(engine, settings, ratings=[files.ratings_path], metadata=[files.metadata_path])
        build_features(engine, settings, dim=16, epochs=2, create_hnsw=False, save_vectors=False)
        with engine.connect() as conn:
            data = read_rating_data(conn, min_ratings=0, feature_set_id="current")
            users = dict(conn.execute(sa.text("SELECT id, external_id FROM users")).all())
            products = dict(conn.execute(sa.text("SELECT id, external_id FROM products")).all())
        truth = load_truth(files.truth_path)
        yield data, truth, {"users": users, "products": products}
    finally:
        engine.dispose()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _truth_index(data: RatingData, truth: dict, ids: dict) -> tuple[np.ndarray, np.ndarray]:
    """Row of the truth factors for each RatingData user and product index."""
    user_row = {str(e): i for i, e in enumerate(truth["user_ids"].tolist())}
    product_row = {str(e): i for i, e in enumerate(truth["product_ids"].tolist())}
    users = np.array([user_row[ids["users"][int(u)]] for u in data.user_ids])
    products = np.array([product_row[ids["products"][int(p)]] for p in data.product_ids])
    return users, products


@pytest.mark.parametrize("objective", ["full", "sampled"])
def test_ranker_recovers_planted_favourites_better_than_popularity(sample, objective) -> None:
    data, truth, ids = sample
    truth_users, truth_products = _truth_index(data, truth, ids)
    # "sampled": the large-catalogue objective (50 sampled unrated negatives, log-Q corrected)
    extra = {"full_softmax_max": 10, "sampled_negatives": 50} if objective == "sampled" else {}
    model = RankerRecommender(**{**FAST, "rating_head": False, **extra})
    model.fit(data, seed=0)
    popularity = PopularityRecommender()
    popularity.fit(data)
    history = history_matrix(data)
    users = np.arange(data.n_users)

    def precision(scores: np.ndarray) -> float:
        hits = []
        for u in users:
            rated = history.indices[history.indptr[u] : history.indptr[u + 1]]
            planted = expected_ratings(truth, truth_users[u])[truth_products]
            planted[rated] = -np.inf
            favourites = set(np.argsort(-planted)[:10].tolist())
            s = scores[u].copy()
            s[rated] = -np.inf
            hits.append(len(favourites & set(np.argsort(-s)[:10].tolist())) / 10)
        return float(np.mean(hits))

    ranker_p = precision(model.score_users(users))
    popularity_p = precision(popularity.score_users(users))
    assert ranker_p > popularity_p + 0.05, (ranker_p, popularity_p)


def test_scores_equal_the_keras_model_and_round_trip(sample, tmp_path: Path) -> None:
    data, _, _ = sample
    model = RankerRecommender(**FAST)
    model.fit(data, seed=1)
    users = np.arange(0, data.n_users, 7)
    fast = model.score_users(users)
    assert fast.shape == (len(users), data.n_products) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, model.direct_scores(users), rtol=1e-4, atol=1e-4)
    # in chunks of products (a last chunk shorter than the rest), the tower gives what its
    # whole-catalogue call gives
    rows = model.history[users].toarray().astype(np.float32)
    whole = np.asarray(model.tower((users.astype(np.int32), rows, model.text)))
    chunked = model.tower.direct_scores(users.astype(np.int32), rows, model.text, chunk=7)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
    vectors, bias = model.tower.catalogue_vectors(model.text, chunk=7)
    whole_vectors, whole_bias = model.tower.product_vectors(model.text)
    np.testing.assert_allclose(vectors, np.asarray(whole_vectors), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, np.asarray(whole_bias), rtol=1e-5, atol=1e-6)
    # the scores depend on the product text: replacing the text changes them
    product, bias = model.tower.product_vectors(np.zeros_like(model.text))
    assert not np.allclose(np.asarray(product), model.product_vectors)
    # cold products: the text path alone equals the tower with the id part dropped
    cold = model.score_new_products(users, data.text[:5])
    import tensorflow as tf

    no_id = model.tower.text_projection(tf.constant(model.text[:5]))
    expected = (
        model.user_vectors[users] @ np.asarray(no_id).T
        + np.asarray(model.tower.text_bias(tf.constant(model.text[:5])))[:, 0][None, :]
    )
    np.testing.assert_allclose(cold, expected, rtol=1e-5, atol=1e-5)

    model.save(tmp_path / "ranker")
    loaded = catalog.load(tmp_path / "ranker")
    assert loaded.name == "ranker"
    np.testing.assert_array_equal(loaded.score_users(users), fast)
    pairs_u, pairs_p = data.users[:50], data.products[:50]
    np.testing.assert_allclose(
        loaded.predict(pairs_u, pairs_p), model.predict(pairs_u, pairs_p), rtol=1e-6
    )
    # the unused per-user table is one row; files that hold a full one (as written before it
    # shrank, without "user_rows" in the meta) load with the same scores
    assert model.tower.user_embedding.embeddings.shape[0] == 1
    import json

    from recsys.model.base import META_FILE

    full = model._new_tower(data.n_users, data.n_products, model.text_dim, data.n_users)
    weights = model.tower.get_weights()
    weights[0] = np.ones((data.n_users, model.params["dim"]), dtype=np.float32)
    full.set_weights(weights)
    old = tmp_path / "ranker"
    full.save_weights(old / "ranking.weights.h5")
    meta = json.loads((old / META_FILE).read_text())
    del meta["user_rows"]
    (old / META_FILE).write_text(json.dumps(meta))
    reloaded = catalog.load(old)
    assert reloaded.tower.user_embedding.embeddings.shape[0] == data.n_users
    np.testing.assert_array_equal(reloaded.score_users(users), fast)


def test_rating_head_beats_the_global_mean_and_fit_is_deterministic(sample) -> None:
    from recsys.evaluation.splits import seed_split

    data, _, _ = sample
    split = seed_split(data)
    a = RankerRecommender(**FAST)
    a.fit(split.train, seed=5)
    b = RankerRecommender(**FAST)
    b.fit(split.train, seed=5)
    np.testing.assert_array_equal(a.score_users(np.arange(10)), b.score_users(np.arange(10)))
    ours = rating_metrics(a.predict, split.train, split.test)["rmse"]
    mean = float(split.train.ratings.mean())
    baseline = rating_metrics(lambda u, p: np.full(len(u), mean), split.train, split.test)["rmse"]
    assert ours < baseline


def test_epochs_are_tuned_on_a_train_internal_split(sample) -> None:
    data, _, _ = sample
    model = RankerRecommender(
        **{**FAST, "epochs": None, "max_epochs": 10, "eval_every": 5, "rating_head": False}
    )
    history = model.fit(data, seed=0)
    assert model.params["tuned_epochs"] in (5, 10)
    assert history.best_epoch == model.params["tuned_epochs"]
    assert len(history.train_loss) == model.params["tuned_epochs"]
    # every evaluation of the epoch search is in the history, the kept epoch among them
    assert [epoch for epoch, _ in history.val_ndcg] == [5, 10]
    assert all(0.0 <= value <= 1.0 for _, value in history.val_ndcg)
    assert history.best_epoch in [epoch for epoch, _ in history.val_ndcg]
    with pytest.raises(NotImplementedError):
        model.predict(np.array([0]), np.array([0]))


def test_targets_fall_back_to_every_rated_product_on_implicit_data(sample) -> None:
    from dataclasses import replace

    data, _, _ = sample
    # implicit feedback: every rating 1.0, none reaches target_min_rating (4)
    implicit = replace(data, ratings=np.ones_like(data.ratings))
    model = RankerRecommender(**{**FAST, "epochs": 5, "rating_head": False})
    history = model.fit(implicit, seed=0)
    # without the fallback there would be no targets at all and the loss would stay 0
    assert history.train_loss[0] > 0
    assert history.train_loss[-1] < history.train_loss[0]
    liked_only = RankerRecommender(**{**FAST, "epochs": 5, "rating_head": False})
    liked_history = liked_only.fit(data, seed=0)
    # with star ratings only the liked products are targets: a different objective
    assert liked_history.train_loss != history.train_loss
