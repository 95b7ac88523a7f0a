"""The feature store: product text vectors in PostgreSQL (pgvector), built incrementally.

Tables (Alembic revision 0002): ``feature_sets`` (one row per build; at most one
``is_current``, enforced by a partial unique index) and ``product_features`` (one row per
product and set: the cleaned-text hash, the vector or the reason there is none, the words used).

Design:

* **One transaction per build.** The CPU work (cleaning, word vectors, embedding) happens
  before any write; then one transaction inserts the set, copies reused rows forward, COPYs the
  new ones, builds the set's HNSW index and flips ``is_current``. Readers keep the old set until
  that commit, and a failed build leaves nothing behind.
* **Incremental.** A product's vector is reused from the current set when its cleaned-text hash
  is unchanged and the set's ``source_fingerprint`` (word vectors, dimension, weighting,
  cleaning version, text options, and for ``tfidf`` the catalogue's idf) is equal; reused rows
  are copied in SQL (``INSERT ... SELECT``), never through Python. Changed word vectors
  recompute everything.
* **Binary COPY both ways.** Embedded rows are fixed-size, so they are written and read as
  PostgreSQL binary COPY built / parsed with numpy (pgvector's binary format: int16 dim,
  int16 0, big-endian float32s), without a Python loop per row.
* **Mixed dimensions.** ``vector`` is untyped; each set gets a partial expression index
  ``USING hnsw ((vector::vector(DIM)) vector_cosine_ops) WHERE feature_set_id = N`` (pgvector's
  documented way to index mixed dimensions); queries use the same expression.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from psycopg import sql

from recsys.errors import DataError, InputError, RecsysError
from recsys.progress import NO_PROGRESS, ProgressSink

if TYPE_CHECKING:
    from recsys.config import Settings

_log = logging.getLogger(__name__)

FEATURES_LOCK = "recsys:features"
"""Advisory lock held while a feature set is built."""

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


@dataclass(frozen=True)
class BuildSummary:
    """What ``recsys features build`` reports."""

    feature_set_id: int
    name: str
    source: str
    dim: int
    weighting: str
    n_products: int
    n_embedded: int
    n_computed: int
    """Products whose vector was computed in this build."""
    n_reused: int
    """Products whose row was copied forward from the previous set (text unchanged)."""
    skipped: dict[str, int]
    """Reason -> products without a vector."""
    n_capped: int
    """Products whose raw text was cut at MAX_TEXT_CHARS."""
    vocabulary_size: int
    token_coverage: float
    """Share of the computed products' tokens found in the word vectors."""
    word_coverage: float
    """Share of the computed products' distinct words found in the word vectors."""
    previous_id: int | None
    seconds: float
    phases: dict[str, float]
    indexed: bool

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


Progress = ProgressSink
"""What a build reports progress to (the CLI: :func:`recsys.progress.progress_for_terminal`)."""


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


def _psycopg(conn: sa.Connection):
    """The psycopg connection under a SQLAlchemy connection (same transaction)."""
    return conn.connection.driver_connection


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"


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
    header = len(_COPY_HEADER)
    body = memoryview(buffer)[header : len(buffer) - 2]  # trailer: int16 -1
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
        payload = memoryview(_COPY_HEADER + rows.tobytes() + b"\xff\xff")
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


