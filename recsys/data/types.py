"""The value types every layer above shares: ratings as arrays, a fit's history, the model protocol.

Every model trains on a :class:`RatingData` and answers through the :class:`Recommender`
protocol. Training reads the database into a RatingData (``recsys.model.data``); evaluation
splits a RatingData (``recsys.evaluation.splits``); nightly scoring asks a loaded model for
``score_users`` over user batches (``recsys.scoring.score``). This module imports numpy only, so
models and evaluation both depend on it and neither on the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

META_FILE = "recommender.json"
"""The file in a saved model's folder that names the model (``{"model": name, ...}``).

Every :meth:`Recommender.save` writes it; the catalogue reads it to pick the class to load.
"""


@dataclass(frozen=True)
class RatingData:
    """Ratings as arrays over contiguous user and product indices.

    Index ``u`` stands for the database user ``user_ids[u]`` and index ``p`` for the database
    product ``product_ids[p]``. Subsets made by splits keep the same index space (and the same
    ``user_ids``/``product_ids``/``text``), so a model fitted on a training subset scores the
    whole catalogue.
    """

    users: np.ndarray
    """int32 [n]: user index of each rating."""
    products: np.ndarray
    """int32 [n]: product index of each rating."""
    ratings: np.ndarray
    """float32 [n]."""
    timestamps: np.ndarray
    """int64 [n]: unix seconds."""
    user_ids: np.ndarray
    """int64 [n_users]: ``users.id`` of each user index."""
    product_ids: np.ndarray
    """int64 [n_products]: ``products.id`` of each product index."""
    text: np.ndarray | None = None
    """float32 [n_products, dim]: the product's text vector from the current feature set,
    aligned with the product index; zero rows where ``has_text`` is False."""
    has_text: np.ndarray | None = None
    """bool [n_products]: whether the product has a text vector."""
    rating_scale: tuple[float, float] = (1.0, 5.0)
    feature_set_id: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(len(self.user_ids))

    @property
    def n_products(self) -> int:
        return int(len(self.product_ids))

    def __len__(self) -> int:
        return int(len(self.ratings))

    def subset(self, rows: np.ndarray) -> RatingData:
        """The ratings selected by ``rows`` (a boolean mask or indices), same index space."""
        return replace(
            self,
            users=self.users[rows],
            products=self.products[rows],
            ratings=self.ratings[rows],
            timestamps=self.timestamps[rows],
        )


@dataclass(frozen=True)
class FitHistory:
    """Loss per epoch, as the notebook plotted it; empty for closed-form models."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_reason: str | None = None
    epoch_seconds: list[float] = field(default_factory=list)
    """Wall seconds per epoch (empty for closed-form models)."""
    val_ndcg: list[list[float]] = field(default_factory=list)
    """``[epoch, internal-validation NDCG@10]`` of every evaluation during the fit (models that
    tune on a train-internal split, e.g. the ranker's epoch search); empty where none ran."""


@runtime_checkable
class Recommender(Protocol):
    """What every model offers to training, evaluation and scoring."""

    name: str

    def fit(
        self, train: RatingData, *, validation: RatingData | None = None, seed: int = 0
    ) -> FitHistory:
        """Train on ``train``, optionally early-stopping on ``validation``.

        Deterministic per seed.
        """
        ...

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        """Predicted ratings (unclipped, float32) for index pairs.

        Models without a rating head raise NotImplementedError.
        """
        ...

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """Exact ranking scores, float32 [len(users), n_products]; higher is better.

        This is what top-k lists are cut from. It must equal direct evaluation of the model
        (up to float32 rounding); fast paths (precomputed user and product parts, XLA) live here.
        """
        ...

    def save(self, directory: Path) -> None:
        """Write everything needed to reload the model into ``directory``."""
        ...


class ColdStartScorer(Protocol):
    """Optional: models that can score products unseen in training through their text vector."""

    def score_new_products(self, users: np.ndarray, text: np.ndarray) -> np.ndarray:
        """Ranking scores for new products given their text vectors.

        float32 [len(users), len(text)].
        """
        ...
