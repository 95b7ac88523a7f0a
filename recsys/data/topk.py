"""Exact top-k of score rows without sorting whole rows (numpy only).

This is the one top-k of the project: nightly scoring (:mod:`recsys.scoring.block`) and the
ranking metrics (:mod:`recsys.evaluation.metrics`) both cut their lists here, so the lists
evaluated are cut exactly like the lists published. It depends on numpy alone, which is what
lets evaluation import it without depending on anything above data.

Method (exact, ties broken by a key ascending, e.g. the product id):

1. Columns are grouped in chunks of at most :data:`CHUNK`; each chunk's maximum is one cheap
   pass. A chunk is strided, not a run: with ``S = ceil(P / CHUNK)`` columns per slab, chunk c
   holds columns ``c, c + S, c + 2S, ...``, so the maxima of all chunks are the elementwise
   maximum of the row's CHUNK slabs, a contiguous streaming pass (a reduction over runs of 32
   columns would work on 32-element pieces, an order of magnitude slower).
2. The m-th largest chunk maximum ``t`` is a lower bound of the m-th largest score (the m
   chunks holding those maxima hold m scores >= ``t``), so every score that can be in the top
   m lies in a chunk whose maximum is >= ``t``. Only those chunks are read again. This holds
   for any grouping of the columns, so the lists do not depend on the chunks' shape.
3. The few candidates are ordered by (score descending, key ascending) and cut at m.

``-inf`` marks a column that must never be returned; a row with fewer finite scores than k
gets a shorter list.
"""

from __future__ import annotations

import numpy as np

CHUNK = 32
"""Columns per chunk: small enough that few chunks hold the top k, large enough that the chunk
maxima are a small second array."""


