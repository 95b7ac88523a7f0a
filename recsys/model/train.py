"""``train_run``: one recorded training run, from the database to a registered model.

Steps, each visible in the registry:

1. mark ``running`` rows of dead trainers ``failed``/``interrupted``; insert this run as
   ``running`` and commit (so a crash is never mistaken for success);
2. choose the training filter (:func:`choose_min_ratings`; one log line says what it kept),
   read the ratings (and, for models that use it, the current feature set's text vectors)
   into arrays (``recsys.model.data.read_rating_data``); too few ratings or users fail the
   run with the counts;
3. the fit on all kept ratings (Keras models hold 10% out for early stopping); ``auto``
   selects its model on a train-internal split first (``recsys.model.auto``) and the run
   records the chosen model's name; with ``internal=True`` (the nightly run) a second fit on
   the train-internal split's fitting part gives ``metrics["internal"]``;
4. the evaluation protocol (two extra fits of the served model type on the seed and rank
   splits, about 2x the cost of training alone) is not run here: the run returns its
   ratings and :func:`evaluation_factory`, and the caller measures with them
   (``recsys.pipeline`` runs it as its own ``measure`` step, adds the metrics to the
   registry row, and withdraws the run if the measurement fails). ``evaluate`` in the
   config is recorded with the run's parameters (``None``, the nightly default, is recorded
   as what :func:`measures` decided for the data read). The measurement adds popularity's
   metrics on the same rank split (``metrics["rank"]["popularity_ndcg@10"]`` etc.);
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
from dataclasses import asdict, dataclass, field, replace
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

    model: str = catalog.DEFAULT_NIGHTLY_MODEL
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    embedding_dim: int | None = None
    hidden_units: int | None = None
    min_ratings: int | None = None
    """Keep users and products with MORE than this many ratings; None: the adaptive default
    (:func:`choose_min_ratings`)."""
    seed: int = 0
    evaluate: bool | None = True
    """Measure the trained model on the protocol's splits afterwards (the caller does it);
    None: :func:`measures` decides by the size of the data read."""
    feature_set_id: int | Literal["current"] = "current"
    min_train_ratings: int = 100
    """Fewer ratings than this after filtering fail the run (DataError)."""
    min_train_users: int = 10
    """Fewer users than this after filtering fail the run (DataError)."""
    internal: bool | None = False
    """Also record ``metrics["internal"]`` (NDCG@10 on the train-internal split, one more fit;
    the nightly run sets it; ``auto`` always records it, from its contest). None: as
    :func:`measures` decides by the size of the data read."""
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
        if self.model == catalog.AUTO:
            # the shared options reach the candidates that take them (e.g. --epochs: ranker)
            per_model = {
                name: catalog.model_params(name, options)
                for name, spec in catalog.SPECS.items()
                if spec.auto_candidate
            }
            per_model = {name: p for name, p in per_model.items() if p}
            given = dict(self.params)
            if per_model:
                given["params"] = {**per_model, **given.get("params", {})}
            return given
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
    """The evaluation protocol's two extra fits, once measured (0: not measured)."""
    fit_seconds: float = 0.0
    """Of ``seconds``, the final fit."""
    served_params: dict[str, Any] = field(default_factory=dict)
    """The parameters the served model type was created with (for :func:`evaluation_factory`)."""
    data: RatingData | None = field(default=None, repr=False, compare=False)
    """The ratings the run trained on (for the evaluation protocol; None once measured)."""


AUTO_FILTER_ABOVE = 2_000_000
"""The adaptive training filter applies only above this many ratings (a memory measure)."""
FILTER_STEPS = (10, 5, 2, 1)
"""Thresholds the adaptive filter tries, strictest (the notebook's) first."""
FILTER_KEEP_SHARE = 0.5
"""The adaptive filter never keeps less than this share of the ratings."""

