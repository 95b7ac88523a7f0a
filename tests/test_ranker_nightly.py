"""The ranker (a candidate of the default nightly model) through the real nightly commands: its
published lists satisfy the nightly issue's invariants (k distinct unrated products per user,
ranks 1..k, scores non-increasing, equal to the exact top-k of its scores), the verify gate
compares fast scores with the Keras model, and new products reach lists through the text path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from recsys.cli import cli
from recsys.config import Settings
from recsys.model import catalog

pytestmark = pytest.mark.slow

K = 5
NEW_PRODUCTS = ("NEW-A", "NEW-B")


@pytest.fixture
def trained(engine: sa.Engine, settings: Settings, tmp_path: Path) -> int:
    from recsys.features.store import build_features
    from recsys.ingest.load import load_files
    from recsys.ingest.sample import write_sample
    from recsys.model.train import TrainConfig, train_run

    files = write_sample(tmp_path / "sample", users=150, products=60, ratings=2500, seed=3)
    load_files(engine, settings, ratings=[files.ratings_path], metadata=[files.metadata_path])
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO products (external_id, title, brand, description, categories) "
                "SELECT n, p.title, p.brand, p.description, p.categories FROM products p, "
                "unnest(CAST(:new AS text[])) n WHERE p.id = (SELECT min(id) FROM products)"
            ),
            {"new": list(NEW_PRODUCTS)},
        )
    build_features(engine, settings, dim=16, epochs=2, min_count=1)
    result = train_run(
        engine,
        settings,
        TrainConfig(
            model="ranker",
            epochs=10,
            embedding_dim=16,
            min_ratings=0,
            evaluate=False,
            min_train_ratings=10,
        ),
    )
    return result.run_id


def _invoke(args: list[str], env: dict[str, str]):
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_the_rankers_lists_hold_the_invariants(
    trained: int, engine: sa.Engine, settings: Settings, cli_env: dict[str, str]
) -> None:
    from recsys.pipeline import check_model
    from recsys.scoring.score import load_model

    assert catalog.spec("ranker").auto_candidate  # a candidate of the default nightly model
    model = load_model(engine, settings, trained)
    assert model.recommender.name == "ranker"
    gate = check_model(model, n_users=20)
    assert gate["compared_with"] == "direct_scores" and gate["max_abs_diff"] < 1e-3

    _invoke(["score", "--run", str(trained), "-k", str(K)], cli_env)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT r.user_id, r.product_id, r.rank, r.score FROM recommendations r "
                "JOIN published_recommendations pr ON pr.run_id = r.run_id "
                "ORDER BY r.user_id, r.rank"
            )
        ).all()
        rated = set(conn.execute(sa.text("SELECT user_id, product_id FROM ratings")).all())
        n_users = conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one()
        served = conn.execute(sa.text("SELECT count(*) FROM current_recommendations")).scalar_one()
    assert len(rows) == n_users * K == served
    by_user: dict[int, list] = {}
    for user, product, rank, score in rows:
        by_user.setdefault(int(user), []).append((int(product), int(rank), float(score)))
    column = {int(p): i for i, p in enumerate(model.product_ids)}
    row_of = {int(u): i for i, u in enumerate(model.user_ids)}
    for user, items in by_user.items():
        products = [p for p, _, _ in items]
        assert [r for _, r, _ in items] == list(range(1, K + 1))
        assert len(set(products)) == K
        assert not any((user, p) in rated for p in products)
        scores = [s for _, _, s in items]
        assert all(a >= b - 1e-6 for a, b in zip(scores, scores[1:], strict=False))
        assert all(p in column for p in products)  # without --cold-start: model products only
    # the lists are the exact top-k of score_users over each user's unrated products
    for user in list(by_user)[:: max(1, len(by_user) // 10)]:
        u = row_of[user]
        scores = model.recommender.score_users(np.array([u], np.int32))[0].astype(np.float64)
        for product in model.product_ids:
            if (user, int(product)) in rated:
                scores[column[int(product)]] = -np.inf
        best = np.argsort(-scores, kind="stable")[:K]
        got = [column[p] for p, _, _ in by_user[user]]
        np.testing.assert_allclose(scores[got], scores[best], rtol=1e-5, atol=1e-5)


def test_new_products_reach_lists_through_the_ranker_text_path(
    trained: int, engine: sa.Engine, cli_env: dict[str, str]
) -> None:
    with engine.connect() as conn:
        n_products = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
    _invoke(["score", "--run", str(trained), "-k", str(n_products), "--cold-start"], cli_env)
    with engine.connect() as conn:
        cold = (
            conn.execute(
                sa.text(
                    "SELECT DISTINCT asin FROM current_recommendations "
                    "WHERE strategy = 'cold_start'"
                )
            )
            .scalars()
            .all()
        )
    assert sorted(cold) == sorted(NEW_PRODUCTS)
