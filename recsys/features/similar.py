"""Similar-products queries over a feature set's HNSW index (see :mod:`recsys.features.store`)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from psycopg import sql

from recsys.errors import DataError, InputError
from recsys.features.records import FeatureSetInfo, _psycopg, current_feature_set

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


@dataclass(frozen=True)
class SimilarTo:
    """The answer of :func:`similar_to`: the product, the feature set and its neighbours."""

    external_id: str
    title: str | None
    feature_set: FeatureSetInfo
    similar: list[SimilarProduct]


def similar_to(engine: sa.Engine, external_id: str, k: int = 10) -> SimilarTo:
    """:func:`similar_products` of one product over the current set, with the product's title.

    Raises:
        DataError: as :func:`similar_products`.
    """
    with engine.begin() as conn:
        info, rows = similar_products(conn, external_id, k)
        title = conn.execute(
            sa.text("SELECT title FROM products WHERE external_id = :e"), {"e": external_id}
        ).scalar()
    return SimilarTo(external_id, title, info, rows)
