"""Implicit ALS (Hu, Koren, Volinsky 2008) through the ``implicit`` package, as a nightly model.

Fitted by ``implicit.cpu.als.AlternatingLeastSquares`` on the binary user x product matrix
(confidence ``alpha`` on rated products, 1 elsewhere); score ``U_u . V_i``. Factors,
regularization and alpha come from a small grid scored on a TRAIN-INTERNAL split (20% of each
user's training ratings, another seed) and the best setting is refitted on the whole training
part. Needs the optional ``recsys[peers]`` extra to FIT; a saved model loads, scores and folds
in with numpy alone.

Fold-in (:meth:`ALSRecommender.score_histories`): a user known only by a history row gets the
exact least-squares user vector that implicit's ``recalculate_user`` computes (its
``user_linear_equation``)::

    u = (V^T V + reg I + (alpha - 1) V_I^T V_I)^-1  alpha sum_{i in I} V_i

with ``I`` the user's rated products.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from recsys.errors import DataError, RecsysError
from recsys.model.base import FitHistory, RatingData
from recsys.model.ease import ArrayModel, interaction_matrix

_log = logging.getLogger(__name__)

DEFAULT_GRID: tuple[tuple[int, float, float], ...] = (
    (32, 0.05, 1.0),
    (32, 0.05, 5.0),
    (64, 0.05, 1.0),
    (64, 0.5, 5.0),
    (128, 0.5, 1.0),
    (128, 5.0, 5.0),
    (64, 5.0, 20.0),
)
"""(factors, regularization, alpha) candidates tried on the train-internal split."""


def require(module: str, extra: str = "peers"):
    """Import an optional package or raise RecsysError naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise RecsysError(
            f"the {module} package is missing; install the optional peers: "
            f"pip install 'recsys[{extra}]'"
        ) from err


def implicit_available() -> bool:
    """Whether the ``implicit`` package (``recsys[peers]``) can be imported."""
    import importlib.util

    return importlib.util.find_spec("implicit") is not None


class FactorModel(ArrayModel):
    """A model whose score is ``user_factors[u] . product_factors[i]``."""

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


class ALSRecommender(FactorModel):
    """implicit's ALS with factors, regularization and alpha tuned on a train-internal split.

    Args:
        factors, regularization, alpha: a fixed setting; any None tunes all three over ``grid``.
        iterations: ALS sweeps.
        grid: (factors, regularization, alpha) candidates.
        time_budget_s: wall seconds the fit may take (None or 0: no limit): the grid stops
            before a setting that, with the refit after it, would end past the budget at the
            mean setting time so far, and keeps the best setting so far (at least one is tried);
            each setting is then measured on at most 5,000 seeded validation users.
    """

    name = "als"

    def __init__(
        self,
        *,
        factors: int | None = None,
        regularization: float | None = None,
        alpha: float | None = None,
        iterations: int = 15,
        grid: tuple[tuple[int, float, float], ...] | list = DEFAULT_GRID,
        time_budget_s: float | None = None,
    ) -> None:
        self.params: dict[str, Any] = {
            "factors": factors,
            "regularization": regularization,
            "alpha": alpha,
            "iterations": int(iterations),
            "grid": [list(g) for g in grid],
            "time_budget_s": float(time_budget_s) if time_budget_s else None,
        }

    def _fit_setting(
        self, train: RatingData, factors: int, reg: float, alpha: float, seed: int
    ) -> None:
        require("implicit")
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
        self.params["fitted"] = [int(factors), float(reg), float(alpha)]

    def fit(
        self, train: RatingData, *, validation: RatingData | None = None, seed: int = 0
    ) -> FitHistory:
        """Fit the given setting, or tune (factors, regularization, alpha) first."""
        if len(train) == 0:
            raise DataError("no training ratings")
        setting = (self.params["factors"], self.params["regularization"], self.params["alpha"])
        if None in setting:
            from recsys.evaluation.tuning import internal_rank_split, validation_ndcg

            fit_part, val_part = internal_rank_split(train)
            budget = self.params.get("time_budget_s")
            if budget:  # under a budget, each setting is measured on a seeded user sample
                from recsys.model.auto import DEFAULT_CONTEST_USERS, contest_sample

                val_part = contest_sample(val_part, DEFAULT_CONTEST_USERS)
            started = time.monotonic()
            scores = {}
            for candidate in self.params["grid"]:
                mean = (time.monotonic() - started) / max(len(scores), 1)
                # one more setting and the refit on all of ``train`` (about one more setting)
                if budget and scores and time.monotonic() + 2 * mean > started + budget:
                    _log.info("als: time budget: grid stopped after %d settings", len(scores))
                    self.params["budget_stop"] = True
                    break
                self._fit_setting(fit_part, *candidate, seed=seed)
                scores[tuple(candidate)] = validation_ndcg(self, fit_part, val_part)
            setting = max(scores, key=scores.get)
            _log.info("als: validation NDCG@10 %s -> %s", scores, setting)
            self.params["tuned"] = list(setting)
        self._fit_setting(train, *setting, seed=seed)
        return FitHistory(stopped_reason="closed form")

    def fold_in(self, histories) -> np.ndarray:
        """Exact least-squares user vectors for binary history rows (see the module docstring).

        Args:
            histories: ``[n, n_products]`` scipy sparse or dense 0/1 rows.
        """
        from scipy import sparse

        if self.product_factors is None or "fitted" not in self.params:
            raise RecsysError("the ALS model is not trained")
        _, reg, alpha = self.params["fitted"]
        rows = sparse.csr_matrix(histories)
        v = self.product_factors.astype(np.float64)
        base = v.T @ v + reg * np.eye(v.shape[1])
        out = np.zeros((rows.shape[0], v.shape[1]), dtype=np.float32)
        for r in range(rows.shape[0]):
            items = rows.indices[rows.indptr[r] : rows.indptr[r + 1]]
            if len(items) == 0:
                continue
            vi = v[items]
            a = base + (alpha - 1.0) * (vi.T @ vi)
            out[r] = np.linalg.solve(a, alpha * vi.sum(axis=0))
        return out

    def score_histories(self, histories) -> np.ndarray:
        """Fold-in scores: the folded user vectors times the product factors."""
        return (self.fold_in(histories) @ self.product_factors.T).astype(np.float32)