def create_index(
    conn: sa.Connection, feature_set_id: int, dim: int, n_rows: int | None = None
) -> bool:
    """The set's HNSW cosine index (partial, on ``vector::vector(dim)``); False above 2000-d.

    ``maintenance_work_mem`` is raised for this transaction to fit the graph (see
    :func:`hnsw_memory_mb`; ``n_rows`` defaults to the set's vectors).
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


# --- building --------------------------------------------------------------------------------


@dataclass
class _Catalogue:
    product_ids: np.ndarray
    tokens: list[list[str]]
    hashes: list[bytes]
    empty_reason: list[str | None]
    notes: list[str | None]
    n_capped: int


def text_hash(tokens: list[str]) -> bytes:
    """blake2b-128 of the cleaned tokens joined by single spaces."""
    return hashlib.blake2b(" ".join(tokens).encode("ascii"), digest_size=16).digest()


_PRODUCTS_QUERY = sa.text(
    "SELECT id, feature_text, description, categories, title, brand, "
    "(raw ? 'movie_id' OR raw ? 'genres' OR main_category = 'MovieLens') AS is_movie "
    "FROM products ORDER BY id"
)


def _read_catalogue(
    conn: sa.Connection, *, with_title: bool, progress: Progress, limit: int | None = None
) -> _Catalogue:
    from recsys.features.text import MAX_TEXT_CHARS, clean_product, english_stopwords, product_text

    stopwords = english_stopwords()
    total = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
    if limit:
        total = min(total, limit)
    progress.start("cleaning", total, "products")
    ids: list[int] = []
    tokens: list[list[str]] = []
    hashes: list[bytes] = []
    reasons: list[str | None] = []
    notes: list[str | None] = []
    n_capped = 0
    result = conn.execution_options(stream_results=True, yield_per=5000).execute(_PRODUCTS_QUERY)
    for batch in result.partitions(5000):
        for pid, feature_text, description, categories, title, brand, is_movie in batch:
            chosen = product_text(
                feature_text=feature_text,
                description=description,
                categories=categories,
                title=title,
                brand=brand,
                is_movie=bool(is_movie),
                with_title=with_title,
            )
            words = clean_product(chosen, stopwords)
            ids.append(pid)
            tokens.append(words)
            hashes.append(text_hash(words))
            reasons.append(
                None if words else (SKIP_NO_TEXT if chosen.source == "none" else SKIP_NO_WORDS)
            )
            if chosen.capped:
                n_capped += 1
                notes.append(f"text capped at {MAX_TEXT_CHARS} characters")
            else:
                notes.append(None)
        progress.advance(len(batch))
        if limit and len(ids) >= limit:
            break
    result.close()
    if limit:
        del ids[limit:], tokens[limit:], hashes[limit:], reasons[limit:], notes[limit:]
    return _Catalogue(np.asarray(ids, dtype=np.int64), tokens, hashes, reasons, notes, n_capped)


def _idf_fingerprint(idf: dict[str, float]) -> str:
    digest = hashlib.sha256()
    for word in sorted(idf):
        digest.update(f"{word}={idf[word]:.9g};".encode())
    return digest.hexdigest()[:16]


def build_features(
    engine: sa.Engine,
    settings: Settings,
    *,
    word_vectors: str = "train",
    dim: int = 100,
    weighting: str = "mean",
    seed: int = 1,
    workers: int = 1,
    epochs: int = 5,
    min_count: int = 2,
    limit: int | None = None,
    with_title: bool = False,
    name: str | None = None,
    make_current_set: bool = True,
    create_hnsw: bool = True,
    keep: int = 3,
    save_vectors: bool = True,
    progress: Progress | None = None,
    after_write: Callable[[sa.Connection, int], None] | None = None,
) -> BuildSummary:
    """Build a feature set from the products table and (by default) make it current.

    Args:
        engine: the database.
        settings: recsys settings (trained word vectors are saved under ``home/word_vectors``).
        word_vectors: ``train``, ``glove-6b-50d`` or a path to word2vec / .kv vectors.
        dim: vector size when training (pretrained vectors bring their own).
        weighting: ``mean`` or ``tfidf``.
        seed: Word2Vec seed.
        workers: Word2Vec threads (1: reproducible; 0: all cores).
        epochs: Word2Vec epochs.
        min_count: Word2Vec minimum word count.
        limit: vocabulary cap when loading a word2vec file.
        with_title: prepend title and brand to each product's text.
        name: the set's name (default ``fs-<timestamp>``).
        make_current_set: switch to the new set at commit.
        create_hnsw: build the HNSW index (skipped above 2000 dimensions).
        keep: sets kept after the switch (older non-current ones are pruned; 0 keeps all).
        save_vectors: save trained word vectors (word2vec binary) for reuse as ``PATH``.
        progress: progress reporter.
        after_write: test hook called inside the write transaction before it commits.

    Returns:
        The build summary.

    Raises:
        RecsysError: bad word vectors, no products, a taken name (nothing is written).
    """
    import os

    from recsys.features import vectors as wv

    if weighting not in ("mean", "tfidf"):
        raise InputError(f"unknown weighting {weighting!r} (use mean or tfidf)")
    if word_vectors == wv.TRAIN and not 1 <= dim <= 16000:
        raise InputError(f"--dim must be between 1 and 16000, got {dim}")
    if word_vectors not in (wv.TRAIN, wv.GLOVE):
        # fail fast, before cleaning a big catalogue (the full check comes when loading)
        from pathlib import Path

        if not Path(word_vectors).is_file():
            raise InputError(f"word vectors file not found: {word_vectors}")
    progress = progress or NO_PROGRESS
    started = time.perf_counter()
    workers = workers if workers > 0 else (os.cpu_count() or 1)

    from recsys.db.locks import advisory_lock

    # one build at a time (CLI or nightly), across processes: fails at once with LockBusy
    with advisory_lock(engine, FEATURES_LOCK, what="recsys features build"):
        return _build(
            engine,
            settings,
            word_vectors=word_vectors,
            dim=dim,
            weighting=weighting,
            seed=seed,
            workers=workers,
            epochs=epochs,
            min_count=min_count,
            limit=limit,
            with_title=with_title,
            name=name,
            make_current_set=make_current_set,
            create_hnsw=create_hnsw,
            keep=keep,
            save_vectors=save_vectors,
            progress=progress,
            after_write=after_write,
            started=started,
        )


def _build(
    engine: sa.Engine,
    settings: Settings,
    *,
    word_vectors: str,
    dim: int,
    weighting: str,
    seed: int,
    workers: int,
    epochs: int,
    min_count: int,
    limit: int | None,
    with_title: bool,
    name: str | None,
    make_current_set: bool,
    create_hnsw: bool,
    keep: int,
    save_vectors: bool,
    progress: Progress,
    after_write: Callable[[sa.Connection, int], None] | None,
    started: float,
) -> BuildSummary:
    from recsys.features import vectors as wv
    from recsys.features.text import CLEANING_VERSION, stopwords_source

    phases: dict[str, float] = {}
    tick = time.perf_counter()
    with engine.connect() as conn:
        catalogue = _read_catalogue(conn, with_title=with_title, progress=progress)
        previous = current_feature_set(conn)
    phases["clean"] = time.perf_counter() - tick
    if len(catalogue.product_ids) == 0:
        raise DataError("no products in the database: load metadata first (recsys load-db)")
    _log.info("cleaned %d products", len(catalogue.product_ids))

    tick = time.perf_counter()
    progress.start("word vectors", 1)
    vectors = wv.resolve_word_vectors(
        word_vectors,
        sentences=catalogue.tokens,
        dim=dim,
        seed=seed,
        workers=workers,
        epochs=epochs,
        min_count=min_count,
        limit=limit,
    )
    progress.advance(1)
    phases["word_vectors"] = time.perf_counter() - tick

    idf = wv.idf_weights(catalogue.tokens, vectors.keyed_vectors) if weighting == "tfidf" else None
    fingerprint = hashlib.sha256(
        "|".join(
            [
                vectors.fingerprint,
                str(vectors.dim),
                weighting,
                str(CLEANING_VERSION),
                stopwords_source(),
                f"title={with_title}",
                _idf_fingerprint(idf) if idf else "",
            ]
        ).encode()
    ).hexdigest()

    reuse_from = previous.id if previous and previous.source_fingerprint == fingerprint else None
    changed = np.ones(len(catalogue.product_ids), dtype=bool)
    if reuse_from is not None:
        with engine.connect() as conn:
            old = dict(
                conn.execute(
                    sa.text(
                        "SELECT product_id, text_hash FROM product_features "
                        "WHERE feature_set_id = :id"
                    ),
                    {"id": reuse_from},
                ).all()
            )
        for i, (pid, h) in enumerate(
            zip(catalogue.product_ids.tolist(), catalogue.hashes, strict=True)
        ):
            if old.get(pid) == h:
                changed[i] = False
        _log.info(
            "reusing %d unchanged products from feature set %d", int((~changed).sum()), reuse_from
        )

    tick = time.perf_counter()
    todo = np.flatnonzero(changed)
    has_words = [i for i in todo.tolist() if catalogue.tokens[i]]
    progress.start("embedding", len(todo), "products")
    embedded = wv.embed(
        [catalogue.tokens[i] for i in has_words],
        vectors.keyed_vectors,
        weighting=weighting,
        idf=idf,
    )
    progress.advance(len(todo))
    phases["embed"] = time.perf_counter() - tick

    ok = embedded.n_words > 0
    rows_ok = np.asarray(has_words, dtype=np.int64)[ok]
    skipped_rows: list[tuple[int, bytes, str, str | None]] = []
    skipped: Counter[str] = Counter()
    for i in todo.tolist():
        reason = catalogue.empty_reason[i]
        if reason:
            skipped_rows.append(
                (int(catalogue.product_ids[i]), catalogue.hashes[i], reason, catalogue.notes[i])
            )
    for j in np.flatnonzero(~ok).tolist():
        i = has_words[j]
        skipped_rows.append(
            (
                int(catalogue.product_ids[i]),
                catalogue.hashes[i],
                SKIP_NO_KNOWN_WORDS,
                catalogue.notes[i],
            )
        )
    for row in skipped_rows:
        skipped[row[2]] += 1

    set_name = name or f"fs-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    params = {
        "seed": seed,
        "workers": workers,
        "epochs": epochs,
        "min_count": min_count,
        "limit": limit,
        "with_title": with_title,
        "word_vectors": word_vectors,
        "deterministic": word_vectors != wv.TRAIN or workers == 1,
        "stopwords": stopwords_source(),
    }

    if save_vectors and word_vectors == wv.TRAIN:
        out = settings.home / "word_vectors" / f"{set_name}.bin"
        out.parent.mkdir(parents=True, exist_ok=True)
        vectors.keyed_vectors.save_word2vec_format(str(out), binary=True)
        params["saved_vectors"] = str(out)

    tick = time.perf_counter()
    n_store = len(rows_ok) + len(skipped_rows)
    progress.start("storing", max(1, n_store), "products")
    indexed = False
    with engine.begin() as conn:
        set_id = create_feature_set(
            conn,
            name=set_name,
            source=vectors.source,
            source_fingerprint=fingerprint,
            dim=vectors.dim,
            weighting=weighting,
            cleaning_version=CLEANING_VERSION,
            vocabulary_size=vectors.vocabulary_size,
            params=params,
        )
        n_reused = 0
        if reuse_from is not None and (~changed).any():
            n_reused = _copy_forward(conn, reuse_from, set_id, catalogue.product_ids[~changed])
            for reason, count in conn.execute(
                sa.text(
                    "SELECT skip_reason, count(*) FROM product_features "
                    "WHERE feature_set_id = :id AND skip_reason IS NOT NULL "
                    "GROUP BY skip_reason"
                ),
                {"id": set_id},
            ).all():
                skipped[reason] += count
        vectors_ok, words_ok = embedded.vectors[ok], embedded.n_words[ok]
        noted = np.fromiter(
            (catalogue.notes[i] is not None for i in rows_ok.tolist()),
            dtype=bool,
            count=len(rows_ok),
        )
        for part, part_notes in ((~noted, None), (noted, True)):
            idx = rows_ok[part]
            write_vectors(
                conn,
                set_id,
                catalogue.product_ids[idx],
                vectors_ok[part],
                [catalogue.hashes[i] for i in idx.tolist()],
                words_ok[part],
                [catalogue.notes[i] for i in idx.tolist()] if part_notes else None,
            )
        progress.advance(len(rows_ok))
        write_skipped(conn, set_id, skipped_rows)
        progress.advance(len(skipped_rows))
        finish_feature_set(conn, set_id)
        phases["store"] = time.perf_counter() - tick
        tick = time.perf_counter()
        if create_hnsw:
            progress.start("indexing", 1)
            indexed = create_index(conn, set_id, vectors.dim)
            progress.advance(1)
        phases["index"] = time.perf_counter() - tick
        if after_write is not None:
            after_write(conn, set_id)
        if make_current_set:
            make_current(conn, set_id)
            if keep > 0:
                prune_feature_sets(conn, keep)
    progress.finish()

    n_embedded = conn_count = 0
    with engine.connect() as conn:
        conn_count = conn.execute(
            sa.text("SELECT count(vector) FROM product_features WHERE feature_set_id = :id"),
            {"id": set_id},
        ).scalar_one()
    n_embedded = int(conn_count)
    token_cov = (float(embedded.n_words.sum()) / embedded.n_tokens) if embedded.n_tokens else 1.0
    word_cov = (embedded.n_distinct_known / embedded.n_distinct) if embedded.n_distinct else 1.0
    return BuildSummary(
        feature_set_id=set_id,
        name=set_name,
        source=vectors.source,
        dim=vectors.dim,
        weighting=weighting,
        n_products=len(catalogue.product_ids),
        n_embedded=n_embedded,
        n_computed=len(todo),
        n_reused=n_reused,
        skipped=dict(skipped),
        n_capped=catalogue.n_capped,
        vocabulary_size=vectors.vocabulary_size,
        token_coverage=token_cov,
        word_coverage=word_cov,
        previous_id=previous.id if previous else None,
        seconds=time.perf_counter() - started,
        phases=phases,
        indexed=indexed,
    )


def _copy_forward(conn: sa.Connection, old_id: int, new_id: int, product_ids: np.ndarray) -> int:
    """Copy the unchanged products' rows from the old set to the new one, in SQL."""
    conn.execute(
        sa.text("CREATE TEMP TABLE _fs_reuse (product_id bigint PRIMARY KEY) ON COMMIT DROP")
    )
    with _psycopg(conn).cursor() as cur, cur.copy("COPY _fs_reuse (product_id) FROM STDIN") as cp:
        cp.write("".join(f"{int(p)}\n" for p in product_ids.tolist()))
    result = conn.execute(
        sa.text(
            "INSERT INTO product_features (feature_set_id, product_id, text_hash, vector, "
            "n_words, skip_reason, notes) SELECT :new, pf.product_id, pf.text_hash, pf.vector, "
            "pf.n_words, pf.skip_reason, pf.notes FROM product_features pf "
            "JOIN _fs_reuse r USING (product_id) WHERE pf.feature_set_id = :old"
        ),
        {"new": new_id, "old": old_id},
    )
    return int(result.rowcount)


