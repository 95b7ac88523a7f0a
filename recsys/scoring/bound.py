"""Exact lists of a dot-product block from prefixes of the catalogue in bound order.

A dot-product model scores ``u . v + b`` (a boost's offset is inside ``b``), which is at most
``|u| |v| + b`` (Cauchy-Schwarz). :func:`plan` puts the products in the order of that bound
for a typical user (the median ``|u|``) and records, from every :data:`STEP`-th position on,
the largest ``|v|`` and the largest ``b`` still to come: one bound for every product after that
position, which only falls along the order.

:func:`score_by_bound` then cuts one block of users' lists in two steps:

1. Every user's scores against the first ``head`` products of the order. The k-th best of
   those the user may be recommended (not rated, not excluded, available, still in the
   database) is a lower bound ``t`` of the k-th score of the user's list.
2. A product whose bound, plus a margin far above float32 rounding (:data:`MARGIN`), is below
   ``t`` scores below the list's k-th product: it can be neither in the list nor tie with its
   last product. So a user needs only the prefix of the order up to the first position whose
   bound is below their ``t``. The users are grouped by that length, rounded up to ``head * 2**j``
   (the last group is the whole catalogue), and each group's prefix is cut by
   :func:`recsys.scoring.block.score_block`, as the whole catalogue would be.

The lists are the lists of scoring every product, and so are the rule counts: a masked pair is
counted when it scores at least as high as the list's last product, which no product left out
does. How much is left out depends on the model: the more a catalogue's best products stand out
by norm and bias, the less is scored; at worst every user needs the whole catalogue and the head
was scored twice. Per-group caps can push a list below its k-th unconstrained score and
multiplicative boosts (rating scores) break the bound, so with either :func:`plan` returns None
and blocks are scored whole; so it does for catalogues too small for prefixes to pay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.data.topk import kth_largest
from recsys.scoring.block import (
    BlockResult,
    Columns,
    augment_users,
    score_block,
    users_per_block,
)

HEAD = 512
"""Products every user of a block is scored against first."""
STEP = 256
"""Positions between two recorded suffix bounds (the granularity of a user's prefix)."""
MIN_PRODUCTS = 8 * HEAD
"""Catalogues smaller than this are scored whole."""
BLOCK_USERS = 2048
"""Users per block: the users who need a long prefix are few per block, and their matmul
streams the whole prefix, so it runs near the BLAS's peak only with enough of them at once.
A group is scored in pieces of :func:`recsys.scoring.block.users_per_block` of its prefix."""
MARGIN = 1e-4
"""Safety margin, relative to ``|u| max|v| + max|b|``: float32 scores of 200-dimensional vectors
are off by at most about 1e-5 of that, so a product is left out only when it is clearly below."""
WHOLE_SHARE = 0.7
"""A block whose prefixes would add up to more than this share of its users x products is
scored whole instead (its users' bounds are not tight enough for prefixes to pay)."""
_NORM_COLUMNS = 1 << 16
_NORM_SAMPLE = 1 << 16


@dataclass(frozen=True)
class BoundOrder:
    """The run's products in bound order (fixed for the run; see the module)."""

    order: np.ndarray
    """int64 [P]: the run's column at each position."""
    position: np.ndarray
    """int64 [P]: the position of each run column."""
    products: np.ndarray
    """float32 [d + 1, P]: the augmented product matrix, columns in bound order."""
    levels: tuple[int, ...]
    """Prefix lengths a user can be given: ``head, 2 head, 4 head, ...``, the last one P."""
    columns: tuple[Columns, ...]
    """The run's columns over each level's prefix, in bound order."""
    step: int
    suffix_norm: np.ndarray
    """float64 [ceil(P / step)]: the largest ``|v|`` from position ``s * step`` on."""
    suffix_bias: np.ndarray
    """float64 [ceil(P / step)]: the largest ``b`` from position ``s * step`` on."""
    max_norm: float
    max_bias: float
    """The largest ``|b|`` (for the margin)."""


def _column_norms(vectors: np.ndarray) -> np.ndarray:
    """float64 [P]: the norm of each column of ``vectors`` [d, P] (in float64, in pieces)."""
    out = np.empty(vectors.shape[1], dtype=np.float64)
    for start in range(0, vectors.shape[1], _NORM_COLUMNS):
        part = vectors[:, start : start + _NORM_COLUMNS].astype(np.float64)
        out[start : start + _NORM_COLUMNS] = np.sqrt(np.einsum("ij,ij->j", part, part))
    return out


def row_norms(vectors: np.ndarray) -> np.ndarray:
    """float64 [n]: the norm of each row of ``vectors`` [n, d]."""
    rows = np.asarray(vectors, dtype=np.float64)
    return np.sqrt(np.einsum("ij,ij->i", rows, rows))


def _taken(columns: Columns, index: np.ndarray | slice) -> Columns:
    """The columns at ``index`` (an order or a prefix), without caps or factors."""
    return Columns(
        keys=columns.keys[index],
        blocked=np.asarray(columns.blocked, dtype=bool)[index],
        unavailable=np.asarray(columns.unavailable, dtype=bool)[index],
        offset=None if columns.offset is None else columns.offset[index],
        offset_folded=columns.offset_folded,
    )


def plan(
    products: np.ndarray,
    columns: Columns,
    user_vectors: np.ndarray,
    *,
    head: int | None = None,
    step: int | None = None,
    min_products: int | None = None,
) -> BoundOrder | None:
    """The bound order of a run's products, or None where blocks must be scored whole.

    Args:
        products: :func:`recsys.scoring.block.augment_products` output, float32 [d + 1, P]
            (the boost offsets folded into its last row).
        columns: the run's columns (None is returned with caps, factors or unfolded offsets).
        user_vectors: float32 [n, d], the users to be scored (a sample sets the typical norm).
        head, step, min_products: default :data:`HEAD`, :data:`STEP`, :data:`MIN_PRODUCTS`.
    """
    head = HEAD if head is None else head
    step = STEP if step is None else step
    min_products = MIN_PRODUCTS if min_products is None else min_products
    p = products.shape[1]
    if columns.n != p:
        raise ValueError(f"{p} products but {columns.n} columns")
    unfolded = columns.offset is not None and not columns.offset_folded
    if columns.caps or columns.factor is not None or unfolded or p < max(min_products, head):
        return None
    norms = _column_norms(products[:-1])
    bias = products[-1].astype(np.float64)
    every = max(1, len(user_vectors) // _NORM_SAMPLE)
    typical = float(np.median(row_norms(user_vectors[::every]))) if len(user_vectors) else 1.0
    order = np.lexsort((np.arange(p), -(typical * norms + bias)))
    position = np.empty(p, dtype=np.int64)
    position[order] = np.arange(p)
    suffix_norm = np.maximum.accumulate(norms[order][::-1])[::-1][::step].copy()
    suffix_bias = np.maximum.accumulate(bias[order][::-1])[::-1][::step].copy()
    levels = [head]
    while levels[-1] < p:
        levels.append(min(p, 2 * levels[-1]))
    ordered = _taken(columns, order)
    return BoundOrder(
        order=order,
        position=position,
        products=np.ascontiguousarray(products[:, order]),
        levels=tuple(levels),
        columns=tuple(_taken(ordered, slice(0, length)) for length in levels),
        step=step,
        suffix_norm=suffix_norm,
        suffix_bias=suffix_bias,
        max_norm=float(norms.max()),
        max_bias=float(np.abs(bias).max()),
    )


def _pairs(pairs: tuple[np.ndarray, np.ndarray] | None, plan: BoundOrder):
    """(rows, positions) of (rows, run columns) pairs."""
    if pairs is None or not len(pairs[0]):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    rows, cols = (np.asarray(a, dtype=np.int64) for a in pairs)
    return rows, plan.position[cols]


def _within(
    rows: np.ndarray, positions: np.ndarray, local: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of a group's users (``local`` >= 0) inside its prefix, in the group's rows."""
    keep = (local[rows] >= 0) & (positions < length)
    return local[rows[keep]], positions[keep]


def prefix_lengths(
    head_scores: np.ndarray,
    norms: np.ndarray,
    plan: BoundOrder,
    k: int,
    masked: tuple[tuple[np.ndarray, np.ndarray], ...] = (),
) -> np.ndarray:
    """int64 [n]: how much of the order each user needs (see the module).

    Args:
        head_scores: float32 [n, head], the users' scores against the order's first products.
        norms: float64 [n], the norm of each user's vector (without the bias dimension).
        masked: (rows, positions) of pairs that can never be listed (rated, excluded).
    """
    n, head = head_scores.shape
    allowed = head_scores.copy()
    never = plan.columns[0]._never  # type: ignore[attr-defined]
    if never is not None:
        allowed[:, never] = -np.inf
    for rows, positions in masked:
        inside = positions < head
        allowed[rows[inside], positions[inside]] = -np.inf
    threshold = kth_largest(allowed, k).astype(np.float64)
    margin = MARGIN * (norms * plan.max_norm + plan.max_bias)
    bound = norms[:, None] * plan.suffix_norm[None, :] + plan.suffix_bias[None, :]
    bound += margin[:, None]
    steps = (bound >= threshold[:, None]).sum(axis=1)  # the bound falls: a prefix of steps
    p = plan.products.shape[1]
    return np.clip(steps * plan.step, head, p)


def score_by_bound(
    user_vectors: np.ndarray,
    plan: BoundOrder,
    k: int,
    *,
    rated: tuple[np.ndarray, np.ndarray] | None = None,
    excluded: tuple[np.ndarray, np.ndarray] | None = None,
    buffer: np.ndarray | None = None,
    weight: np.ndarray | None = None,
) -> BlockResult:
    """The lists of :func:`recsys.scoring.block.score_block` over the whole catalogue, from
    prefixes of it (see the module).

    Args:
        user_vectors: float32 [n, d], the block's users.
        plan: the run's :func:`plan`.
        k: list length.
        rated, excluded: (rows, run columns) as for ``score_block``.
        buffer: a reusable float32 buffer for the scores of the longer prefixes.
        weight: int64 [n], how many users each row stands for in the rule counts (None: one).

    Returns:
        The block's lists, columns in the run's order (as ``score_block`` returns them).
    """
    n = len(user_vectors)
    rated_rows, rated_pos = _pairs(rated, plan)
    ex_rows, ex_pos = _pairs(excluded, plan)
    if n == 0:
        return score_block(np.zeros((0, plan.levels[-1]), np.float32), plan.columns[-1], k)
    users = augment_users(user_vectors)
    head = plan.levels[0]
    first = users @ plan.products[:, :head]
    lengths = prefix_lengths(
        first, row_norms(user_vectors), plan, k, ((rated_rows, rated_pos), (ex_rows, ex_pos))
    )
    levels = np.asarray(plan.levels)
    level_of = np.searchsorted(levels, lengths)
    p = plan.levels[-1]
    if np.where(level_of > 0, levels[level_of], 0).sum() > WHOLE_SHARE * n * p:
        level_of[:] = len(levels) - 1
    out_rows, out_ranks, out_cols, out_values = [], [], [], []
    filled = np.zeros(n, dtype=np.int64)
    counts: dict[str, int] = {}
    pairs = n * head
    for level in np.unique(level_of).tolist():
        length = plan.levels[level]
        group = np.flatnonzero(level_of == level)
        piece = len(group) if level == 0 else users_per_block(length)
        for start in range(0, len(group), piece):
            rows = group[start : start + piece]
            if level == 0:
                scores = first if len(rows) == n else first[rows]
            elif buffer is not None and buffer.size >= len(rows) * length:
                scores = buffer[: len(rows) * length].reshape(len(rows), length)
                np.matmul(users[rows], plan.products[:, :length], out=scores)
            else:
                scores = users[rows] @ plan.products[:, :length]
            if level:
                pairs += len(rows) * length
            local = np.full(n, -1, dtype=np.int64)
            local[rows] = np.arange(len(rows))
            result = score_block(
                scores,
                plan.columns[level],
                k,
                rated=_within(rated_rows, rated_pos, local, length),
                excluded=_within(ex_rows, ex_pos, local, length),
                weight=None if weight is None else weight[rows],
            )
            out_rows.append(rows[result.rows])
            out_ranks.append(result.ranks)
            out_cols.append(plan.order[result.cols])
            out_values.append(result.values)
            filled[rows] = result.filled
            for key, value in result.counts.items():
                counts[key] = counts.get(key, 0) + value
    rows_all = np.concatenate(out_rows)
    order = np.argsort(rows_all, kind="stable")  # groups are disjoint, each row then rank
    return BlockResult(
        rows=rows_all[order],
        ranks=np.concatenate(out_ranks)[order],
        cols=np.concatenate(out_cols)[order],
        values=np.concatenate(out_values)[order],
        filled=filled,
        counts=counts,
        pairs_scored=pairs,
    )
