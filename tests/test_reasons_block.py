"""Reasons of a whole block at once equal the one-user definitions, ties and folded users included.

The ranker here is the real :class:`~recsys.model.ranker.RankerRecommender` with its tables
set by hand: integer-valued, and every history holds 1, 4 or 16 products, so the weight
``1 / sqrt(n)`` is a power of two and every contribution is exact in any summation order
(equal contributions are exactly equal: ties are real);
the one-user references are :func:`recsys.scoring.reasons.top_contributors` (through the
ranker's ``history_contributions``) and :meth:`recsys.scoring.reasons.TextReasons.most_similar`.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from scipy import sparse

from recsys.model.ranker import RankerRecommender
from recsys.scoring import reasons


class _Table:
    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def numpy(self) -> np.ndarray:
        return self.values


def _ranker(rng: np.random.Generator, n_users: int, n_products: int, dim: int, levels: int):
    """A ranker whose history table repeats rows (equal contributions) and whose users rated
    0, 1, 4 or 16 products."""
    h = rng.integers(-levels, levels + 1, (n_products, dim)).astype(np.float32)
    twins = rng.random(n_products) < 0.3
    h[twins] = h[0]  # several products contribute exactly alike
    ranker = RankerRecommender()
    ranker.tower = SimpleNamespace(history_embedding=SimpleNamespace(embeddings=_Table(h)))
    allowed = [n for n in (0, 1, 4, 16) if n <= n_products]
    lengths = rng.choice(allowed, n_users)
    rows, cols = [], []
    for u, n in enumerate(lengths.tolist()):
        picked = rng.choice(n_products, n, replace=False)
        rows += [u] * n
        cols += picked.tolist()
    ranker.history = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_users, n_products)
    )
    ranker.product_vectors = rng.integers(-levels, levels + 1, (n_products, dim)).astype(np.float32)
    ranker.user_vectors = np.zeros((n_users, dim), dtype=np.float32)
    ranker.n_users, ranker.n_products = n_users, n_products
    return ranker


@hsettings(max_examples=60, deadline=None)
@given(
    st.integers(1, 9),
    st.integers(1, 30),
    st.integers(1, 6),
    st.integers(0, 4),
    st.integers(1, 3),
    st.integers(0, 2**31 - 1),
)
def test_block_contributions_equal_the_one_user_definition(
    n_users, n_products, dim, n_folded, levels, seed
) -> None:
    rng = np.random.default_rng(seed)
    ranker = _ranker(rng, n_users, n_products, dim, levels)
    # folded-in users: histories of 0, 1, 4 or 16 distinct products, each written up to 3 times
    allowed = [size for size in (0, 1, 4, 16) if size <= n_products]
    folded = []
    for _ in range(n_folded):
        distinct = rng.choice(n_products, int(rng.choice(allowed)), replace=False)
        folded.append(np.repeat(distinct, rng.integers(1, 4, len(distinct))))
    explainer = reasons.ContributionReasons(ranker, folded, n_users)
    # a block: any users (trained and folded, repeated), a list of up to 12 rows each
    n = int(rng.integers(1, 10))
    user_index = rng.integers(0, n_users + n_folded, n)
    rows = np.repeat(np.arange(n), rng.integers(0, 13, n))
    products = rng.integers(0, n_products, len(rows))
    got = explainer.top(user_index, rows, products)
    for r in range(n):
        sel = rows == r
        if not sel.any():
            continue
        user = int(user_index[r])
        history = folded[user - n_users] if user >= n_users else None
        expected = reasons.top_contributors(ranker, user, products[sel], history=history)
        assert got[sel].tolist() == expected.tolist()


def test_block_contributions_without_factors_ask_user_by_user() -> None:
    rng = np.random.default_rng(3)
    ranker = _ranker(rng, 5, 12, 3, 2)

    class OnlyContributions:
        def history_contributions(self, user, products, history=None):
            return ranker.history_contributions(user, products, history=history)

    rows = np.array([0, 0, 2, 4, 4, 4])
    products = np.array([1, 5, 7, 0, 11, 3])
    users = np.array([4, 1, 0, 3, 2])
    plain = reasons.ContributionReasons(OnlyContributions()).top(users, rows, products)
    vectorised = reasons.ContributionReasons(ranker).top(users, rows, products)
    assert plain.tolist() == vectorised.tolist()


@hsettings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 5),
    st.integers(1, 8),
    st.integers(0, 2**31 - 1),
)
def test_block_text_reasons_equal_most_similar(n_products, dim, n, seed) -> None:
    rng = np.random.default_rng(seed)
    ids = rng.permutation(1000)[:n_products].astype(np.int64) + 1
    # 1 or 4 nonzero entries of one magnitude a row: the norms divide exactly (to entries of
    # +-1 or +-0.5), so every cosine is exact in any summation order and a tie is a real tie
    vectors = np.zeros((n_products, dim), dtype=np.float32)
    for row in range(n_products):
        k = 4 if dim >= 4 and rng.random() < 0.5 else 1
        cols = rng.choice(dim, k, replace=False)
        vectors[row, cols] = rng.choice([-1.0, 1.0], k) * rng.integers(1, 4)
    vectors[rng.random(n_products) < 0.3] = vectors[0]  # equal vectors: ties by id
    has_vector = rng.random(n_products) < 0.8
    text = reasons.TextReasons(ids[has_vector], vectors[has_vector])
    catalogue = np.concatenate([ids, [5000, 5001]])  # two ids with no vector anywhere
    rated_rows = np.repeat(np.arange(n), rng.integers(0, 15, n))
    rated = rng.choice(catalogue, len(rated_rows))  # repeats within a row included
    target_rows = np.repeat(np.arange(n), rng.integers(0, 11, n))
    targets = rng.choice(catalogue, len(target_rows))
    got = text.most_similar_block(n, rated_rows, rated, target_rows, targets)
    for r in range(n):
        sel = target_rows == r
        expected = text.most_similar(rated[rated_rows == r], targets[sel])
        assert got[sel].tolist() == expected.tolist()


def test_best_match_bounds_its_memory_and_keeps_long_histories_exact(monkeypatch) -> None:
    rng = np.random.default_rng(5)
    monkeypatch.setattr(reasons, "MATCH_ELEMENTS", 64)  # forces one user per chunk
    left_rows = np.sort(rng.integers(0, 6, 300))
    table = rng.normal(size=(50, 4)).astype(np.float32)
    left_index = rng.integers(0, 50, 300)
    right_rows = rng.integers(0, 7, 40)
    right_index = rng.integers(0, 50, 40)
    got = reasons.best_match(left_rows, left_index, table, right_rows, right_index, table, 7)
    for q in range(40):
        mine = np.flatnonzero(left_rows == right_rows[q])
        if not len(mine):
            assert got[q] == -1
            continue
        sims = (table[left_index[mine]] @ table[right_index[q]]).astype(np.float32)
        assert got[q] == mine[int(np.argmax(sims))]


class _PooledModel:
    """A dot-product model with the ranker's contribution interface and integer tables, so that
    every score and every contribution is exact and equal values are real ties. Scores are
    predicted ratings (a boost factor of 2 doubles them exactly)."""

    name = "pooled"
    scores_are_ratings = True

    def __init__(self, rng, history, dim: int = 3) -> None:
        n_users, n_products = history.shape
        self.history = history
        self.U = rng.integers(-2, 3, (n_users, dim)).astype(np.float32)
        self.V = rng.integers(-2, 3, (n_products, dim)).astype(np.float32)
        self.b = rng.integers(0, 3, n_products).astype(np.float32)
        self.H = rng.integers(-1, 2, (n_products, dim)).astype(np.float32)

    def score_factors(self):
        return self.U, self.V, self.b

    def score_users(self, users):
        return self.U[users] @ self.V.T + self.b

    def contribution_factors(self):
        return self.history, self.H, self.V

    def history_contributions(self, user, products, history=None):
        row = self.history[int(user)]
        items, data = np.asarray(row.indices, dtype=np.int64), row.data.astype(np.float32)
        if not len(items):
            return items, np.zeros((0, len(products)), dtype=np.float32)
        weights = data[:, None] / np.sqrt(max(float(data.sum()), 1.0))
        return items, ((self.H[items] * weights) @ self.V[products].T).astype(np.float32)


def test_scoring_run_under_every_rule_equals_the_plain_reference(engine) -> None:
    """Lists, backfill and reasons of a whole run, against a plain walk per user and the
    one-user reasons, with ties, caps, exclusions, unavailable and boosted products."""
    import sqlalchemy as sa
    from test_nightly_support import add_catalogue

    from recsys.scoring.score import ScoreOptions, ScoringModel, score_batches

    rng = np.random.default_rng(11)
    with engine.begin() as conn:
        add_catalogue(conn, n_users=30, n_products=45, n_ratings=260, seed=4, categories=4)
        conn.execute(sa.text("UPDATE products SET available = false WHERE id % 7 = 3"))
        conn.execute(
            sa.text(
                "INSERT INTO product_boosts (asin, factor) SELECT external_id, 2.0 FROM products "
                "WHERE id % 5 = 1"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO user_exclusions (user_external_id, asin) SELECT u.external_id, "
                "p.external_id FROM users u, products p WHERE (u.id * 3 + p.id) % 11 = 0"
            )
        )
        # a heavy rater: almost every product the model knows is rated, the rest is backfilled
        conn.execute(
            sa.text(
                "INSERT INTO ratings (user_id, product_id, rating, rated_at) SELECT "
                "(SELECT min(id) FROM users), p.id, 4, now() FROM products p WHERE p.id % 3 <> 0 "
                "AND p.id > 6 ON CONFLICT DO NOTHING"
            )
        )
        ratings = conn.execute(sa.text("SELECT user_id, product_id FROM ratings")).all()
        products = conn.execute(
            sa.text("SELECT id, categories[cardinality(categories)], lower(brand) FROM products")
        ).all()
    everything = np.asarray(ratings, dtype=np.int64)
    ratings = everything[everything[:, 1] % 3 != 0]  # the model knows two thirds of the products
    user_ids = np.unique(ratings[:, 0])
    product_ids = np.unique(ratings[:, 1])[::-1].copy()  # column order is not id order
    column = {int(p): i for i, p in enumerate(product_ids)}
    row_of = {int(u): i for i, u in enumerate(user_ids)}
    history = sparse.csr_matrix(
        (
            np.ones(len(ratings), dtype=np.float32),
            ([row_of[int(u)] for u in ratings[:, 0]], [column[int(p)] for p in ratings[:, 1]]),
        ),
        shape=(len(user_ids), len(product_ids)),
    )
    model = _PooledModel(rng, history)
    scoring = ScoringModel(model, user_ids, product_ids, model_type="pooled")
    options = ScoreOptions(k=10, max_per_category=3, max_per_brand=3, batch_users=7)
    with engine.connect() as conn:
        batches = list(score_batches(conn, scoring, options))
        unavailable = set(
            conn.execute(sa.text("SELECT id FROM products WHERE NOT available")).scalars()
        )
        excluded = set(
            conn.execute(
                sa.text(
                    "SELECT u.id, p.id FROM user_exclusions e JOIN users u ON "
                    "u.external_id = e.user_external_id JOIN products p ON "
                    "p.external_id = e.asin"
                )
            ).all()
        )
    boosted = {int(p) for p in product_ids if int(p) % 5 == 1}
    category = {int(p): c for p, c, _ in products}
    brand = {int(p): b for p, _, b in products}
    rated = {}
    for u, p in everything.tolist():
        rated.setdefault(u, set()).add(p)
    got: dict[int, list[tuple]] = {}
    for b in batches:
        texts = b.reason_texts
        for u, r, p, s, st_, reason, because in zip(
            b.user_ids,
            b.ranks,
            b.product_ids,
            b.scores,
            b.strategies,
            b.reasons,
            b.because_ids,
            strict=True,
        ):
            got.setdefault(int(u), []).append(
                (int(r), int(p), float(s), int(st_), texts[reason], int(because))
            )
    backfilled = 0
    for i, user in enumerate(user_ids.tolist()):
        scores = (model.U[i] @ model.V.T + model.b).astype(np.float32)
        scores = np.where([int(p) in boosted for p in product_ids], scores * 2, scores)
        allowed = [
            c
            for c, p in enumerate(product_ids.tolist())
            if p not in rated[user] and (user, p) not in excluded and p not in unavailable
        ]
        held: dict = {}
        expected = []
        for c in sorted(allowed, key=lambda c: (-float(scores[c]), int(product_ids[c]))):
            p = int(product_ids[c])
            groups = [("c", category[p]), ("b", brand[p])]
            if len(expected) == 10 or held.get(groups[0], 0) >= 3 or held.get(groups[1], 0) >= 3:
                continue
            for g in groups:
                held[g] = held.get(g, 0) + 1
            top = reasons.top_contributors(model, i, np.array([c]))[0]
            expected.append((p, float(scores[c]), int(product_ids[top])))
        rows = sorted(got[user])
        assert [r for r, *_ in rows] == list(range(1, len(rows) + 1))
        model_rows = [(p, s, because) for _, p, s, st_, _, because in rows if st_ == 0]
        assert model_rows == expected
        assert all(text == reasons.BECAUSE_RATED for *_, st_, text, _ in rows if st_ == 0)
        fallback = [row for row in rows if row[3] != 0]
        assert [row[1] for row in rows[: len(expected)]] == [p for p, *_ in expected]
        backfilled += bool(fallback)
        for _, p, _, _, text, because in fallback:
            assert text.startswith(reasons.POPULAR) and because == -1
            assert p not in rated[user] and (user, p) not in excluded and p not in unavailable
    assert backfilled  # the heavy rater's list, at least, was topped up by the fallback
