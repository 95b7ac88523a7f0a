"""The lowest layer above the database: value types shared by models, evaluation and scoring."""

from __future__ import annotations

from recsys.data.types import META_FILE, ColdStartScorer, FitHistory, RatingData, Recommender

__all__ = ["META_FILE", "ColdStartScorer", "FitHistory", "RatingData", "Recommender"]
