"""Why a product is in a list: the rated product behind a model row, or the fallback's reason.

* Model rows: "because you rated X". With a model that reports per-history-product
  contributions (``history_contributions``, e.g. the ranker, whose user vector is a sum over
  the user's rated products), X is the rated product that contributes most to that row's
  score, exactly. Otherwise X is the rated product whose text vector (current feature set) is
  most similar (cosine) to the recommended product's.
* Cold-start rows: "similar to X", X the rated product most similar by text.
* Fallback rows: "popular in <category>" or "popular".
* A model row for which no X can be found (no contributions, no text vectors) says
  "recommended for you".

``recommendations.reason`` holds the phrase and ``because_product_id`` the id of X; the view
``current_recommendations`` joins X's asin and title and appends the title to the phrase.

A whole block of users is explained at once (:meth:`ContributionReasons.top`,
:meth:`TextReasons.most_similar_block`): every list row is matched against the rated products
of its user by :func:`best_match`, which groups the block's users by history length (a few
widths per octave) and runs one stacked matmul per group, so the cost does not grow with a
Python loop over users. :func:`top_contributors` and :meth:`TextReasons.most_similar` are the
same definitions for one user.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recsys.scoring.histories import Histories

BECAUSE_RATED = "because you rated"
SIMILAR_TO = "similar to"
POPULAR = "popular"
POPULAR_IN = "popular in"
FOR_YOU = "recommended for you"

MATCH_ELEMENTS = 1 << 21
"""Elements of the padded history operand of one stacked matmul in :func:`best_match` (16 MiB
at float64), or one user's whole history when that alone is longer."""