_FILTERED_COUNT_SQL = """
SELECT count(*) FROM ratings r
WHERE r.user_id IN (SELECT user_id FROM ratings GROUP BY user_id HAVING count(*) > :t)
  AND r.product_id IN (SELECT product_id FROM ratings GROUP BY product_id HAVING count(*) > :t)
"""


def choose_min_ratings(conn, config: TrainConfig) -> tuple[int, str]:
    """The training filter: (threshold, one line saying why).

    Given ``config.min_ratings`` it is used as is. Otherwise (the default): data of up to
    :data:`AUTO_FILTER_ABOVE` ratings trains on every rating (0); above, the strictest of
    :data:`FILTER_STEPS` that keeps at least :data:`FILTER_KEEP_SHARE` of the ratings and at
    least ``min_train_ratings`` (else 0).
    """
    import sqlalchemy as sa

    if config.min_ratings is not None:
        return int(config.min_ratings), f"--min-ratings {config.min_ratings}"
    total = int(conn.execute(sa.text("SELECT count(*) FROM ratings")).scalar_one())
    if total <= AUTO_FILTER_ABOVE:
        return 0, f"adaptive: {total:,} ratings <= {AUTO_FILTER_ABOVE:,}, keep all"
    for threshold in FILTER_STEPS:
        kept = int(conn.execute(sa.text(_FILTERED_COUNT_SQL), {"t": threshold}).scalar_one())
        if kept >= FILTER_KEEP_SHARE * total and kept >= config.min_train_ratings:
            return threshold, (
                f"adaptive: more than {threshold} ratings per user and product keeps "
                f"{kept:,} of {total:,} (>= {FILTER_KEEP_SHARE:.0%})"
            )
    return 0, f"adaptive: no threshold keeps {FILTER_KEEP_SHARE:.0%} of {total:,}; keep all"


