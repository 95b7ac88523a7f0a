"""Read the database into a :class:`~recsys.model.base.RatingData`, straight into arrays.

Ratings come out of PostgreSQL with one ``COPY (SELECT ...) TO STDOUT`` in binary format,
decoded row by row into preallocated numpy arrays (no DataFrame, no list of tuples of the whole
table). The notebook's preprocessing is done in SQL: keep users and products with MORE than
``min_ratings`` ratings (one pass, as the notebook: counts over the unfiltered table, not
iterated to a fixpoint; 0 disables). Indices are contiguous in ascending ``users.id`` /
``products.id`` order.

Text vectors come from a feature set (``"current"``, an id, or None for none) and are aligned
with the product index: products without a vector in that set stay in training with a zero row
and ``has_text`` False (the notebook dropped their ratings; we keep them, and the hybrid sees
the flag).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import sqlalchemy as sa

from recsys.db.copy import COPY_HEADER, driver_connection, header_length
from recsys.errors import DataError
from recsys.model.base import RatingData

_log = logging.getLogger(__name__)

# No ORDER BY: sorting millions of rows in PostgreSQL spills work_mem to disk and costs more
# than the whole transfer; the rows are sorted by (user, product) in numpy instead. The filter
# is two hashed semi-joins against per-user and per-product counts of the unfiltered table.
_RATINGS_SQL = """
SELECT r.user_id, r.product_id, r.rating::float4, floor(extract(epoch FROM r.rated_at))::int8
FROM ratings r
WHERE r.user_id IN (SELECT user_id FROM ratings GROUP BY user_id HAVING count(*) > {min})
  AND r.product_id IN (SELECT product_id FROM ratings GROUP BY product_id HAVING count(*) > {min})
"""

_ALL_RATINGS_SQL = """
SELECT r.user_id, r.product_id, r.rating::float4, floor(extract(epoch FROM r.rated_at))::int8
FROM ratings r
"""


def _ratings_query(min_ratings: int):
    """The ratings query with the filter threshold bound as a literal (psycopg.sql)."""
    from psycopg import sql

    text = _ALL_RATINGS_SQL if min_ratings <= 0 else _RATINGS_SQL
    return sql.SQL(text).format(min=sql.Literal(int(min_ratings)))


# PostgreSQL binary COPY rows of (int8, int8, float4, int8), none NULL: fixed 46-byte records
# (int16 field count, then int32 length + big-endian value per field), decoded by numpy directly.
_ROW = np.dtype(
    [
        ("nfields", ">i2"),
        ("l_user", ">i4"),
        ("user", ">i8"),
        ("l_product", ">i4"),
        ("product", ">i8"),
        ("l_rating", ">i4"),
        ("rating", ">f4"),
        ("l_time", ">i4"),
        ("time", ">i8"),
    ]
)


def _copy_ratings(conn: sa.Connection, min_ratings: int) -> tuple[np.ndarray, ...]:
    """(user_id, product_id, rating, unix seconds) arrays, sorted by (user_id, product_id).

    Streams ``COPY ... (FORMAT BINARY)`` into numpy in 4 MiB batches (no Python object per
    row), then sorts by (user, product) so the order, and so training, is reproducible.
    """
    from psycopg import sql

    dbapi = driver_connection(conn)  # psycopg 3, inside the caller's transaction
    copy_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(_ratings_query(min_ratings))
    batches: list[np.ndarray] = []
    header_left: int | None = None  # known once the header has arrived
    buffer = bytearray()

    def drain() -> None:
        # decode every whole record in the buffer
        nonlocal header_left
        if header_left is None:
            if len(buffer) < len(COPY_HEADER):
                return
            header_left = header_length(buffer)
        if header_left:
            skip = min(header_left, len(buffer))
            del buffer[:skip]
            header_left -= skip
        usable = (len(buffer) // _ROW.itemsize) * _ROW.itemsize
        rows = np.frombuffer(bytes(buffer[:usable]), dtype=_ROW)
        del buffer[:usable]
        # the trailer (int16 -1) is 2 bytes and never forms a whole record
        batches.append(rows[rows["nfields"] == 4])

    with dbapi.cursor() as cursor, cursor.copy(copy_sql) as copy:
        # COPY TO sends one message per row: gather ~4 MiB before decoding a batch
        for chunk in copy:
            buffer += chunk
            if len(buffer) >= 1 << 22:
                drain()
    drain()
    rows = np.concatenate(batches) if batches else np.zeros(0, dtype=_ROW)
    batches.clear()
    user_ids = rows["user"].astype(np.int64)
    product_ids = rows["product"].astype(np.int64)
    order = np.lexsort((product_ids, user_ids))
    return (
        user_ids[order],
        product_ids[order],
        rows["rating"][order].astype(np.float32),
        rows["time"][order].astype(np.int64),
    )


def resolve_feature_set(conn: sa.Connection, feature_set_id: int | str | None) -> int | None:
    """The id of the requested feature set: ``"current"`` -> the current one (None if none)."""
    if feature_set_id is None:
        return None
    if feature_set_id == "current":
        try:
            from recsys.features.store import current_feature_set
        except ImportError:  # feature store module not there: read the table directly
            row = conn.execute(
                sa.text("SELECT id FROM feature_sets WHERE is_current ORDER BY id DESC LIMIT 1")
            ).first()
            return None if row is None else int(row[0])
        info = current_feature_set(conn)
        return None if info is None else int(info.id)
    found = conn.execute(
        sa.text("SELECT id FROM feature_sets WHERE id = :i"), {"i": int(feature_set_id)}
    ).first()
    if found is None:
        raise DataError(f"feature set {feature_set_id} does not exist (see `recsys features list`)")
    return int(feature_set_id)


def read_text_vectors(conn: sa.Connection, feature_set_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(product_ids int64, vectors float32 [n, dim]) of one feature set."""
    try:
        from recsys.features.store import read_vectors
    except ImportError:
        read_vectors = None
    if read_vectors is not None:
        ids, vectors = read_vectors(conn, feature_set_id)
        return np.asarray(ids, dtype=np.int64), np.asarray(vectors, dtype=np.float32)
    rows = conn.execute(
        sa.text(
            "SELECT product_id, vector::text FROM product_features "
            "WHERE feature_set_id = :f AND vector IS NOT NULL ORDER BY product_id"
        ),
        {"f": feature_set_id},
    ).all()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    if not rows:
        return ids, np.zeros((0, 0), dtype=np.float32)
    vectors = np.stack([np.array(r[1].strip("[]").split(","), dtype=np.float32) for r in rows])
    return ids, vectors


