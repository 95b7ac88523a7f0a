"""The scoring kernel: one block of users' scores in, their exact lists under the rules out.

:func:`score_block` is pure (numpy only, no database, no model): the local batch loop in
:mod:`recsys.scoring.score` calls it for every block of users, and any other engine (a cluster
of workers) can call it the same way. Everything that decides what a list may hold happens
here, before the top-k cut:

1. **Boosts** change the score of boosted columns: ``offset`` is added (ranking scores), then
   ``factor`` multiplies (rating scores); see :class:`Columns`.
2. **Masks**: products the user rated and per-user exclusions get ``-inf``; unavailable
   products and products gone from the database are dropped from the candidates (the rows that
   lose too many are widened, as under the caps). None of them can ever be chosen.
3. **Exact top-k** (:mod:`recsys.data.topk`) cuts the best m candidates of each row
   without sorting whole rows.
4. **Caps** (at most N per category / per brand) are applied greedily in score order, which is
   exact for per-group caps: a product is taken when none of its groups is full (computed for
   all rows at once, see :func:`_greedy`). A row whose
   candidates run out under the caps is widened (4 x more candidates) until it has k products
   or no finite score is left; the caller backfills what remains from the fallback.

Counts of what each rule removed are returned with the lists (see :class:`BlockResult`).

For dot-product models (``score = u . v + b``), :func:`dot_scores` computes a block of
scores as one float32 matmul with the bias folded in as an extra dimension, written into a
buffer that is reused from block to block; :func:`users_per_block` sizes blocks so that the
matmul has enough user rows to run near the BLAS's peak. The top-k reads a block's scores in
one streaming pass (the chunk maxima) plus a few gathers, so a block need not fit in cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recsys.data.topk import CHUNK, candidates, chunk_maxima, kth_largest, order_candidates

RULE_COUNT_KEYS = (
    "unavailable",
    "excluded",
    "category_cap",
    "brand_cap",
    "boosted",
    "backfilled_users",
)
"""Keys of ``recommendation_runs.rule_counts``."""

BLOCK_BYTES = 64 << 20
"""Score bytes per block (one buffer per scoring thread). The BLAS's float32 matmul runs
well below its peak with fewer than a few hundred user rows (benchmarks/RESULTS.md, "strided
chunks"), so blocks are sized by memory, not by the cache."""


@dataclass(frozen=True)
class GroupCap:
    """At most ``cap`` products of one group (category or brand) per list."""

    name: str
    """The ``rule_counts`` key that counts the candidates this cap skipped."""
    codes: np.ndarray
    """int64 [P]: group code of each column; -1 = no group (never capped)."""
    cap: int


@dataclass(frozen=True)
class Columns:
    """The column (product) side of a scoring run: fixed for the whole run."""

    keys: np.ndarray
    """int64 [P]: the product id of each column (tie-break key)."""
    blocked: np.ndarray
    """bool [P]: never recommend, not counted (products deleted since training)."""
    unavailable: np.ndarray
    """bool [P]: ``products.available = false`` (counted under ``unavailable``)."""
    offset: np.ndarray | None = None
    """float32 [P] added to the score (ranking scores: ``ln(factor)`` of the boost)."""
    factor: np.ndarray | None = None
    """float32 [P] multiplying the score (rating scores: the boost factor itself)."""
    caps: tuple[GroupCap, ...] = ()
    offset_folded: bool = False
    """True when ``offset`` is already inside the scores (:func:`dot_scores` folds it)."""
    boosted: np.ndarray = field(init=False)
    """bool [P]: columns with a boost (derived)."""

    def __post_init__(self) -> None:
        boosted = np.zeros(len(self.keys), dtype=bool)
        if self.offset is not None:
            boosted |= self.offset != 0
        if self.factor is not None:
            boosted |= self.factor != 1
        object.__setattr__(self, "boosted", boosted)
        object.__setattr__(self, "_boosted_cols", np.flatnonzero(boosted))
        never = np.asarray(self.blocked, dtype=bool) | np.asarray(self.unavailable, dtype=bool)
        object.__setattr__(self, "_never", never if never.any() else None)

    @property
    def n(self) -> int:
        return int(len(self.keys))


@dataclass(frozen=True)
class BlockResult:
    """The lists of one block of users (flat arrays, ordered by row then rank)."""

    rows: np.ndarray
    """int64: row of the block (0-based)."""
    ranks: np.ndarray
    """int64: 1-based rank within the row's list."""
    cols: np.ndarray
    """int64: column (index into :class:`Columns`)."""
    values: np.ndarray
    """float32: the score after boosts (what the list is ordered by)."""
    filled: np.ndarray
    """int64 [n]: list length of each row (< k: the caller backfills from the fallback)."""
    counts: dict[str, int]
    """Candidates each rule removed: ``unavailable`` and ``excluded`` count masked pairs that
    scored at least as high as the last product of the row's list (they would have been in
    it); ``category_cap`` / ``brand_cap`` count candidates skipped by the cap while the list
    was open; ``boosted`` counts list rows of boosted products."""
    pairs_scored: int = 0
    """User x product pairs whose score the lists were cut from."""


def users_per_block(n_columns: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Users per block so that a block of float32 scores fits ``block_bytes`` (64..1024)."""
    return int(max(64, min(1024, block_bytes // (4 * max(1, n_columns)))))


def augment_products(
    vectors: np.ndarray, bias: np.ndarray, offset: np.ndarray | None = None
) -> np.ndarray:
    """``[V, b + offset].T``: product factors with the bias as one more dimension, transposed
    and C-contiguous, float32 [d + 1, P] (the BLAS multiplies a contiguous right-hand side
    faster than a transposed view)."""
    total = np.asarray(bias, dtype=np.float32)
    if offset is not None:
        total = total + offset.astype(np.float32)
    vectors = np.asarray(vectors, dtype=np.float32)
    out = np.empty((vectors.shape[1] + 1, len(vectors)), dtype=np.float32)
    out[:-1] = vectors.T
    out[-1] = total
    return out


def augment_users(user_vectors: np.ndarray) -> np.ndarray:
    """``[U, 1]``: user vectors with the 1 that multiplies the bias row of
    :func:`augment_products`, float32 [n, d + 1]."""
    users = np.empty((len(user_vectors), user_vectors.shape[1] + 1), dtype=np.float32)
    users[:, :-1] = user_vectors
    users[:, -1] = 1.0
    return users


def dot_scores(
    user_vectors: np.ndarray, products: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """``[U, 1] @ products``: a block of dot-product scores (bias folded), float32.

    Args:
        user_vectors: float32 [n, d].
        products: :func:`augment_products` output, float32 [d + 1, P].
        out: a reusable float32 buffer with at least n * P elements.
    """
    n = len(user_vectors)
    n_products = products.shape[1]
    users = augment_users(user_vectors)
    if out is not None and out.size >= n * n_products:
        target = out.reshape(-1)[: n * n_products].reshape(n, n_products)
        return np.matmul(users, products, out=target)
    return users @ products


def _count_before(accepted: np.ndarray, order: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Per candidate, how many accepted candidates precede it in its segment.

    ``order`` sorts the candidates into segments (stable, so each segment keeps the walk's
    order) and ``start[i]`` is the sorted position where sorted position i's segment begins.
    """
    a = accepted[order].astype(np.int64)
    before = np.cumsum(a) - a
    out = np.empty(len(order), dtype=np.int64)
    out[order] = before - before[start]
    return out


def _segments(rows: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, start) of the segments of equal (row, code) for :func:`_count_before`."""
    order = np.lexsort((codes, rows))  # stable: each segment stays in walk order
    r, c = rows[order], codes[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (r[1:] != r[:-1]) | (c[1:] != c[:-1])
    starts = np.flatnonzero(new)
    return order, starts[np.cumsum(new) - 1]


def _greedy(
    rows: np.ndarray,
    ranks: np.ndarray,
    cols: np.ndarray,
    n_rows: int,
    k: int,
    caps: tuple[GroupCap, ...],
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Walk each row's candidates in order, taking a product unless one of its groups is full.

    Computed without a walk: a candidate is taken when, for every cap, fewer than ``cap`` taken
    candidates of its group come before it. That condition depends only on earlier candidates,
    so it has one solution, the greedy walk's, and iterating it from "all taken" settles each
    row's first t candidates within t rounds (a few in practice); each round is a stable
    segmented count per (row, group). The list closes at its k-th product: the walk's first k
    products are the same whether or not later ones are looked at.

    Returns:
        (accepted bool per candidate, filled per row, per cap: candidates it skipped in each
        row while the row's list was open; a candidate over several caps counts for the first).
    """
    skipped = {cap.name: np.zeros(n_rows, dtype=np.int64) for cap in caps}
    if not caps:
        accepted = ranks <= k
        return accepted, np.bincount(rows[accepted], minlength=n_rows), skipped
    n_cand = len(rows)
    if n_cand == 0:
        return np.zeros(0, dtype=bool), np.zeros(n_rows, dtype=np.int64), skipped
    grouped = []
    segments = []
    for cap in caps:
        codes = cap.codes[cols]
        grouped.append(codes >= 0)
        segments.append(_segments(rows, codes))
    row_segments = (np.arange(n_cand), np.searchsorted(rows, rows, side="left"))
    accepted = np.ones(n_cand, dtype=bool)
    while True:
        over = [
            is_grouped & (_count_before(accepted, order, start) >= cap.cap)
            for cap, is_grouped, (order, start) in zip(caps, grouped, segments, strict=True)
        ]
        now = ~np.logical_or.reduce(over)
        if np.array_equal(now, accepted):
            break
        accepted = now
    open_ = _count_before(accepted, *row_segments) < k  # rows are sorted: walk order
    taken = accepted & open_
    blocked_before = np.zeros(n_cand, dtype=bool)
    for cap, is_over in zip(caps, over, strict=True):
        counted = open_ & is_over & ~blocked_before
        skipped[cap.name] = np.bincount(rows[counted], minlength=n_rows)
        blocked_before |= is_over
    return taken, np.bincount(rows[taken], minlength=n_rows), skipped


def _select(
    scores: np.ndarray,
    maxima: np.ndarray,
    columns: Columns,
    k: int,
    weight: np.ndarray | None = None,
) -> tuple[
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    dict[str, int],
    tuple[np.ndarray, np.ndarray],
]:
    """Exact lists under the caps: widen rows whose candidates ran out (see the module).

    Columns that can never be listed (unavailable, blocked) are dropped from the candidates
    instead of being masked in ``scores``: a row that loses too many of its candidates to them
    is widened like a row that loses them to a cap, so the lists stay exact.

    Returns:
        (rows, ranks, cols, values, filled, skipped per cap (each row counted ``weight`` times,
        default once), (row, value) of the unavailable
        candidates of each row's final pass: every unavailable pair scored at least as high as
        the row's k-th product, or every finite one when the row's list is short).
    """
    n, p = scores.shape
    never = columns._never  # type: ignore[attr-defined]
    first = k if not columns.caps else 2 * k
    if never is not None:  # room for the share of columns that are never candidates
        first = int(np.ceil(first / max(0.05, 1.0 - float(never.mean()))))
    m = np.full(n, first, dtype=np.int64)
    n_chunks = maxima.shape[1]
    active = np.arange(n)
    out_rows, out_cols, out_values, out_gone_rows, out_gone_values = [], [], [], [], []
    filled = np.zeros(n, dtype=np.int64)
    skipped = {cap.name: 0 for cap in columns.caps}
    while len(active):
        sub_max = maxima[active]
        threshold = kth_largest(sub_max, m[active])
        local, cols, values = candidates(scores, threshold, sub_max, score_rows=active)
        gone_rows = gone_values = None
        if never is not None:
            banned = never[cols]
            if banned.any():
                gone = banned & columns.unavailable[cols]
                gone_rows, gone_values = local[gone], values[gone]
                local, cols, values = local[~banned], cols[~banned], values[~banned]
        rows_o, ranks_o, cols_o, values_o = order_candidates(local, cols, values, columns.keys)
        accepted, got, skip = _greedy(rows_o, ranks_o, cols_o, len(active), k, columns.caps)
        exhausted = m[active] >= n_chunks * CHUNK
        done = (got >= k) | exhausted | ~np.isfinite(threshold)
        take = accepted & done[rows_o]
        out_rows.append(active[rows_o[take]])
        out_cols.append(cols_o[take])
        out_values.append(values_o[take])
        if gone_rows is not None:
            final = done[gone_rows]
            out_gone_rows.append(active[gone_rows[final]])
            out_gone_values.append(gone_values[final])
        filled[active[done]] = got[done]
        for name, per_row in skip.items():  # the final pass of each finished row counts
            if weight is None:
                skipped[name] += int(per_row[done].sum())
            else:
                skipped[name] += int((per_row[done] * weight[active[done]]).sum())
        m[active[~done]] *= 4
        active = active[~done]
    rows = np.concatenate(out_rows) if out_rows else np.zeros(0, dtype=np.int64)
    cols = np.concatenate(out_cols) if out_cols else np.zeros(0, dtype=np.int64)
    values = np.concatenate(out_values) if out_values else np.zeros(0, dtype=np.float32)
    order = np.argsort(rows, kind="stable")  # rows were appended pass by pass
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.searchsorted(rows, rows, side="left")
    ranks = np.arange(len(rows)) - starts + 1
    gone = (
        (np.concatenate(out_gone_rows), np.concatenate(out_gone_values))
        if out_gone_rows
        else (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
    )
    return rows, ranks, cols, values, filled, skipped, gone


def score_block(
    scores: np.ndarray,
    columns: Columns,
    k: int,
    *,
    rated: tuple[np.ndarray, np.ndarray] | None = None,
    excluded: tuple[np.ndarray, np.ndarray] | None = None,
    weight: np.ndarray | None = None,
) -> BlockResult:
    """Exact top-k lists of one block of users under every rule.

    Args:
        scores: float32 [n, P], the model's scores of these users against every column
            (modified in place: boosts applied, rated and excluded pairs set to ``-inf``;
            unavailable and blocked columns are skipped while the lists are cut).
        columns: the run's column side (keys, availability, boosts, caps).
        k: list length.
        rated: (rows, columns) the users rated: never recommended, not counted.
        excluded: (rows, columns) of per-user exclusions: never recommended, counted.
        weight: int64 [n], how many users each row stands for in the rule counts (users with
            the same history and no exclusions share one row; None: one each).

    Returns:
        The lists (see :class:`BlockResult`). A row is shorter than k only when no finite
        candidate is left under the rules.
    """
    n, p = scores.shape
    if p != columns.n:
        raise ValueError(f"scores have {p} columns, the run has {columns.n}")
    boosted_cols = columns._boosted_cols  # type: ignore[attr-defined]
    if len(boosted_cols):
        if columns.offset is not None and not columns.offset_folded:
            scores[:, boosted_cols] += columns.offset[boosted_cols]
        if columns.factor is not None:
            scores[:, boosted_cols] *= columns.factor[boosted_cols]
    if rated is not None and len(rated[0]):
        scores[rated[0], rated[1]] = -np.inf
    ex_rows = ex_cols = np.zeros(0, dtype=np.int64)
    if excluded is not None and len(excluded[0]):
        ex_rows, ex_cols = (np.asarray(a, dtype=np.int64) for a in excluded)
    ex_values = scores[ex_rows, ex_cols].copy()
    if len(ex_rows):
        scores[ex_rows, ex_cols] = -np.inf
    if n == 0 or p == 0:
        empty = np.zeros(0, dtype=np.int64)
        counts = {key: 0 for key in RULE_COUNT_KEYS if key != "backfilled_users"}
        return BlockResult(
            empty, empty, empty, np.zeros(0, np.float32), np.zeros(n, np.int64), counts
        )
    maxima = chunk_maxima(scores, CHUNK)
    if weight is not None:
        weight = np.asarray(weight, dtype=np.int64)
    rows, ranks, cols, values, filled, skipped, gone = _select(scores, maxima, columns, k, weight)

    # the score of each row's last product: a masked pair at least this high was displaced
    last = np.full(n, -np.inf, dtype=np.float32)
    full = filled >= k
    last_rows = rows[ranks == k]
    last[last_rows] = values[ranks == k]
    last[~full] = -np.inf
    displaced = np.isfinite(ex_values) & (ex_values >= last[ex_rows])
    # an excluded pair of an unavailable product counts under both rules, once under each
    both = displaced & columns.unavailable[ex_cols]
    gone_counted = gone[1] >= last[gone[0]]
    both_pairs = np.unique(ex_rows[both] * p + ex_cols[both])
    if weight is None:
        unavailable = int(gone_counted.sum()) + len(both_pairs)
        excluded_count = int(displaced.sum())
        boosted = int(columns.boosted[cols].sum())
    else:
        unavailable = int(weight[gone[0][gone_counted]].sum() + weight[both_pairs // p].sum())
        excluded_count = int(weight[ex_rows[displaced]].sum())
        boosted = int(weight[rows[columns.boosted[cols]]].sum())
    counts = {
        "unavailable": unavailable,
        "excluded": excluded_count,
        "category_cap": int(skipped.get("category_cap", 0)),
        "brand_cap": int(skipped.get("brand_cap", 0)),
        "boosted": boosted,
    }
    return BlockResult(rows, ranks, cols, values.astype(np.float32), filled, counts, n * p)
