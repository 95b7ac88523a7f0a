"""Lists from bound-ordered prefixes of the catalogue equal the lists of scoring every product."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from test_nightly_support import add_catalogue, rating_data

from recsys.scoring import bound
from recsys.scoring.block import Columns, GroupCap, augment_products, dot_scores, score_block
from recsys.scoring.score import ScoreOptions, ScoringModel, score_and_write, score_batches


def _integer_factors(rng, n: int, p: int, d: int, skew: int):
    """Small-integer vectors (every dot product exact in float32, many ties) whose product
    norms spread over a factor of up to ``skew``, and integer biases."""
    users = rng.integers(-3, 4, (n, d)).astype(np.float32)
    products = rng.integers(-2, 3, (p, d)).astype(np.float32)
    products *= rng.integers(1, skew + 1, (p, 1)).astype(np.float32)
    bias = rng.integers(-4, 5, p).astype(np.float32)
    return users, products, bias


def _columns(rng, p: int, rules: bool) -> Columns:
    keys = rng.permutation(10 * p)[:p].astype(np.int64) + 1
    if not rules:
        none = np.zeros(p, dtype=bool)
        return Columns(keys, none, none.copy())
    offset = np.where(rng.random(p) < 0.1, 2.0, 0.0).astype(np.float32)
    return Columns(
        keys, rng.random(p) < 0.05, rng.random(p) < 0.1, offset=offset, offset_folded=True
    )


def _same(a, b, exact: bool = True) -> None:
    assert a.rows.tolist() == b.rows.tolist()
    assert a.ranks.tolist() == b.ranks.tolist()
    assert a.cols.tolist() == b.cols.tolist()
    if exact:  # integer factors: every score exact, whatever the matmul's order of sums
        assert a.values.tolist() == b.values.tolist()
    else:
        np.testing.assert_allclose(a.values, b.values, rtol=1e-5)
    assert a.filled.tolist() == b.filled.tolist()
    assert a.counts == b.counts


@hsettings(max_examples=80, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(32, 400),
    st.integers(1, 12),
    st.integers(0, 2**31 - 1),
    st.integers(1, 8),
    st.booleans(),
)
def test_bound_prefixes_give_the_lists_of_every_product(n, p, k, seed, skew, rules) -> None:
    rng = np.random.default_rng(seed)
    users, vectors, bias = _integer_factors(rng, n, p, 4, skew)
    columns = _columns(rng, p, rules)
    products = augment_products(vectors, bias, columns.offset)
    rated = (rng.integers(0, n, 3 * n), rng.integers(0, p, 3 * n))
    excluded = (rng.integers(0, n, n), rng.integers(0, p, n)) if rules else None
    plan = bound.plan(products, columns, users, head=8, step=4, min_products=16)
    assert plan is not None and plan.levels[-1] == p
    got = bound.score_by_bound(users, plan, k, rated=rated, excluded=excluded)
    expected = score_block(dot_scores(users, products), columns, k, rated=rated, excluded=excluded)
    _same(got, expected)


def test_every_product_left_out_scores_below_the_list() -> None:
    rng = np.random.default_rng(3)
    n, p, d, k = 200, 3000, 8, 10
    users = rng.normal(size=(n, d)).astype(np.float32)
    vectors = rng.normal(size=(p, d)).astype(np.float32)
    vectors *= rng.lognormal(0.0, 0.8, (p, 1)).astype(np.float32)  # a few products stand out
    bias = rng.normal(size=p).astype(np.float32)
    none = np.zeros(p, dtype=bool)
    columns = Columns(np.arange(1, p + 1, dtype=np.int64), none, none.copy())
    products = augment_products(vectors, bias)
    plan = bound.plan(products, columns, users, head=64, step=16, min_products=128)
    full = users @ vectors.T + bias
    head = np.concatenate([users, np.ones((n, 1), np.float32)], 1) @ plan.products[:, :64]
    lengths = bound.prefix_lengths(head, bound.row_norms(users), plan, k)
    assert np.median(lengths) < p / 4  # the bound leaves most of the catalogue out
    kth = -np.sort(-full, axis=1)[:, k - 1]
    for row in range(n):
        left_out = plan.order[lengths[row] :]
        assert (full[row, left_out] < kth[row]).all()
    result = bound.score_by_bound(users, plan, k)
    _same(result, score_block(dot_scores(users, products), columns, k), exact=False)


def test_caps_factors_and_small_catalogues_are_scored_whole() -> None:
    rng = np.random.default_rng(0)
    users, vectors, bias = _integer_factors(rng, 5, 64, 4, 3)
    products = augment_products(vectors, bias)
    keys = np.arange(1, 65, dtype=np.int64)
    none = np.zeros(64, dtype=bool)
    plain = Columns(keys, none, none.copy())
    assert bound.plan(products, plain, users, head=8, step=4, min_products=16) is not None
    assert bound.plan(products, plain, users, head=8, step=4, min_products=65) is None
    capped = Columns(keys, none, none.copy(), caps=(GroupCap("category_cap", keys % 3, 2),))
    assert bound.plan(products, capped, users, head=8, step=4, min_products=16) is None
    factor = Columns(keys, none, none.copy(), factor=np.full(64, 2.0, np.float32))
    assert bound.plan(products, factor, users, head=8, step=4, min_products=16) is None
    unfolded = Columns(keys, none, none.copy(), offset=np.ones(64, np.float32))
    assert bound.plan(products, unfolded, users, head=8, step=4, min_products=16) is None


class _SkewedDot:
    """A dot-product model with one product in twenty a star, larger in norm and bias (exact
    integer scores)."""

    name = "dot"
    scores_are_ratings = False

    def __init__(self, n_users: int, n_products: int) -> None:
        rng = np.random.default_rng(11)
        self.u = rng.integers(-3, 4, (n_users, 4)).astype(np.float32)
        stars = np.where(rng.random((n_products, 1)) < 0.05, 4, 1).astype(np.float32)
        self.v = rng.integers(-2, 3, (n_products, 4)).astype(np.float32) * stars
        self.b = 3 * stars[:, 0] + rng.integers(-1, 2, n_products).astype(np.float32)

    def score_factors(self):
        return self.u, self.v, self.b

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self.u[users] @ self.v.T + self.b


@pytest.fixture
def small_bound(monkeypatch) -> None:
    """Prefixes at the test catalogue's size (400 products)."""
    monkeypatch.setattr(bound, "HEAD", 16)
    monkeypatch.setattr(bound, "STEP", 4)
    monkeypatch.setattr(bound, "MIN_PRODUCTS", 32)


