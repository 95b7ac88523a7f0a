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
"""

from __future__ import annotations

import numpy as np

BECAUSE_RATED = "because you rated"
SIMILAR_TO = "similar to"
POPULAR = "popular"
POPULAR_IN = "popular in"
FOR_YOU = "recommended for you"


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
