"""Publishing (issue 5): atomic switch, keep N, rollback; readers never see a partial list."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from test_nightly_support import add_catalogue, trained_model

from recsys.errors import RecsysError
from recsys.scoring import publish
from recsys.scoring.score import ScoreOptions, score_and_write


@pytest.fixture
def catalogue(engine: sa.Engine) -> sa.Engine:
    with engine.begin() as conn:
        add_catalogue(conn, n_users=30, n_products=50, n_ratings=300, seed=2)
    return engine


def _served(engine: sa.Engine) -> int | None:
    with engine.connect() as conn:
        return publish.published_run_id(conn)


def test_publish_keep_and_rollback(catalogue: sa.Engine) -> None:
    with catalogue.connect() as conn:
        model = trained_model(conn)
    runs = [score_and_write(catalogue, model, ScoreOptions(k=4), keep=2).run_id for _ in range(3)]
    assert _served(catalogue) == runs[2]
    with catalogue.connect() as conn:
        kept = (
            conn.execute(sa.text("SELECT id FROM recommendation_runs ORDER BY id")).scalars().all()
        )
        rows_of_deleted = conn.execute(
            sa.text("SELECT count(*) FROM recommendations WHERE run_id = :r"), {"r": runs[0]}
        ).scalar_one()
    assert kept == runs[1:] and rows_of_deleted == 0

    with catalogue.begin() as conn:
        assert publish.rollback(conn) == (runs[1], runs[2])
    assert _served(catalogue) == runs[1]
    with catalogue.begin() as conn, pytest.raises(RecsysError, match="no older ready run"):
        publish.rollback(conn)
    # a new run after a rollback: the served old run is not pruned away while it is served
    new = score_and_write(catalogue, model, ScoreOptions(k=4), publish=False, keep=1)
    assert _served(catalogue) == runs[1]
    with catalogue.begin() as conn:
        publish.publish_run(conn, new.run_id)
        publish.prune_runs(conn, 1)
        assert conn.execute(sa.text("SELECT id FROM recommendation_runs")).scalars().all() == [
            new.run_id
        ]


def test_publish_refuses_missing_or_unfinished_runs(catalogue: sa.Engine) -> None:
    with catalogue.begin() as conn:
        with pytest.raises(RecsysError, match="nothing is published"):
            publish.rollback(conn)
        with pytest.raises(RecsysError, match="does not exist"):
            publish.publish_run(conn, 999)
        run = publish.begin_run(conn, k=3, model_run_id=None, model_type=None)
        with pytest.raises(RecsysError, match="scoring, not ready"):
            publish.publish_run(conn, run)
        assert publish.fail_abandoned_runs(conn) == 1


def test_view_has_the_documented_columns(catalogue: sa.Engine) -> None:
    with catalogue.connect() as conn:
        model = trained_model(conn)
    score_and_write(catalogue, model, ScoreOptions(k=3))
    with catalogue.connect() as conn:
        result = conn.execute(
            sa.text(
                "SELECT * FROM current_recommendations WHERE user_external_id = 'u3' ORDER BY rank"
            )
        )
        rows = result.mappings().all()
    assert list(result.keys()) == [
        "user_external_id",
        "rank",
        "asin",
        "title",
        "brand",
        "score",
        "strategy",
        "generated_at",
        "reason",
        "because_asin",
        "because_title",
    ]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(r["title"].startswith("Product ") and r["brand"].startswith("Brand ") for r in rows)
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]


def test_reader_never_sees_a_partial_or_empty_list_during_publish(catalogue: sa.Engine) -> None:
    k = 5
    with catalogue.connect() as conn:
        model = trained_model(conn)
        n_users = conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one()
    score_and_write(catalogue, model, ScoreOptions(k=k))
    stop = threading.Event()
    seen: list[tuple[int, int, int, int]] = []  # (users, min rows, max rows, runs) per poll

    def reader() -> None:
        with catalogue.connect() as conn:
            while not stop.is_set():
                users, low, high, runs = conn.execute(
                    sa.text(
                        "SELECT count(*), min(n), max(n), count(DISTINCT g) FROM ("
                        "SELECT user_external_id, count(*) AS n, min(generated_at) AS g "
                        "FROM current_recommendations GROUP BY 1) t"
                    )
                ).one()
                conn.rollback()
                seen.append((users, low, high, runs))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(6):
            score_and_write(catalogue, model, ScoreOptions(k=k, batch_users=4), keep=2)
    finally:
        stop.set()
        thread.join()
    assert len(seen) > 20
    assert set(seen) == {(n_users, k, k, 1)}
