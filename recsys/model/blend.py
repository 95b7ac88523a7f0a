"""``blend``: the ranker's and EASE's scores mixed, the weight chosen on a train-internal split.

Each model's scores are standardised per user over the whole catalogue (``(s - mean_u) /
std_u``, so neither scale dominates and each row stays a function of that user alone), then::

    score = weight * z(ranker) + (1 - weight) * z(ease)

``fit`` with ``weight=None`` fits both on the train-internal split's fitting part (20% of each
user's training ratings held out, another seed), picks the weight from ``weights`` by NDCG@10
on the held-out part, and refits both on the whole training part. ``--model auto`` reuses the
candidates it has already fitted on that split instead (:meth:`BlendRecommender.from_parts`).
Saved as two sub-folders (``ranker/``, ``ease/``) and ``recommender.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data import META_FILE
from recsys.errors import RecsysError
from recsys.model.base import FitHistory, RatingData

_log = logging.getLogger(__name__)


def standardise(scores: np.ndarray) -> np.ndarray:
    """Per-row ``(s - mean) / std`` (std 0: only the mean is removed)."""
    scores = np.asarray(scores, dtype=np.float32)
    mean = scores.mean(axis=1, keepdims=True)
    std = scores.std(axis=1, keepdims=True)
    return ((scores - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def mix(ranker_scores: np.ndarray, ease_scores: np.ndarray, weight: float) -> np.ndarray:
    """The blended score of the same users from both models' raw scores."""
    return (
        np.float32(weight) * standardise(ranker_scores)
        + np.float32(1.0 - weight) * standardise(ease_scores)
    ).astype(np.float32)


class BlendRecommender:
    """Ranker + EASE (see the module docstring).

    Args:
        weight: the ranker's share; None chooses it over ``weights`` on a train-internal split.
        weights: candidate shares.
        ranker, ease: parameters of the two parts (catalogue configs).
    """

    name = "blend"
    predicts_ratings = False
    scores_are_ratings = False

    def __init__(
        self,
        *,
        weight: float | None = None,
        weights: tuple[float, ...] | list[float] = (0.2, 0.35, 0.5, 0.65, 0.8),
        ranker: dict[str, Any] | None = None,
        ease: dict[str, Any] | None = None,
    ) -> None:
        self.params: dict[str, Any] = {
            "weight": None if weight is None else float(weight),
            "weights": [float(w) for w in weights],
            "ranker": dict(ranker or {}),
            "ease": dict(ease or {}),
        }
        if weight is not None and not 0.0 <= float(weight) <= 1.0:
            raise RecsysError(f"blend weight must be in [0, 1], got {weight}")
        self.ranker = None
        self.ease = None

    @classmethod
    def from_parts(cls, ranker: Any, ease: Any, weight: float) -> BlendRecommender:
        """A blend of two already fitted models."""
        model = cls(weight=weight)
        model.ranker, model.ease = ranker, ease
        return model

    def _parts(self) -> tuple[Any, Any]:
        from recsys.model import catalog

        return (
            catalog.create("ranker", **self.params["ranker"]),
            catalog.create("ease", **self.params["ease"]),
        )

    @staticmethod
    def choose_weight(
        ranker: Any, ease: Any, fit_part: RatingData, validation: RatingData, weights: list[float]
    ) -> tuple[float, dict[float, float]]:
        """The weight with the best validation NDCG@10 (ties: the first) and every score."""
        from recsys.evaluation.tuning import validation_ndcg

        scores = {
            w: validation_ndcg(BlendRecommender.from_parts(ranker, ease, w), fit_part, validation)
            for w in weights
        }
        best = max(weights, key=lambda w: scores[w])
        return best, scores

    def fit(
        self, train: RatingData, *, validation: RatingData | None = None, seed: int = 0
    ) -> FitHistory:
        """Fit both parts (weight chosen on a train-internal split unless given)."""
        weight = self.params["weight"]
        if weight is None:
            from recsys.evaluation.tuning import internal_rank_split

            fit_part, val_part = internal_rank_split(train)
            ranker, ease = self._parts()
            ranker.fit(fit_part, seed=seed)
            ease.fit(fit_part, seed=seed)
            weight, scores = self.choose_weight(
                ranker, ease, fit_part, val_part, self.params["weights"]
            )
            _log.info("blend: validation NDCG@10 per weight %s -> %g", scores, weight)
            self.params["tuned_weight"] = float(weight)
        self.ranker, self.ease = self._parts()
        history = self.ranker.fit(train, seed=seed)
        self.ease.fit(train, seed=seed)
        self.params["weight"] = float(weight)
        return FitHistory(
            train_loss=list(history.train_loss),
            best_epoch=history.best_epoch,
            stopped_reason=f"ranker {history.stopped_reason}; weight {weight:g}",
        )

    def _check(self) -> None:
        if self.ranker is None or self.ease is None or self.params["weight"] is None:
            raise RecsysError("the blend is not trained")

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """Exact blended scores (both parts' fast scorers)."""
        self._check()
        return mix(
            self.ranker.score_users(users), self.ease.score_users(users), self.params["weight"]
        )

    def direct_scores(self, users: np.ndarray) -> np.ndarray:
        """The same blend from the ranker's direct (Keras) evaluation: the nightly gate."""
        self._check()
        ranker = (
            self.ranker.direct_scores(users)
            if hasattr(self.ranker, "direct_scores")
            else self.ranker.score_users(users)
        )
        return mix(ranker, self.ease.score_users(users), self.params["weight"])

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        raise NotImplementedError("blend ranks and predicts no ratings")

    def save(self, directory: Path) -> None:
        self._check()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.ranker.save(directory / "ranker")
        self.ease.save(directory / "ease")
        (directory / META_FILE).write_text(json.dumps({"model": self.name, "params": self.params}))

    @classmethod
    def load(cls, directory: Path) -> BlendRecommender:
        from recsys.model import catalog

        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        params = meta["params"]
        model = cls(
            weight=params["weight"],
            weights=params["weights"],
            ranker=params["ranker"],
            ease=params["ease"],
        )
        model.params.update(params)
        model.ranker = catalog.load(directory / "ranker")
        model.ease = catalog.load(directory / "ease")
        return model
