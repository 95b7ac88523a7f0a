"""Per-product aggregates of a recommendation run, counted while its rows are written.

:class:`ProductCounts` adds up, per product, the lists that hold it (``n_users``), the lists
that hold it at rank 1 (``n_first``) and the sum of its ranks, one ``np.bincount`` per batch of
rows (a list holds a product at most once, so a product's rows are the lists holding it).
:meth:`ProductCounts.write` stores them in ``recommendation_product_counts`` with the
product's number of ratings and popularity percentile at that moment, and the run-level figures
in ``recommendation_runs.list_stats``, inside the caller's transaction (the one that holds the
run's rows, so the aggregates are complete or absent with them).

The counters are dense arrays indexed by ``products.id`` (an identity column, so about as long
as the catalogue has ever been): 24 bytes per id.

The popularity percentile is ``percent_rank()`` of the product's number of ratings among the
products that have ratings (ties share the lower rank): ``(products rated less) / (rated
products - 1)``, the definition ``recsys.evaluation.metrics.ranking_metrics`` and the report
use.
"""

from __future__ import annotations

import json

import numpy as np
import sqlalchemy as sa

from recsys.db.copy import driver_connection, encode_binary
from recsys.scoring.reads import fetch_pairs

COPY_SQL = (
    "COPY recommendation_product_counts (run_id, product_id, n_users, n_first, rank_sum, "
    "n_ratings, popularity_pct) FROM STDIN (FORMAT BINARY)"
)


def popularity_percentiles(
    rated_ids: np.ndarray, rated_counts: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(number of ratings, percentile) of each of ``ids``; -1 and NaN where it has no ratings.

    Args:
        rated_ids: every rated product (any order, each once).
        rated_counts: its number of ratings.
        ids: the products asked about.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n_ratings = np.full(len(ids), -1, dtype=np.int64)
    pct = np.full(len(ids), np.nan, dtype=np.float64)
    if not len(rated_ids) or not len(ids):
        return n_ratings, pct
    order = np.argsort(rated_ids, kind="stable")
    sorted_ids, counts = rated_ids[order], rated_counts[order]
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    rated = sorted_ids[at] == ids
    n_ratings[rated] = counts[at[rated]]
    below = np.searchsorted(np.sort(rated_counts), n_ratings[rated], side="left")
    pct[rated] = below / max(1, len(rated_counts) - 1)
    return n_ratings, pct


class ProductCounts:
    """Per-product counters of the rows of one run (see the module docstring)."""

    def __init__(self) -> None:
        self.n_users = np.zeros(0, dtype=np.int64)
        self.n_first = np.zeros(0, dtype=np.int64)
        self.rank_sum = np.zeros(0, dtype=np.int64)

    def _grow(self, size: int) -> None:
        if size <= len(self.n_users):
            return
        size = max(size, 2 * len(self.n_users))
        for name in ("n_users", "n_first", "rank_sum"):
            old = getattr(self, name)
            new = np.zeros(size, dtype=np.int64)
            new[: len(old)] = old
            setattr(self, name, new)

    def add(self, product_ids: np.ndarray, ranks: np.ndarray) -> None:
        """Count one batch of rows (``products.id`` and 1-based rank per row)."""
        products = np.asarray(product_ids, dtype=np.int64)
        if not len(products):
            return
        if int(products.min()) < 0:
            raise ValueError("product ids must not be negative")
        ranks = np.asarray(ranks, dtype=np.int64)
        size = int(products.max()) + 1
        self._grow(size)
        self.n_users[:size] += np.bincount(products, minlength=size)
        self.n_first[:size] += np.bincount(products[ranks == 1], minlength=size)
        self.rank_sum[:size] += np.bincount(products, weights=ranks, minlength=size).astype(
            np.int64
        )

    def product_ids(self) -> np.ndarray:
        """The products counted at least once, ascending."""
        return np.flatnonzero(self.n_users).astype(np.int64)

    def encode(self, run_id: int, n_ratings: np.ndarray, pct: np.ndarray) -> bytes:
        """The rows of ``recommendation_product_counts`` as one COPY BINARY stream."""
        ids = self.product_ids()
        rated = n_ratings >= 0
        parts = []
        for mask, with_popularity in ((rated, True), (~rated, False)):
            if not mask.any():
                continue
            fields = [
                ("nfields", ">i2"),
                ("len_run", ">i4"),
                ("run_id", ">i8"),
                ("len_product", ">i4"),
                ("product_id", ">i8"),
                ("len_users", ">i4"),
                ("n_users", ">i4"),
                ("len_first", ">i4"),
                ("n_first", ">i4"),
                ("len_rank_sum", ">i4"),
                ("rank_sum", ">i8"),
                ("len_ratings", ">i4"),
            ]
            if with_popularity:
                fields += [("n_ratings", ">i4"), ("len_pct", ">i4"), ("pct", ">f8")]
            else:
                fields.append(("len_pct", ">i4"))
            chosen = ids[mask]
            tuples = np.empty(len(chosen), dtype=np.dtype(fields))
            tuples["nfields"] = 7
            tuples["len_run"] = tuples["len_product"] = tuples["len_rank_sum"] = 8
            tuples["len_users"] = tuples["len_first"] = 4
            tuples["run_id"] = run_id
            tuples["product_id"] = chosen
            tuples["n_users"] = self.n_users[chosen]
            tuples["n_first"] = self.n_first[chosen]
            tuples["rank_sum"] = self.rank_sum[chosen]
            if with_popularity:
                tuples["len_ratings"] = 4
                tuples["n_ratings"] = n_ratings[mask]
                tuples["len_pct"] = 8
                tuples["pct"] = pct[mask]
            else:
                tuples["len_ratings"] = tuples["len_pct"] = -1
            parts.append(tuples)
        return encode_binary(parts)

    def write(self, conn: sa.Connection, run_id: int) -> dict[str, int]:
        """Store the counts of run ``run_id`` and its ``list_stats`` (the caller's transaction).

        The ratings and the catalogue are read in the caller's snapshot: in the scoring
        transaction, the data the lists were computed from. Returns the ``list_stats``.
        """
        rated_ids, rated_counts = fetch_pairs(
            conn, "SELECT product_id, count(*) FROM ratings GROUP BY product_id", {}
        )
        ids = self.product_ids()
        n_ratings, pct = popularity_percentiles(rated_ids, rated_counts, ids)
        if len(ids):
            raw = driver_connection(conn)
            with raw.cursor() as cur, cur.copy(COPY_SQL) as copy:
                copy.write(self.encode(run_id, n_ratings, pct))
        catalogue = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
        stats = {
            "products": int(len(ids)),
            "catalogue": int(catalogue),
            "rated_products": int(len(rated_ids)),
        }
        conn.execute(
            sa.text("UPDATE recommendation_runs SET list_stats = CAST(:s AS jsonb) WHERE id = :r"),
            {"s": json.dumps(stats), "r": run_id},
        )
        return stats
