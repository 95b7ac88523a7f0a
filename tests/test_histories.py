"""Histories: compressed rows that give back each user's values in their given order."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.scoring.histories import Histories


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 50)), max_size=60),
            st.lists(st.integers(0, n - 1), max_size=20),
        )
    )
)
def test_grouped_entries_are_each_users_values_in_order(case) -> None:
    n, pairs, users = case
    owners = np.array([o for o, _ in pairs], dtype=np.int64)
    values = np.array([v for _, v in pairs], dtype=np.int64)
    histories = Histories.grouped(owners, values, n)
    expected = [[v for o, v in pairs if o == f] for f in range(n)]
    assert len(histories) == n
    assert [histories[f].tolist() for f in range(n)] == expected
    assert histories.lengths().tolist() == [len(e) for e in expected]
    got, rows = histories.entries(np.array(users, dtype=np.int64))
    want = [(i, v) for i, f in enumerate(users) for v in expected[f]]
    assert list(zip(rows.tolist(), got.tolist(), strict=True)) == want
    listed = Histories.from_list([np.array(e, dtype=np.int64) for e in expected])
    assert np.array_equal(listed.indptr, histories.indptr)
    assert np.array_equal(listed.indices, histories.indices)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 3), max_size=5), min_size=1, max_size=30),
    st.integers(1, 4),
)
def test_first_identical_is_the_first_user_with_the_same_multiset(histories, max_length) -> None:
    got = Histories.from_list([np.array(h, dtype=np.int64) for h in histories]).first_identical(
        max_length
    )
    for f, history in enumerate(histories):
        if not history or len(history) > max_length:
            assert got[f] == f
        else:
            same = [g for g, other in enumerate(histories) if sorted(other) == sorted(history)]
            assert got[f] == same[0]
