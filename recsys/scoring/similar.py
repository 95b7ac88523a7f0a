"""Item-to-item lists: each product's top 20 by text vector and by co-rating, published atomically.

* ``text``: cosine similarity of the products' text vectors in the newest feature set, exact:
  float32 matmuls over the upper triangle of the similarity matrix in square tiles, each tile
  read by its rows and by its columns into running top-k lists, which end up cut exactly like
  the project's top-k (:mod:`recsys.data.topk`).
* ``co_rating``: cosine similarity of the products' rater sets, ``|U_i & U_j| /
  sqrt(|U_i| |U_j|)``, from a sparse user x product matrix, kept sparse: the cost is the number
  of co-rated pairs; only pairs rated by at least one common user are listed.

Unavailable products are never listed as similar (the view also hides products that became
unavailable since the build), a product is never similar to itself, and ties go to the lower
product id. Cost: the text part is ``dim x P^2`` FLOP for P products with vectors (half the
pairs), so it grows with the square of the catalogue (``recsys run --no-similar`` skips it).

A build is written like a recommendation run: ``similar_product_runs`` row (``building``),
rows by COPY and the status ``ready`` in one transaction, then the single-row pointer
``published_similar_products`` moves in another; ``current_similar_products`` reads the
pointer and the rows in one snapshot, so readers see the whole previous build or the whole new
one. Builds beyond ``keep`` are deleted, never the published one.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.blas import local_cores, ordered_in_threads
from recsys.data.topk import candidates, chunk_maxima, kth_largest, order_candidates, top_k
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


_KEY_BITS = 21
_ROW_SHIFT = np.uint64(32 + _KEY_BITS)
_LOW = (np.uint64(1) << _ROW_SHIFT) - np.uint64(1)
_KEY_MASK = np.uint64((1 << _KEY_BITS) - 1)
TILE = 2048
"""Products per side of a square tile of the text similarity matrix (2048 x 2048 float32, 16 MB):
the matmul runs at its full speed at this shape, and a tile row fits the merge codes' 11 row
bits."""
TILED_FROM = 40_000
"""Products from which the tiles are used when they run two or more at a time: with fewer, each
product's list meets few tiles, its first ones let many candidates through, and the merges cost
more than the halved matmul saves (``benchmarks/similar.py --kind text`` measures both paths)."""
TILED_FROM_ONE_THREAD = 100_000
"""The same with one core, where the merges cannot run beside the matmuls."""


def _code(values: np.ndarray, key_ranks: np.ndarray) -> np.ndarray:
    """uint64 codes that sort like (score descending, key ascending): the score's bits turned
    into an order-preserving unsigned integer and flipped, above the key's rank (< 2**21)."""
    bits = (values + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into 0.0
    rising = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    falling = (np.uint32(0xFFFFFFFF) - rising).astype(np.uint64)
    return (falling << np.uint64(_KEY_BITS)) | key_ranks.astype(np.uint64)


def _score(codes: np.ndarray) -> np.ndarray:
    """The float32 score of each :func:`_code`."""
    rising = np.uint32(0xFFFFFFFF) - (codes >> np.uint64(_KEY_BITS)).astype(np.uint32)
    bits = np.where(rising >> np.uint32(31), rising & np.uint32(0x7FFFFFFF), ~rising)
    return bits.view(np.float32)


_EMPTY = _code(np.array([-np.inf], np.float32), np.array([(1 << _KEY_BITS) - 1]))[0]


def _tile_candidates(threshold, row0: int, scores: np.ndarray, k: int):
    """The scores of one tile (rows ``row0 ...``) that can enter their rows' lists: those >=
    the row's threshold (``threshold[i]``, the score of row i's k-th best so far, or any lower
    bound of it), read only from chunks whose maximum reaches it
    (:func:`recsys.data.topk.candidates`). On a row without k scores yet the threshold is the
    k-th largest chunk maximum, a lower bound of the tile's own k-th score. A threshold read
    while another thread raises it is still a lower bound, so the candidates are complete.

    Returns:
        (rows, columns, values) within the tile, or None when there are none.
    """
    n_rows, n_cols = scores.shape
    if n_rows == 0 or n_cols == 0:
        return None
    maxima = chunk_maxima(scores)
    floor = threshold[row0 : row0 + n_rows].copy()
    fresh = np.flatnonzero(floor == -np.inf)
    if len(fresh):
        floor[fresh] = kth_largest(maxima[fresh], k)
    rows, cols, values = candidates(scores, floor, maxima)
    return (rows, cols, values) if len(rows) else None


def _merge(best, threshold, row0: int, col0: int, found, key_rank) -> None:
    """Merge a tile's candidates (rows ``row0 ...``, columns ``col0 ...``) into the running
    lists: ``best[i]`` holds row i's best k codes so far, ascending (``_EMPTY`` pads)."""
    if found is None:
        return
    rows, cols, values = found
    k = best.shape[1]
    touched = np.unique(rows)
    new = (rows.astype(np.uint64) << _ROW_SHIFT) | _code(values, key_rank[cols + col0])
    old = (touched.astype(np.uint64)[:, None] << _ROW_SHIFT) | best[row0 + touched]
    merged = np.sort(np.concatenate([new, old.ravel()]))
    row = (merged >> _ROW_SHIFT).astype(np.int64)
    rank = np.arange(len(merged)) - np.searchsorted(row, row)
    within = rank < k
    best[row[within] + row0, rank[within]] = merged[within] & _LOW
    threshold[row0 + touched] = _score(best[row0 + touched, k - 1])


def _unit(vectors) -> np.ndarray:
    """float32 rows scaled to unit length (zero rows stay zero)."""
    v = np.asarray(vectors, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _tiled_text_lists(product_ids, vectors, allowed: np.ndarray, k: int, tile: int, threads: int):
    """The text lists from the upper triangle of the similarity matrix, tile by tile.

    Cosine is symmetric, so each tile ``(i, j)`` with ``j >= i`` is computed once and read
    twice: by its rows (row block i's lists) and, transposed, by its columns (block j's).
    Available products are put first, so an available column range is a prefix of each tile
    and tiles of unavailable products against each other are skipped. Row block i's lists are
    final once its own tiles are merged: every earlier block has already passed its columns.

    With ``threads`` > 1 the tiles' matmuls and candidate reads run that many at a time, each
    with a one-thread BLAS (:func:`recsys.blas.ordered_in_threads`), and the merges in
    this thread, in tile order; the lists do not depend on it."""
    n = len(vectors)
    perm = np.concatenate([np.flatnonzero(allowed), np.flatnonzero(~allowed)])
    n_ok = int(np.count_nonzero(allowed))
    v = _unit(np.asarray(vectors)[perm])  # permuted first: one scaled copy, not two
    by_key = np.argsort(np.asarray(product_ids)[perm], kind="stable")
    key_rank = np.empty(n, dtype=np.int64)
    key_rank[by_key] = np.arange(n)
    best = np.full((n, k), _EMPTY, dtype=np.uint64)
    threshold = np.full(n, -np.inf, dtype=np.float32)
    local = threading.local()

    def items():
        for a in range(0, n, tile):
            b = min(n, a + tile)
            for c in range(a, n, tile):
                if a >= n_ok and c >= n_ok:
                    break
                yield a, b, c, min(n, c + tile)
            yield a, b, None, None  # the row block's end

    def task(item):
        a, b, c, d = item
        if c is None:
            return item, None, None
        buffer = getattr(local, "buffer", None)
        if buffer is None:
            buffer = local.buffer = np.empty(tile * tile, dtype=np.float32)
        s = np.matmul(v[a:b], v[c:d].T, out=buffer[: (b - a) * (d - c)].reshape(b - a, d - c))
        if c == a:
            np.fill_diagonal(s, -np.inf)
        by_rows = _tile_candidates(threshold, a, s[:, : max(0, min(d, n_ok) - c)], k)
        by_cols = None
        if c > a:
            by_cols = _tile_candidates(threshold, c, s[: max(0, min(b, n_ok) - a)].T, k)
        return item, by_rows, by_cols

    results = ordered_in_threads(task, items(), threads) if threads > 1 else map(task, items())
    pairs = 0
    for (a, b, c, _d), by_rows, by_cols in results:
        if c is not None:
            _merge(best, threshold, a, c, by_rows, key_rank)
            _merge(best, threshold, c, a, by_cols, key_rank)
            continue
        pairs += (b - a) * (n - a)  # the row block's part of the triangle, skipped tiles too
        codes = best[a:b]
        scores = _score(codes)
        rows, ranks = np.nonzero(scores > -np.inf)
        cols = by_key[(codes[rows, ranks] & _KEY_MASK).astype(np.int64)]
        yield perm[rows + a], ranks + 1, perm[cols], scores[rows, ranks], b, pairs


def _threads(threads: int) -> int:
    return threads or local_cores()


def _tiled(n: int, k: int, tile: int, tiled_from: int | None, threads: int) -> bool:
    if tiled_from is None:
        tiled_from = TILED_FROM if threads > 1 else TILED_FROM_ONE_THREAD
    return k >= 1 and max(tile, tiled_from - 1) < n < 1 << _KEY_BITS


def text_pairs(
    n: int, k: int = K, tile: int = TILE, tiled_from: int | None = None, threads: int = 0
) -> int:
    """The pairs :func:`text_lists` covers for n products (its progress total): the upper
    triangle of the tiles, or every pair where it scores whole rows."""
    if not _tiled(n, k, tile, tiled_from, _threads(threads)):
        return n * n
    return sum((min(n, a + tile) - a) * (n - a) for a in range(0, n, tile))


def text_lists(
    product_ids: np.ndarray,
    vectors: np.ndarray,
    allowed: np.ndarray,
    k: int = K,
    tile: int = TILE,
    tiled_from: int | None = None,
    threads: int = 0,
):
    """(rows, ranks, cols, cosine, products done, pairs done) of each product's top k by text
    vector, in blocks of products.

    Below ``tiled_from`` products (default :data:`TILED_FROM`, or :data:`TILED_FROM_ONE_THREAD`
    with one thread; ``threads`` 0 = one per core) or ``tile``, and from ``2**21`` products on,
    where a key's rank no longer fits :func:`_code`, it scores whole rows, a block of products
    against the catalogue per matmul. Otherwise it computes the upper triangle in square tiles
    (:func:`_tiled_text_lists`): half the FLOP, each tile at the matmul's full speed, the
    lists kept as running top-k per product. Either way the lists are those of the whole
    cosine matrix cut with :func:`recsys.data.topk.top_k` (ties to the lower product id), as
    long as the BLAS gives a pair the same float32 dot product in a tile as in a whole row;
    numpy's OpenBLAS does at these shapes (the tests compare both paths bit for bit). A
    block's rows are in no particular order.

    Raises:
        ValueError: ``tile`` above 2048 (a tile row must fit the codes' 11 row bits).
    """
    if tile > 1 << (64 - int(_ROW_SHIFT)):
        raise ValueError(f"tile {tile} is above {1 << (64 - int(_ROW_SHIFT))}")
    n = len(vectors)
    threads = _threads(threads)
    if _tiled(n, k, tile, tiled_from, threads):
        allowed = np.asarray(allowed, dtype=bool)
        yield from _tiled_text_lists(product_ids, vectors, allowed, k, tile, threads)
        return
    v = _unit(vectors)
    block = max(64, min(2048, (16 << 20) // (4 * max(1, n))))
    for result in _lists(lambda a, b: v[a:b] @ v.T, n, product_ids, allowed, k, block):
        yield (*result, result[4] * n)


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
        progress: a :mod:`recsys.progress` sink; phases ``similar by text``, in product
            pairs computed (products done as a field), and ``similar by co-rating``, in
            products.

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
                    progress.start("similar by text", text_pairs(len(ids), k), "pairs")
                    for rows, ranks, cols, values, done, pairs in text_lists(
                        ids, vectors, allowed, k
                    ):
                        copy.write(_encode(run_id, "text", ids[rows], ranks, ids[cols], values))
                        n_rows += len(rows)
                        counts["text"] += len(np.unique(rows))
                        progress.update(pairs, products=done)
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
