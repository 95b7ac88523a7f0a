"""The pure scoring kernel: exact lists under masks, boosts and per-group caps."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from recsys.data.topk import chunk_columns, chunk_maxima, top_k, top_k_indices
from recsys.scoring.block import (
    Columns,
    GroupCap,
    augment_products,
    dot_scores,
    score_block,
    users_per_block,
)


def _brute(scores, k, keys, allowed, category=None, brand=None, caps=(None, None)):
    """Greedy in (score desc, key asc) order over every allowed column, written plainly."""
    lists = []
    for r, row in enumerate(scores):
        order = sorted(
            (c for c in range(len(row)) if allowed[r, c] and np.isfinite(row[c])),
            key=lambda c: (-float(row[c]), int(keys[c])),
        )
        chosen, per_cat, per_brand = [], {}, {}
        for c in order:
            if len(chosen) == k:
                break
            cat = None if category is None else int(category[c])
            br = None if brand is None else int(brand[c])
            if caps[0] is not None and cat is not None and cat >= 0:
                if per_cat.get(cat, 0) >= caps[0]:
                    continue
            if caps[1] is not None and br is not None and br >= 0:
                if per_brand.get(br, 0) >= caps[1]:
                    continue
            chosen.append(int(keys[c]))
            if cat is not None and cat >= 0:
                per_cat[cat] = per_cat.get(cat, 0) + 1
            if br is not None and br >= 0:
                per_brand[br] = per_brand.get(br, 0) + 1
        lists.append(chosen)
    return lists


@hsettings(max_examples=80, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, 120),
    st.integers(1, 12),
    st.integers(0, 2**31 - 1),
    st.integers(1, 4),
    st.booleans(),
)
def test_score_block_equals_greedy_over_everything(n, p, k, seed, levels, capped) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels + 1, (n, p)).astype(np.float32)
    keys = rng.permutation(10_000)[:p].astype(np.int64)
    rated = rng.random((n, p)) < 0.2
    excluded = (rng.random((n, p)) < 0.1) & ~rated
    unavailable = rng.random(p) < 0.1
    blocked = rng.random(p) < 0.05
    category = rng.integers(-1, 3, p)
    brand = rng.integers(-1, 4, p)
    offset = np.where(rng.random(p) < 0.2, np.float32(1.0), np.float32(0.0)).astype(np.float32)
    caps = (int(rng.integers(1, 3)), int(rng.integers(1, 4))) if capped else (None, None)
    group_caps = ()
    if capped:
        group_caps = (
            GroupCap("category_cap", category, caps[0]),
            GroupCap("brand_cap", brand, caps[1]),
        )
    columns = Columns(keys, blocked, unavailable, offset=offset, caps=group_caps)
    boosted = scores + offset[None, :]
    allowed = ~rated & ~excluded & ~unavailable[None, :] & ~blocked[None, :]
    expected = _brute(boosted, k, keys, allowed, category, brand, caps)
    result = score_block(
        scores.copy(), columns, k, rated=np.nonzero(rated), excluded=np.nonzero(excluded)
    )
    got = [keys[result.cols[result.rows == r]].tolist() for r in range(n)]
    assert got == expected
    for r in range(n):
        assert result.ranks[result.rows == r].tolist() == list(range(1, len(expected[r]) + 1))
        assert result.filled[r] == len(expected[r])
    assert result.counts["boosted"] == int((offset[result.cols] != 0).sum())


def test_counts_say_what_each_rule_removed() -> None:
    # one user, columns scored 9..0; k = 3
    scores = np.arange(10, 0, -1, dtype=np.float32)[None, :] - 1
    keys = np.arange(10, dtype=np.int64)
    unavailable = np.zeros(10, dtype=bool)
    unavailable[[0, 9]] = True  # 9 would have been listed, 0 would not
    category = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    columns = Columns(
        keys,
        np.zeros(10, dtype=bool),
        unavailable,
        caps=(GroupCap("category_cap", category, 1),),
    )
    result = score_block(scores.copy(), columns, 3, excluded=(np.array([0]), np.array([1])))
    # available, not excluded: 2 (cat 0), 3 (cat 0, capped), 4 (cat 1), 5.. (cat 1, capped)
    assert keys[result.cols].tolist() == [2, 4]
    assert result.filled.tolist() == [2]  # the cap leaves the rest to the fallback
    assert result.counts["unavailable"] == 2  # with a short list every finite pair counts
    assert result.counts["excluded"] == 1
    assert result.counts["category_cap"] == 5  # product 3, then 5..8 (9 is unavailable)


def test_dot_scores_fold_the_bias_and_reuse_the_buffer() -> None:
    rng = np.random.default_rng(0)
    users = rng.normal(size=(5, 4)).astype(np.float32)
    vectors = rng.normal(size=(7, 4)).astype(np.float32)
    bias = rng.normal(size=7).astype(np.float32)
    offset = np.zeros(7, dtype=np.float32)
    offset[2] = np.log(2.0)
    products = augment_products(vectors, bias, offset)
    buffer = np.empty(100, dtype=np.float32)
    got = dot_scores(users, products, out=buffer)
    np.testing.assert_allclose(got, users @ vectors.T + bias + offset, rtol=1e-5, atol=1e-5)
    assert np.shares_memory(got, buffer)
    assert 64 <= users_per_block(50_000) <= 1024


def test_top_k_indices_is_the_evaluation_cut() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 0.5, 3.0], [-np.inf, -np.inf, 2.0, -np.inf, -np.inf]])
    assert top_k_indices(scores, 3).tolist() == [[1, 2, 4], [2, -1, -1]]
    rows, ranks, cols, _ = top_k(scores.astype(np.float32), 2, np.array([5, 4, 3, 2, 1]))
    assert cols[rows == 0].tolist() == [4, 2]


@hsettings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 300), st.integers(0, 2**31 - 1), st.booleans())
def test_chunk_maxima_cover_every_column_once(n, p, seed, strided) -> None:
    rng = np.random.default_rng(seed)
    wide = rng.normal(size=(n, 2 * p)).astype(np.float32)
    wide[rng.random(wide.shape) < 0.2] = -np.inf
    scores = wide[:, ::2] if strided else np.ascontiguousarray(wide[:, :p])
    maxima = chunk_maxima(scores)
    cols = chunk_columns(np.arange(maxima.shape[1]), p)
    real = cols[cols < p]
    assert sorted(real.tolist()) == list(range(p))  # a partition of the columns
    for c in range(maxima.shape[1]):
        members = cols[c][cols[c] < p]
        assert len(members) > 0
        np.testing.assert_array_equal(maxima[:, c], scores[:, members].max(axis=1))
