"""``train_run``: one recorded training run, from the database to a registered model.

Steps, each visible in the registry:

1. mark ``running`` rows of dead trainers ``failed``/``interrupted``; insert this run as
   ``running`` and commit (so a crash is never mistaken for success);
2. read the ratings (and, for models that need it, the current feature set's text vectors)
   into arrays (``recsys.model.data.read_rating_data``); too few ratings fail the run with
   the counts;
3. unless ``evaluate=False``: the evaluation protocol (``recsys.evaluation.protocol``), i.e.
   two extra fits of the same model on the seed and rank splits (70% and 80% of the ratings)
   plus the metrics: measured on ml-100k, 73 s against 39 s for the final hybrid fit, so about
   2x the cost of training alone; ``evaluate=False`` (``--no-evaluate``) skips it;
4. the final fit on all kept ratings (Keras models hold 10% out for early stopping);
5. artifacts (model, index maps, run.json, training curve PNG, manifest) into a temporary
   folder renamed to ``models_dir/<run>``, then the row is marked ``succeeded`` with the
   checksum. Any exception (NaN loss, too few ratings, Ctrl-C) marks the run ``failed`` with
   the reason and is re-raised.
"""

from __future__ import annotations

import inspect
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy.engine import Engine

from recsys.errors import DataError
from recsys.model import catalog, registry
from recsys.model.base import FitHistory, RatingData
from recsys.progress import NO_PROGRESS, ProgressSink

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """What to train; None means the model's own default (the notebook's)."""

    model: str = "hybrid"
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    embedding_dim: int | None = None
    hidden_units: int | None = None
    min_ratings: int = 10
    seed: int = 0
    evaluate: bool = True
    feature_set_id: int | Literal["current"] = "current"
    min_train_ratings: int = 100
    """Fewer ratings than this after filtering fail the run (DataError)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Extra model parameters (e.g. for models added by other areas)."""

    def model_params(self) -> dict[str, Any]:
        options = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "embedding_dim": self.embedding_dim,
            "hidden_units": self.hidden_units,
        }
        return {**catalog.model_params(self.model, options), **self.params}


@dataclass(frozen=True)
class TrainResult:
    """A succeeded run."""

    run_id: int
    model_type: str
    n_users: int
    n_products: int
    n_ratings: int
    feature_set_id: int | None
    metrics: dict[str, Any]
    history: FitHistory
    artifact_path: Path
    checksum: str
    seconds: float
    evaluation_seconds: float = 0.0
    """Of ``seconds``, the evaluation protocol's two extra fits (0 with ``evaluate=False``)."""
    fit_seconds: float = 0.0
    """Of ``seconds``, the final fit."""


def check_enough(data: RatingData, config: TrainConfig) -> None:
    """DataError with the counts when the filtered data cannot support training."""
    if len(data) < config.min_train_ratings or data.n_users < 2 or data.n_products < 2:
        raise DataError(
            f"too few ratings to train: {len(data)} ratings of {data.n_users} users and "
            f"{data.n_products} products left after keeping users and products with more than "
            f"{config.min_ratings} ratings "
            f"({data.meta.get('ratings_total', '?')} in the database); "
            f"at least {config.min_train_ratings} are needed: load more data or lower --min-ratings"
        )


