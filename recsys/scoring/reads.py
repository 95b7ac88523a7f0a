"""Database reads of a scoring run: users, products, ratings to mask, the rules, popularity.

Every function takes the caller's connection and never commits. The scoring loop runs them all
inside one REPEATABLE READ transaction, so every read of a run sees the same snapshot of the
database (see :mod:`recsys.scoring.score`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import sqlalchemy as sa

from recsys.db.copy import copy_bigint_arrays
from recsys.errors import RecsysError

CATEGORY_SQL = "coalesce(categories[cardinality(categories)], main_category)"
"""A product's category: the last (most specific) element of its path, else main_category."""


def fetch_pairs(conn: sa.Connection, sql: str, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Two int64 columns of a query as arrays.

    The rows are flattened with ``np.fromiter`` over plain tuples: handing SQLAlchemy ``Row``
    objects to ``np.asarray`` makes numpy probe each row for array attributes, which costs
    more than the query.
    """
    rows = conn.execute(sa.text(sql), params).tuples().all()
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=2 * len(rows))
    return flat[0::2].copy(), flat[1::2].copy()


def user_ids(conn: sa.Connection) -> np.ndarray:
    """Every ``users.id``, ascending."""
    return np.asarray(
        conn.execute(sa.text("SELECT id FROM users ORDER BY id")).scalars().all(), dtype=np.int64
    )


def product_ids(conn: sa.Connection) -> np.ndarray:
    """Every ``products.id``, ascending."""
    return np.asarray(
        conn.execute(sa.text("SELECT id FROM products ORDER BY id")).scalars().all(),
        dtype=np.int64,
    )


def rated_pairs(conn: sa.Connection, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user_id, product_id) of every rating in the database by these users.

    Read as two arrays in one COPY BINARY row: every block of every run reads its users'
    ratings, and one Python row (or one COPY message) per rating costs more than the query.
    """
    found_users, found_products = copy_bigint_arrays(
        conn,
        "SELECT array_agg(user_id), array_agg(product_id) FROM ratings "
        "WHERE user_id = ANY(%(u)s::bigint[])",
        {"u": [int(u) for u in users]},
    )
    return found_users, found_products


def excluded_pairs(conn: sa.Connection, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user_id, product_id) of the exclusions in force now for these users."""
    return fetch_pairs(
        conn,
        "SELECT u.id, p.id FROM user_exclusions e "
        "JOIN users u ON u.external_id = e.user_external_id "
        "JOIN products p ON p.external_id = e.asin "
        "WHERE u.id = ANY(:u) AND (e.until IS NULL OR e.until > now())",
        {"u": [int(u) for u in users]},
    )


@dataclass(frozen=True)
class UserPairs:
    """(user_id, product_id) pairs held in memory, sorted by user, looked up a block at a time."""

    users: np.ndarray
    """int64, ascending."""
    products: np.ndarray

    @classmethod
    def of(cls, users: np.ndarray, products: np.ndarray) -> UserPairs:
        order = np.argsort(users, kind="stable")
        return cls(
            np.asarray(users, dtype=np.int64)[order], np.asarray(products, dtype=np.int64)[order]
        )

    def pairs_for(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pairs of these users (any order), as ``excluded_pairs`` returns them."""
        users = np.asarray(users, dtype=np.int64)
        lo = np.searchsorted(self.users, users, side="left")
        lengths = np.searchsorted(self.users, users, side="right") - lo
        total = int(lengths.sum())
        if not total:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        starts = np.cumsum(lengths) - lengths
        index = np.arange(total) - np.repeat(starts - lo, lengths)
        return self.users[index], self.products[index]


def all_excluded_pairs(conn: sa.Connection) -> UserPairs:
    """Every exclusion in force now, read once for a whole run (16 bytes a pair in memory)."""
    return UserPairs.of(
        *fetch_pairs(
            conn,
            "SELECT u.id, p.id FROM user_exclusions e "
            "JOIN users u ON u.external_id = e.user_external_id "
            "JOIN products p ON p.external_id = e.asin "
            "WHERE e.until IS NULL OR e.until > now()",
            {},
        )
    )


def exclusions_for_unknown_users(conn: sa.Connection) -> int:
    """Exclusions in force whose user is not in ``users`` (reported; they cannot apply)."""
    return int(
        conn.execute(
            sa.text(
                "SELECT count(*) FROM user_exclusions e WHERE (e.until IS NULL OR e.until > now()) "
                "AND NOT EXISTS (SELECT 1 FROM users u WHERE u.external_id = e.user_external_id)"
            )
        ).scalar_one()
    )


def unavailable_products(conn: sa.Connection) -> np.ndarray:
    """``products.id`` of every product with ``available = false``."""
    return np.asarray(
        conn.execute(sa.text("SELECT id FROM products WHERE NOT available")).scalars().all(),
        dtype=np.int64,
    )


def boost_factors(conn: sa.Connection) -> tuple[np.ndarray, np.ndarray]:
    """(product_id, factor) of the boosts valid now; several rows of one product multiply."""
    rows = conn.execute(
        sa.text(
            "SELECT p.id, exp(sum(ln(b.factor))) FROM product_boosts b "
            "JOIN products p ON p.external_id = b.asin "
            "WHERE (b.valid_from IS NULL OR b.valid_from <= now()) "
            "AND (b.valid_until IS NULL OR b.valid_until > now()) GROUP BY p.id"
        )
    ).all()
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    return (
        np.asarray([r[0] for r in rows], dtype=np.int64),
        np.asarray([r[1] for r in rows], dtype=np.float64),
    )


@dataclass(frozen=True)
class ProductGroups:
    """Each product's category and brand as codes (-1: none), for caps and fallback reasons."""

    product_ids: np.ndarray
    """int64 [n], ascending."""
    category: np.ndarray
    """int64 [n]: index into ``category_names``, -1 when the product has no category."""
    brand: np.ndarray
    """int64 [n]: brand code, -1 when the product has no brand."""
    category_names: list[str]

    def codes_for(self, ids: np.ndarray, which: str) -> np.ndarray:
        """The ``category`` or ``brand`` code of each id (-1 for ids not in the table)."""
        values = getattr(self, which)
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.product_ids):
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.product_ids, ids), len(self.product_ids) - 1)
        found = self.product_ids[pos] == ids
        return np.where(found, values[pos], -1)


