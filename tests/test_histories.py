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
