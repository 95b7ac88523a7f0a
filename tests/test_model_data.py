"""read_rating_data: the notebook's filter in SQL, index order, text alignment; test helpers.

The helpers here (``insert_ratings``, ``load_ml100k``) put ratings straight into the tables with
COPY, so the model tests do not depend on the loader's progress.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from recsys.errors import DataError
from recsys.model.data import align_text, read_rating_data


def insert_ratings(conn: sa.Connection, rows: list[tuple[str, str, float, int]]) -> None:
    """(user external id, product external id, rating, unix seconds) rows, via COPY."""
    users = sorted({r[0] for r in rows})
    products = sorted({r[1] for r in rows})
    dbapi = conn.connection.driver_connection
    with dbapi.cursor() as cur:
        with cur.copy("COPY users (external_id) FROM STDIN") as cp:
            for u in users:
                cp.write_row((u,))
        with cur.copy("COPY products (external_id, title) FROM STDIN") as cp:
            for p in products:
                cp.write_row((p, f"product {p}"))
        cur.execute("CREATE TEMP TABLE _r (u text, p text, rating real, t bigint) ON COMMIT DROP")
        with cur.copy("COPY _r FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)
        cur.execute(
            "INSERT INTO ratings (user_id, product_id, rating, rated_at) "
            "SELECT u.id, p.id, _r.rating, to_timestamp(_r.t) FROM _r "
            "JOIN users u ON u.external_id = _r.u JOIN products p ON p.external_id = _r.p"
        )
        cur.execute("DROP TABLE _r")


def ml100k_rows(
    shared_data: Path, max_users: int | None = None
) -> list[tuple[str, str, float, int]]:
    """ml-100k u.data as rows, optionally only users 1..max_users."""
    raw = np.loadtxt(shared_data / "movielens_ml-100k" / "u.data", dtype=np.int64)
    if max_users:
        raw = raw[raw[:, 0] <= max_users]
    return [(f"u{u}", f"m{m}", float(r), int(t)) for u, m, r, t in raw]


def load_ml100k(conn: sa.Connection, shared_data: Path, max_users: int | None = None) -> int:
    rows = ml100k_rows(shared_data, max_users)
    insert_ratings(conn, rows)
    return len(rows)


def add_feature_set(
    conn: sa.Connection, vectors: dict[int, np.ndarray], *, current: bool = True
) -> int:
    """A feature set with the given product id -> vector rows (others get no vector)."""
    dim = len(next(iter(vectors.values())))
    fs_id = conn.execute(
        sa.text(
            "INSERT INTO feature_sets (name, source, source_fingerprint, dim, weighting, "
            "cleaning_version, is_current) "
            "VALUES (:n, 'test', 'test', :d, 'mean', 1, :c) RETURNING id"
        ),
        {
            "n": f"test-{len(vectors)}-{dim}-{np.random.default_rng().integers(1 << 30)}",
            "d": dim,
            "c": current,
        },
    ).scalar_one()
    conn.execute(
        sa.text(
            "INSERT INTO product_features (feature_set_id, product_id, text_hash, vector) "
            "VALUES (:f, :p, '\\x00', CAST(:v AS vector))"
        ),
        [
            {"f": fs_id, "p": int(p), "v": "[" + ",".join(f"{x:.6f}" for x in v) + "]"}
            for p, v in vectors.items()
        ],
    )
    return int(fs_id)


def test_filter_keeps_more_than_min_ratings_and_orders_by_id(conn: sa.Connection) -> None:
    rows = []
    # users a (3 ratings), b (2), c (1); products x (3), y (2), z (1)
    for u, p, r in [
        ("a", "x", 5),
        ("a", "y", 4),
        ("a", "z", 3),
        ("b", "x", 2),
        ("b", "y", 1),
        ("c", "x", 4),
    ]:
        rows.append((u, p, float(r), 1_000_000 + len(rows)))
    insert_ratings(conn, rows)
    everything = read_rating_data(conn, min_ratings=0, feature_set_id=None)
    assert len(everything) == 6 and everything.n_users == 3 and everything.n_products == 3
    assert np.all(np.diff(everything.user_ids) > 0) and np.all(np.diff(everything.product_ids) > 0)
    ids = dict(conn.execute(sa.text("SELECT external_id, id FROM users")).all())
    pids = dict(conn.execute(sa.text("SELECT external_id, id FROM products")).all())
    # every row maps back to the database rating
    for u, p, r, t in zip(
        everything.users,
        everything.products,
        everything.ratings,
        everything.timestamps,
        strict=True,
    ):
        found = conn.execute(
            sa.text(
                "SELECT rating, extract(epoch FROM rated_at)::bigint FROM ratings "
                "WHERE user_id = :u AND product_id = :p"
            ),
            {"u": int(everything.user_ids[u]), "p": int(everything.product_ids[p])},
        ).one()
        assert found[0] == pytest.approx(r) and found[1] == t
    # more than 1 rating: users a, b and products x, y (counts over the unfiltered table)
    kept = read_rating_data(conn, min_ratings=1, feature_set_id=None)
    assert kept.user_ids.tolist() == [ids["a"], ids["b"]]
    assert kept.product_ids.tolist() == [pids["x"], pids["y"]]
    assert len(kept) == 4
    assert kept.meta["ratings_total"] == 6


def test_no_ratings_left_is_a_data_error(conn: sa.Connection) -> None:
    insert_ratings(conn, [("a", "x", 5.0, 1), ("b", "y", 4.0, 2)])
    with pytest.raises(DataError, match="no ratings left.*more than 10.*2 ratings"):
        read_rating_data(conn, min_ratings=10, feature_set_id=None)


def test_text_vectors_aligned_with_has_text_flag(conn: sa.Connection) -> None:
    insert_ratings(conn, [("a", "x", 5.0, 1), ("a", "y", 4.0, 2), ("b", "z", 3.0, 3)])
    pids = dict(conn.execute(sa.text("SELECT external_id, id FROM products")).all())
    add_feature_set(
        conn, {pids["z"]: np.array([1.0, 2.0, 3.0]), pids["x"]: np.array([-1.0, 0.5, 0.0])}
    )
    data = read_rating_data(conn, min_ratings=0)
    assert data.feature_set_id is not None
    pos = {int(p): i for i, p in enumerate(data.product_ids)}
    assert data.has_text.tolist() == [True, False, True]
    np.testing.assert_allclose(data.text[pos[pids["z"]]], [1, 2, 3])
    np.testing.assert_allclose(data.text[pos[pids["x"]]], [-1, 0.5, 0])
    np.testing.assert_array_equal(data.text[pos[pids["y"]]], 0)
    # no current feature set: no text
    conn.execute(sa.text("UPDATE feature_sets SET is_current = false"))
    assert read_rating_data(conn, min_ratings=0).text is None


def test_align_text_unsorted_ids() -> None:
    text, has = align_text(
        np.array([3, 5, 9]), np.array([9, 3]), np.array([[9.0], [3.0]], dtype=np.float32)
    )
    assert has.tolist() == [True, False, True]
    assert text[:, 0].tolist() == [3.0, 0.0, 9.0]


@pytest.mark.slow
def test_ml100k_read_matches_file(conn: sa.Connection, shared_data: Path) -> None:
    n = load_ml100k(conn, shared_data)
    data = read_rating_data(conn, min_ratings=0, feature_set_id=None)
    assert len(data) == n == 100_000
    assert data.n_users == 943 and data.n_products == 1682
    assert data.rating_scale == (1.0, 5.0)
    assert float(data.ratings.mean()) == pytest.approx(3.52986, abs=1e-4)