def align_text(
    product_ids: np.ndarray, text_ids: np.ndarray, vectors: np.ndarray, dim: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Text rows aligned with ``product_ids``: (text float32 [n, dim], has_text bool [n])."""
    dim = int(vectors.shape[1]) if vectors.size else int(dim or 0)
    text = np.zeros((len(product_ids), dim), dtype=np.float32)
    has_text = np.zeros(len(product_ids), dtype=bool)
    if len(text_ids):
        order = np.argsort(text_ids, kind="stable")
        sorted_ids = text_ids[order]
        pos = np.searchsorted(sorted_ids, product_ids)
        pos = np.minimum(pos, len(sorted_ids) - 1)
        found = sorted_ids[pos] == product_ids
        text[found] = vectors[order[pos[found]]]
        has_text[found] = True
    return text, has_text


def read_rating_data(
    conn: sa.Connection,
    *,
    min_ratings: int = 10,
    feature_set_id: int | Literal["current"] | None = "current",
) -> RatingData:
    """Ratings (and optionally product text vectors) as a RatingData.

    Args:
        conn: a connection; nothing is written.
        min_ratings: keep users and products with MORE than this many ratings (0: keep all).
        feature_set_id: ``"current"`` (the current feature set, none if there is none), a
            feature set id, or None to read no text.

    Returns:
        RatingData with contiguous indices in ascending id order; ``meta`` holds the counts
        before and after filtering.

    Raises:
        DataError: no ratings are left after filtering, or the feature set id does not exist.
    """
    min_ratings = max(0, int(min_ratings))
    total = int(conn.execute(sa.text("SELECT count(*) FROM ratings")).scalar_one())
    user_db, product_db, ratings, timestamps = _copy_ratings(conn, min_ratings)
    if len(ratings) == 0:
        raise DataError(
            f"no ratings left after keeping users and products with more than {min_ratings} "
            f"ratings ({total} ratings in the database); load more data or lower --min-ratings"
        )
    # rows are sorted by user id, so user indices come from run boundaries; products via unique
    user_ids, users = np.unique(user_db, return_inverse=True)
    product_ids, products = np.unique(product_db, return_inverse=True)
    fs_id = resolve_feature_set(conn, feature_set_id)
    text = has_text = None
    if fs_id is not None:
        text_ids, vectors = read_text_vectors(conn, fs_id)
        dim = conn.execute(
            sa.text("SELECT dim FROM feature_sets WHERE id = :i"), {"i": fs_id}
        ).scalar()
        text, has_text = align_text(product_ids, text_ids, vectors, dim)
    # star ratings: the 1-5 scale unless the data goes beyond it (e.g. 0.5 half stars)
    scale = (min(1.0, float(ratings.min())), max(5.0, float(ratings.max())))
    _log.info(
        "read %d of %d ratings: %d users, %d products (min_ratings %d)%s",
        len(ratings),
        total,
        len(user_ids),
        len(product_ids),
        min_ratings,
        "" if has_text is None else f", {int(has_text.sum())} with text (feature set {fs_id})",
    )
    return RatingData(
        users=users.astype(np.int32),
        products=products.astype(np.int32),
        ratings=ratings,
        timestamps=timestamps,
        user_ids=user_ids.astype(np.int64),
        product_ids=product_ids.astype(np.int64),
        text=text,
        has_text=has_text,
        rating_scale=scale,
        feature_set_id=fs_id,
        meta={"ratings_total": total, "min_ratings": min_ratings},
    )
