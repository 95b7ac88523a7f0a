"""Shared helpers for the nightly tests (issue 5): a small real model and data put in by SQL.

``NumpyMF`` is a genuine matrix-factorisation model (alternating least squares on the ratings)
implementing ``recsys.model.base.Recommender`` and ``ColdStartScorer``, so scoring and
publishing are tested against the protocol independently of the Keras models. This module
holds no tests.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from recsys.model.base import FitHistory, RatingData
from recsys.scoring.score import ScoringModel


class NumpyMF:
    """Biased matrix factorisation fitted by a few rounds of ALS; scores = predicted ratings."""

    name = "numpy-mf"
    scores_are_ratings = True

    def __init__(self, dim: int = 4, reg: float = 0.1, iterations: int = 5, delay: float = 0.0):
        self.dim, self.reg, self.iterations = dim, reg, iterations
        self.delay = delay  # seconds slept per score_users call (to catch a run mid-scoring)
        self.nan = False

    def fit(
        self, train: RatingData, *, validation: RatingData | None = None, seed: int = 0
    ) -> FitHistory:
        rng = np.random.default_rng(seed)
        n_u, n_p, d = train.n_users, train.n_products, self.dim
        self.mean = float(train.ratings.mean())
        self.U = rng.normal(0, 0.1, (n_u, d)).astype(np.float32)
        self.V = rng.normal(0, 0.1, (n_p, d)).astype(np.float32)
        r = train.ratings - self.mean
        eye = self.reg * np.eye(d)
        for _ in range(self.iterations):
            for factors, other, idx, jdx in (
                (self.U, self.V, train.users, train.products),
                (self.V, self.U, train.products, train.users),
            ):
                for i in np.unique(idx):
                    sel = idx == i
                    o = other[jdx[sel]]
                    factors[i] = np.linalg.solve(o.T @ o + eye, o.T @ r[sel])
        self.W = rng.normal(
            0, 0.1, (train.text.shape[1] if train.text is not None else 3, d)
        ).astype(np.float32)
        return FitHistory()

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        return (np.sum(self.U[users] * self.V[products], axis=1) + self.mean).astype(np.float32)

    def score_users(self, users: np.ndarray) -> np.ndarray:
        if self.delay:
            time.sleep(self.delay)
        scores = (self.U[users] @ self.V.T + self.mean).astype(np.float32)
        if self.nan:
            scores[0, 0] = np.nan
        return scores

    def score_new_products(self, users: np.ndarray, text: np.ndarray) -> np.ndarray:
        return (self.U[users] @ (text @ self.W).T + self.mean).astype(np.float32)

    def save(self, directory: Path) -> None:
        np.savez(Path(directory) / "mf.npz", U=self.U, V=self.V, W=self.W, mean=self.mean)


def add_catalogue(
    conn: sa.Connection,
    n_users: int,
    n_products: int,
    n_ratings: int,
    seed: int = 0,
    categories: int = 3,
) -> None:
    """Users u0.., products p0.. (titles, brands, a category path) and random ratings, by SQL."""
    rng = np.random.default_rng(seed)
    conn.execute(
        sa.text(
            "INSERT INTO users (external_id) SELECT 'u' || g FROM generate_series(0, :n - 1) g"
        ),
        {"n": n_users},
    )
    conn.execute(
        sa.text(
            "INSERT INTO products (external_id, title, brand, categories) "
            "SELECT 'p' || g, 'Product ' || g, 'Brand ' || (g % 5), "
            "ARRAY['Shop', 'Cat' || (g % :c)] FROM generate_series(0, :n - 1) g"
        ),
        {"n": n_products, "c": categories},
    )
    pairs = set()
    while len(pairs) < n_ratings:
        pairs.add((int(rng.integers(n_users)), int(rng.integers(n_products))))
    rows = [{"u": f"u{u}", "p": f"p{p}", "r": float(rng.integers(1, 6))} for u, p in sorted(pairs)]
    conn.execute(
        sa.text(
            "INSERT INTO ratings (user_id, product_id, rating, rated_at) "
            "SELECT u.id, p.id, :r, now() FROM users u, products p "
            "WHERE u.external_id = :u AND p.external_id = :p"
        ),
        rows,
    )


def rating_data(conn: sa.Connection, *, min_user_ratings: int = 1) -> RatingData:
    """The ratings as a RatingData over users with at least ``min_user_ratings`` ratings."""
    rows = conn.execute(
        sa.text(
            "SELECT r.user_id, r.product_id, r.rating FROM ratings r "
            "WHERE r.user_id IN (SELECT user_id FROM ratings GROUP BY user_id "
            "HAVING count(*) >= :m) ORDER BY r.user_id, r.product_id"
        ),
        {"m": min_user_ratings},
    ).all()
    a = np.asarray(rows, dtype=np.float64)
    user_ids, users = np.unique(a[:, 0].astype(np.int64), return_inverse=True)
    # shuffle the product index so that column order differs from product id order
    product_ids = np.unique(a[:, 1].astype(np.int64))[::-1].copy()
    lookup = {int(p): i for i, p in enumerate(product_ids)}
    products = np.asarray([lookup[int(p)] for p in a[:, 1]], dtype=np.int32)
    return RatingData(
        users=users.astype(np.int32),
        products=products,
        ratings=a[:, 2].astype(np.float32),
        timestamps=np.zeros(len(a), dtype=np.int64),
        user_ids=user_ids,
        product_ids=product_ids,
        text=np.ones((len(product_ids), 3), dtype=np.float32),
    )


def trained_model(conn: sa.Connection, *, min_user_ratings: int = 1, **kwargs) -> ScoringModel:
    """A NumpyMF fitted on the ratings in the database, wrapped for scoring."""
    data = rating_data(conn, min_user_ratings=min_user_ratings)
    model = NumpyMF(**kwargs)
    model.fit(data)
    return ScoringModel(model, data.user_ids, data.product_ids, run_id=None, model_type="numpy-mf")
