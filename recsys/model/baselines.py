"""Baselines: ``bias`` (global mean + regularised user and product biases) and ``popularity``.

``bias`` fits the biases by alternating least squares (ANCHORS.md, Surprise's baseline
estimator): starting from zero, repeat ``iterations`` times
``b_u = sum(r - mu - b_i) / (reg_user + n_u)`` then
``b_i = sum(r - mu - b_u) / (reg_product + n_i)``.
Its ranking score is the predicted rating; for one user that orders products by ``b_i``.

``popularity`` ranks products by their number of training ratings; it predicts no ratings.
Both save to an ``.npz`` plus ``recommender.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import DataError
from recsys.model.base import META_FILE, FitHistory, RatingData


class BiasRecommender:
    """mu + b_u + b_i, biases regularised (ALS)."""

    name = "bias"

    def __init__(
        self, *, reg_user: float = 15.0, reg_product: float = 10.0, iterations: int = 10
    ) -> None:
        self.params: dict[str, Any] = {
            "reg_user": float(reg_user),
            "reg_product": float(reg_product),
            "iterations": int(iterations),
        }
        self.mu = 0.0
        self.user_bias: np.ndarray | None = None
        self.product_bias: np.ndarray | None = None

    def fit(
        self, train: RatingData, *, validation: RatingData | None = None, seed: int = 0
    ) -> FitHistory:
        if len(train) == 0:
            raise DataError("no training ratings")
        r = train.ratings.astype(np.float64)
        self.mu = float(r.mean())
        n_u = np.bincount(train.users, minlength=train.n_users)
        n_i = np.bincount(train.products, minlength=train.n_products)
        b_u = np.zeros(train.n_users)
        b_i = np.zeros(train.n_products)
        for _ in range(self.params["iterations"]):
            b_u = np.bincount(train.users, r - self.mu - b_i[train.products], train.n_users) / (
                self.params["reg_user"] + n_u
            )
            b_i = np.bincount(train.products, r - self.mu - b_u[train.users], train.n_products) / (
                self.params["reg_product"] + n_i
            )
        self.user_bias = b_u.astype(np.float32)
        self.product_bias = b_i.astype(np.float32)
        return FitHistory(stopped_reason="closed form")

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        return (np.float32(self.mu) + self.user_bias[users] + self.product_bias[products]).astype(
            np.float32
        )

    def score_users(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        return (
            np.float32(self.mu) + self.user_bias[users][:, None] + self.product_bias[None, :]
        ).astype(np.float32)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(
            directory / "bias.npz",
            mu=np.float64(self.mu),
            user_bias=self.user_bias,
            product_bias=self.product_bias,
        )
        (directory / META_FILE).write_text(json.dumps({"model": self.name, "params": self.params}))

    @classmethod
    def load(cls, directory: Path) -> BiasRecommender:
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        model = cls(**meta["params"])
        with np.load(directory / "bias.npz") as arrays:
            model.mu = float(arrays["mu"])
            model.user_bias = arrays["user_bias"]
            model.product_bias = arrays["product_bias"]
        return model


class PopularityRecommender:
    """Products by number of training ratings (the same list for every user)."""

    name = "popularity"
    predicts_ratings = False

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.counts: np.ndarray | None = None

    def fit(
        self, train: RatingData, *, validation: RatingData | None = None, seed: int = 0
    ) -> FitHistory:
        if len(train) == 0:
            raise DataError("no training ratings")
        self.counts = np.bincount(train.products, minlength=train.n_products).astype(np.float32)
        return FitHistory(stopped_reason="closed form")

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        raise NotImplementedError("popularity predicts no ratings")

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), len(self.counts))).astype(np.float32)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "popularity.npy", self.counts)
        (directory / META_FILE).write_text(json.dumps({"model": self.name, "params": self.params}))

    @classmethod
    def load(cls, directory: Path) -> PopularityRecommender:
        model = cls()
        model.counts = np.load(Path(directory) / "popularity.npy")
        return model
