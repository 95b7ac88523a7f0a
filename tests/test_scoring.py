"""Exact top-k scoring (issue 5): tie-break, masking of rated products, fallbacks, batching."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from test_nightly_support import NumpyMF, add_catalogue, rating_data, trained_model

from recsys.errors import DataError, RecsysError
from recsys.scoring.publish import STRATEGIES
from recsys.scoring.score import ScoreOptions, ScoringModel, score_and_write, score_batches, top_k


def _brute_force(scores: np.ndarray, k: int, product_ids: np.ndarray) -> list[list[int]]:
    lists = []
    for row in scores:
        pairs = sorted(((-float(s), int(product_ids[c])) for c, s in enumerate(row) if s > -np.inf))
        lists.append([pid for _, pid in pairs[:k]])
    return lists


def test_top_k_breaks_ties_by_product_id_not_column() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]], dtype=np.float32)
    product_ids = np.array([50, 40, 30, 20, 10])
    rows, ranks, cols, values = top_k(scores, 3, product_ids)
    assert product_ids[cols].tolist() == [10, 30, 40]
    assert ranks.tolist() == [1, 2, 3] and values.tolist() == [3.0, 3.0, 3.0]


def test_top_k_skips_masked_and_returns_fewer_when_needed() -> None:
    scores = np.array([[-np.inf, 2.0, -np.inf], [-np.inf] * 3], dtype=np.float32)
    rows, ranks, cols, values = top_k(scores, 2, np.array([1, 2, 3]))
    assert rows.tolist() == [0] and cols.tolist() == [1] and ranks.tolist() == [1]


@hsettings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 30),
    st.integers(1, 12),
    st.integers(0, 2**31 - 1),
    st.integers(1, 4),
)
def test_top_k_equals_sorting_everything(n: int, p: int, k: int, seed: int, levels: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels + 1, (n, p)).astype(np.float32)  # many ties
    scores[rng.random((n, p)) < 0.2] = -np.inf
    product_ids = rng.permutation(1000)[:p]
    rows, ranks, cols, _ = top_k(scores, k, product_ids)
    got = [product_ids[cols[rows == r]].tolist() for r in range(n)]
    assert got == _brute_force(scores, k, product_ids)
    for r in range(n):
        assert ranks[rows == r].tolist() == list(range(1, (rows == r).sum() + 1))


def _published_rows(conn: sa.Connection, run_id: int) -> list[tuple]:
    return conn.execute(
        sa.text(
            "SELECT user_id, rank, product_id, score, strategy FROM recommendations "
            "WHERE run_id = :r ORDER BY user_id, rank"
        ),
        {"r": run_id},
    ).all()


@pytest.fixture
def catalogue(engine: sa.Engine) -> sa.Engine:
    with engine.begin() as conn:
        add_catalogue(conn, n_users=40, n_products=60, n_ratings=500, seed=1)
    return engine


def test_scores_are_exact_and_rated_products_never_recommended(catalogue: sa.Engine) -> None:
    with catalogue.begin() as conn:
        model = trained_model(conn)
        # a rating that arrives after training must be masked too
        conn.execute(
            sa.text(
                "INSERT INTO ratings (user_id, product_id, rating, rated_at) "
                "SELECT :u, p.id, 5, now() FROM products p WHERE p.id NOT IN "
                "(SELECT product_id FROM ratings WHERE user_id = :u) ORDER BY p.id LIMIT 5"
            ),
            {"u": int(model.user_ids[0])},
        )
    summary = score_and_write(catalogue, model, ScoreOptions(k=10, batch_users=7), publish=True)
    assert summary.n_users == 40 and summary.n_rows == 400
    with catalogue.connect() as conn:
        rated_recommended = conn.execute(
            sa.text(
                "SELECT count(*) FROM recommendations r JOIN ratings x "
                "ON x.user_id = r.user_id AND x.product_id = r.product_id"
            )
        ).scalar_one()
        assert rated_recommended == 0
        rows = _published_rows(conn, summary.run_id)
        rated = conn.execute(sa.text("SELECT user_id, product_id FROM ratings")).all()
    rated_by: dict[int, set[int]] = {}
    for u, p in rated:
        rated_by.setdefault(u, set()).add(p)
    # recompute each list from model.predict over every unrated product: same lists, same scores
    column_of = {int(p): i for i, p in enumerate(model.product_ids)}
    for u_index, user_id in enumerate(model.user_ids):
        candidates = [int(p) for p in model.product_ids if int(p) not in rated_by[int(user_id)]]
        predicted = model.recommender.predict(
            np.full(len(candidates), u_index), np.asarray([column_of[p] for p in candidates])
        )
        expected = sorted(zip((-predicted).tolist(), candidates, strict=True))[:10]
        got = [(pid, score) for uid, _, pid, score, _ in rows if uid == user_id]
        assert [pid for pid, _ in got] == [pid for _, pid in expected]
        np.testing.assert_allclose([s for _, s in got], [-s for s, _ in expected], rtol=1e-5)
    assert {strategy for *_, strategy in rows} == {"model"}


def test_batch_size_does_not_change_the_lists(catalogue: sa.Engine) -> None:
    with catalogue.connect() as conn:
        model = trained_model(conn)
        small = list(score_batches(conn, model, ScoreOptions(k=5, batch_users=3)))
        large = list(score_batches(conn, model, ScoreOptions(k=5, memory_mb=64)))

    def flat(batches):
        return sorted(
            (int(u), int(r), int(p))
            for b in batches
            for u, r, p in zip(b.user_ids, b.ranks, b.product_ids, strict=True)
        )

    assert len(small) > len(large) and flat(small) == flat(large)


class _Dot:
    """A dot-product model (``score_factors``), the form scored block by block in threads."""

    name = "dot"
    scores_are_ratings = False

    def __init__(self, n_users: int, n_products: int) -> None:
        rng = np.random.default_rng(7)
        # few distinct values: many tied scores, so the tie-break is exercised too
        self.u = rng.integers(-2, 3, (n_users, 4)).astype(np.float32)
        self.v = rng.integers(-2, 3, (n_products, 4)).astype(np.float32)
        self.b = rng.integers(0, 2, n_products).astype(np.float32)

    def score_factors(self):
        return self.u, self.v, self.b

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self.u[users] @ self.v.T + self.b


def test_blocks_scored_in_threads_give_the_same_rows(catalogue: sa.Engine, monkeypatch) -> None:
    from recsys.scoring import score as score_module

    threaded: list[int] = []
    original = score_module.ordered_in_threads

    def counting(task, items, threads):
        threaded.append(threads)
        yield from original(task, items, threads)

    monkeypatch.setattr(score_module, "ordered_in_threads", counting)
    with catalogue.connect() as conn:
        data = rating_data(conn)
        model = ScoringModel(
            _Dot(data.n_users, data.n_products), data.user_ids, data.product_ids, None, "dot"
        )

        def rows(threads: int) -> list[tuple]:
            options = ScoreOptions(k=5, batch_users=3, threads=threads)
            return [
                (int(u), int(r), int(p), float(sc), int(st))
                for b in score_batches(conn, model, options)
                for u, r, p, sc, st in zip(
                    b.user_ids, b.ranks, b.product_ids, b.scores, b.strategies, strict=True
                )
            ]

        one = rows(1)
        assert threaded == []  # one block at a time
        three = rows(3)
    assert threaded == [3]
    assert len(one) == 5 * data.n_users and three == one  # same rows, in the same order


def test_unknown_users_get_category_then_popularity_fallback(catalogue: sa.Engine) -> None:
    with catalogue.begin() as conn:
        model = trained_model(conn, min_user_ratings=14)  # the model knows only heavy raters
        conn.execute(sa.text("INSERT INTO users (external_id) VALUES ('brand-new')"))
        n_known = len(model.user_ids)
    assert 0 < n_known < 40
    summary = score_and_write(catalogue, model, ScoreOptions(k=10, fallback="category"))
    assert summary.counts.get("model") == n_known
    assert (
        summary.counts.get("category_popularity", 0) + summary.counts.get("popularity", 0)
        == 41 - n_known
    )
    with catalogue.connect() as conn:
        per_user = dict(
            conn.execute(
                sa.text("SELECT user_external_id, count(*) FROM current_recommendations GROUP BY 1")
            ).all()
        )
        assert len(per_user) == 41 and set(per_user.values()) == {10}
        new_user = conn.execute(
            sa.text(
                "SELECT strategy, asin FROM current_recommendations "
                "WHERE user_external_id = 'brand-new' ORDER BY rank"
            )
        ).all()
        most_rated = (
            conn.execute(
                sa.text(
                    "SELECT p.external_id FROM ratings r JOIN products p ON p.id = r.product_id "
                    "GROUP BY p.id ORDER BY count(*) DESC, p.id LIMIT 10"
                )
            )
            .scalars()
            .all()
        )
        assert [a for _, a in new_user] == most_rated and {s for s, _ in new_user} == {"popularity"}
        # a category fallback user: every category row is in a category they rated
        bad = conn.execute(
            sa.text(
                """
                SELECT count(*) FROM recommendations r JOIN products p ON p.id = r.product_id
                WHERE r.run_id = :run AND r.strategy = 'category_popularity'
                  AND p.categories[2] NOT IN (
                    SELECT q.categories[2] FROM ratings x JOIN products q ON q.id = x.product_id
                    WHERE x.user_id = r.user_id)
                """
            ),
            {"run": summary.run_id},
        ).scalar_one()
        n_category_rows = conn.execute(
            sa.text(
                "SELECT count(*) FROM recommendations WHERE run_id = :r "
                "AND strategy = 'category_popularity'"
            ),
            {"r": summary.run_id},
        ).scalar_one()
    assert bad == 0 and n_category_rows > 0


def test_deleted_product_is_never_recommended(catalogue: sa.Engine) -> None:
    with catalogue.begin() as conn:
        model = trained_model(conn)
        best = score_batches(conn, model, ScoreOptions(k=1))
        top_product = int(next(iter(best)).product_ids[0])
        conn.execute(sa.text("DELETE FROM products WHERE id = :p"), {"p": top_product})
    summary = score_and_write(catalogue, model, ScoreOptions(k=5))
    with catalogue.connect() as conn:
        n = conn.execute(
            sa.text("SELECT count(*) FROM recommendations WHERE run_id = :r AND product_id = :p"),
            {"r": summary.run_id, "p": top_product},
        ).scalar_one()
    assert n == 0


def test_nan_scores_fail_the_run_and_keep_the_published_one(catalogue: sa.Engine) -> None:
    with catalogue.connect() as conn:
        model = trained_model(conn)
    first = score_and_write(catalogue, model, ScoreOptions(k=3))
    model.recommender.nan = True
    with pytest.raises(DataError, match="NaN"):
        score_and_write(catalogue, model, ScoreOptions(k=3))
    with catalogue.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT run_id FROM published_recommendations")).scalar()
            == first.run_id
        )
        statuses = conn.execute(
            sa.text("SELECT id, status FROM recommendation_runs ORDER BY id")
        ).all()
        assert statuses == [(first.run_id, "ready"), (first.run_id + 1, "failed")]
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM recommendations WHERE run_id = :r"),
                {"r": first.run_id + 1},
            ).scalar_one()
            == 0
        )


def test_wrong_shape_from_model_is_a_clear_error(catalogue: sa.Engine) -> None:
    class Broken(NumpyMF):
        def score_users(self, users):
            return super().score_users(users)[:, :-1]

    with catalogue.connect() as conn:
        base = trained_model(conn)
    broken = Broken()
    broken.__dict__.update(base.recommender.__dict__)
    model = ScoringModel(broken, base.user_ids, base.product_ids)
    with pytest.raises(DataError, match="shape"):
        score_and_write(catalogue, model, ScoreOptions(k=3))


def test_options_are_checked() -> None:
    with pytest.raises(RecsysError):
        ScoreOptions(k=0)
    with pytest.raises(RecsysError):
        ScoreOptions(fallback="random")


def test_strategy_codes_are_the_values_the_schema_accepts(conn: sa.Connection) -> None:
    # a batch stores an index into STRATEGIES; the table's CHECK constraint must accept exactly
    # those names, in any order
    definition = conn.execute(
        sa.text(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'recommendations'::regclass AND contype = 'c' "
            "AND pg_get_constraintdef(oid) LIKE '%strategy%'"
        )
    ).scalar_one()
    assert sorted(re.findall(r"'([a-z_]+)'::text", definition)) == sorted(STRATEGIES)
    assert len(set(STRATEGIES)) == len(STRATEGIES)
