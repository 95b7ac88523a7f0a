"""Reasons of a whole block at once equal the one-user definitions, ties and folded users included.

The ranker here is the real :class:`~recsys.model.ranker.RankerRecommender` with its tables
set by hand (integer-valued, so equal contributions are exactly equal and ties are real);
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
    """A ranker whose history table repeats rows (equal contributions) and whose users'
    history lengths range from none to every product."""
    h = rng.integers(-levels, levels + 1, (n_products, dim)).astype(np.float32)
    twins = rng.random(n_products) < 0.3
    h[twins] = h[0]  # several products contribute exactly alike
    ranker = RankerRecommender()
    ranker.tower = SimpleNamespace(history_embedding=SimpleNamespace(embeddings=_Table(h)))
    lengths = rng.integers(0, n_products + 1, n_users)
    lengths[rng.random(n_users) < 0.2] = 0
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
    # folded-in users: histories with repeats, some empty
    folded = [rng.integers(0, n_products, int(rng.integers(0, 8))) for _ in range(n_folded)]
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
    vectors = rng.integers(-2, 3, (n_products, dim)).astype(np.float32)
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
