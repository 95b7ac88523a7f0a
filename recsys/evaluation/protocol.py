"""The evaluation harness: named models side by side on the same two splits.

For each model a fresh instance is trained twice with the same seed:

* on the ``seed`` split's training part (the notebook's random 70/30), then test RMSE/MAE with
  predictions clipped to the rating scale (models that predict no ratings, e.g. popularity,
  get none);
* on the ``rank`` split's training part (per user 20% held out), then Recall@10, NDCG@10,
  coverage@10 and the popularity percentile of the top-10 lists (``score_users``).

Both splits are made once from the same RatingData, so every model sees identical data. Keras
models hold out 10% of each training part for early stopping; the test parts are never seen
while fitting. Cost: two fits per model on 70-80% of the data, which is why ``recsys train``
can skip it with ``--no-evaluate``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from recsys.data import RatingData, Recommender
from recsys.evaluation.metrics import ranking_metrics, rating_metrics
from recsys.evaluation.splits import Split, rank_split, seed_split

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    """The two protocols' splits of one RatingData."""

    seed: Split
    rank: Split


@dataclass(frozen=True)
class ModelEvaluation:
    """One model's figures on both protocols."""

    model: str
    seed: dict[str, float] | None
    """rmse, mae, n_test; None when the model predicts no ratings."""
    rank: dict[str, float]
    """recall@10, ndcg@10, coverage@10, popularity_percentile, n_eval_users."""
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "rank": self.rank, "seconds": round(self.seconds, 3)}


def make_splits(data: RatingData) -> Splits:
    """Both splits with the anchors' seeds (rank: 42, seed: 10)."""
    return Splits(seed=seed_split(data), rank=rank_split(data))


def evaluate_model(
    factory: Callable[[], Recommender], splits: Splits, *, seed: int = 0, k: int = 10
) -> ModelEvaluation:
    """Train fresh instances from ``factory`` on both splits and measure them."""
    started = time.perf_counter()
    model = factory()
    seed_metrics: dict[str, float] | None = None
    # models without a rating head say so with predicts_ratings = False (default: they predict)
    predicts = bool(getattr(model, "predicts_ratings", True))
    if predicts:
        _log.info("%s: training on the seed split (%d ratings)", model.name, len(splits.seed.train))
        model.fit(splits.seed.train, seed=seed)
        seed_metrics = rating_metrics(model.predict, splits.seed.train, splits.seed.test)
        model = factory()
    _log.info("%s: training on the rank split (%d ratings)", model.name, len(splits.rank.train))
    model.fit(splits.rank.train, seed=seed)
    rank = ranking_metrics(model.score_users, splits.rank.train, splits.rank.test, k=k)
    result = ModelEvaluation(
        model.name,
        seed_metrics,
        rank,
        time.perf_counter() - started,
        dict(getattr(model, "params", {}) or {}),
    )
    _log.info("%s: %s", model.name, format_metrics(result))
    return result


def evaluate_models(
    data: RatingData,
    names: Sequence[str],
    *,
    create: Callable[..., Recommender],
    params_for: Callable[[str], dict[str, Any]] | None = None,
    seed: int = 0,
    splits: Splits | None = None,
) -> list[ModelEvaluation]:
    """Evaluate models by name on the same splits of ``data``.

    Args:
        data: the ratings.
        names: the models, in order.
        create: builds a fresh model from its name and parameters (the caller's registry,
            e.g. ``recsys.model.catalog.create``), so evaluation depends on no model code.
        params_for: each name's parameters (None: none).
        seed: the fits' seed.
        splits: the splits (None: :func:`make_splits` of ``data``).
    """
    splits = splits or make_splits(data)
    results = []
    for name in names:
        params = params_for(name) if params_for else {}
        results.append(evaluate_model(lambda n=name, p=params: create(n, **p), splits, seed=seed))
    return results


def format_metrics(result: ModelEvaluation) -> str:
    """One line: RMSE/MAE (if any) and the ranking figures."""
    parts = []
    if result.seed:
        parts.append(f"RMSE {result.seed['rmse']:.4f} MAE {result.seed['mae']:.4f}")
    r = result.rank
    parts.append(
        f"Recall@10 {r['recall@10']:.4f} NDCG@10 {r['ndcg@10']:.4f} "
        f"coverage@10 {r['coverage@10']:.4f} popularity {r['popularity_percentile']:.3f}"
    )
    return "; ".join(parts)


def metrics_table(results: Sequence[ModelEvaluation], title: str = "evaluation"):
    """A rich Table of the results (one row per model)."""
    from rich.table import Table

    table = Table(title=title)
    for column in (
        "model",
        "RMSE",
        "MAE",
        "Recall@10",
        "NDCG@10",
        "coverage@10",
        "pop. pct",
        "seconds",
    ):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    for res in results:
        seed = res.seed or {}
        rmse = f"{seed['rmse']:.4f}" if seed else "-"
        mae = f"{seed['mae']:.4f}" if seed else "-"
        r = res.rank
        table.add_row(
            res.model,
            rmse,
            mae,
            f"{r['recall@10']:.4f}",
            f"{r['ndcg@10']:.4f}",
            f"{r['coverage@10']:.4f}",
            f"{r['popularity_percentile']:.3f}",
            f"{res.seconds:.1f}",
        )
    return table
