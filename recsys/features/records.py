"""Feature-set records: the ``feature_sets`` / ``product_features`` rows, vectors by binary COPY,
indexes, the current set and pruning (see :mod:`recsys.features.store`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from psycopg import sql

from recsys.blas import local_cores
from recsys.db.copy import binary_body, driver_connection, encode_binary
from recsys.db.locks import FEATURES_LOCK  # noqa: F401 (the build takes it)
from recsys.errors import DataError, InputError

if TYPE_CHECKING:
    pass

_log = logging.getLogger(__name__)


HNSW_MAX_DIM = 2000
"""pgvector's HNSW limit for ``vector``; larger sets are stored without an index."""

SKIP_NO_TEXT = "no text"
SKIP_NO_WORDS = "no words after cleaning"
SKIP_NO_KNOWN_WORDS = "no word in the word vectors"


@dataclass(frozen=True)
class FeatureSetInfo:
    """A row of ``feature_sets``."""

    id: int
    name: str
    source: str
    dim: int
    weighting: str
    cleaning_version: int
    vocabulary_size: int
    is_current: bool
    status: str
    n_products: int
    n_embedded: int
    n_skipped: int
    created_at: datetime
    source_fingerprint: str = ""
    params: dict[str, Any] = field(default_factory=dict)


# --- reading ---------------------------------------------------------------------------------

_SET_COLUMNS = (
    "id, name, source, dim, weighting, cleaning_version, vocabulary_size, is_current, status, "
    "n_products, n_embedded, n_skipped, created_at, source_fingerprint, params"
)


def _info(row: sa.Row) -> FeatureSetInfo:
    return FeatureSetInfo(**row._mapping)


def current_feature_set(conn: sa.Connection) -> FeatureSetInfo | None:
    """The current feature set, or None when no set has been built."""
    row = conn.execute(
        sa.text(f"SELECT {_SET_COLUMNS} FROM feature_sets WHERE is_current")  # constant columns
    ).first()
    return _info(row) if row else None


def get_feature_set(conn: sa.Connection, ref: int | str) -> FeatureSetInfo:
    """A feature set by id or name.

    Raises:
        DataError: no such feature set.
    """
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        query = sa.text(f"SELECT {_SET_COLUMNS} FROM feature_sets WHERE id = :r")
        ref = int(ref)
    else:
        query = sa.text(f"SELECT {_SET_COLUMNS} FROM feature_sets WHERE name = :r")
    row = conn.execute(query, {"r": ref}).first()
    if row is None:
        raise DataError(f"no feature set {ref!r}")
    return _info(row)


def list_feature_sets(conn: sa.Connection) -> list[FeatureSetInfo]:
    """All feature sets, newest first."""
    rows = conn.execute(sa.text(f"SELECT {_SET_COLUMNS} FROM feature_sets ORDER BY id DESC"))
    return [_info(r) for r in rows]


_psycopg = driver_connection


def _vector_row_dtype(dim: int, with_set: bool) -> np.dtype:
    fields: list[tuple[str, Any]] = [("nfields", ">i2")]
    if with_set:
        fields += [("l_set", ">i4"), ("set", ">i8")]
    fields += [
        ("l_id", ">i4"),
        ("id", ">i8"),
        ("l_vec", ">i4"),
        ("vdim", ">i2"),
        ("vunused", ">i2"),
        ("vec", ">f4", (dim,)),
    ]
    return np.dtype(fields)


