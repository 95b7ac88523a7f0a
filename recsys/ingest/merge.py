"""The set-based merge of staged rows into users, products and ratings, and the load log.

Ratings (general path): duplicates inside the file are resolved with ``DISTINCT ON (user,
product)`` keeping the latest ``rated_at``, equal timestamps the later line; users and products
the ratings refer to are created; one ``INSERT ... ON CONFLICT DO UPDATE`` merges the ratings,
replacing a stored rating when the file's is as recent or more recent (``>=``), so loading the
same file twice leaves the same database. Metadata: per field the last non-empty value, ``raw``
merged key by key with later lines winning, MovieLens tags concatenated in file order.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from recsys.db.copy import copy_text
from recsys.ingest.summary import LoadSummary, Rejects

# Latest rating per (user, product); equal timestamps: the later line.
DEDUP_RATINGS = sa.text(
    "CREATE TEMP TABLE dedup_ratings ON COMMIT DROP AS "
    "SELECT DISTINCT ON (user_ext, product_ext) user_ext, product_ext, rating, ts "
    "FROM stage_ratings ORDER BY user_ext, product_ext, ts DESC, line_no DESC"
)
INSERT_USERS = sa.text(
    "INSERT INTO users (external_id) SELECT DISTINCT user_ext FROM dedup_ratings "
    "ON CONFLICT (external_id) DO NOTHING"
)
INSERT_RATED_PRODUCTS = sa.text(
    "INSERT INTO products (external_id) SELECT DISTINCT product_ext FROM dedup_ratings "
    "ON CONFLICT (external_id) DO NOTHING"
)
MERGE_CONFLICT = (
    "ON CONFLICT (user_id, product_id) DO UPDATE "
    "SET rating = EXCLUDED.rating, rated_at = EXCLUDED.rated_at "
    "WHERE EXCLUDED.rated_at >= ratings.rated_at"
)
"""A stored rating is replaced by the file's when the file's is as recent or more recent."""
MERGE_RATINGS = sa.text(
    "INSERT INTO ratings (user_id, product_id, rating, rated_at) "
    "SELECT u.id, p.id, d.rating, to_timestamp(d.ts) FROM dedup_ratings d "
    "JOIN users u ON u.external_id = d.user_ext "
    "JOIN products p ON p.external_id = d.product_ext "
    "ORDER BY 1, 2 " + MERGE_CONFLICT  # primary-key order: the index fills sequentially
)

BULK_ROWS = 200_000
"""From this many distinct ratings in one file, the merge drops the ratings foreign keys and the
product index, inserts, then recreates them (validated in one pass each). Row-by-row foreign-key
triggers and random index inserts made the merge ~3x slower (measured at 500k rows). The DDL runs
inside the file's transaction, so a failure or kill restores them; it locks ``ratings``
exclusively for the rest of the load, which a nightly batch load can afford."""
DROP_RATING_CHECKS = (
    "ALTER TABLE ratings DROP CONSTRAINT fk_ratings_user_id_users, "
    "DROP CONSTRAINT fk_ratings_product_id_products",
    "DROP INDEX ix_ratings_product_id",
)
RESTORE_RATING_CHECKS = (
    "CREATE INDEX ix_ratings_product_id ON ratings (product_id)",
    "ALTER TABLE ratings ADD CONSTRAINT fk_ratings_user_id_users FOREIGN KEY (user_id) "
    "REFERENCES users (id) ON DELETE CASCADE, ADD CONSTRAINT fk_ratings_product_id_products "
    "FOREIGN KEY (product_id) REFERENCES products (id) ON DELETE CASCADE",
)


def merge_staged_ratings(conn: sa.Connection) -> int:
    """Dedupe ``stage_ratings``, create its users and products, merge it; distinct ratings."""
    distinct = conn.execute(DEDUP_RATINGS).rowcount
    conn.execute(INSERT_USERS)
    conn.execute(INSERT_RATED_PRODUCTS)
    merge_ratings(conn, MERGE_RATINGS, distinct)
    return distinct


def merge_ratings(conn: sa.Connection, statement: sa.TextClause, distinct: int) -> None:
    """Run the ratings merge ``statement``, without row-by-row checks when it is large."""
    bulk = distinct >= BULK_ROWS
    if bulk:
        for ddl in DROP_RATING_CHECKS:
            conn.execute(sa.text(ddl))
    conn.execute(statement)
    if bulk:
        for ddl in RESTORE_RATING_CHECKS:
            conn.execute(sa.text(ddl))


def _last(column: str) -> str:
    # the value of the latest line that gives one (column names are our constants)
    return f"(array_agg({column} ORDER BY line_no DESC) FILTER (WHERE {column} IS NOT NULL))[1]"


def merge_products_sql(aggregate_text: bool) -> sa.TextClause:
    """The metadata merge of ``stage_products`` into ``products``."""
    feature_text = (
        "string_agg(feature_text, E'\\n' ORDER BY line_no)"
        if aggregate_text
        else _last("feature_text")
    )
    return sa.text(
        "WITH merged_raw AS ("
        "  SELECT s.external_id, jsonb_object_agg(e.key, e.value ORDER BY s.line_no) AS raw"
        "  FROM stage_products s CROSS JOIN LATERAL jsonb_each(s.raw::jsonb) e"
        "  WHERE s.raw IS NOT NULL GROUP BY s.external_id"
        "), merged AS ("
        f"  SELECT external_id, {_last('title')} AS title, {_last('brand')} AS brand,"
        f"  {_last('description')} AS description, {feature_text} AS feature_text,"
        f"  {_last('categories')} AS categories, {_last('main_category')} AS main_category"
        "  FROM stage_products GROUP BY external_id"
        ") "
        "INSERT INTO products (external_id, title, brand, description, feature_text, categories,"
        " main_category, raw) "
        "SELECT m.external_id, m.title, m.brand, m.description, m.feature_text,"
        " CASE WHEN m.categories IS NULL THEN NULL"
        "  ELSE ARRAY(SELECT jsonb_array_elements_text(m.categories::jsonb)) END,"
        " m.main_category, r.raw "
        "FROM merged m LEFT JOIN merged_raw r USING (external_id) "
        "ON CONFLICT (external_id) DO UPDATE SET"
        " title = COALESCE(EXCLUDED.title, products.title),"
        " brand = COALESCE(EXCLUDED.brand, products.brand),"
        " description = COALESCE(EXCLUDED.description, products.description),"
        " feature_text = COALESCE(EXCLUDED.feature_text, products.feature_text),"
        " categories = COALESCE(EXCLUDED.categories, products.categories),"
        " main_category = COALESCE(EXCLUDED.main_category, products.main_category),"
        " raw = CASE WHEN EXCLUDED.raw IS NULL THEN products.raw"
        "  ELSE COALESCE(products.raw, '{}'::jsonb) || EXCLUDED.raw END,"
        " updated_at = now()"
    )


_PRODUCT_CONFLICT = (
    "ON CONFLICT (external_id) DO UPDATE SET"
    " title = COALESCE(EXCLUDED.title, products.title),"
    " brand = COALESCE(EXCLUDED.brand, products.brand),"
    " description = COALESCE(EXCLUDED.description, products.description),"
    " feature_text = COALESCE(EXCLUDED.feature_text, products.feature_text),"
    " categories = COALESCE(EXCLUDED.categories, products.categories),"
    " main_category = COALESCE(EXCLUDED.main_category, products.main_category),"
    " raw = CASE WHEN EXCLUDED.raw IS NULL THEN products.raw"
    "  ELSE COALESCE(products.raw, '{}'::jsonb) || EXCLUDED.raw END,"
    " updated_at = now()"
)

MERGE_UNIQUE_PRODUCTS = sa.text(
    "INSERT INTO products (external_id, title, brand, description, feature_text, categories,"
    " main_category, raw) "
    "SELECT external_id, title, brand, description, feature_text,"
    " CASE WHEN categories IS NULL THEN NULL"
    "  ELSE ARRAY(SELECT jsonb_array_elements_text(categories::jsonb)) END,"
    " main_category, NULLIF(raw::jsonb, '{}'::jsonb) "
    "FROM stage_products ORDER BY external_id " + _PRODUCT_CONFLICT
)
"""The merge when every product appears on one line only: each line is its own merged row
(what the aggregates of :func:`merge_products_sql` give for a single line, an empty ``raw``
included), without grouping."""


def merge_staged_products(
    conn: sa.Connection, aggregate_text: bool, *, allow_unique: bool = True
) -> int:
    """Merge ``stage_products`` into ``products``; the number of distinct products.

    Args:
        conn: the file's transaction.
        aggregate_text: repeated lines concatenate their feature_text (MovieLens tags).
        allow_unique: use :data:`MERGE_UNIQUE_PRODUCTS` when no product repeats (False: always
            the grouping merge; both give the same rows).
    """
    lines, distinct = conn.execute(
        sa.text("SELECT count(*), count(DISTINCT external_id) FROM stage_products")
    ).one()
    if allow_unique and lines == distinct:
        conn.execute(MERGE_UNIQUE_PRODUCTS)
    else:
        conn.execute(merge_products_sql(aggregate_text))
    return distinct


_INSERT_LOAD = sa.text(
    "INSERT INTO loads (path, sha256, format, kind, status, rows_read, rows_loaded, rows_merged,"
    " rows_rejected, message, started_at, finished_at) VALUES (:path, :sha256, :format, :kind,"
    " :status, :rows_read, :rows_loaded, :rows_merged, :rows_rejected, :message, :started_at,"
    " clock_timestamp()) RETURNING id"
)


def insert_load(conn: sa.Connection, summary: LoadSummary, started_at: datetime) -> int:
    """Insert the ``loads`` row of one finished file (its ``load_id`` is ignored); the load id."""
    return conn.execute(
        _INSERT_LOAD,
        {
            "path": summary.path,
            "sha256": summary.sha256,
            "format": summary.format,
            "kind": summary.kind,
            "status": summary.status,
            "rows_read": summary.rows_read,
            "rows_loaded": summary.rows_loaded,
            "rows_merged": summary.rows_merged,
            "rows_rejected": summary.rows_rejected,
            "message": summary.message,
            "started_at": started_at,
        },
    ).scalar_one()


def record_load(
    conn: sa.Connection, summary: LoadSummary, started_at: datetime, rejects: Rejects
) -> int:
    """Write the ``loads`` row of one file and its rejected lines; the load id."""
    load_id = insert_load(conn, summary, started_at)
    if summary.rows_rejected:
        copy_text(
            conn,
            "rejected_rows",
            ("load_id", "line_no", "raw_line", "reason"),
            rejects.chunks(load_id),
        )
    return load_id
