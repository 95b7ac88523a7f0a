"""The fast rating path's bulk write: keys dropped and rebuilt exactly, or left alone.

A first load into empty tables rebuilds the keys of ``users`` and ``ratings`` after the COPY;
these tests check that every constraint and index comes back with its name and definition,
that a table another foreign key refers to keeps its keys, that a failure in the middle of the
write leaves the database as it was, and that the byte-order sort of the external ids is the
order pyarrow's string sort gives.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from recsys.ingest import fast
from recsys.ingest.load import load_files

_CATALOG = sa.text(
    "SELECT c.relname, k.conname, pg_get_constraintdef(k.oid), k.convalidated"
    " FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
    " WHERE c.relname IN ('users', 'products', 'ratings', 'user_notes') ORDER BY 1, 2"
)
_INDEXES = sa.text(
    "SELECT tablename, indexname, indexdef FROM pg_indexes"
    " WHERE tablename IN ('users', 'products', 'ratings') ORDER BY 1, 2"
)
_RATINGS = sa.text(
    "SELECT u.external_id, p.external_id, r.rating, extract(epoch FROM r.rated_at)::bigint"
    " FROM ratings r JOIN users u ON u.id = r.user_id JOIN products p ON p.id = r.product_id"
    " ORDER BY 1, 2"
)


def _catalog(engine: sa.Engine) -> tuple[list[tuple], list[tuple]]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(_CATALOG)], [tuple(r) for r in c.execute(_INDEXES)]


def _ratings_file(path: Path, rows: list[tuple[str, str, float, int]]) -> Path:
    path.write_text("".join(f"{p},{u},{r},{t}\n" for p, u, r, t in rows))
    return path


ROWS = [
    ("B2", "A1", 5.0, 1_300_000_000),
    ("B1", "A2", 4.0, 1_300_000_001),
    ("B1", "A1", 3.0, 1_300_000_002),
    ("B1", "A1", 2.0, 1_300_000_003),  # same pair, later: wins
    ("B3", "A10", 1.0, 1_300_000_004),
]
EXPECTED = [
    ("A1", "B1", 2.0, 1_300_000_003),
    ("A1", "B2", 5.0, 1_300_000_000),
    ("A10", "B3", 1.0, 1_300_000_004),
    ("A2", "B1", 4.0, 1_300_000_001),
]


def _ratings(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(_RATINGS)]


def test_first_load_rebuilds_every_key(engine, settings, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="recsys.ingest.fast")
    before = _catalog(engine)
    [summary] = load_files(engine, settings, ratings=[_ratings_file(tmp_path / "r.csv", ROWS)])
    assert summary.status == "loaded"
    assert "users: 0 known, 3 new, keys rebuilt" in caplog.text
    assert _catalog(engine) == before
    assert _ratings(engine) == EXPECTED
    # a second file goes through the merge into stored rows; the keys still hold
    more = [("B1", "A1", 1.0, 1_200_000_000), ("B4", "A3", 3.0, 1_300_000_009)]
    [summary] = load_files(engine, settings, ratings=[_ratings_file(tmp_path / "s.csv", more)])
    assert summary.status == "loaded"
    assert _catalog(engine) == before
    assert _ratings(engine) == sorted([*EXPECTED, ("A3", "B4", 3.0, 1_300_000_009)])
    with engine.connect() as c:  # the rebuilt unique key still refuses a duplicate
        with pytest.raises(sa.exc.IntegrityError):
            c.execute(sa.text("INSERT INTO users (external_id) VALUES ('A1')"))


def test_referenced_users_keep_their_keys(engine, settings, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="recsys.ingest.fast")
    with engine.begin() as c:
        c.execute(
            sa.text("CREATE TABLE user_notes (user_id bigint REFERENCES users (id), note text)")
        )
    before = _catalog(engine)
    [summary] = load_files(engine, settings, ratings=[_ratings_file(tmp_path / "r.csv", ROWS)])
    assert summary.status == "loaded"
    assert "users: 0 known, 3 new in" in caplog.text  # inserted with its keys in place
    assert _catalog(engine) == before
    assert _ratings(engine) == EXPECTED


def test_failure_while_writing_leaves_the_database(engine, settings, tmp_path, monkeypatch):
    before = _catalog(engine)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(fast, "_rating_copy", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        load_files(engine, settings, ratings=[_ratings_file(tmp_path / "r.csv", ROWS)])
    assert _catalog(engine) == before
    with engine.connect() as c:
        counts = c.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM products),"
                " (SELECT count(*) FROM ratings), (SELECT count(*) FROM loads)"
            )
        ).one()
    assert tuple(counts) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    "values",
    [
        ["b", "a", "ab", "", "abcdefghi", "abcdefgh", "é", "z" * 30, "z" * 29 + "a", "Z", "~"],
        [f"A{n:012d}" for n in np.random.default_rng(1).permutation(5000)],
        [str(n) for n in np.unique(np.random.default_rng(2).integers(0, 10**12, 3000))],
        ["only"],
        [],
    ],
)
def test_byte_order_is_pyarrows_string_order(values):
    strings = pa.array(values, type=pa.string())
    expected = pc.sort_indices(strings).to_numpy()
    assert fast.byte_order(strings).tolist() == expected.tolist()
    if len(values) > 3:  # an array that starts inside its buffers
        part = strings.slice(2, len(values) - 3)
        assert fast.byte_order(part).tolist() == pc.sort_indices(part).to_numpy().tolist()


@hsettings(max_examples=150, deadline=None)
@given(
    st.sets(st.text(alphabet="ab\u00e9z", max_size=12), max_size=60),
    st.sampled_from(["", "A", "A000", "pr\u00e9fix-"]),
    st.integers(1, 9),
)
def test_byte_order_in_small_batches_of_buckets(values, prefix, chunk):
    """Batches of a few strings, shared prefixes and strings that end inside the bucket key:
    the same order as pyarrow's sort."""
    strings = pa.array(sorted(prefix + v for v in values)[::-1], type=pa.string())
    before = fast._SORT_CHUNK, fast._KEY_ROWS
    fast._SORT_CHUNK, fast._KEY_ROWS = chunk, chunk + 2  # bucketed in pieces too
    try:
        got = fast.byte_order(strings).tolist()
    finally:
        fast._SORT_CHUNK, fast._KEY_ROWS = before
    assert got == pc.sort_indices(strings).to_numpy().tolist()


def test_sorted_table_inserts_in_place_like_a_sorted_dict(monkeypatch):
    monkeypatch.setattr(fast, "_MOVE_ROWS", 7)  # many chunks per move
    rng = np.random.default_rng(3)
    table, expected = fast._SortedTable(), {}
    for _ in range(200):
        wanted = np.unique(rng.integers(0, 3000, rng.integers(0, 50)).astype(np.uint64))
        at = np.searchsorted(table.keys, wanted)
        found = at < table.n
        found[found] = table.keys[at[found]] == wanted[found]
        values = rng.integers(0, 2**31 - 1, int((~found).sum())).astype(np.int32)
        table.insert(at[~found], wanted[~found], values)
        expected.update(zip(wanted[~found].tolist(), values.tolist(), strict=True))
        assert table.keys.tolist() == sorted(expected)
        assert table.values.tolist() == [expected[k] for k in sorted(expected)]