# --- querying --------------------------------------------------------------------------------


def similar_sql(info: FeatureSetInfo) -> sql.Composed:
    """The nearest-neighbour query over one set, shaped so its partial HNSW index applies:
    the same ``vector::vector(DIM)`` expression, the set id as a literal (a partial index
    predicate must be provable at plan time) and the query vector as a parameter ``%(v)s``.
    """
    return sql.SQL(
        "SELECT p.id, p.external_id, p.title, p.brand, "
        "1 - (pf.vector::vector({dim}) <=> %(v)s::vector({dim})) AS similarity "
        "FROM product_features pf JOIN products p ON p.id = pf.product_id "
        "WHERE pf.feature_set_id = {set} AND pf.product_id <> %(p)s "
        "ORDER BY pf.vector::vector({dim}) <=> %(v)s::vector({dim}) LIMIT %(k)s"
    ).format(dim=sql.Literal(info.dim), set=sql.Literal(info.id))


@dataclass(frozen=True)
class SimilarProduct:
    """One answer of :func:`similar_products`."""

    product_id: int
    external_id: str
    title: str | None
    brand: str | None
    similarity: float
    """Cosine similarity (1 - pgvector's cosine distance)."""


def similar_products(
    conn: sa.Connection, external_id: str, k: int = 10, feature_set: FeatureSetInfo | None = None
) -> tuple[FeatureSetInfo, list[SimilarProduct]]:
    """The ``k`` products most similar to one product by cosine, over the current set.

    Uses the set's HNSW index (approximate; ``hnsw.ef_search`` is raised to at least 2k).

    Raises:
        DataError: no current feature set, unknown product, or the product has no vector.
    """
    if k < 1:
        raise InputError(f"-k must be at least 1, got {k}")
    info = feature_set or current_feature_set(conn)
    if info is None:
        raise DataError("no feature set yet: run recsys features build")
    product = conn.execute(
        sa.text("SELECT id FROM products WHERE external_id = :e"), {"e": external_id}
    ).first()
    if product is None:
        raise DataError(f"unknown product {external_id!r}")
    row = conn.execute(
        sa.text(
            "SELECT vector IS NOT NULL, skip_reason FROM product_features "
            "WHERE feature_set_id = :s AND product_id = :p"
        ),
        {"s": info.id, "p": product.id},
    ).first()
    if row is None:
        raise DataError(
            f"product {external_id!r} is not in feature set {info.name} (added after the build: "
            "run recsys features build)"
        )
    if not row[0]:
        raise DataError(f"product {external_id!r} has no text vector ({row[1]})")
    vector_text = conn.execute(
        sa.text(
            "SELECT vector::text FROM product_features "
            "WHERE feature_set_id = :s AND product_id = :p"
        ),
        {"s": info.id, "p": product.id},
    ).scalar_one()
    with _psycopg(conn).cursor() as cur:
        cur.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(max(40, 2 * k)),))
        cur.execute(similar_sql(info), {"v": vector_text, "p": product.id, "k": k})
        rows = cur.fetchall()
    return info, [SimilarProduct(int(r[0]), r[1], r[2], r[3], float(r[4])) for r in rows]


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


__all__ = [
    "BuildSummary",
    "FeatureSetInfo",
    "RecsysError",
    "SimilarProduct",
    "build_features",
    "current_feature_set",
    "get_feature_set",
    "list_feature_sets",
    "make_current",
    "read_vectors",
    "similar_products",
    "write_vectors",
]
