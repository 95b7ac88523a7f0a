"""The contract between data, models, evaluation and scoring, under its historical import path.

The types live in :mod:`recsys.data.types` (below both models and evaluation); this module
re-exports them so ``from recsys.model.base import RatingData`` keeps working.
"""

from __future__ import annotations

from recsys.data.types import META_FILE, ColdStartScorer, FitHistory, RatingData, Recommender

__all__ = ["META_FILE", "ColdStartScorer", "FitHistory", "RatingData", "Recommender"]
