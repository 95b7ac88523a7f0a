"""A block's twins get their source's rows, in pieces no larger than the writer's flush size."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from recsys.scoring.publish import ScoreBatch
from recsys.scoring.score import TwinCopies, copied_batches


def _batch(rng, users: np.ndarray, with_reasons: bool) -> ScoreBatch:
    """Rows for ``users`` (0 to 4 each), shuffled: a block's rows need not be grouped by user
    (backfill rows come after the model's)."""
    per_user = rng.integers(0, 5, len(users))
    user_ids = np.repeat(users, per_user)
    ranks = np.concatenate([np.arange(1, n + 1) for n in per_user] + [np.zeros(0, int)])
    order = rng.permutation(len(user_ids))
    n = len(user_ids)
    return ScoreBatch(
        user_ids[order],
        ranks[order].astype(np.int16),
        rng.integers(1, 1000, n).astype(np.int64),
        rng.random(n).astype(np.float32),
        rng.integers(0, 4, n).astype(np.int8),
        rng.integers(-1, 3, n).astype(np.int32) if with_reasons else None,
        rng.integers(-1, 1000, n).astype(np.int64) if with_reasons else None,
        ("a", "b", "c") if with_reasons else (),
    )


@hsettings(max_examples=60, deadline=None)
@given(
    n_users=st.integers(1, 12),
    n_twins=st.integers(0, 40),
    max_rows=st.integers(1, 30),
    with_reasons=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_each_twin_gets_its_sources_rows_in_bounded_pieces(
    n_users, n_twins, max_rows, with_reasons, seed
) -> None:
    rng = np.random.default_rng(seed)
    users = rng.permutation(1000)[:n_users].astype(np.int64) + 1
    batch = _batch(rng, users, with_reasons)
    sources = np.sort(rng.choice(users, n_twins))  # the twins of each user are contiguous
    twins = 5000 + np.arange(n_twins, dtype=np.int64)
    pieces = list(copied_batches(batch, TwinCopies(sources, twins), max_rows))

    fields = ("ranks", "product_ids", "scores", "strategies", "reasons", "because_ids")
    expected = []  # per twin, its source's rows in the batch's order
    for source, twin in zip(sources, twins, strict=True):
        mine = np.flatnonzero(batch.user_ids == source)
        for i in mine:
            row = [twin] + [
                None if getattr(batch, f) is None else getattr(batch, f)[i] for f in fields
            ]
            expected.append(row)
    got = [
        [piece.user_ids[i]]
        + [None if getattr(piece, f) is None else getattr(piece, f)[i] for f in fields]
        for piece in pieces
        for i in range(len(piece))
    ]
    assert got == expected
    for piece in pieces:
        last_twin = int((piece.user_ids == piece.user_ids[-1]).sum()) if len(piece) else 0
        assert 0 < len(piece) < max_rows + last_twin  # under max_rows, plus one whole twin
        assert piece.reason_texts == batch.reason_texts
    ids_by_piece = [set(p.user_ids.tolist()) for p in pieces]
    for a in range(len(ids_by_piece)):
        for b in range(a + 1, len(ids_by_piece)):
            assert not ids_by_piece[a] & ids_by_piece[b]  # no twin split over two pieces