def plot_curve(history: FitHistory, path: Path, title: str) -> bool:
    """Train and validation loss per epoch as a PNG (as the notebook plotted it)."""
    if not history.train_loss:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history.train_loss) + 1)
    ax.plot(epochs, history.train_loss, label="train")
    if history.val_loss:
        ax.plot(epochs[: len(history.val_loss)], history.val_loss, label="validation")
    if history.best_epoch:
        ax.axvline(history.best_epoch, color="grey", linestyle=":", label="best epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


class _Prefixed:
    """A progress sink that names its phases ``prefix + phase``."""

    def __init__(self, sink: ProgressSink, prefix: str) -> None:
        self.sink, self.prefix = sink, prefix

    def start(self, phase: str, total: int | None, unit: str = "items") -> None:
        self.sink.start(self.prefix + phase, total, unit)

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.sink.advance(n, **fields)

    def update(self, completed: int, **fields: Any) -> None:
        self.sink.update(completed, **fields)

    def finish(self) -> None:
        self.sink.finish()


def with_hooks(
    recommender: Any, progress: ProgressSink, should_stop: Callable[[], bool] | None
) -> Any:
    """``recommender`` whose ``fit`` reports to ``progress`` and polls ``should_stop``, for
    models whose ``fit`` takes those keywords (others are returned as they are)."""
    fit = getattr(recommender, "fit", None)
    if fit is None:
        return recommender
    accepted = inspect.signature(fit).parameters
    hooks = {"progress": progress, "should_stop": should_stop}
    hooks = {k: v for k, v in hooks.items() if k in accepted}
    if hooks:

        def hooked_fit(*args: Any, **kwargs: Any) -> Any:
            return fit(*args, **{**hooks, **kwargs})

        recommender.fit = hooked_fit
    return recommender


def train_run(
    engine: Engine,
    settings: Any,
    config: TrainConfig,
    *,
    progress: ProgressSink = NO_PROGRESS,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train, evaluate and register one model run (see the module docstring).

    Args:
        engine, settings, config: the database, settings and what to train.
        progress: a :mod:`recsys.progress` sink for the fits (models that report progress).
        should_stop: polled by models that check it per batch; true stops the run
            (``TrainingInterrupted``, the run is marked failed with that reason).

    Raises:
        DataError: too few ratings, or no feature set for a model that needs text.
        TrainingDiverged: the loss became NaN/inf.
        RecsysError: bad model name or parameters.
    """
    started = time.perf_counter()
    params = config.model_params()
    recommender = catalog.create(
        config.model, **params
    )  # bad names/params fail before a row exists
    recorded_params = {
        **dict(getattr(recommender, "params", {}) or params),
        "min_ratings": config.min_ratings,
        "seed": config.seed,
        "evaluate": config.evaluate,
    }
    with engine.begin() as conn:
        stale = registry.mark_interrupted(conn)
        if stale:
            _log.warning("marked interrupted model runs as failed: %s", ", ".join(map(str, stale)))
        run_id = registry.start_run(conn, config.model, recorded_params)
    _log.info("model run %d: training %s", run_id, config.model)
    staging: Path | None = None
    final: Path | None = None
    try:
        needs_text = config.model in catalog.NEEDS_TEXT
        with engine.connect() as conn:
            data = _read(conn, config, needs_text)
        with engine.begin() as conn:
            registry.record_data(
                conn,
                run_id,
                n_users=data.n_users,
                n_products=data.n_products,
                n_ratings=len(data),
                feature_set_id=data.feature_set_id,
            )
        check_enough(data, config)
        metrics: dict[str, Any] = {}
        evaluation_seconds = 0.0
        if config.evaluate:
            from recsys.evaluation.protocol import evaluate_model, format_metrics, make_splits

            evaluation_started = time.perf_counter()
            evaluating = _Prefixed(progress, "evaluation: ")
            evaluation = evaluate_model(
                lambda: with_hooks(catalog.create(config.model, **params), evaluating, should_stop),
                make_splits(data),
                seed=config.seed,
            )
            metrics = evaluation.as_dict()
            evaluation_seconds = time.perf_counter() - evaluation_started
            _log.info(
                "model run %d evaluation (%.1f s, two extra fits; --no-evaluate skips it): %s",
                run_id,
                evaluation_seconds,
                format_metrics(evaluation),
            )
        fit_started = time.perf_counter()
        history = with_hooks(recommender, progress, should_stop).fit(data, seed=config.seed)
        fit_seconds = time.perf_counter() - fit_started
        models_dir = Path(settings.models_dir)
        staging = registry.staging_dir(models_dir, run_id)
        run_info = {
            "run_id": run_id,
            "model": config.model,
            "params": recorded_params,
            "rating_scale": list(data.rating_scale),
            "feature_set_id": data.feature_set_id,
            "n_users": data.n_users,
            "n_products": data.n_products,
            "n_ratings": len(data),
            "history": asdict(history),
            "metrics": metrics,
        }
        registry.write_artifacts(staging, recommender, data.user_ids, data.product_ids, run_info)
        plot_curve(history, staging / registry.CURVE, f"run {run_id}: {config.model}")
        final, checksum = registry.publish_artifacts(staging, models_dir, run_id)
        staging = None  # renamed into place: only ``final`` is left to clean up on failure
        with engine.begin() as conn:
            registry.finish_run(
                conn,
                run_id,
                artifact_path=final,
                checksum=checksum,
                metrics=metrics,
                history=asdict(history),
            )
    except BaseException as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, KeyboardInterrupt):
            reason = "interrupted"
        try:
            with engine.begin() as conn:
                registry.fail_run(conn, run_id, reason)
        finally:
            # a failed run leaves no artifacts: neither the staging folder nor a renamed one
            for leftover in (staging, final):
                if leftover is not None:
                    shutil.rmtree(leftover, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    _log.info(
        "model run %d succeeded in %.1f s (final fit %.1f s, evaluation %.1f s): %s",
        run_id,
        seconds,
        fit_seconds,
        evaluation_seconds,
        final,
    )
    return TrainResult(
        run_id=run_id,
        model_type=config.model,
        n_users=data.n_users,
        n_products=data.n_products,
        n_ratings=len(data),
        feature_set_id=data.feature_set_id,
        metrics=metrics,
        history=history,
        artifact_path=final,
        checksum=checksum,
        seconds=seconds,
        evaluation_seconds=evaluation_seconds,
        fit_seconds=fit_seconds,
    )


def _read(conn, config: TrainConfig, needs_text: bool) -> RatingData:
    from recsys.model.data import read_rating_data

    data = read_rating_data(
        conn,
        min_ratings=config.min_ratings,
        feature_set_id=config.feature_set_id if needs_text else None,
    )
    if needs_text and data.feature_set_id is None:
        raise DataError(
            f"the {config.model} model needs product text vectors and there is no current feature "
            "set; build one with `recsys features build` (or train --model deep)"
        )
    return data
