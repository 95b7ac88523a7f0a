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


def _trained_on_filtered_sample(engine: sa.Engine, settings: Settings, tmp_path: Path, config):
    """A model trained by ``config`` on a loaded sample (with features), loaded for scoring."""
    from recsys.features.store import build_features
    from recsys.ingest.load import load_files
    from recsys.ingest.sample import write_sample
    from recsys.model.train import train_run
    from recsys.scoring.score import load_model

    files = write_sample(tmp_path / "sample", users=100, products=40, ratings=1600, seed=5)
    load_files(engine, settings, ratings=[files.ratings_path], metadata=[files.metadata_path])
    build_features(engine, settings, dim=8, epochs=1, min_count=1)
    result = train_run(engine, settings, config)
    return load_model(engine, settings, result.run_id)


def _ranker(epochs: int):
    """A small ranker whose filter (15 ratings) leaves most sample users to fold in."""
    from recsys.model.train import TrainConfig

    return TrainConfig(
        model="ranker",
        epochs=epochs,
        embedding_dim=8,
        min_ratings=15,
        evaluate=False,
        min_train_ratings=10,
        params={"rating_head": False},
    )


def _run_rows(engine: sa.Engine, run_id: int) -> list:
    """(user_id, product_id, score, strategy, rank) of a run's rows, by user then rank."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT user_id, product_id, score, strategy, rank FROM recommendations "
                "WHERE run_id = :r ORDER BY user_id, rank"
            ),
            {"r": run_id},
        ).all()


@pytest.mark.parametrize("batch_users", [None, 3])
def test_users_outside_the_filter_are_folded_in(
    engine: sa.Engine, settings: Settings, tmp_path: Path, batch_users
) -> None:
    """With ``batch_users=3`` the folded-in users' vectors are pooled 3 users at a time, and
    one block holds trained and folded-in users together (unless the model's users divide)."""
    from recsys.scoring.score import ScoreOptions, score_and_write

    model = _trained_on_filtered_sample(
        engine,
        settings,
        tmp_path,
        _ranker(epochs=3),
    )
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
    summary = score_and_write(
        engine, model, ScoreOptions(k=5, batch_users=batch_users), publish=False
    )
    rows = _run_rows(engine, summary.run_id)
    with engine.connect() as conn:
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


def test_als_folds_in_through_its_dot_product_form(
    engine: sa.Engine, settings: Settings, tmp_path: Path
) -> None:
    pytest.importorskip("implicit")
    from recsys.model.train import TrainConfig
    from recsys.scoring.score import ScoreOptions, score_and_write

    model = _trained_on_filtered_sample(
        engine,
        settings,
        tmp_path,
        TrainConfig(
            model="als",
            min_ratings=15,
            evaluate=False,
            min_train_ratings=10,
            params={"factors": 8, "regularization": 3.0, "alpha": 10.0},
        ),
    )
    with engine.connect() as conn:
        pairs = np.array(conn.execute(sa.text("SELECT user_id, product_id FROM ratings")).all())
    columns = {int(p): i for i, p in enumerate(model.product_ids)}
    folded = sorted({int(u) for u, p in pairs if int(p) in columns} - set(model.user_ids.tolist()))
    assert folded, "the filter should have dropped users who rated model products"
    from recsys.scoring.score import user_vectors_of

    assert user_vectors_of(model) is not None  # scored in blocks as a dot-product model
    summary = score_and_write(engine, model, ScoreOptions(k=5), publish=False)
    assert summary.counts["model"] == len(model.user_ids) + len(folded)
    rows = _run_rows(engine, summary.run_id)
    # each folded-in user's list is the exact top-5 of ALS's own history scores
    from scipy import sparse

    for user in folded[:5]:
        rated = {int(p) for u, p in pairs if int(u) == user}
        history = sorted(columns[p] for p in rated if p in columns)
        row = sparse.csr_matrix(
            (np.ones(len(history)), (np.zeros(len(history), int), history)),
            shape=(1, len(model.product_ids)),
        )
        scores = model.recommender.score_histories(row)[0]
        scores[history] = -np.inf
        order = np.lexsort((model.product_ids, -scores))[:5]
        listed = [(int(p), float(s)) for u, p, s, _, _ in rows if int(u) == user]
        assert [p for p, _ in listed] == model.product_ids[order].tolist()
        np.testing.assert_allclose([s for _, s in listed], scores[order], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_per_category", [None, 1])
def test_twins_get_the_rows_and_counts_of_scoring_each_one(
    engine: sa.Engine, settings: Settings, tmp_path: Path, max_per_category
) -> None:
    """Folded-in users with the same ratings share one scored list: the run's rows, rule counts
    and strategies are those of scoring every one of them (twins off)."""
    from recsys.scoring.score import ScoreOptions, score_and_write

    model = _trained_on_filtered_sample(
        engine,
        settings,
        tmp_path,
        _ranker(epochs=2),
    )
    known = [int(p) for p in model.product_ids[:5]]
    with engine.begin() as conn:
        asin = dict(
            conn.execute(
                sa.text("SELECT id, external_id FROM products WHERE id = ANY(:p)"), {"p": known}
            ).all()
        )
        outside = conn.execute(
            sa.text("INSERT INTO products (external_id) VALUES ('TWIN-OUT') RETURNING id")
        ).scalar()
        histories = {
            "T1": [known[0]],
            "T2": [known[0]],
            "T3": [known[0]],
            "T4": [known[0], outside],  # not a twin of T1: a different rating set
            "T5": [known[0], known[1]],
            "T6": [known[1], known[0]],
            "T7": [known[0], known[1]],  # has an exclusion: a list of their own
            "T8": [known[0], known[1]],
        }
        for name, rated in histories.items():
            user = conn.execute(
                sa.text("INSERT INTO users (external_id) VALUES (:n) RETURNING id"), {"n": name}
            ).scalar()
            for product in rated:
                conn.execute(
                    sa.text(
                        "INSERT INTO ratings (user_id, product_id, rating, rated_at) "
                        "VALUES (:u, :p, 4, now())"
                    ),
                    {"u": user, "p": product},
                )
        conn.execute(
            sa.text("UPDATE products SET available = false WHERE id = :p"), {"p": known[2]}
        )
        conn.execute(
            sa.text("INSERT INTO product_boosts (asin, factor) VALUES (:a, 50)"),
            {"a": asin[known[3]]},
        )
        conn.execute(
            sa.text("INSERT INTO user_exclusions (user_external_id, asin) VALUES ('T7', :a)"),
            {"a": asin[known[4]]},
        )

    def scored(twins: bool):
        options = ScoreOptions(k=5, max_per_category=max_per_category, twins=twins)
        summary = score_and_write(engine, model, options, publish=False)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT user_id, rank, product_id, score, strategy, reason, "
                    "because_product_id FROM recommendations WHERE run_id = :r "
                    "ORDER BY user_id, rank"
                ),
                {"r": summary.run_id},
            ).all()
            rule_counts, params = conn.execute(
                sa.text("SELECT rule_counts, params FROM recommendation_runs WHERE id = :r"),
                {"r": summary.run_id},
            ).one()
        return summary, rows, rule_counts, params

    shared, shared_rows, shared_counts, shared_params = scored(True)
    each, each_rows, each_counts, each_params = scored(False)
    # T2, T3 copy T1; T6, T8 copy T5; whatever twins the sample's own folded-in users have
    assert shared_params["twins"] >= 4 and each_params["twins"] == 0
    assert shared_params["folded_in"] == each_params["folded_in"]
    assert shared_params["users_total"] == each_params["users_total"]
    # the same rows; a score may differ in its last bit (blocks of other shapes in the matmul)
    assert [r[:3] + r[4:] for r in shared_rows] == [r[:3] + r[4:] for r in each_rows]
    np.testing.assert_allclose(
        [r[3] for r in shared_rows], [r[3] for r in each_rows], rtol=1e-5, atol=1e-6
    )
    assert shared_counts == each_counts
    assert shared.counts == each.counts and shared.n_rows == each.n_rows
    assert shared_counts["boosted"] > 0
    if max_per_category is not None:
        assert shared_counts["category_cap"] > 0
    by_user = {}
    for row in shared_rows:
        by_user.setdefault(row[0], []).append(row[1:])
    with engine.connect() as conn:
        ids = dict(
            conn.execute(
                sa.text("SELECT external_id, id FROM users WHERE external_id LIKE 'T_'")
            ).all()
        )
    assert by_user[ids["T2"]] == by_user[ids["T1"]] == by_user[ids["T3"]]
    assert by_user[ids["T6"]] == by_user[ids["T5"]]
