"""EASE (Steck 2019), a full item-item linear model in closed form, as a nightly model.

``B = I - P^-1 diag(1/diag(P^-1))`` with ``P = X^T X + lambda I`` over the binary user x
product matrix ``X`` of the training ratings (rated = 1; the ratings' values are not used, as
ANCHORS.md measures it), diagonal forced to zero; a user's scores are ``x_u B``. Scores are a
function of the user's history row only, so :meth:`EASERecommender.score_histories` folds in
any user (one sparse row times ``B``), including users the model never saw.

lambda is tuned on a TRAIN-INTERNAL split (20% of each user's training ratings, another seed;
``recsys.evaluation.tuning.internal_rank_split``) over ``lambdas`` and refitted on the whole
training part. Memory: the dense Gram matrix and its inverse are ``n_products^2`` float64 each
(:func:`ease_memory_mb`); ``fit`` refuses data above ``memory_mb`` with a DataError naming the
limit, and ``--model auto`` leaves EASE out there.

Saved as ``recommender.json`` + ``peer.npz`` (``B`` and the training history ``X``).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data import META_FILE
from recsys.errors import DataError
from recsys.model.base import FitHistory, RatingData

_log = logging.getLogger(__name__)
ARRAYS_FILE = "peer.npz"
DEFAULT_MEMORY_MB = 4096
"""Default memory budget of one EASE fit (about 12,000 products; see :func:`ease_memory_mb`)."""


def ease_memory_mb(n_products: int) -> float:
    """Peak MiB of one EASE fit: Gram/P, its inverse and B in float64, B in float32."""
    return 28.0 * float(n_products) ** 2 / (1 << 20)


def ease_max_products(memory_mb: float = DEFAULT_MEMORY_MB) -> int:
    """The largest catalogue whose EASE fit stays within ``memory_mb``."""
    return int(math.sqrt(memory_mb * (1 << 20) / 28.0))


def interaction_matrix(data: RatingData, dtype: Any = np.float32):
    """Binary user x product CSR matrix of the ratings (duplicates collapse to 1)."""
    from scipy import sparse

    matrix = sparse.csr_matrix(
        (np.ones(len(data), dtype=dtype), (data.users, data.products)),
        shape=(data.n_users, data.n_products),
    )
    matrix.data[:] = 1
    return matrix


class ArrayModel:
    """Shared plumbing of the numpy models: no rating head, save/load of named arrays."""

    name = "array-model"
    predicts_ratings = False
    scores_are_ratings = False
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
        np.savez(directory / ARRAYS_FILE, **self._arrays())
        (directory / META_FILE).write_text(json.dumps({"model": self.name, "params": self.params}))

    @classmethod
    def load(cls, directory: Path):
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        accepted = inspect.signature(cls.__init__).parameters
        model = cls(**{k: v for k, v in meta["params"].items() if k in accepted})
        model.params.update(meta["params"])
        with np.load(directory / ARRAYS_FILE) as arrays:
            model._set_arrays({k: arrays[k] for k in arrays.files})
        return model


class EASERecommender(ArrayModel):
    """EASE as a Recommender (see the module docstring).

    Args:
        lam: the L2 weight; None tunes it over ``lambdas`` on a train-internal split.
        lambdas: candidates for lambda.
        memory_mb: refuse catalogues whose fit needs more than this (:func:`ease_memory_mb`).
    """

    name = "ease"

    def __init__(
        self,
        *,
        lam: float | None = None,
        lambdas: tuple[float, ...] | list[float] = (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0),
        memory_mb: int = DEFAULT_MEMORY_MB,
    ) -> None:
        self.params: dict[str, Any] = {
            "lam": lam,
            "lambdas": [float(x) for x in lambdas],
            "memory_mb": int(memory_mb),
        }
        self.weights: np.ndarray | None = None
        self.history = None

    @staticmethod
    def closed_form(gram: np.ndarray, lam: float) -> np.ndarray:
        """``B`` with zero diagonal from the Gram matrix ``X^T X`` (float64)."""
        p = gram.astype(np.float64, copy=True)
        p[np.diag_indices_from(p)] += lam
        inverse = np.linalg.inv(p)
        del p
        weights = inverse / (-np.diag(inverse))[None, :]
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
        """Closed form; lambda tuned on a train-internal split unless given."""
        if len(train) == 0:
            raise DataError("no training ratings")
        limit = ease_max_products(self.params["memory_mb"])
        if train.n_products > limit:
            raise DataError(
                f"EASE needs a dense {train.n_products} x {train.n_products} matrix "
                f"({ease_memory_mb(train.n_products):,.0f} MiB); its budget of "
                f"{self.params['memory_mb']} MiB allows {limit:,} products (use als or ranker)"
            )
        lam = self.params["lam"]
        if lam is None:
            from recsys.evaluation.tuning import internal_rank_split, validation_ndcg

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
        """Exact scores ``x_u B`` of known users."""
        users = np.asarray(users, dtype=np.int64)
        return np.asarray(self.history[users] @ self.weights, dtype=np.float32)

    def score_histories(self, histories) -> np.ndarray:
        """Fold-in: scores of users given only their (binary) history rows over the products.

        Args:
            histories: ``[n, n_products]`` scipy sparse or dense 0/1 rows.
        """
        rows = histories
        if hasattr(rows, "tocsr"):
            rows = rows.tocsr().astype(np.float32)
            rows.data[:] = 1.0
        else:
            rows = (np.asarray(rows) > 0).astype(np.float32)
        return np.asarray(rows @ self.weights, dtype=np.float32)

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