def test_the_nightly_scorer_publishes_the_same_rows_with_and_without_prefixes(
    engine: sa.Engine, small_bound, monkeypatch
) -> None:
    with engine.begin() as conn:
        add_catalogue(conn, n_users=40, n_products=400, n_ratings=800, seed=1)
        conn.execute(sa.text("UPDATE products SET available = false WHERE id % 9 = 0"))
    with engine.connect() as conn:
        data = rating_data(conn)
    model = ScoringModel(
        _SkewedDot(data.n_users, data.n_products), data.user_ids, data.product_ids, None, "dot"
    )
    planned: list[bool] = []
    original = bound.plan

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        planned.append(result is not None)
        return result

    monkeypatch.setattr(bound, "plan", recording)
    with engine.connect() as conn:
        pruned = list(score_batches(conn, model, ScoreOptions(k=5, threads=1)))
        assert planned == [True]
        whole = list(score_batches(conn, model, ScoreOptions(k=5, threads=1, prune=False)))
    assert planned == [True]  # prune=False does not plan

    def rows(batches):
        return sorted(
            (int(u), int(r), int(p), float(s), int(st), int(c), int(y))
            for b in batches
            for u, r, p, s, st, c, y in zip(
                b.user_ids,
                b.ranks,
                b.product_ids,
                b.scores,
                b.strategies,
                b.reasons,
                b.because_ids,
                strict=True,
            )
        )

    assert len(rows(pruned)) == 5 * data.n_users and rows(pruned) == rows(whole)
    summary = score_and_write(engine, model, ScoreOptions(k=5, threads=2), publish=True)
    assert summary.n_rows == 5 * data.n_users
    with engine.connect() as conn:
        share = conn.execute(
            sa.text("SELECT params->>'pairs_scored_share' FROM recommendation_runs WHERE id = :r"),
            {"r": summary.run_id},
        ).scalar_one()
    assert 0 < float(share) < 1  # the skewed norms leave products out


def _repeated(pairs, weight):
    """(rows, cols) pairs of rows repeated ``weight`` times, in the repeated rows' numbering."""
    rows, cols = (np.asarray(a, dtype=np.int64) for a in pairs)
    first = np.cumsum(weight) - weight
    copy = [j < weight[rows] for j in range(int(weight.max()))]
    return (
        np.concatenate([first[rows][m] + j for j, m in enumerate(copy)]),
        np.concatenate([cols[m] for m in copy]),
    )


@hsettings(max_examples=60, deadline=None)
@given(
    st.integers(1, 20),
    st.integers(32, 300),
    st.integers(1, 10),
    st.integers(0, 2**31 - 1),
    st.booleans(),
)
def test_a_weighted_row_counts_as_its_copies(n, p, k, seed, capped) -> None:
    """A row of weight w gives the list and the rule counts of w identical rows, whole or by
    bound prefixes (twins share one scored row)."""
    rng = np.random.default_rng(seed)
    users, vectors, bias = _integer_factors(rng, n, p, 4, 4)
    columns = _columns(rng, p, True)
    if capped:
        columns = Columns(
            columns.keys,
            columns.blocked,
            columns.unavailable,
            offset=columns.offset,
            offset_folded=True,
            caps=(GroupCap("category_cap", rng.integers(-1, 4, p), 1),),
        )
    products = augment_products(vectors, bias, columns.offset)
    weight = rng.integers(1, 4, n).astype(np.int64)
    rated = (rng.integers(0, n, 3 * n), rng.integers(0, p, 3 * n))
    excluded = (rng.integers(0, n, n), rng.integers(0, p, n))
    copies = np.repeat(np.arange(n), weight)
    expected = score_block(
        dot_scores(users[copies], products),
        columns,
        k,
        rated=_repeated(rated, weight),
        excluded=_repeated(excluded, weight),
    )
    got = score_block(
        dot_scores(users, products), columns, k, rated=rated, excluded=excluded, weight=weight
    )
    assert got.counts == expected.counts
    first = np.cumsum(weight) - weight
    at_first = np.isin(expected.rows, first)
    assert got.cols.tolist() == expected.cols[at_first].tolist()
    assert got.filled.tolist() == expected.filled[first].tolist()
    if not capped:
        plan = bound.plan(products, columns, users, head=8, step=4, min_products=16)
        by_bound = bound.score_by_bound(
            users, plan, k, rated=rated, excluded=excluded, weight=weight
        )
        _same(by_bound, got)
