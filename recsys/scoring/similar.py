"""Item-to-item lists: each product's top 20 by text vector and by co-rating, published atomically.

* ``text``: cosine similarity of the products' text vectors in the newest feature set, exact,
  computed in blocks of products as one float32 matmul each and cut with the project's top-k
  (:mod:`recsys.data.topk`).
* ``co_rating``: cosine similarity of the products' rater sets, ``|U_i & U_j| /
  sqrt(|U_i| |U_j|)``, from a sparse user x product matrix, kept sparse: the cost is the number
  of co-rated pairs; only pairs rated by at least one common user are listed.

Unavailable products are never listed as similar (the view also hides products that became
unavailable since the build), a product is never similar to itself, and ties go to the lower
product id. Cost: the text part is ``2 x dim x P^2`` FLOP for P products with vectors, so it
grows with the square of the catalogue (``recsys run --no-similar`` skips it).

A build is written like a recommendation run: ``similar_product_runs`` row (``building``),
rows by COPY and the status ``ready`` in one transaction, then the single-row pointer
``published_similar_products`` moves in another; ``current_similar_products`` reads the
pointer and the rows in one snapshot, so readers see the whole previous build or the whole new
one. Builds beyond ``keep`` are deleted, never the published one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.data.topk import order_candidates, top_k
from recsys.progress import NO_PROGRESS, ProgressSink
from recsys.scoring import reads

_log = logging.getLogger(__name__)

K = 20
_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_TRAILER = b"\xff\xff"
COPY_SQL = (
    "COPY similar_products (run_id, product_id, kind, rank, similar_product_id, score) "
    "FROM STDIN (FORMAT BINARY)"
)


@dataclass(frozen=True)
class SimilarSummary:
    run_id: int
    n_rows: int
    counts: dict[str, int]
    """Products with a list, per kind."""
    previous_run_id: int | None


def _encode(run_id: int, kind: str, products, ranks, similar, scores) -> bytes:
    name = kind.encode()
    dtype = np.dtype(
        [
            ("n", ">i2"),
            ("l1", ">i4"),
            ("run", ">i8"),
            ("l2", ">i4"),
            ("product", ">i8"),
            ("l3", ">i4"),
            ("kind", f"S{len(name)}"),
            ("l4", ">i4"),
            ("rank", ">i2"),
            ("l5", ">i4"),
            ("similar", ">i8"),
            ("l6", ">i4"),
            ("score", ">f4"),
        ]
    )
    rows = np.empty(len(products), dtype=dtype)
    rows["n"] = 6
    rows["l1"] = rows["l2"] = rows["l5"] = 8
    rows["l3"] = len(name)
    rows["l4"] = 2
    rows["l6"] = 4
    rows["run"] = run_id
    rows["product"] = products
    rows["kind"] = name
    rows["rank"] = ranks
    rows["similar"] = similar
    rows["score"] = scores
    return rows.tobytes()


def _lists(similarity_block, n: int, keys: np.ndarray, allowed: np.ndarray, k: int, block: int):
    """Top-k of each row of a similarity matrix given block by block (self excluded), with the
    number of rows done after each block."""
    for start in range(0, n, block):
        stop = min(n, start + block)
        scores = similarity_block(start, stop)
        scores[:, ~allowed] = -np.inf
        rows = np.arange(stop - start)
        scores[rows, rows + start] = -np.inf
        r, ranks, cols, values = top_k(scores, k, keys)
        yield r + start, ranks, cols, values, stop


def text_lists(product_ids: np.ndarray, vectors: np.ndarray, allowed: np.ndarray, k: int = K):
    """(rows, ranks, cols, cosine, products done) of each product's top k by text vector."""
    v = np.asarray(vectors, dtype=np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    block = max(64, min(2048, (16 << 20) // (4 * max(1, len(v)))))
    yield from _lists(lambda a, b: v[a:b] @ v.T, len(v), product_ids, allowed, k, block)


def rater_matrices(product_ids: np.ndarray, rating_users: np.ndarray, rating_products: np.ndarray):
    """``(X, X^T, norms)``: the 0/1 user x product matrix of the ratings and its transpose, both
    CSR float32 (a CSR block times a CSC matrix converts the whole matrix every block), and each
    product's ``sqrt(raters)``."""
    from scipy import sparse

    users, user_index = np.unique(rating_users, return_inverse=True)
    cols = np.searchsorted(product_ids, rating_products)
    x = sparse.csr_matrix(
        (np.ones(len(cols), dtype=np.float32), (user_index, cols)),
        shape=(len(users), len(product_ids)),
    )
    x.data[:] = 1.0
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel()).astype(np.float32)
    return x, x.T.tocsr(), norms


def co_rating_lists(
    product_ids: np.ndarray,
    rating_users: np.ndarray,
    rating_products: np.ndarray,
    allowed: np.ndarray,
    k: int = K,
    max_pairs: int = 1 << 22,
):
    """(rows, ranks, cols, cosine of rater sets, products done) of each product's top k by
    co-rating.

    Sparse throughout: a block of products' co-rating counts is ``X_block^T X`` as a sparse
    matrix, so the cost is the number of co-rated pairs, not ``products x catalogue``. Blocks
    are cut so that each holds at most ``max_pairs`` pairs, bounded beforehand by the sum of
    the raters' rating counts of each product (one row alone may exceed it). Each row's k-th
    best score is found by partition; the entries at or above it are ordered like
    :func:`recsys.data.topk.top_k` (score descending, then product id), so the lists are
    those of the dense cosine matrix cut with the project's top-k."""
    x, xt, norms = rater_matrices(product_ids, rating_users, rating_products)
    # pairs of product i's row <= sum over i's raters of their rating counts
    bound = np.cumsum(xt @ np.diff(x.indptr).astype(np.float64))
    n = len(product_ids)
    start = 0
    while start < n:
        before = bound[start - 1] if start else 0.0
        stop = max(start + 1, int(np.searchsorted(bound, before + max_pairs, side="right")))
        stop = min(n, stop)
        co = xt[start:stop] @ x
        rows = np.repeat(np.arange(stop - start), np.diff(co.indptr))
        c = co.indices.astype(np.int64)
        values = co.data / np.maximum(norms[rows + start] * norms[c], np.float32(1e-12))
        keep = allowed[c] & (c != rows + start) & (co.data > 0)
        rows, c, values = rows[keep], c[keep], values[keep]
        # rows are in order, so each row's entries are one run
        per_row = np.bincount(rows, minlength=stop - start)
        ends = np.cumsum(per_row)
        threshold = np.full(stop - start, -np.inf, dtype=np.float32)
        for r in np.flatnonzero(per_row > k):
            run = values[ends[r] - per_row[r] : ends[r]]
            threshold[r] = np.partition(run, len(run) - k)[len(run) - k]
        top = values >= threshold[rows]
        r, ranks, cc, v = order_candidates(rows[top], c[top], values[top], product_ids)
        within = ranks <= k
        yield r[within] + start, ranks[within], cc[within], v[within], stop
        start = stop


def build_similar(
    engine: Engine, *, keep: int = 3, k: int = K, progress: ProgressSink = NO_PROGRESS
) -> SimilarSummary:
    """Build both lists for every product, write them as one run and publish it.

    Args:
        engine: the database.
        keep: builds kept (the published one always is).
        k: products per list.
        progress: a :mod:`recsys.progress` sink; phases ``similar by text`` and ``similar by
            co-rating``, in products.

    Returns:
        What was written and which build was served before.
    """
    with engine.begin() as conn:
        feature_set = reads.latest_feature_set(conn)
        run_id = int(
            conn.execute(
                sa.text(
                    "INSERT INTO similar_product_runs (status, k, feature_set_id) "
                    "VALUES ('building', :k, :f) RETURNING id"
                ),
                {"k": k, "f": feature_set},
            ).scalar_one()
        )
    counts = {"text": 0, "co_rating": 0}
    n_rows = 0
    try:
        with engine.begin() as conn:
            unavailable = reads.unavailable_products(conn)
            text = reads.text_vectors(conn, feature_set) if feature_set is not None else None
            r_users, r_products = reads.fetch_pairs(
                conn, "SELECT user_id, product_id FROM ratings", {}
            )
            raw = conn.connection.driver_connection
            with raw.cursor() as cur, cur.copy(COPY_SQL) as copy:
                copy.write(_HEADER)  # one stream, written block by block
                if text is not None:
                    ids, vectors = text
                    allowed = ~np.isin(ids, unavailable)
                    progress.start("similar by text", len(ids), "products")
                    for rows, ranks, cols, values, done in text_lists(ids, vectors, allowed, k):
                        copy.write(_encode(run_id, "text", ids[rows], ranks, ids[cols], values))
                        n_rows += len(rows)
                        counts["text"] += len(np.unique(rows))
                        progress.update(done)
                if len(r_users):
                    ids = np.unique(r_products)
                    allowed = ~np.isin(ids, unavailable)
                    progress.start("similar by co-rating", len(ids), "products")
                    for rows, ranks, cols, values, done in co_rating_lists(
                        ids, r_users, r_products, allowed, k
                    ):
                        copy.write(
                            _encode(run_id, "co_rating", ids[rows], ranks, ids[cols], values)
                        )
                        n_rows += len(rows)
                        counts["co_rating"] += len(np.unique(rows))
                        progress.update(done)
                copy.write(_TRAILER)
                progress.finish()
            conn.execute(
                sa.text(
                    "UPDATE similar_product_runs SET status = 'ready', finished_at = now(), "
                    "n_rows = :n, counts = CAST(:c AS jsonb) WHERE id = :r"
                ),
                {"r": run_id, "n": n_rows, "c": json.dumps(counts)},
            )
    except BaseException as err:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE similar_product_runs SET status = 'failed', finished_at = now(), "
                    "message = :m WHERE id = :r"
                ),
                {"r": run_id, "m": f"{type(err).__name__}: {err}".splitlines()[0][:500]},
            )
        raise
    with engine.begin() as conn:
        previous = conn.execute(
            sa.text("SELECT run_id FROM published_similar_products WHERE id = 1 FOR UPDATE")
        ).scalar()
        conn.execute(
            sa.text(
                "INSERT INTO published_similar_products (id, run_id, published_at) "
                "VALUES (1, :r, now()) ON CONFLICT (id) DO UPDATE "
                "SET run_id = EXCLUDED.run_id, published_at = now()"
            ),
            {"r": run_id},
        )
    with engine.begin() as conn:
        doomed = (
            conn.execute(
                sa.text(
                    "SELECT id FROM similar_product_runs WHERE id NOT IN "
                    "(SELECT id FROM similar_product_runs WHERE status = 'ready' "
                    "ORDER BY id DESC LIMIT :keep) "
                    "AND id NOT IN (SELECT run_id FROM published_similar_products) "
                    "AND status <> 'building'"
                ),
                {"keep": max(1, keep)},
            )
            .scalars()
            .all()
        )
        if doomed:
            conn.execute(
                sa.text("DELETE FROM similar_products WHERE run_id = ANY(:d)"), {"d": doomed}
            )
            conn.execute(
                sa.text("DELETE FROM similar_product_runs WHERE id = ANY(:d)"), {"d": doomed}
            )
    _log.info("similar products run %d: %d rows %s (previous %s)", run_id, n_rows, counts, previous)
    return SimilarSummary(run_id, n_rows, counts, previous)
