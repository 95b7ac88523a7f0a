"""The per-product counts a recommendation run stores with its rows (migration 0007), and the
report's figures read from them: equal to SQL over the run's rows, complete or absent with the
rows, deleted with the run, and the same figures from a run's rows where none were stored."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from test_nightly_support import add_catalogue, trained_model
from test_report import Page

from recsys.report import queries as q
from recsys.scoring import publish
from recsys.scoring.publish import RunWriter, ScoreBatch
from recsys.scoring.score import ScoreOptions, score_and_write

STORED = (
    "SELECT product_id, n_users, n_first, rank_sum, n_ratings, popularity_pct "
    "FROM recommendation_product_counts WHERE run_id = :r ORDER BY product_id"
)
FROM_ROWS = """
WITH pop AS (
    SELECT product_id, count(*) AS n, percent_rank() OVER (ORDER BY count(*)) AS pr
    FROM ratings GROUP BY product_id)
SELECT r.product_id, count(*), count(*) FILTER (WHERE r.rank = 1), sum(r.rank), pop.n, pop.pr
FROM recommendations r LEFT JOIN pop USING (product_id)
WHERE r.run_id = :r
GROUP BY r.product_id, pop.n, pop.pr
ORDER BY r.product_id
"""


@pytest.fixture
def catalogue(engine: sa.Engine) -> sa.Engine:
    with engine.begin() as conn:
        add_catalogue(conn, n_users=30, n_products=50, n_ratings=300, seed=2)
        # products nobody rated: they reach the counts only through a hand-written run below
        conn.execute(
            sa.text(
                "INSERT INTO products (external_id, title) "
                "SELECT 'new' || g, 'New ' || g FROM generate_series(1, 3) g"
            )
        )
    return engine


def _rows(conn: sa.Connection, sql: str, run_id: int) -> list[tuple]:
    return [tuple(r) for r in conn.execute(sa.text(sql), {"r": run_id}).all()]


def _assert_stored_equal_rows(conn: sa.Connection, run_id: int) -> None:
    stored, expected = _rows(conn, STORED, run_id), _rows(conn, FROM_ROWS, run_id)
    assert stored, "no counts stored"
    assert [r[:5] for r in stored] == [r[:5] for r in expected]
    assert [r[5] for r in stored] == pytest.approx([r[5] for r in expected], abs=1e-12)
    stats = conn.execute(
        sa.text("SELECT list_stats FROM recommendation_runs WHERE id = :r"), {"r": run_id}
    ).scalar_one()
    assert stats == {
        "products": len(expected),
        "catalogue": conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one(),
        "rated_products": conn.execute(
            sa.text("SELECT count(DISTINCT product_id) FROM ratings")
        ).scalar_one(),
    }


def test_scoring_stores_counts_equal_to_a_group_by_over_the_rows(
    catalogue: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish, "FLUSH_ROWS", 17)  # many COPYs, counted one by one
    with catalogue.connect() as conn:
        model = trained_model(conn)
    run = score_and_write(catalogue, model, ScoreOptions(k=4), publish=False)
    with catalogue.connect() as conn:
        _assert_stored_equal_rows(conn, run.run_id)


def test_hand_written_run_with_unrated_products_and_a_failed_writer(catalogue: sa.Engine) -> None:
    with catalogue.connect() as conn:
        users = conn.execute(sa.text("SELECT id FROM users ORDER BY id LIMIT 6")).scalars().all()
        products = conn.execute(sa.text("SELECT id FROM products ORDER BY id")).scalars().all()
    rng = np.random.default_rng(3)
    with catalogue.begin() as conn:
        run_id = publish.begin_run(conn, k=3, model_run_id=None, model_type=None)
    with catalogue.begin() as conn:
        writer = RunWriter(conn, run_id)
        for part in (users[:2], users[2:]):
            chosen = np.concatenate([rng.choice(products, 3, replace=False) for _ in part])
            writer.write(
                ScoreBatch(
                    np.repeat(np.asarray(part, dtype=np.int64), 3),
                    np.tile(np.arange(1, 4, dtype=np.int16), len(part)),
                    chosen.astype(np.int64),
                    np.ones(len(chosen), dtype=np.float32),
                    np.zeros(len(chosen), dtype=np.int8),
                )
            )
        # the three unrated products, in one more user's list
        writer.write(
            ScoreBatch(
                np.full(3, users[0] + 10_000, dtype=np.int64),
                np.arange(1, 4, dtype=np.int16),
                np.asarray(products[-3:], dtype=np.int64),
                np.ones(3, dtype=np.float32),
                np.zeros(3, dtype=np.int8),
            )
        )
        writer.finish({"model": 7})
    with catalogue.connect() as conn:
        _assert_stored_equal_rows(conn, run_id)
        unrated = conn.execute(
            sa.text(
                "SELECT count(*) FROM recommendation_product_counts WHERE run_id = :r "
                "AND n_ratings IS NULL AND popularity_pct IS NULL"
            ),
            {"r": run_id},
        ).scalar_one()
    assert unrated == 3

    # a writer that dies before finishing leaves neither rows nor counts
    with catalogue.begin() as conn:
        failed = publish.begin_run(conn, k=3, model_run_id=None, model_type=None)
    with pytest.raises(RuntimeError), catalogue.begin() as conn:
        writer = RunWriter(conn, failed)
        writer.write(
            ScoreBatch(
                np.asarray(users[:1] * 3, dtype=np.int64),
                np.arange(1, 4, dtype=np.int16),
                np.asarray(products[:3], dtype=np.int64),
                np.ones(3, dtype=np.float32),
                np.zeros(3, dtype=np.int8),
            )
        )
        writer.flush()
        raise RuntimeError("killed")
    with catalogue.connect() as conn:
        left = conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM recommendations WHERE run_id = :r), "
                "(SELECT count(*) FROM recommendation_product_counts WHERE run_id = :r)"
            ),
            {"r": failed},
        ).one()
    assert tuple(left) == (0, 0)


def test_pruned_runs_take_their_counts_with_them(catalogue: sa.Engine) -> None:
    with catalogue.connect() as conn:
        model = trained_model(conn)
    runs = [score_and_write(catalogue, model, ScoreOptions(k=4), keep=1).run_id for _ in range(3)]
    with catalogue.connect() as conn:
        left = conn.execute(
            sa.text("SELECT DISTINCT run_id FROM recommendation_product_counts")
        ).scalars()
        assert list(left) == [runs[-1]]


def _report_parts(engine: sa.Engine, run_id: int) -> tuple[q.ListStats, q.Overlap]:
    with engine.connect() as conn, conn.begin():
        rec = q._rec_run(conn, run_id, q.table_columns(conn, "recommendation_runs"))
        lists = q.stored_list_stats(conn, rec) if rec.list_stats else q.list_stats(conn, run_id)
        over = q.overlap(conn, rec, seed=0)
        conn.rollback()
    return lists, over


def test_stored_and_row_figures_agree_and_product_overlap_matches_sql(
    catalogue: sa.Engine,
) -> None:
    with catalogue.connect() as conn:
        model = trained_model(conn)
    first = score_and_write(catalogue, model, ScoreOptions(k=4)).run_id
    with catalogue.begin() as conn:
        conn.execute(sa.text("DELETE FROM ratings WHERE (user_id * 7 + product_id) % 4 = 0"))
    with catalogue.connect() as conn:
        model = trained_model(conn)
    second = score_and_write(catalogue, model, ScoreOptions(k=4)).run_id

    stored, over = _report_parts(catalogue, second)
    assert stored.stored and over.products is not None
    with catalogue.connect() as conn:
        per_product = {
            run: dict(
                conn.execute(
                    sa.text(
                        "SELECT product_id, count(*) FROM recommendations WHERE run_id = :r "
                        "GROUP BY product_id"
                    ),
                    {"r": run},
                ).all()
            )
            for run in (first, second)
        }
        shared_pairs = conn.execute(
            sa.text(
                "SELECT count(*) FROM recommendations a JOIN recommendations b "
                "ON b.run_id = :p AND b.user_id = a.user_id AND b.product_id = a.product_id "
                "WHERE a.run_id = :r"
            ),
            {"r": second, "p": first},
        ).scalar_one()
    now, before = per_product[second], per_product[first]
    bound = sum(min(n, before.get(p, 0)) for p, n in now.items())
    assert over.products == q.ProductOverlap(
        products=len(now),
        previous_products=len(before),
        shared_products=len(set(now) & set(before)),
        rows=sum(now.values()),
        shared_rows_bound=bound,
    )
    assert shared_pairs <= bound

    # the same run without stored counts (as written before migration 0007): same figures
    with catalogue.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM recommendation_product_counts WHERE run_id = :r"), {"r": second}
        )
        conn.execute(
            sa.text("UPDATE recommendation_runs SET list_stats = NULL WHERE id = :r"),
            {"r": second},
        )
    from_rows, over_rows = _report_parts(catalogue, second)
    assert not from_rows.stored and over_rows.products is None
    for name in ("products_recommended", "rows", "catalogue", "rated_products", "buckets"):
        assert getattr(from_rows, name) == getattr(stored, name), name
    assert from_rows.bucket_products == stored.bucket_products
    assert [(t.asin, t.users, t.first) for t in from_rows.top] == [
        (t.asin, t.users, t.first) for t in stored.top
    ]
    assert [t.mean_rank for t in from_rows.top] == pytest.approx([t.mean_rank for t in stored.top])
    assert [t.percentile for t in from_rows.top] == pytest.approx(
        [t.percentile for t in stored.top]
    )
    assert (over_rows.mean_share, over_rows.identical) == (over.mean_share, over.identical)


def test_the_page_shows_the_product_overlap_or_says_not_recorded(
    engine: sa.Engine, settings
) -> None:
    from test_pipeline import _steps

    from recsys.pipeline import run
    from recsys.report import write_report

    with engine.begin() as conn:
        add_catalogue(conn, n_users=15, n_products=20, n_ratings=120, seed=4)
    run(engine, settings, steps=_steps())
    result = run(engine, settings, steps=_steps())
    page = Page(result.report_path.read_text(encoding="utf-8"))
    with engine.connect() as conn:
        current, previous = conn.execute(
            sa.text("SELECT max(id), min(id) FROM recommendation_runs")
        ).one()
        shared = conn.execute(
            sa.text(
                "SELECT count(*) FROM (SELECT DISTINCT product_id FROM recommendations "
                "WHERE run_id = :r INTERSECT SELECT DISTINCT product_id FROM recommendations "
                "WHERE run_id = :p) x"
            ),
            {"r": current, "p": previous},
        ).scalar_one()
    assert int(page.figures["overlap-shared-products"]) == shared
    assert 0 < float(page.figures["overlap-rows-bound"]) <= 1
    assert "the moment the run was scored" in page.text

    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM recommendation_product_counts"))
        conn.execute(sa.text("UPDATE recommendation_runs SET list_stats = NULL"))
    again = Page(write_report(engine, settings.home, result.run_id).read_text(encoding="utf-8"))
    assert "overlap-shared-products" not in again.figures
    assert "Per product: not recorded" in again.text
    assert "the ratings of now" in again.text
    for name in ("products-recommended", "catalogue", "coverage", "overlap", "top-decile-share"):
        assert again.figures[name] == page.figures[name], name