def slab_width(n_cols: int, chunk: int = CHUNK) -> int:
    """Columns per slab, ``ceil(n_cols / chunk)``: chunk c holds columns c, c + S, c + 2S, ..."""
    return -(-n_cols // chunk)


def chunk_maxima(scores: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """Maximum of each strided chunk, float32 [n, ceil(P / chunk)].

    Chunk c is the columns ``c + j * S`` (``S`` = :func:`slab_width`, ``j < chunk``) that
    exist; chunk c's maximum is column c of the result.

    Args:
        scores: float32 [n, P], C-contiguous or not.
        chunk: (at most) columns per chunk.
    """
    n, p = scores.shape
    width = slab_width(p, chunk)
    if width == 0:
        return np.zeros((n, 0), dtype=scores.dtype)
    full = p // width
    slabs = np.lib.stride_tricks.as_strided(
        scores,
        shape=(n, full, width),
        strides=(scores.strides[0], width * scores.strides[1], scores.strides[1]),
        writeable=False,
    )
    maxima = np.maximum.reduce(slabs, axis=1)
    rest = p - full * width
    if rest:
        np.maximum(maxima[:, :rest], scores[:, full * width :], out=maxima[:, :rest])
    return maxima


def chunk_columns(chunks: np.ndarray, n_cols: int, chunk: int = CHUNK) -> np.ndarray:
    """The columns of each chunk, int64 [len(chunks), chunk]; ``>= n_cols`` where a chunk is
    short (the last slab is partial)."""
    width = slab_width(n_cols, chunk)
    return chunks[:, None] + np.arange(chunk)[None, :] * width


def kth_largest(values: np.ndarray, m: np.ndarray | int) -> np.ndarray:
    """The m-th largest value of each row (``-inf`` where a row has fewer than m columns).

    Args:
        values: float32 [n, c].
        m: one int, or int [n] per row.
    """
    n, c = values.shape
    m = np.broadcast_to(np.asarray(m, dtype=np.int64), (n,))
    out = np.full(n, -np.inf, dtype=np.float32)
    if c == 0:
        return out
    for mm in np.unique(m):
        rows = np.flatnonzero(m == mm)
        if mm <= c:
            part = np.partition(values[rows], c - mm, axis=1)[:, c - mm]
            out[rows] = part
    return out


def candidates(
    scores: np.ndarray,
    threshold: np.ndarray,
    maxima: np.ndarray,
    chunk: int = CHUNK,
    score_rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every finite score >= its row's threshold, read only from chunks that can hold one.

    Args:
        score_rows: the row of ``scores`` of each row of ``maxima`` and ``threshold`` (a
            subset of the rows without copying them); default: the same rows.

    Returns:
        (rows, columns, values), flat, in no particular order; ``rows`` index ``maxima``.
    """
    n, p = scores.shape
    sel_rows, sel_chunks = np.nonzero(maxima >= threshold[:, None])
    cols = chunk_columns(sel_chunks, p, chunk)
    inside = cols < p
    safe = np.minimum(cols, p - 1)
    read_rows = sel_rows if score_rows is None else score_rows[sel_rows]
    values = scores[read_rows[:, None], safe]
    keep = inside & np.isfinite(values) & (values >= threshold[sel_rows][:, None])
    rows = np.broadcast_to(sel_rows[:, None], cols.shape)[keep]
    return rows, cols[keep], values[keep]


def order_candidates(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray, keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort candidates by row, then score descending, then key ascending; add 1-based ranks."""
    order = np.lexsort((keys[cols], -values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.searchsorted(rows, rows, side="left")
    ranks = np.arange(len(rows)) - starts + 1
    return rows, ranks, cols, values


def top_m(
    scores: np.ndarray,
    m: np.ndarray | int,
    keys: np.ndarray,
    maxima: np.ndarray | None = None,
    chunk: int = CHUNK,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """At least the best m of each row (all ties at the m-th score included), ordered.

    Args:
        scores: float32 [n, P]; ``-inf`` = never.
        m: candidates wanted per row (int or int [n]).
        keys: int64 [P] tie-break key of each column.
        maxima: :func:`chunk_maxima` of ``scores`` if already computed.
        chunk: the chunk width the maxima were computed with.

    Returns:
        (rows, ranks, columns, values), flat, ordered by row then rank.
    """
    if maxima is None:
        maxima = chunk_maxima(scores, chunk)
    threshold = kth_largest(maxima, m)
    rows, cols, values = candidates(scores, threshold, maxima, chunk)
    return order_candidates(rows, cols, values, keys)


def top_k(
    scores: np.ndarray, k: int, keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k of each row, ties broken by ``keys`` ascending.

    Args:
        scores: float32 [n, P]; ``-inf`` marks products that must not be recommended.
        k: list length.
        keys: int64 [P], the tie-break key of each column (the product id in scoring).

    Returns:
        (rows, ranks, columns, values), flat and ordered by row then rank; ranks are 1-based.
        A row has fewer than k entries only when fewer than k of its scores are finite.
    """
    n, n_cols = scores.shape
    empty = np.zeros(0, dtype=np.int64)
    if n == 0 or n_cols == 0 or k < 1:
        return empty, empty, empty, np.zeros(0, dtype=np.float32)
    rows, ranks, cols, values = top_m(scores, k, np.asarray(keys))
    keep = ranks <= k
    return rows[keep], ranks[keep], cols[keep], values[keep]


def top_k_indices(scores: np.ndarray, k: int, keys: np.ndarray | None = None) -> np.ndarray:
    """The top-k column indices of each row, best first, padded with -1: int64 [n, k].

    Ties go to the lower key (default: the lower column index). ``-inf`` is never returned.
    """
    n, n_cols = scores.shape
    keys = np.arange(n_cols, dtype=np.int64) if keys is None else np.asarray(keys)
    result = np.full((n, k), -1, dtype=np.int64)
    rows, ranks, cols, _ = top_k(np.asarray(scores, dtype=np.float32), k, keys)
    result[rows, ranks - 1] = cols
    return result
