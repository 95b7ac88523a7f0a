"""Implicit ALS (Hu, Koren, Volinsky 2008) through the ``implicit`` package, as a nightly model.

Fitted by ``implicit.cpu.als.AlternatingLeastSquares`` on the binary user x product matrix
(confidence ``alpha`` on rated products, 1 elsewhere); score ``U_u . V_i``. Factors,
regularization and alpha come from a staged search scored by NDCG@10 on a TRAIN-INTERNAL split
(20% of each user's training ratings, another seed), and the best setting is refitted on the
whole training part:

1. every (alpha, regularization) of :data:`SEARCH_ALPHAS` x :data:`SEARCH_REGULARIZATIONS`
   at :data:`SEARCH_FACTORS` factors (12 fits);
2. the best regularization times and divided by :data:`REFINE_STEP` (2 fits);
3. :data:`SEARCH_FACTOR_CHOICES` factors at the best pair (3 fits).

implicit's regularization is absolute, while the data term of a user grows with alpha times
their rating count, so the useful regularization depends on the shop's ratings per user: small
shops (a handful of ratings a user) need tens, large ones fractions of one. The search
therefore spans three decades of it and alpha together; ties keep the earlier setting. Under a
time budget the search stops at the budget with the best setting so far. Needs the optional
``recsys[peers]`` extra to FIT; a saved model loads, scores and folds in with numpy alone.

Fold-in (:meth:`ALSRecommender.fold_in`; the scorer asks :meth:`ALSRecommender.user_vectors_for`
and scores ALS in its dot-product blocks through :meth:`ALSRecommender.score_factors`): a user
known only by a history row gets the exact least-squares user vector that implicit's
``recalculate_user`` computes (its ``user_linear_equation``)::

    u = (V^T V + reg I + (alpha - 1) V_I^T V_I)^-1  alpha sum_{i in I} V_i

with ``I`` the user's rated products.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from recsys.errors import DataError, RecsysError
from recsys.model.base import FitHistory, RatingData
from recsys.model.ease import ArrayModel, interaction_matrix

_log = logging.getLogger(__name__)

SEARCH_FACTORS = 32
"""The factor count of the search's first two stages."""
SEARCH_ALPHAS = (10.0, 3.0, 30.0, 1.0)
SEARCH_REGULARIZATIONS = (3.0, 30.0, 0.3)
"""Stage 1 of the search: every (alpha, regularization) pair at :data:`SEARCH_FACTORS` factors,
in this order (a time budget keeps the best of those tried, so the middle of the range comes
first)."""
REFINE_STEP = 10**0.5
"""Stage 2: the best stage-1 regularization times and divided by this step."""
SEARCH_FACTOR_CHOICES = (16, 64, 128)
"""Stage 3: these factor counts at the best (regularization, alpha)."""
SEARCH_SETTINGS = len(SEARCH_ALPHAS) * len(SEARCH_REGULARIZATIONS) + 2 + len(SEARCH_FACTOR_CHOICES)
"""Settings the staged search fits (fewer when a stage repeats one already tried)."""


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


Setting = tuple[int, float, float]
"""(factors, regularization, alpha)."""