def check_enough(data: RatingData, config: TrainConfig) -> None:
    """DataError with the counts when the filtered data cannot support training."""
    min_ratings = data.meta.get("min_ratings", config.min_ratings) or 0
    if (
        len(data) < config.min_train_ratings
        or data.n_users < config.min_train_users
        or data.n_products < 2
    ):
        where = (
            f"left after keeping users and products with more than {min_ratings} ratings "
            if min_ratings
            else ""
        )
        hint = "load more data or lower --min-ratings" if min_ratings else "load more data"
        raise DataError(
            f"too few ratings to train: {len(data)} ratings of {data.n_users} users and "
            f"{data.n_products} products {where}"
            f"({data.meta.get('ratings_total', '?')} in the database); at least "
            f"{config.min_train_ratings} ratings of {config.min_train_users} users are needed: "
            f"{hint}"
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


MEASURE_MAX_RATINGS = 500_000
"""The largest training data (ratings after the filter) that the nightly measures by default.
Above it the measurement's extra fits, which have no time budget, would cost several times the
budgeted training itself (``auto`` trains under its time budget from the same size,
``recsys.model.auto.DEFAULT_BUDGET_MIN_RATINGS``); ``--evaluate`` still forces it."""


def measures(requested: bool | None, n_ratings: int) -> bool:
    """Whether a run measures its model: ``requested`` when given, else whether ``n_ratings``
    (the training ratings after the filter) is at most :data:`MEASURE_MAX_RATINGS`."""
    if requested is not None:
        return bool(requested)
    return n_ratings <= MEASURE_MAX_RATINGS


def train_run(
    engine: Engine,
    settings: Any,
    config: TrainConfig,
    *,
    progress: ProgressSink = NO_PROGRESS,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train and register one model run (see the module docstring).

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
        "min_ratings": config.min_ratings,  # the filter used is recorded once it is chosen
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
        with engine.connect() as conn:
            min_ratings, why = choose_min_ratings(conn, config)
            data = _read(conn, replace(config, min_ratings=min_ratings))
        _log.info(
            "training filter: kept %d of %s ratings, %d users, %d products (%s)",
            len(data),
            data.meta.get("ratings_total", "?"),
            data.n_users,
            data.n_products,
            why,
        )
        recorded_params["min_ratings"] = min_ratings
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
        measured = measures(config.evaluate, len(data))
        recorded_params["evaluate"] = measured
        if config.evaluate is None:
            _log.info(
                "model run %d: %s (%d training ratings%s); --evaluate/--no-evaluate decide",
                run_id,
                "the measure step runs" if measured else "no measure step",
                len(data),
                "" if measured else f", more than {MEASURE_MAX_RATINGS:,}",
            )
        metrics: dict[str, Any] = {}
        fit_started = time.perf_counter()
        history = with_hooks(recommender, progress, should_stop).fit(data, seed=config.seed)
        fit_seconds = time.perf_counter() - fit_started
        served, served_params = config.model, params
        if config.model == catalog.AUTO:
            served, served_params = recommender.chosen_name, recommender.chosen_params
            metrics["auto"] = recommender.selection
            metrics["internal"] = recommender.internal
            recorded_params = {
                **dict(getattr(recommender.chosen, "params", {}) or {}),
                "requested": catalog.AUTO,
                "min_ratings": min_ratings,
                "seed": config.seed,
                "evaluate": measured,
            }
        else:  # what the fit chose (tuned epochs, text path, ...) joins the recorded params
            recorded_params = {**dict(getattr(recommender, "params", {}) or {}), **recorded_params}
        internal = measures(config.internal, len(data))
        if config.model != catalog.AUTO and internal:
            from recsys.model.auto import internal_metrics

            metrics["internal"] = internal_metrics(
                lambda: catalog.create(config.model, **params), data, seed=config.seed
            )
        with engine.begin() as conn:  # the filter chosen, and for auto the model chosen
            registry.set_model(conn, run_id, served, recorded_params)
        models_dir = Path(settings.models_dir)
        staging = registry.staging_dir(models_dir, run_id)
        run_info = {
            "run_id": run_id,
            "model": served,
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
        plot_curve(history, staging / registry.CURVE, f"run {run_id}: {served}")
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
        "model run %d succeeded in %.1f s (final fit %.1f s): %s",
        run_id,
        seconds,
        fit_seconds,
        final,
    )
    return TrainResult(
        run_id=run_id,
        model_type=served,
        n_users=data.n_users,
        n_products=data.n_products,
        n_ratings=len(data),
        feature_set_id=data.feature_set_id,
        metrics=metrics,
        history=history,
        artifact_path=final,
        checksum=checksum,
        seconds=seconds,
        fit_seconds=fit_seconds,
        served_params=dict(served_params),
        data=data,
    )


def evaluation_factory(
    result: TrainResult,
    progress: ProgressSink = NO_PROGRESS,
    should_stop: Callable[[], bool] | None = None,
) -> Callable[[], Any]:
    """Fresh, untrained models of the type ``result`` serves, with the parameters it used.

    Their fits report to ``progress`` as ``evaluation: <phase>`` and poll ``should_stop``.
    """
    evaluating = _Prefixed(progress, "evaluation: ")
    return lambda: with_hooks(
        catalog.create(result.model_type, **result.served_params), evaluating, should_stop
    )


def _read(conn, config: TrainConfig) -> RatingData:
    """The training data; text vectors for models that use them (required by ``needs_text``)."""
    from recsys.model.data import read_rating_data

    spec = catalog.spec(config.model)
    data = read_rating_data(
        conn,
        min_ratings=int(config.min_ratings or 0),
        feature_set_id=config.feature_set_id if spec.uses_text or spec.needs_text else None,
    )
    if spec.needs_text and data.feature_set_id is None:
        raise DataError(
            f"the {config.model} model needs product text vectors and there is no current feature "
            "set; build one with `recsys features build` (or train --model ranker)"
        )
    return data
