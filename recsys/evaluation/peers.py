"""Peers for ``recsys evaluate``: EASE, implicit ALS and LightFM WARP (+ product text).

Each is a :class:`recsys.model.base.Recommender` that ranks (``score_users``) and predicts no
ratings (``predicts_ratings = False``; ``predict`` raises NotImplementedError). They see the
training ratings as implicit feedback (rated = 1), as ANCHORS.md measures them.

Hyper-parameters are tuned on a TRAIN-INTERNAL split, never on the test part:
:func:`internal_rank_split` holds out 20% of each user's training ratings (the rank protocol with
another seed), each candidate setting is fitted on the rest and scored by NDCG@10 there, and the
best setting is refitted on the whole training part. Grids are small on purpose (2 shared cores).

* ``ease``: Steck 2019, closed form ``B = I - P^-1 diag(1/diag(P^-1))`` with
  ``P = X^T X + lambda I`` over the binary user x product matrix; score ``X_u B``. numpy only.
  lambda from ``lambdas``.
* ``als``: implicit 0.7 ``AlternatingLeastSquares`` (confidence ``1 + alpha``), score
  ``U_u . V_i``; factors, regularization and alpha from a small grid. Needs ``recsys[peers]``.
* ``lightfm`` / ``lightfm_text``: LightFM WARP; ``lightfm_text`` adds each product's text vector
  from the feature store (L2-normalised, beside the identity feature), so cold products are
  scored through their text alone (:meth:`LightFMPeer.score_new_products`). Epochs tuned.
  Needs ``recsys[peers]`` (``rectools-lightfm``: the maintained build of LightFM 1.17, whose
  original sdist does not build on Python 3.11 here).

Saved models: ``recommender.json`` + ``peer.npz`` (factor matrices and the training history the
score needs).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data import META_FILE, FitHistory, RatingData
from recsys.errors import DataError, RecsysError
from recsys.evaluation.tuning import internal_rank_split, validation_ndcg

_log = logging.getLogger(__name__)


def interaction_matrix(data: RatingData, dtype: Any = np.float32):
    """Binary user x product CSR matrix of the ratings (duplicates collapse to 1)."""
    from scipy import sparse

    matrix = sparse.csr_matrix(
        (np.ones(len(data), dtype=dtype), (data.users, data.products)),
        shape=(data.n_users, data.n_products),
    )
    matrix.data[:] = 1
    return matrix


def _require(module: str, extra: str = "peers"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise RecsysError(
            f"the {module} package is missing; install the optional peers: "
            f"pip install 'recsys[{extra}]'"
        ) from err


class _Peer:
    """Shared plumbing: no rating head, save/load of named arrays."""

    name = "peer"
    predicts_ratings = False
    params: dict[str, Any]

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{self.name} ranks and predicts no ratings")

    def _arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / "peer.npz", **self._arrays())
        (directory / META_FILE).write_text(json.dumps({"model": self.name, "params": self.params}))

    @classmethod
    def load(cls, directory: Path):
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        accepted = inspect.signature(cls.__init__).parameters
        model = cls(**{k: v for k, v in meta["params"].items() if k in accepted})
        model.params.update(meta["params"])
        with np.load(directory / "peer.npz") as arrays:
            model._set_arrays({k: arrays[k] for k in arrays.files})
        return model


class EASEPeer(_Peer):
    """EASE (Steck 2019): a full item-item linear model in closed form.

    Args:
        lam: the L2 weight; None tunes it over ``lambdas`` on a train-internal split.
        lambdas: candidates for lambda.
    """

    name = "ease"

    def __init__(
        self,
        *,
        lam: float | None = None,
        lambdas: tuple[float, ...] = (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0),
    ) -> None:
        self.params: dict[str, Any] = {"lam": lam, "lambdas": [float(x) for x in lambdas]}
        self.weights: np.ndarray | None = None
        self.history = None

    @staticmethod
    def closed_form(gram: np.ndarray, lam: float) -> np.ndarray:
        """``B`` with zero diagonal from the Gram matrix ``X^T X`` (float64)."""
        p = gram.astype(np.float64, copy=True)
        p[np.diag_indices_from(p)] += lam
        inverse = np.linalg.inv(p)
        weights = -inverse / np.diag(inverse)[None, :]
        weights[np.diag_indices_from(weights)] = 0.0
        return weights

    def _fit_lambda(self, train: RatingData, lam: float) -> None:
        x = interaction_matrix(train, np.float64)
        gram = (x.T @ x).toarray()
        self.weights = self.closed_form(gram, lam).astype(np.float32)
        self.history = x.astype(np.float32)

    def fit(
        self, train: RatingData, *, validation: RatingData | None = None, seed: int = 0
    ) -> FitHistory:
        if len(train) == 0:
            raise DataError("no training ratings")
        if train.n_products > 30_000:
            raise DataError(
                f"EASE inverts a dense {train.n_products} x {train.n_products} matrix; "
                "too large for this machine (use als or lightfm)"
            )
        lam = self.params["lam"]
        if lam is None:
            fit_part, val_part = internal_rank_split(train)
            scores = {}
            for candidate in self.params["lambdas"]:
                self._fit_lambda(fit_part, candidate)
                scores[candidate] = validation_ndcg(self, fit_part, val_part)
            lam = max(scores, key=lambda c: (scores[c], -c))
            _log.info("ease: validation NDCG@10 per lambda %s -> lambda %g", scores, lam)
            self.params["tuned_lam"] = float(lam)
        self._fit_lambda(train, float(lam))
        return FitHistory(stopped_reason="closed form")

    def score_users(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        return np.asarray(self.history[users] @ self.weights, dtype=np.float32)

    def _arrays(self) -> dict[str, np.ndarray]:
        coo = self.history.tocoo()
        return {
            "weights": self.weights,
            "rows": coo.row,
            "cols": coo.col,
            "shape": np.array(coo.shape),
        }

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        from scipy import sparse

        self.weights = arrays["weights"]
        shape = tuple(int(s) for s in arrays["shape"])
        self.history = sparse.csr_matrix(
            (np.ones(len(arrays["rows"]), np.float32), (arrays["rows"], arrays["cols"])),
            shape=shape,
        )


class FactorPeer(_Peer):
    """A model whose score is ``user_factors[u] . product_factors[i] (+ product bias)``."""

    user_factors: np.ndarray | None = None
    product_factors: np.ndarray | None = None

    def score_users(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        return (self.user_factors[users] @ self.product_factors.T).astype(np.float32)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors, "product_factors": self.product_factors}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.user_factors = arrays["user_factors"]
        self.product_factors = arrays["product_factors"]


class ALSPeer(FactorPeer):
    """implicit's ALS with factors, regularization and alpha tuned on a train-internal split."""

    name = "als"

    def __init__(
        self,
        *,
        factors: int | None = None,
        regularization: float | None = None,
        alpha: float | None = None,
        iterations: int = 15,
        grid: tuple[tuple[int, float, float], ...] = (
            (32, 0.05, 1.0),
            (32, 0.05, 5.0),
            (64, 0.05, 1.0),
            (64, 0.5, 5.0),
            (128, 0.5, 1.0),
            (128, 5.0, 5.0),
            (64, 5.0, 20.0),
        ),
    ) -> None:
        self.params: dict[str, Any] = {
            "factors": factors,
            "regularization": regularization,
            "alpha": alpha,
            "iterations": int(iterations),
            "grid": [list(g) for g in grid],
        }

    def _fit_setting(
        self, train: RatingData, factors: int, reg: float, alpha: float, seed: int
    ) -> None:
        _require("implicit")
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        # implicit runs its own threads; a BLAS thread pool underneath only oversubscribes (it
        # checks, and warns, when the model is made)
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=int(factors),
                regularization=float(reg),
                alpha=float(alpha),
                iterations=self.params["iterations"],
                random_state=seed,
                num_threads=1,
                calculate_training_loss=False,
            )
            model.fit(interaction_matrix(train), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.product_factors = np.asarray(model.item_factors, dtype=np.float32)

    def fit(
        self, train: RatingData, *, validation: RatingData | None = None, seed: int = 0
    ) -> FitHistory:
        if len(train) == 0:
            raise DataError("no training ratings")
        setting = (self.params["factors"], self.params["regularization"], self.params["alpha"])
        if None in setting:
            fit_part, val_part = internal_rank_split(train)
            scores = {}
            for candidate in self.params["grid"]:
                self._fit_setting(fit_part, *candidate, seed=seed)
                scores[tuple(candidate)] = validation_ndcg(self, fit_part, val_part)
            setting = max(scores, key=scores.get)
            _log.info("als: validation NDCG@10 %s -> %s", scores, setting)
            self.params["tuned"] = list(setting)
        self._fit_setting(train, *setting, seed=seed)
        return FitHistory(stopped_reason="closed form")


class LightFMPeer(FactorPeer):
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
