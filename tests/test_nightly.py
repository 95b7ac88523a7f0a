"""Nightly commands end to end with a real trained hybrid (issue 5): score, publish, recommend,
cold start, the read-only role, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from recsys.cli import cli
from recsys.config import Settings

K = 5
NEW_PRODUCTS = ("NEW-1", "NEW-2", "NEW-3")


@pytest.fixture
def trained(engine: sa.Engine, settings: Settings, tmp_path: Path) -> int:
    """A sample loaded, three unrated products added, features built, a small hybrid trained."""
    from recsys.features.store import build_features
    from recsys.ingest.load import load_files
    from recsys.ingest.sample import write_sample
    from recsys.model.train import TrainConfig, train_run

    files = write_sample(tmp_path / "sample", users=150, products=60, ratings=2500, seed=7)
    load_files(engine, settings, ratings=[files.ratings_path], metadata=[files.metadata_path])
    with engine.begin() as conn:
        # new products: text like an existing product's, no ratings at all
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
            model="hybrid",
            epochs=2,
            hidden_units=16,
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


def test_score_publish_recommend_with_a_real_hybrid(
    trained: int, engine: sa.Engine, settings: Settings, cli_env: dict[str, str]
) -> None:
    from recsys.pipeline import check_model
    from recsys.scoring.score import load_model

    model = load_model(engine, settings, trained)
    gate = check_model(model, n_users=20)
    assert gate["max_abs_diff"] < 1e-3  # the fast scorer equals model.predict

    _invoke(["score", "--run", str(trained), "-k", str(K), "--no-publish"], cli_env)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM current_recommendations")).scalar() == 0
    assert "serving recommendation run 1" in _invoke(["publish"], cli_env).output

    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT r.user_id, r.product_id, r.score FROM recommendations r "
                "WHERE run_id = 1 ORDER BY r.user_id, r.rank"
            )
        ).all()
        rated = conn.execute(sa.text("SELECT user_id, product_id FROM ratings")).all()
        n_users = conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one()
    assert len(rows) == n_users * K
    rated_set = set(rated)
    assert not any((u, p) in rated_set for u, p, _ in rows)
    # the published lists are the brute-force top-k of model.predict over unrated products
    column = {int(p): i for i, p in enumerate(model.product_ids)}
    for u_index in (0, 17, len(model.user_ids) - 1):
        user_id = int(model.user_ids[u_index])
        candidates = [int(p) for p in model.product_ids if (user_id, int(p)) not in rated_set]
        predicted = model.recommender.predict(
            np.full(len(candidates), u_index, dtype=np.int32),
            np.asarray([column[p] for p in candidates], dtype=np.int32),
        )
        best = sorted(zip((-predicted).tolist(), candidates, strict=True))[:K]
        got = [(p, s) for u, p, s in rows if u == user_id]
        assert [p for p, _ in got] == [p for _, p in best]
        np.testing.assert_allclose([s for _, s in got], [-s for s, _ in best], rtol=1e-4, atol=1e-4)

    with engine.connect() as conn:
        user, title = conn.execute(
            sa.text(
                "SELECT user_external_id, title FROM current_recommendations "
                "WHERE rank = 1 ORDER BY user_external_id LIMIT 1"
            )
        ).one()
    output = _invoke(["recommend", user], cli_env).output
    assert "top-rated products" in output and title[:20] in output and "recommendations" in output

    # a second run, then rollback serves the first again
    _invoke(["score", "--run", str(trained), "-k", str(K)], cli_env)
    listing = _invoke(["publish", "--list"], cli_env).output
    assert "ready" in listing
    assert "serving run 1 again (was 2)" in _invoke(["publish", "--rollback"], cli_env).output
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT run_id FROM published_recommendations")).scalar() == 1


def test_cold_start_scores_new_products_by_text(
    trained: int, engine: sa.Engine, cli_env: dict[str, str]
) -> None:
    with engine.connect() as conn:
        n_products = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
    # k above the catalogue size: every unrated product is listed, so the new ones must be
    _invoke(["score", "--run", str(trained), "-k", str(n_products), "--cold-start"], cli_env)
    with engine.connect() as conn:
        per_strategy = dict(
            conn.execute(
                sa.text(
                    "SELECT strategy, count(DISTINCT asin) FROM current_recommendations "
                    "GROUP BY strategy"
                )
            ).all()
        )
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
        users_with_all_new = conn.execute(
            sa.text(
                "SELECT count(*) FROM (SELECT user_external_id FROM current_recommendations "
                "WHERE strategy = 'cold_start' GROUP BY 1 HAVING count(*) = 3) t"
            )
        ).scalar_one()
        n_users = conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one()
    assert sorted(cold) == sorted(NEW_PRODUCTS) and per_strategy["cold_start"] == 3
    assert users_with_all_new == n_users


def test_without_cold_start_new_products_are_not_recommended(
    trained: int, engine: sa.Engine, cli_env: dict[str, str]
) -> None:
    _invoke(["score", "--run", str(trained), "-k", "100"], cli_env)
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM current_recommendations WHERE asin LIKE 'NEW-%'")
            ).scalar_one()
            == 0
        )


@pytest.mark.subprocess
def test_unknown_user_and_nothing_to_roll_back_are_one_line(
    cli_env: dict[str, str], engine
) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO users (external_id) VALUES ('known')"))
    for args, expected in (
        (["recommend", "nobody"], "recsys: error: unknown user 'nobody'"),
        (["recommend", "known"], "recsys: error: no recommendations are published yet"),
        (["publish", "--rollback"], "recsys: error: nothing is published yet"),
        (["score"], "recsys: error: no trained model yet"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "recsys", *args],
            env={**os.environ, **cli_env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and lines[0].startswith(expected), result.stderr


def test_reader_role_can_read_the_view_and_nothing_else(
    db_url: str, engine: sa.Engine, cli_env: dict[str, str]
) -> None:
    from test_nightly_support import add_catalogue, trained_model

    from recsys.scoring.score import ScoreOptions, score_and_write

    with engine.begin() as conn:
        add_catalogue(conn, n_users=5, n_products=20, n_ratings=30)
        model = trained_model(conn)
    score_and_write(engine, model, ScoreOptions(k=3))
    name = f"reader_{uuid.uuid4().hex[:8]}"
    result = CliRunner().invoke(
        cli, ["db", "create-reader", name], env={**cli_env, "RECSYS_READER_PASSWORD": "pw-123"}
    )
    assert result.exit_code == 0, result.output
    assert "pw-123" not in result.output
    reader_url = make_url(db_url).set(username=name, password="pw-123")
    reader = sa.create_engine(reader_url, poolclass=sa.NullPool)
    try:
        with reader.connect() as conn:
            assert (
                conn.execute(sa.text("SELECT count(*) FROM current_recommendations")).scalar() == 15
            )
        for table in ("ratings", "users", "recommendations", "published_recommendations"):
            with (
                reader.connect() as conn,
                pytest.raises(sa.exc.ProgrammingError, match="permission"),
            ):
                conn.execute(sa.text(f"SELECT 1 FROM {table} LIMIT 1"))  # noqa: S608 - constant
        with reader.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="permission"):
            conn.execute(sa.text("CREATE TABLE mine (x int)"))
        again = CliRunner().invoke(
            cli, ["db", "create-reader", name], env={**cli_env, "RECSYS_READER_PASSWORD": "pw-456"}
        )
        assert again.exit_code == 0 and "updated role" in again.output
        bad = CliRunner().invoke(
            cli,
            ["db", "create-reader", "Robert'); DROP"],
            env={**cli_env, "RECSYS_READER_PASSWORD": "x"},
        )
        assert bad.exit_code != 0 and "bad role name" in str(bad.exception)
    finally:
        reader.dispose()
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP OWNED BY "{name}"'))
            conn.execute(sa.text(f'DROP ROLE "{name}"'))
