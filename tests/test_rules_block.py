"""The scoring kernel under every rule against a plain walk over every column, counts included.

Scores are small integers (many ties, broken by the product key), boosts are exact (an offset
of 1 or a factor of 2), and the caps are tight enough that many rows run out of candidates and
are left short for the fallback to backfill.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from recsys.scoring.block import Columns, GroupCap, score_block


def _walk(scores, k, keys, rated, excluded, unavailable, blocked, caps):
    """Each row's list, walked in (score desc, key asc) order, and the rule counts."""
    n, p = scores.shape
    lists, filled = [], []
    counts = dict.fromkeys(("unavailable", "excluded", "category_cap", "brand_cap"), 0)
    for r in range(n):
        allowed = [
            c
            for c in range(p)
            if not (rated[r, c] or excluded[r, c] or unavailable[c] or blocked[c])
            and np.isfinite(scores[r, c])
        ]
        order = sorted(allowed, key=lambda c: (-float(scores[r, c]), int(keys[c])))
        chosen: list[int] = []
        held: dict[tuple[str, int], int] = {}
        for c in order:
            if len(chosen) == k:
                break
            full = None
            for name, codes, cap in caps:
                if codes[c] >= 0 and held.get((name, int(codes[c])), 0) >= cap:
                    full = name
                    break
            if full is not None:
                counts[full] += 1
                continue
            chosen.append(c)
            for name, codes, _ in caps:
                if codes[c] >= 0:
                    held[(name, int(codes[c]))] = held.get((name, int(codes[c])), 0) + 1
        last = float(scores[r, chosen[-1]]) if len(chosen) == k else -np.inf
        for c in range(p):
            displaced = not rated[r, c] and np.isfinite(scores[r, c]) and scores[r, c] >= last
            counts["unavailable"] += int(bool(unavailable[c]) and displaced)
            counts["excluded"] += int(bool(excluded[r, c]) and displaced)
        lists.append([int(keys[c]) for c in chosen])
        filled.append(len(chosen))
    return lists, filled, counts


@hsettings(max_examples=120, deadline=None)
@given(
    st.integers(1, 7),
    st.integers(1, 150),
    st.integers(1, 12),
    st.integers(1, 5),
    st.booleans(),
    st.integers(0, 2),
    st.integers(0, 2**31 - 1),
)
def test_block_equals_the_plain_walk_with_every_rule(
    n, p, k, levels, rating_scores, n_caps, seed
) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels + 1, (n, p)).astype(np.float32)
    keys = rng.permutation(10_000)[:p].astype(np.int64)
    rated = rng.random((n, p)) < 0.15
    excluded = (rng.random((n, p)) < 0.1) & ~rated
    unavailable = rng.random(p) < rng.choice([0.0, 0.1, 0.6])
    blocked = rng.random(p) < 0.05
    boosted = rng.random(p) < 0.2
    category = rng.integers(-1, 3, p)
    brand = rng.integers(-1, 5, p)
    caps = [("category_cap", category, int(rng.integers(1, 3))), ("brand_cap", brand, 2)][:n_caps]
    if rating_scores:  # predicted ratings: the boost multiplies
        factor = np.where(boosted, 2.0, 1.0).astype(np.float32)
        columns = Columns(
            keys,
            blocked,
            unavailable,
            factor=factor,
            caps=tuple(GroupCap(*cap) for cap in caps),
        )
        final = scores * factor
    else:  # ranking scores: the boost adds an offset
        offset = np.where(boosted, 1.0, 0.0).astype(np.float32)
        columns = Columns(
            keys,
            blocked,
            unavailable,
            offset=offset,
            caps=tuple(GroupCap(*cap) for cap in caps),
        )
        final = scores + offset
    expected, filled, counts = _walk(final, k, keys, rated, excluded, unavailable, blocked, caps)
    # an exclusion written twice is one pair twice over
    ex_rows, ex_cols = np.nonzero(excluded)
    twice = rng.random(len(ex_rows)) < 0.2
    ex_rows = np.concatenate([ex_rows, ex_rows[twice]])
    ex_cols = np.concatenate([ex_cols, ex_cols[twice]])
    for r, c in zip(ex_rows[len(twice) :], ex_cols[len(twice) :], strict=True):
        last = expected[r][-1] if len(expected[r]) == k else None
        kth = final[r, list(keys).index(last)] if last is not None else -np.inf
        counts["excluded"] += int(final[r, c] >= kth)
    result = score_block(
        scores.copy(), columns, k, rated=np.nonzero(rated), excluded=(ex_rows, ex_cols)
    )
    assert [keys[result.cols[result.rows == r]].tolist() for r in range(n)] == expected
    assert result.filled.tolist() == filled
    for r in range(n):
        assert result.ranks[result.rows == r].tolist() == list(range(1, filled[r] + 1))
    np.testing.assert_array_equal(result.values, final[result.rows, result.cols])
    for name, value in counts.items():
        assert result.counts[name] == value, name
    assert result.counts["boosted"] == int(boosted[result.cols].sum())