def read_vectors(conn: sa.Connection, feature_set_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The vectors of one feature set, ordered by product id.

    One binary COPY, parsed with numpy (no per-row Python).

    Returns:
        (product ids int64 [n], vectors float32 [n, dim]) for the products that have a vector.

    Raises:
        DataError: no such feature set.
    """
    info = get_feature_set(conn, int(feature_set_id))
    dim = info.dim
    query = sql.SQL(
        "COPY (SELECT product_id, vector FROM product_features WHERE feature_set_id = {} "
        "AND vector IS NOT NULL ORDER BY product_id) TO STDOUT (FORMAT BINARY)"
    ).format(sql.Literal(int(feature_set_id)))
    buffer = bytearray()
    with _psycopg(conn).cursor() as cur, cur.copy(query) as copy:
        for chunk in copy:
            buffer += chunk
    body = binary_body(buffer)
    dtype = _vector_row_dtype(dim, with_set=False)
    if len(body) % dtype.itemsize:
        raise DataError(f"feature set {feature_set_id}: stored vectors do not all have dim {dim}")
    rows = np.frombuffer(body, dtype=dtype)
    if len(rows) and (rows["vdim"] != dim).any():
        raise DataError(f"feature set {feature_set_id}: stored vectors do not all have dim {dim}")
    return rows["id"].astype(np.int64), rows["vec"].astype(np.float32)


# --- writing ---------------------------------------------------------------------------------


def create_feature_set(
    conn: sa.Connection,
    *,
    name: str,
    source: str,
    source_fingerprint: str,
    dim: int,
    weighting: str,
    cleaning_version: int,
    vocabulary_size: int,
    params: dict[str, Any],
) -> int:
    """Insert a (not yet current) feature set and return its id.

    Raises:
        InputError: the name is taken.
    """
    taken = conn.execute(sa.text("SELECT 1 FROM feature_sets WHERE name = :n"), {"n": name}).first()
    if taken:
        raise InputError(f"a feature set named {name!r} exists already")
    import json

    return int(
        conn.execute(
            sa.text(
                "INSERT INTO feature_sets (name, source, source_fingerprint, dim, weighting, "
                "cleaning_version, vocabulary_size, params) VALUES (:name, :source, :fp, :dim, "
                ":weighting, :cv, :vocab, CAST(:params AS jsonb)) RETURNING id"
            ),
            {
                "name": name,
                "source": source,
                "fp": source_fingerprint,
                "dim": dim,
                "weighting": weighting,
                "cv": cleaning_version,
                "vocab": vocabulary_size,
                "params": json.dumps(params),
            },
        ).scalar_one()
    )


def write_vectors(
    conn: sa.Connection,
    feature_set_id: int,
    product_ids: np.ndarray,
    vectors: np.ndarray,
    text_hashes: list[bytes] | None = None,
    n_words: np.ndarray | None = None,
    notes: list[str | None] | None = None,
) -> int:
    """COPY product vectors into a feature set (binary; the vector part built by numpy).

    Args:
        conn: the caller's transaction.
        feature_set_id: the set.
        product_ids: int64 [n].
        vectors: float32 [n, dim] (finite values).
        text_hashes: per product (default: empty bytes, e.g. for imported vectors).
        n_words: int [n] (default 0).
        notes: per product, or None.

    Returns:
        Rows written.
    """
    n = len(product_ids)
    if n == 0:
        return 0
    vectors = np.asarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if not np.isfinite(vectors).all():
        raise DataError("refusing to store non-finite vector values")
    hashes = text_hashes if text_hashes is not None else [b""] * n
    words = np.zeros(n, dtype=np.int32) if n_words is None else np.asarray(n_words, np.int32)
    hlen = len(hashes[0])
    if hlen and notes is None and all(len(h) == hlen for h in hashes):
        # fixed-size rows: the whole COPY stream is one numpy structured array
        dtype = np.dtype(
            [
                ("nfields", ">i2"),
                ("l_set", ">i4"),
                ("set", ">i8"),
                ("l_id", ">i4"),
                ("id", ">i8"),
                ("l_hash", ">i4"),
                ("hash", f"V{hlen}"),
                ("l_vec", ">i4"),
                ("vdim", ">i2"),
                ("vunused", ">i2"),
                ("vec", ">f4", (dim,)),
                ("l_words", ">i4"),
                ("words", ">i4"),
            ]
        )
        rows = np.zeros(n, dtype=dtype)
        rows["nfields"] = 5
        rows["l_set"], rows["set"] = 8, feature_set_id
        rows["l_id"], rows["id"] = 8, product_ids
        rows["l_hash"] = hlen
        rows["hash"] = np.frombuffer(b"".join(hashes), dtype=f"V{hlen}")
        rows["l_vec"], rows["vdim"], rows["vunused"] = 4 + 4 * dim, dim, 0
        rows["vec"] = vectors
        rows["l_words"], rows["words"] = 4, words
        payload = memoryview(encode_binary([rows]))
        chunk = 8 << 20
        with (
            _psycopg(conn).cursor() as cur,
            cur.copy(
                "COPY product_features (feature_set_id, product_id, text_hash, vector, n_words) "
                "FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            for start in range(0, len(payload), chunk):
                copy.write(payload[start : start + chunk])
        return n
    # general path (variable-length hashes or notes): row by row with pgvector's adapter
    from pgvector.psycopg import register_vector

    pg = _psycopg(conn)
    register_vector(pg)
    with (
        pg.cursor() as cur,
        cur.copy(
            "COPY product_features (feature_set_id, product_id, text_hash, vector, n_words, notes) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["int8", "int8", "bytea", "vector", "int4", "text"])
        note_list = notes or [None] * n
        for i in range(n):
            copy.write_row(
                (
                    feature_set_id,
                    int(product_ids[i]),
                    hashes[i],
                    vectors[i],
                    int(words[i]),
                    note_list[i],
                )
            )
    return n


def write_skipped(
    conn: sa.Connection,
    feature_set_id: int,
    rows: list[tuple[int, bytes, str, str | None]],
) -> int:
    """COPY products that get no vector: (product id, text hash, skip reason, notes)."""
    if not rows:
        return 0
    with (
        _psycopg(conn).cursor() as cur,
        cur.copy(
            "COPY product_features (feature_set_id, product_id, text_hash, skip_reason, notes) "
            "FROM STDIN"
        ) as copy,
    ):
        for product_id, text_hash, reason, note in rows:
            copy.write_row((feature_set_id, product_id, text_hash, reason, note))
    return len(rows)


def index_name(feature_set_id: int) -> str:
    """Name of a feature set's HNSW index."""
    return f"ix_product_features_hnsw_{int(feature_set_id)}"


def hnsw_memory_mb(n_rows: int, dim: int) -> int:
    """``maintenance_work_mem`` (MB) for building an HNSW graph of ``n_rows`` vectors in memory.

    pgvector builds fast only while the graph fits in ``maintenance_work_mem``; past it, it
    goes on on disk, several times slower. Per element: the vector (4 bytes a value) plus about
    1 KB of neighbour lists at the default m = 16; 25% headroom; between 64 MB and 4 GB.
    """
    estimate = n_rows * (4 * dim + 1024) * 1.25 / 2**20
    return int(min(4096, max(64, estimate)))


def build_workers(conn: sa.Connection) -> int | None:
    """``max_parallel_maintenance_workers`` for an index build on this server, or None to keep
    the server's own.

    pgvector builds an HNSW graph in parallel with the leader and that many workers, each a
    busy process. On a server on this machine (reached over a Unix socket or the loopback
    address) more processes than cores only contend, so the build gets at most cores - 1
    workers (never more than the server's setting); a remote server's cores are unknown.
    """
    row = conn.execute(
        sa.text(
            "SELECT inet_server_addr() IS NULL OR inet_server_addr() <<= '127.0.0.0/8'::inet "
            "OR inet_server_addr() = '::1'::inet, "
            "current_setting('max_parallel_maintenance_workers')::int"
        )
    ).one()
    local, configured = bool(row[0]), int(row[1])
    if not local:
        return None
    return max(0, min(configured, local_cores() - 1))


def create_index(
    conn: sa.Connection, feature_set_id: int, dim: int, n_rows: int | None = None
) -> bool:
    """The set's HNSW cosine index (partial, on ``vector::vector(dim)``); False above 2000-d.

    ``maintenance_work_mem`` is raised for this transaction to fit the graph (see
    :func:`hnsw_memory_mb`; ``n_rows`` defaults to the set's vectors), and the parallel
    workers of the build are capped to the machine's cores (see :func:`build_workers`).
    """
    if dim > HNSW_MAX_DIM:
        _log.warning(
            "dimension %d > %d: feature set %d is stored without an HNSW index",
            dim,
            HNSW_MAX_DIM,
            feature_set_id,
        )
        return False
    if n_rows is None:
        n_rows = conn.execute(
            sa.text("SELECT count(vector) FROM product_features WHERE feature_set_id = :id"),
            {"id": feature_set_id},
        ).scalar_one()
    statement = sql.SQL(
        "CREATE INDEX {} ON product_features USING hnsw ((vector::vector({})) vector_cosine_ops) "
        "WHERE feature_set_id = {}"
    ).format(
        sql.Identifier(index_name(feature_set_id)),
        sql.Literal(int(dim)),
        sql.Literal(int(feature_set_id)),
    )
    with _psycopg(conn).cursor() as cur:
        cur.execute(
            "SELECT set_config('maintenance_work_mem', %s, true)",
            (f"{hnsw_memory_mb(int(n_rows), dim)}MB",),
        )
        workers = build_workers(conn)
        if workers is not None:
            cur.execute(
                "SELECT set_config('max_parallel_maintenance_workers', %s, true)", (str(workers),)
            )
        cur.execute(statement)
    return True


def finish_feature_set(conn: sa.Connection, feature_set_id: int) -> None:
    """Record the set's counts from its rows."""
    conn.execute(
        sa.text(
            "UPDATE feature_sets SET n_products = c.n, n_embedded = c.e, n_skipped = c.n - c.e "
            "FROM (SELECT count(*) AS n, count(vector) AS e FROM product_features "
            "WHERE feature_set_id = :id) c WHERE feature_sets.id = :id"
        ),
        {"id": feature_set_id},
    )


def make_current(conn: sa.Connection, feature_set_id: int) -> None:
    """Make a set the current one, in the caller's transaction (readers switch at its commit).

    The table lock serialises two concurrent switches, so neither trips the unique index.
    """
    conn.execute(sa.text("LOCK TABLE feature_sets IN SHARE ROW EXCLUSIVE MODE"))
    exists = conn.execute(
        sa.text("SELECT status FROM feature_sets WHERE id = :id"), {"id": feature_set_id}
    ).scalar()
    if exists is None:
        raise DataError(f"no feature set {feature_set_id}")
    conn.execute(sa.text("UPDATE feature_sets SET is_current = false WHERE is_current"))
    conn.execute(
        sa.text("UPDATE feature_sets SET is_current = true WHERE id = :id"), {"id": feature_set_id}
    )


def prune_feature_sets(conn: sa.Connection, keep: int) -> list[int]:
    """Delete all but the ``keep`` newest sets (never the current one); returns deleted ids.

    A set that another table still refers to through a ``feature_set_id`` column (e.g. a
    registered model run, which needs its set's vectors to score) is kept, whether or not that
    column has a foreign key; a delete refused by a foreign key is rolled back and kept too.
    """
    candidates = (
        conn.execute(
            sa.text("SELECT id FROM feature_sets WHERE NOT is_current ORDER BY id DESC OFFSET :k"),
            {"k": max(0, keep - 1)},
        )
        .scalars()
        .all()
    )
    if not candidates:
        return []
    referenced: set[int] = set()
    tables = conn.execute(
        sa.text(
            "SELECT table_schema, table_name FROM information_schema.columns "
            "WHERE column_name = 'feature_set_id' AND table_schema = current_schema() "
            "AND table_name NOT IN ('product_features', 'feature_sets')"
        )
    ).all()
    with _psycopg(conn).cursor() as cur:
        for schema, table in tables:
            cur.execute(
                sql.SQL(
                    "SELECT DISTINCT feature_set_id FROM {}.{} WHERE feature_set_id IS NOT NULL"
                ).format(sql.Identifier(schema), sql.Identifier(table))
            )
            referenced.update(int(r[0]) for r in cur.fetchall())
    deleted = []
    for set_id in candidates:
        if set_id in referenced:
            _log.info("feature set %d is still referenced: kept", set_id)
            continue
        try:
            with conn.begin_nested():
                conn.execute(sa.text("DELETE FROM feature_sets WHERE id = :id"), {"id": set_id})
            deleted.append(set_id)
        except sa.exc.IntegrityError:
            _log.info("feature set %d is still referenced: kept", set_id)
    return deleted


def iter_feature_sets_table(conn: sa.Connection) -> Iterator[tuple]:
    """Rows for ``recsys features list``: id, name, source, dim, weighting, current, counts."""
    for info in list_feature_sets(conn):
        yield (
            info.id,
            info.name,
            info.source,
            info.dim,
            info.weighting,
            "*" if info.is_current else "",
            info.n_embedded,
            info.n_skipped,
            info.created_at.strftime("%Y-%m-%d %H:%M"),
        )
