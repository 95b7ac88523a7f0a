"""Fold-in through the nightly scoring: users outside the training filter who rated a product
the model knows get exact model lists from their history; only users without such a rating
get the fallback; counts stay {strategy: users} and params record how many were folded in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from recsys.config import Settings

pytestmark = pytest.mark.slow


def test_users_outside_the_filter_are_folded_in(
    engine: sa.Engine, settings: Settings, tmp_path: Path
) -> None:
    from recsys.features.store import build_features
    from recsys.ingest.load import load_files
    from recsys.ingest.sample import write_sample
    from recsys.model.train import TrainConfig, train_run
    from recsys.scoring.score import ScoreOptions, load_model, score_and_write

    files = write_sample(tmp_path / "sample", users=100, products=40, ratings=1600, seed=5)
    load_files(engine, settings, ratings=[files.ratings_path], metadata=[files.metadata_path])
    build_features(engine, settings, dim=8, epochs=1, min_count=1)
    result = train_run(
        engine,
        settings,
        TrainConfig(
            model="ranker",
            epochs=3,
            embedding_dim=8,
            min_ratings=15,
            evaluate=False,
            min_train_ratings=10,
            params={"rating_head": False},
        ),
    )
    model = load_model(engine, settings, result.run_id)
    model_products = set(model.product_ids.tolist())
    with engine.begin() as conn:
        # one user who rated only a product the model does not know: fallback
        outside = conn.execute(
            sa.text("SELECT id FROM products WHERE NOT (id = ANY(:p)) ORDER BY id LIMIT 1"),
            {"p": list(model_products)},
        ).scalar()
        if outside is None:
            outside = conn.execute(
                sa.text("INSERT INTO products (external_id) VALUES ('OUT-1') RETURNING id")
            ).scalar()
        lonely = conn.execute(
            sa.text("INSERT INTO users (external_id) VALUES ('LONELY') RETURNING id")
        ).scalar()
        conn.execute(
            sa.text(
                "INSERT INTO ratings (user_id, product_id, rating, rated_at) "
                "VALUES (:u, :p, 5, now())"
            ),
            {"u": lonely, "p": outside},
        )
        users = np.array(conn.execute(sa.text("SELECT id FROM users")).scalars().all())
        pairs = np.array(conn.execute(sa.text("SELECT user_id, product_id FROM ratings")).all())
    in_model = set(model.user_ids.tolist())
    rates_known = {int(u) for u, p in pairs if int(p) in model_products}
    expected_folded = rates_known - in_model
    assert expected_folded, "the filter should have dropped users who rated model products"
    summary = score_and_write(engine, model, ScoreOptions(k=5), publish=False)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT user_id, product_id, score, strategy, rank FROM recommendations "
                "WHERE run_id = :r ORDER BY user_id, rank"
            ),
            {"r": summary.run_id},
        ).all()
        params = conn.execute(
            sa.text("SELECT params FROM recommendation_runs WHERE id = :r"), {"r": summary.run_id}
        ).scalar()
    strategy = {int(u): s for u, _, _, s, rank in rows if rank == 1}
    assert set(strategy) == set(users.tolist())
    for user in rates_known:
        assert strategy[user] == "model"
    for user in set(users.tolist()) - rates_known:
        assert strategy[user] != "model"
    assert strategy[int(lonely)] in ("category_popularity", "popularity")
    assert params["folded_in"] == len(expected_folded)
    assert summary.counts["model"] == len(rates_known)
    assert sum(summary.counts.values()) == len(users)
    # a folded-in user's list is the exact top-5 of the model's scores of their history
    recommender = model.recommender
    columns = {int(p): i for i, p in enumerate(model.product_ids)}
    user = sorted(expected_folded)[0]
    history = sorted({columns[int(p)] for u, p in pairs if int(u) == user and int(p) in columns})
    scores = recommender.score_vectors(
        recommender.user_vectors_for(np.array(history), np.zeros(len(history), int), 1)
    )[0]
    scores[history] = -np.inf
    order = np.lexsort((model.product_ids, -scores))[:5]
    listed = [(int(p), float(s)) for u, p, s, _, _ in rows if int(u) == user]
    assert [p for p, _ in listed] == model.product_ids[order].tolist()
    np.testing.assert_allclose([s for _, s in listed], scores[order], rtol=1e-5)
