"""LightFM WARP (+ product text) as a model beside EASE and ALS, behind the ``peers`` extra.

``lightfm`` / ``lightfm_text`` in the catalogue: a :class:`recsys.data.Recommender` that ranks
(``score_users``) and predicts no ratings (``predicts_ratings = False``; ``predict`` raises
NotImplementedError). It sees the training ratings as implicit feedback (rated = 1), as
ANCHORS.md measures the peers; ``lightfm_text`` adds each product's text vector from the
feature store (L2-normalised, beside the identity feature), so cold products are scored
through their text alone (:meth:`LightFMPeer.score_new_products`). Needs ``recsys[peers]``
(``rectools-lightfm``: the maintained build of LightFM 1.17, whose original sdist does not
build on Python 3.11 here).

The number of epochs is tuned on a TRAIN-INTERNAL split, never on the test part
(:func:`recsys.evaluation.tuning.internal_rank_split` holds out 20% of each user's training
ratings; each candidate is fitted on the rest and scored by NDCG@10 there, and the best is
refitted on the whole training part). EASE and implicit ALS, the other peers, are
:mod:`recsys.model.ease` and :mod:`recsys.model.als`.

Saved models: ``recommender.json`` + ``peer.npz`` (factor matrices and the training history the
score needs).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from recsys.data import FitHistory, RatingData
from recsys.errors import DataError, RecsysError
from recsys.evaluation.tuning import internal_rank_split, validation_ndcg
from recsys.model.als import FactorModel
from recsys.model.als import require as _require
from recsys.model.ease import interaction_matrix

_log = logging.getLogger(__name__)


class LightFMPeer(FactorModel):
    """LightFM WARP, optionally with the product text vectors as item features.

    Args:
        text: add the feature store's text vectors (L2-normalised) as item features.
        components: latent dimension (64).
        epochs: None tunes it over ``epoch_grid`` on a train-internal split.
    """

    def __init__(
        self,
        *,
        text: bool = False,
        components: int = 64,
        epochs: int | None = None,
        epoch_grid: tuple[int, ...] = (10, 20, 40),
        learning_rate: float = 0.05,
    ) -> None:
        self.name = "lightfm_text" if text else "lightfm"
        self.params: dict[str, Any] = {
            "text": bool(text),
            "components": int(components),
            "epochs": epochs,
            "epoch_grid": [int(e) for e in epoch_grid],
            "learning_rate": float(learning_rate),
        }
        self.text_weights: np.ndarray | None = None
        self.text_bias: np.ndarray | None = None

    @staticmethod
    def _text_rows(text: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(text, axis=1, keepdims=True)
        return (text / np.maximum(norms, 1e-12)).astype(np.float32)

    def _item_features(self, data: RatingData):
        from scipy import sparse

        identity = sparse.identity(data.n_products, dtype=np.float32, format="csr")
        if not self.params["text"]:
            return identity
        if data.text is None:
            raise DataError("lightfm_text needs product text vectors (build a feature set)")
        return sparse.hstack(
            [identity, sparse.csr_matrix(self._text_rows(data.text))], format="csr"
        )

    def _fit_epochs(self, train: RatingData, epochs: int, seed: int):
        _require("lightfm")
        from lightfm import LightFM

        features = self._item_features(train)
        model = LightFM(
            no_components=self.params["components"],
            loss="warp",
            learning_rate=self.params["learning_rate"],
            random_state=seed,
        )
        model.fit(
            interaction_matrix(train).tocoo(),
            item_features=features,
            epochs=int(epochs),
            num_threads=1,
        )
        item_bias, item_emb = model.get_item_representations(features)
        user_bias, user_emb = model.get_user_representations()
        # score = u . v + b_i (+ b_u, constant per user): fold the product bias into the dot product
        self.user_factors = np.hstack([user_emb, np.ones((len(user_emb), 1))]).astype(np.float32)
        self.product_factors = np.hstack([item_emb, item_bias[:, None]]).astype(np.float32)
        if self.params["text"]:
            n = train.n_products
            self.text_weights = np.asarray(model.item_embeddings[n:], dtype=np.float32)
            self.text_bias = np.asarray(model.item_biases[n:], dtype=np.float32)

    def fit(
        self, train: RatingData, *, validation: RatingData | None = None, seed: int = 0
    ) -> FitHistory:
        if len(train) == 0:
            raise DataError("no training ratings")
        epochs = self.params["epochs"]
        started = time.perf_counter()
        if epochs is None:
            fit_part, val_part = internal_rank_split(train)
            scores = {}
            for candidate in self.params["epoch_grid"]:
                self._fit_epochs(fit_part, candidate, seed)
                scores[candidate] = validation_ndcg(self, fit_part, val_part)
            epochs = max(scores, key=lambda c: (scores[c], -c))
            _log.info("%s: validation NDCG@10 per epochs %s -> %d", self.name, scores, epochs)
            self.params["tuned_epochs"] = int(epochs)
        self._fit_epochs(train, epochs, seed)
        return FitHistory(
            stopped_reason=f"{epochs} epochs", epoch_seconds=[time.perf_counter() - started]
        )

    def score_new_products(self, users: np.ndarray, text: np.ndarray) -> np.ndarray:
        """Products with no identity feature trained: their text features alone."""
        if self.text_weights is None:
            raise RecsysError("score_new_products needs the lightfm_text peer")
        rows = self._text_rows(np.asarray(text, dtype=np.float32))
        product = np.hstack([rows @ self.text_weights, (rows @ self.text_bias)[:, None]])
        users = np.asarray(users, dtype=np.int64)
        return (self.user_factors[users] @ product.T).astype(np.float32)

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = super()._arrays()
        if self.text_weights is not None:
            arrays.update(text_weights=self.text_weights, text_bias=self.text_bias)
        return arrays

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        super()._set_arrays(arrays)
        self.text_weights = arrays.get("text_weights")
        self.text_bias = arrays.get("text_bias")


PEERS = ("ease", "als", "lightfm", "lightfm_text")
"""The catalogue names of the evaluation peers (ANCHORS.md)."""