def staged_search(
    score: Callable[[Setting], float | None], grid: list | tuple | None = None
) -> dict[Setting, float]:
    """The settings scored, in the order tried, by the staged search of the module docstring.

    Args:
        score: NDCG@10 of one setting (higher is better); None stops the search (a budget).
        grid: settings to try instead of the stages.

    Returns:
        {setting: score} of every setting scored; the best is ``max(result, key=result.get)``
        (the first of equal scores).
    """
    scores: dict[Setting, float] = {}

    def tried(candidate) -> bool:
        candidate = (int(candidate[0]), float(candidate[1]), float(candidate[2]))
        if candidate not in scores:
            value = score(candidate)
            if value is None:
                return False
            scores[candidate] = float(value)
        return True

    def best() -> Setting:
        return max(scores, key=scores.get)

    if grid is not None:
        stages = [lambda: list(grid)]
    else:
        stages = [
            lambda: [
                (SEARCH_FACTORS, reg, alpha)
                for alpha in SEARCH_ALPHAS
                for reg in SEARCH_REGULARIZATIONS
            ],
            lambda: [
                (best()[0], best()[1] * step, best()[2]) for step in (REFINE_STEP, 1 / REFINE_STEP)
            ],
            lambda: [(f, best()[1], best()[2]) for f in SEARCH_FACTOR_CHOICES],
        ]
    for stage in stages:
        if not all(tried(c) for c in stage()):
            break
    return scores


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
        grid: (factors, regularization, alpha) candidates tried instead of the staged search
            (None: the search in the module docstring).
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
        grid: tuple[tuple[int, float, float], ...] | list | None = None,
        time_budget_s: float | None = None,
    ) -> None:
        self.params: dict[str, Any] = {
            "factors": factors,
            "regularization": regularization,
            "alpha": alpha,
            "iterations": int(iterations),
            "grid": None if grid is None else [list(g) for g in grid],
            "time_budget_s": float(time_budget_s) if time_budget_s else None,
        }

    def fit_setting(
        self, train: RatingData, factors: int, reg: float, alpha: float, seed: int = 0
    ) -> FitHistory:
        """Fit one (factors, regularization, alpha) setting, no search."""
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
        return FitHistory(stopped_reason="closed form")

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
            fitted = 0

            def score(candidate: tuple) -> float | None:
                nonlocal fitted
                mean = (time.monotonic() - started) / max(fitted, 1)
                # one more setting and the refit on all of ``train`` (about one more setting)
                if budget and fitted and time.monotonic() + 2 * mean > started + budget:
                    _log.info("als: time budget: search stopped after %d settings", fitted)
                    self.params["budget_stop"] = True
                    return None
                self.fit_setting(fit_part, *candidate, seed=seed)
                fitted += 1
                return validation_ndcg(self, fit_part, val_part)

            scores = staged_search(score, self.params["grid"])
            setting = max(scores, key=scores.get)
            _log.info("als: validation NDCG@10 %s -> %s", scores, setting)
            self.params["tuned"] = list(setting)
            self.params["searched"] = [[*k, v] for k, v in scores.items()]
        self.fit_setting(train, *setting, seed=seed)
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
        v, base = self._fold_base(reg)
        out = np.zeros((rows.shape[0], v.shape[1]), dtype=np.float32)
        for r in range(rows.shape[0]):
            items = rows.indices[rows.indptr[r] : rows.indptr[r + 1]]
            if len(items) == 0:
                continue
            vi = v[items]
            a = base + (alpha - 1.0) * (vi.T @ vi)
            out[r] = np.linalg.solve(a, alpha * vi.sum(axis=0))
        return out

    def _fold_base(self, reg: float) -> tuple[np.ndarray, np.ndarray]:
        """(product factors in float64, ``V^T V + reg I``), computed once per set of factors
        (the scorer folds users in block by block)."""
        cached = getattr(self, "_fold_cache", None)
        if cached is None or cached[0] is not self.product_factors or cached[1] != reg:
            v = self.product_factors.astype(np.float64)
            cached = (self.product_factors, reg, v, v.T @ v + reg * np.eye(v.shape[1]))
            self._fold_cache = cached
        return cached[2], cached[3]

    folds_in = True
    """Users outside the training data are scored from their history (:meth:`fold_in`)."""

    def score_factors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user factors, product factors, zero bias): the dot-product form the nightly scorer
        computes in blocks (``score = U_u . V_i``)."""
        if self.user_factors is None or self.product_factors is None:
            raise RecsysError("the ALS model is not trained")
        bias = np.zeros(len(self.product_factors), dtype=np.float32)
        return self.user_factors, self.product_factors, bias

    def user_vectors_for(self, items: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
        """Folded-in user vectors (:meth:`fold_in`) of histories given as (row, model product
        index) entries; duplicates within a row count once."""
        from scipy import sparse

        histories = sparse.csr_matrix(
            (np.ones(len(items), dtype=np.float32), (np.asarray(rows), np.asarray(items))),
            shape=(int(n_rows), len(self.product_factors)),
        )
        histories.data[:] = 1.0
        return self.fold_in(histories)

    def score_histories(self, histories) -> np.ndarray:
        """Fold-in scores: the folded user vectors times the product factors."""
        return (self.fold_in(histories) @ self.product_factors.T).astype(np.float32)