def _padded(lengths: np.ndarray) -> np.ndarray:
    """History lengths rounded up to a few widths per octave (at most 25% padding)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    step = np.left_shift(
        1, np.maximum(np.floor(np.log2(np.maximum(lengths, 1))) - 2, 0).astype(np.int64)
    )
    return -(-lengths // step) * step


def best_match(
    left_rows: np.ndarray,
    left_index: np.ndarray,
    left_table: np.ndarray,
    right_rows: np.ndarray,
    right_index: np.ndarray,
    right_table: np.ndarray,
    n_rows: int,
    *,
    left_weight: np.ndarray | None = None,
    dtype: Any = np.float32,
) -> np.ndarray:
    """For each right entry, the left entry of its row with the largest dot product.

    Left entry e is the vector ``left_table[left_index[e]]`` of row ``left_rows[e]``, right
    entry q is ``right_table[right_index[q]]`` of row ``right_rows[q]``, and their match is
    ``left_weight[e] * (left . right)``, computed in ``dtype`` and compared as float32. Ties go
    to the first left entry of the row, so the left entries must be sorted by row, then by the
    tie-break key. Rows are grouped by their number of left entries (padded to a few widths
    per octave) and each group is one stacked matmul, in chunks of at most
    :data:`MATCH_ELEMENTS` padded left elements.

    Args:
        left_rows: int64 [E], ascending.
        left_index: int64 [E], rows of ``left_table``.
        left_table: [*, d] vectors.
        right_rows: int64 [Q], any order.
        right_index: int64 [Q], rows of ``right_table``.
        right_table: [*, d] vectors.
        n_rows: rows (users) of the block.
        left_weight: float [E] multiplying each left entry's products (in ``dtype``), or None.
        dtype: the precision of the products.

    Returns:
        int64 [Q]: the left entry (index into the left arrays) of each right entry; -1 when
        its row has no left entry.
    """
    out = np.full(len(right_rows), -1, dtype=np.int64)
    if not len(left_rows) or not len(right_rows):
        return out
    bounds = np.arange(n_rows + 1)
    l_start = np.searchsorted(left_rows, bounds)
    l_len = np.diff(l_start)
    r_order = np.argsort(right_rows, kind="stable")
    r_start = np.searchsorted(right_rows[r_order], bounds)
    r_len = np.diff(r_start)
    live = np.flatnonzero((l_len > 0) & (r_len > 0))
    if not len(live):
        return out
    width = _padded(l_len[live])
    d = int(left_table.shape[1])
    for w in np.unique(width).tolist():
        group = live[width == w]
        per_chunk = max(1, MATCH_ELEMENTS // (w * max(d, 1)))
        slots = np.arange(w)
        for c in range(0, len(group), per_chunk):
            users = group[c : c + per_chunk]
            l_valid = slots[None, :] < l_len[users][:, None]
            l_pos = np.where(l_valid, l_start[users][:, None] + slots[None, :], 0)
            a = left_table[left_index[l_pos]].astype(dtype, copy=False)
            kb = int(r_len[users].max())
            r_slots = np.arange(kb)
            r_valid = r_slots[None, :] < r_len[users][:, None]
            r_sel = r_order[np.where(r_valid, r_start[users][:, None] + r_slots[None, :], 0)]
            b = right_table[right_index[r_sel]].astype(dtype, copy=False)
            products = np.matmul(a, b.transpose(0, 2, 1))
            if left_weight is not None:
                products *= left_weight[l_pos][:, :, None].astype(dtype, copy=False)
            products = products.astype(np.float32)
            products[~l_valid] = -np.inf
            best = products.argmax(axis=1)
            out[r_sel[r_valid]] = (l_start[users][:, None] + best)[r_valid]
    return out


def _pick(values: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """``values[pos]``, -1 where ``pos`` is -1."""
    out = np.full(len(pos), -1, dtype=np.int64)
    found = pos >= 0
    out[found] = values[pos[found]]
    return out


class TextReasons:
    """The most similar rated product by text vector (cosine), in memory."""

    def __init__(self, product_ids: np.ndarray, vectors: np.ndarray) -> None:
        order = np.argsort(product_ids, kind="stable")
        self.ids = np.asarray(product_ids, dtype=np.int64)[order]
        v = np.asarray(vectors, dtype=np.float32)[order]
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        self.vectors = v / np.maximum(norms, 1e-12)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.ids):
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[pos] == ids, pos, -1)

    def most_similar(self, rated: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """For each target product id, the id of the most similar rated product (-1: none).

        Ties go to the lower product id.
        """
        out = np.full(len(targets), -1, dtype=np.int64)
        rated = np.unique(np.asarray(rated, dtype=np.int64))
        r_rows = self._rows(rated)
        rated, r_rows = rated[r_rows >= 0], r_rows[r_rows >= 0]
        t_rows = self._rows(targets)
        has = t_rows >= 0
        if not len(rated) or not has.any():
            return out
        similarity = self.vectors[t_rows[has]] @ self.vectors[r_rows].T
        out[has] = rated[np.argmax(similarity, axis=1)]  # rated is ascending: lower id wins
        return out

    def most_similar_block(
        self,
        n_rows: int,
        rated_rows: np.ndarray,
        rated: np.ndarray,
        target_rows: np.ndarray,
        targets: np.ndarray,
    ) -> np.ndarray:
        """:meth:`most_similar` for every row of a block at once.

        Args:
            n_rows: users in the block.
            rated_rows: int64 [R], the block row of each rated product (any order).
            rated: int64 [R], the rated product ids.
            target_rows: int64 [Q], the block row of each target.
            targets: int64 [Q], the target product ids.

        Returns:
            int64 [Q]: the id of the most similar product its row rated (-1: none); ties go
            to the lower product id.
        """
        out = np.full(len(targets), -1, dtype=np.int64)
        rated_rows = np.asarray(rated_rows, dtype=np.int64)
        rated = np.asarray(rated, dtype=np.int64)
        r_vec = self._rows(rated)
        known = r_vec >= 0
        rated_rows, rated, r_vec = rated_rows[known], rated[known], r_vec[known]
        order = np.lexsort((rated, rated_rows))
        rated_rows, rated, r_vec = rated_rows[order], rated[order], r_vec[order]
        first = np.ones(len(rated), dtype=bool)
        first[1:] = (rated_rows[1:] != rated_rows[:-1]) | (rated[1:] != rated[:-1])
        rated_rows, rated, r_vec = rated_rows[first], rated[first], r_vec[first]
        t_vec = self._rows(targets)
        has = t_vec >= 0
        if not len(rated) or not has.any():
            return out
        pos = best_match(
            rated_rows,
            r_vec,
            self.vectors,
            np.asarray(target_rows, dtype=np.int64)[has],
            t_vec[has],
            self.vectors,
            n_rows,
        )
        out[has] = _pick(rated, pos)
        return out


class ContributionReasons:
    """The top contributing rated product of every list row of a block, in one pass.

    For a model with ``contribution_factors()`` (the ranker): the history CSR, ``H`` and ``V``
    with ``contribution(u, j, i) = w_uj / sqrt(max(sum_j w_uj, 1)) * H[j] . V[i]``, computed in
    float64 (the weight applied after the dot product) and compared as float32 like the model's
    ``history_contributions``; ties go to the lower model product index. Other models
    with ``history_contributions`` only are asked user by user (:func:`top_contributors`).

    Args:
        recommender: the model.
        folded: per folded-in user, the model product indices they rated (duplicates count
            once; a :class:`~recsys.scoring.histories.Histories` or a list of arrays);
            folded-in user f has user index ``first_folded + f``.
        first_folded: the first folded-in user index (the model's number of users).
    """

    def __init__(
        self,
        recommender: Any,
        folded: Histories | list[np.ndarray] | None = None,
        first_folded: int | None = None,
    ) -> None:
        from scipy import sparse

        self.recommender = recommender
        if folded is None:
            folded = Histories.empty()
        elif not isinstance(folded, Histories):
            folded = Histories.from_list(folded)
        self.folded_list = folded
        self.first_folded = first_folded if first_folded is not None else 0
        self.factors = None
        self.folded = None
        if hasattr(recommender, "contribution_factors"):
            history, table, vectors = recommender.contribution_factors()
            self.factors = (sparse.csr_matrix(history), table, vectors)
            n_products = self.factors[0].shape[1]
            lengths = folded.lengths()
            items = folded.indices
            rows = np.repeat(np.arange(len(lengths)), lengths)
            folded_csr = sparse.csr_matrix(
                (np.ones(len(items), dtype=np.float32), (rows, items)),
                shape=(len(lengths), n_products),
            )
            folded_csr.data[:] = 1.0  # a product rated twice counts once
            self.folded = folded_csr

    def top(self, user_index: np.ndarray, rows: np.ndarray, products: np.ndarray) -> np.ndarray:
        """Model product index of the top contributor of each list row (-1: no history).

        Args:
            user_index: int64 [n], the model user index of each block row.
            rows: int64 [Q], the block row of each list row.
            products: int64 [Q], the model product index of each list row.
        """
        user_index = np.asarray(user_index, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        products = np.asarray(products, dtype=np.int64)
        if self.factors is None:
            return self._one_by_one(user_index, rows, products)
        from scipy import sparse

        history, table, vectors = self.factors
        n = len(user_index)
        folded = (
            user_index >= self.first_folded
            if self.folded is not None and self.folded.shape[0]
            else np.zeros(n, dtype=bool)
        )
        if folded.any():
            parts = sparse.vstack(
                [
                    history[user_index[~folded]],
                    self.folded[user_index[folded] - self.first_folded],
                ],
                format="csr",
            )
            order = np.concatenate([np.flatnonzero(~folded), np.flatnonzero(folded)])
            block = parts[np.argsort(order, kind="stable")]
        else:
            block = history[user_index]
        block = sparse.csr_matrix(block)
        block.sort_indices()
        lengths = np.diff(block.indptr)
        left_rows = np.repeat(np.arange(n), lengths)
        data = np.asarray(block.data, dtype=np.float32)
        totals = np.bincount(left_rows, weights=data, minlength=n)
        weight = data.astype(np.float64) / np.sqrt(np.maximum(totals, 1.0))[left_rows]
        index = np.asarray(block.indices, dtype=np.int64)
        pos = best_match(
            left_rows,
            index,
            table,
            rows,
            products,
            vectors,
            n,
            left_weight=weight,
            dtype=np.float64,
        )
        return _pick(index, pos)

    def _one_by_one(
        self, user_index: np.ndarray, rows: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        out = np.full(len(rows), -1, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        bounds = np.searchsorted(rows[order], np.arange(len(user_index) + 1))
        for i in np.flatnonzero(np.diff(bounds)).tolist():  # models without factors only
            sel = order[bounds[i] : bounds[i + 1]]
            user = int(user_index[i])
            history = None
            if len(self.folded_list) and user >= self.first_folded:
                history = self.folded_list[user - self.first_folded]
            out[sel] = top_contributors(self.recommender, user, products[sel], history=history)
        return out


def top_contributors(
    recommender, user_index: int, product_index: np.ndarray, history: np.ndarray | None = None
) -> np.ndarray:
    """Per product (model index), the model index of the user's top contributing history product.

    Uses ``recommender.history_contributions(user, products) -> (history, contributions)``;
    ties go to the lower index; -1 where the user has no history. ``history`` (model product
    indices) stands in for the model's own history of the user (a folded-in user).
    """
    extra = {} if history is None else {"history": history}
    history, contributions = recommender.history_contributions(
        int(user_index), product_index, **extra
    )
    out = np.full(len(product_index), -1, dtype=np.int64)
    if len(history) == 0:
        return out
    order = np.argsort(history, kind="stable")
    history, contributions = np.asarray(history)[order], np.asarray(contributions)[order]
    out[:] = history[np.argmax(contributions, axis=0)]
    return out