def product_groups(conn: sa.Connection) -> ProductGroups:
    """Category (the fallback's) and brand codes of every product."""
    rows = conn.execute(
        sa.text(f"SELECT id, {CATEGORY_SQL}, nullif(btrim(brand), '') FROM products ORDER BY id")
    ).all()
    ids = np.asarray([r[0] for r in rows], dtype=np.int64)
    category_names: dict[str, int] = {}
    brands: dict[str, int] = {}
    category = np.full(len(rows), -1, dtype=np.int64)
    brand = np.full(len(rows), -1, dtype=np.int64)
    for i, (_, cat, br) in enumerate(rows):
        if cat is not None:
            category[i] = category_names.setdefault(cat, len(category_names))
        if br is not None:
            brand[i] = brands.setdefault(br.lower(), len(brands))
    return ProductGroups(ids, category, brand, list(category_names))


def popularity(conn: sa.Connection) -> tuple[np.ndarray, np.ndarray]:
    """(product_id, number of ratings) of every rated product, most rated first, then id."""
    return fetch_pairs(
        conn,
        "SELECT product_id, count(*) FROM ratings GROUP BY product_id "
        "ORDER BY count(*) DESC, product_id",
        {},
    )


def new_product_vectors(
    conn: sa.Connection, feature_set_id: int | None, known: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(product_ids, text vectors) in the feature set that are not in ``known``."""
    if feature_set_id is None:
        raise RecsysError("the model has no feature set, so new products cannot be scored by text")
    product_ids_, vectors = text_vectors(conn, feature_set_id)
    new = ~np.isin(product_ids_, known)
    return product_ids_[new], vectors[new]


def text_vectors(conn: sa.Connection, feature_set_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(product_ids ascending, float32 vectors) of one feature set."""
    from recsys.features.store import read_vectors

    ids, vectors = read_vectors(conn, int(feature_set_id))
    return np.asarray(ids, dtype=np.int64), np.asarray(vectors, dtype=np.float32)


def latest_feature_set(conn: sa.Connection) -> int | None:
    """The newest feature set that holds vectors, or None."""
    return conn.execute(
        sa.text("SELECT max(feature_set_id) FROM product_features WHERE vector IS NOT NULL")
    ).scalar()
