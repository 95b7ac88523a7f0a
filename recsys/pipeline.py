"""The nightly run: the one place that wires the steps together.

``load -> features -> train -> measure -> verify -> score -> publish -> similar``

The module is also the nightly API the command line and the scheduler call: :func:`score`,
:func:`publish`, :func:`rollback`, :func:`evaluate` and :func:`recommendations_for` each take
the lock they need (the writers of recommendations take the nightly lock), and :func:`run`
composes the steps under one hold of that lock. Locks are not re-entrant: inside :func:`run`
the steps call the unlocked parts.

* **One run at a time.** The whole run holds the nightly lock, a table lock the read-only
  role cannot take (``recsys.db.locks``); a second run (another terminal, the scheduler,
  another machine on the same database) gets :class:`~recsys.errors.LockBusy` at once and
  exits 2 with that message. The server releases the lock when its holder's connection ends,
  even after ``kill -9``.
* **Every step is recorded.** ``pipeline_runs`` holds the run (trigger, options, status) and
  ``pipeline_steps`` each step's start, end, seconds, outcome and a JSON detail; each row is
  committed as it changes, so a crash leaves a trace (the next run marks leftovers
  ``interrupted``).
* **A failed step stops the run**, is recorded with its one-line reason, the remaining steps
  are recorded as ``skipped``, and the error propagates (the CLI prints it, exit 2). Nothing is
  published before the ``publish`` step: ``score`` writes a complete, unpublished run, so the
  served recommendations change only when everything before has succeeded.
* **Stopping.** ``should_stop`` (set by SIGTERM/SIGINT in the scheduler and in ``recsys run``)
  is checked between steps, between scoring batches and, for models that support it (the
  ranker), after every training batch; the run ends ``interrupted``, logged at INFO.

The ``measure`` step (``--evaluate``, on by default) is the evaluation protocol: two fresh
fits of the trained model type on the seed and rank splits of the ratings it trained on, the
metrics added to the model run's registry row (:func:`evaluate_trained`). It names the
measurement rather than ``evaluate``, a name runs recorded earlier give to the check below.

The ``verify`` step is a gate before anything is published: it reloads the trained model
from the registry as scoring will, checks that its fast scores (``score_users``) are finite
and equal direct evaluation on sampled users (``direct_scores`` for ranking models that have
it, ``predict`` for the notebook's rating models), and records the run's stored metrics.
Runs recorded before the step had this name list it as ``evaluate``.
"""

from __future__ import annotations

import gc
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.config import Settings
from recsys.db import runs as run_records
from recsys.db.locks import NIGHTLY_JOB, NIGHTLY_LOCK, advisory_lock
from recsys.errors import DataError, Interrupted, RecsysError
from recsys.progress import NO_PROGRESS, ProgressSink, counts_to

if TYPE_CHECKING:
    from recsys.cluster.engine import EngineOptions
    from recsys.scoring.publish import RunInfo
    from recsys.scoring.score import ScoreOptions, ScoreSummary, ScoringModel
    from recsys.scoring.served import UserRecommendations

_log = logging.getLogger(__name__)

STEP_NAMES = ("load", "features", "train", "measure", "verify", "score", "publish", "similar")
"""The default steps, in order. Runs recorded before these names called ``verify``
``evaluate`` and had no ``measure`` step (the protocol ran inside ``train``)."""


class PipelineInterrupted(Interrupted):
    """The run was asked to stop (SIGTERM/SIGINT) and ended between steps."""


@dataclass(frozen=True)
class PipelineOptions:
    """What ``recsys run`` and the scheduler pass to :func:`run`. JSON-serialisable."""

    inbox: str | None = None
    """Folder of new ratings/metadata files; files already loaded (same sha256) are skipped."""
    build_features: bool = True
    word_vectors: str = "train"
    dim: int = 100
    model: str | None = None
    """Model type to train; None: ``recsys.model.catalog.DEFAULT_NIGHTLY_MODEL``."""
    epochs: int | None = None
    batch_size: int | None = None
    embedding_dim: int | None = None
    hidden_units: int | None = None
    min_ratings: int | None = None
    evaluate: bool | None = None
    """Run the measure step (the model measured on both protocols' splits, metrics added to
    its registry row) and the train-internal measurement the NDCG gate reads. None (the
    default): only for training data of at most ``recsys.model.train.MEASURE_MAX_RATINGS``
    ratings (:func:`recsys.model.train.measures`); the step is then recorded as skipped with
    the reason, and ``auto``'s own contest still gives the gate its internal figure."""
    seed: int = 0
    k: int = 10
    fallback: str = "category"
    cold_start: bool = False
    memory_mb: int = 512
    batch_users: int | None = None
    """Users per scoring batch (default: from memory_mb)."""
    check_users: int = 32
    """Users sampled by the verify step to compare fast scores with ``predict``."""
    max_per_category: int | None = None
    """At most this many products of one category per list (None: no cap)."""
    max_per_brand: int | None = None
    """At most this many products of one brand per list (None: no cap)."""
    similar: bool = True
    """Build and publish the item-to-item lists (``similar_products``) after publishing."""
    engine: str | None = None
    """Where scoring runs: ``local`` or ``ray`` (None: the settings' ``engine``)."""
    ray_address: str | None = None
    """The Ray head for ``engine="ray"`` (None: the settings' ``ray_address``)."""


@dataclass
class Context:
    """What steps share: the database, settings, options, and results of earlier steps."""

    engine: Engine
    settings: Settings
    options: PipelineOptions
    should_stop: Callable[[], bool]
    state: dict[str, Any] = field(default_factory=dict)
    progress: Any = None
    """A :mod:`recsys.progress` sink for long steps (None: no progress)."""


StepFn = Callable[[Context], dict | None]


@dataclass(frozen=True)
class Step:
    name: str
    fn: StepFn


@dataclass(frozen=True)
class StepResult:
    name: str
    status: str
    seconds: float
    detail: dict
    message: str | None = None


@dataclass(frozen=True)
class PipelineResult:
    """A finished (successful) run."""

    run_id: int
    status: str
    steps: list[StepResult]
    seconds: float
    recommendation_run_id: int | None = None
    model_run_id: int | None = None
    report_path: Path | None = None
    """The run's HTML report (``RECSYS_HOME/reports/<run>.html``); None if it failed."""


# --- the steps -----------------------------------------------------------------------------


def _load_step(ctx: Context) -> dict:
    if not ctx.options.inbox:
        return {"skipped": "no --inbox"}
    inbox = Path(ctx.options.inbox)
    if not inbox.is_dir():
        raise RecsysError(f"inbox {inbox} is not a folder")
    from recsys.ingest.load import load_inbox

    summaries = load_inbox(ctx.engine, ctx.settings, inbox)
    return {
        "files": len(summaries),
        "rows_loaded": int(sum(getattr(s, "rows_loaded", 0) or 0 for s in summaries)),
    }


def _features_step(ctx: Context) -> dict:
    if not ctx.options.build_features:
        return {"skipped": "--no-features"}
    from recsys.features.store import build_features
    from recsys.features.vectors import NoProductText

    try:
        summary = build_features(
            ctx.engine,
            ctx.settings,
            word_vectors=ctx.options.word_vectors,
            dim=ctx.options.dim,
            seed=ctx.options.seed or 1,
            progress=ctx.progress or NO_PROGRESS,
        )
    except NoProductText as err:
        # a shop without catalogue text: models train on ids alone (those that need text fail)
        _log.info("features: no product text (%s); continuing without text vectors", err)
        return {"skipped": "no product text"}
    return {
        "feature_set_id": summary.feature_set_id,
        "n_embedded": summary.n_embedded,
        "n_computed": summary.n_computed,
        "n_reused": summary.n_reused,
    }


def _train_config(o: PipelineOptions) -> Any:
    from recsys.model.catalog import DEFAULT_NIGHTLY_MODEL
    from recsys.model.train import TrainConfig

    return TrainConfig(
        model=o.model or DEFAULT_NIGHTLY_MODEL,
        epochs=o.epochs,
        batch_size=o.batch_size,
        embedding_dim=o.embedding_dim,
        hidden_units=o.hidden_units,
        seed=o.seed,
        evaluate=o.evaluate,
        min_ratings=o.min_ratings,
        internal=o.evaluate,  # --no-evaluate: no measurement beyond the fit (gate: not measured)
    )


def _train_step(ctx: Context) -> dict:
    from recsys.cluster.engine import engine_options
    from recsys.cluster.train import training_on
    from recsys.model.train import measures, train_run

    config = _train_config(ctx.options)
    cluster = engine_options(ctx.settings, ctx.options.engine, ctx.options.ray_address)
    with training_on(cluster, config.model):
        result = train_run(
            ctx.engine,
            ctx.settings,
            config,
            progress=ctx.progress or NO_PROGRESS,
            should_stop=ctx.should_stop,
        )
    ctx.state["model_run_id"] = int(result.run_id)
    if measures(config.evaluate, result.n_ratings):  # the measure step needs these ratings
        ctx.state["trained"] = result
    return {
        "model_run_id": int(result.run_id),
        "model": result.model_type,
        **({"requested": config.model} if config.model != result.model_type else {}),
        "users": result.n_users,
        "products": result.n_products,
        "ratings": result.n_ratings,
        "fit_seconds": round(result.fit_seconds, 1),
    }


def _popularity_on(split: Any, seed: int) -> dict[str, float]:
    """Popularity's NDCG@10, Recall@10 and coverage@10 on ``split`` (the served model's rank
    split), keyed ``popularity_<metric>`` beside the model's own figures (a count: cheap)."""
    from recsys.evaluation.metrics import ranking_metrics
    from recsys.model import catalog

    popularity = catalog.create("popularity")
    popularity.fit(split.train, seed=seed)
    measured = ranking_metrics(popularity.score_users, split.train, split.test)
    return {
        f"popularity_{key}": float(measured[key])
        for key in ("ndcg@10", "recall@10", "coverage@10")
        if key in measured
    }


def evaluate_trained(
    engine: Engine,
    trained: Any,
    *,
    seed: int = 0,
    progress: ProgressSink = NO_PROGRESS,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """The evaluation protocol on a model run just trained, its metrics added to the registry.

    Two fresh fits of the run's model type and parameters, on the seed and rank splits of the
    ratings it trained on (``trained.data``). If the measurement fails or is stopped, the run
    is withdrawn (marked failed, artifacts deleted), as a run whose training failed.

    Args:
        engine: the database.
        trained: the :class:`recsys.model.train.TrainResult` of :func:`train_run`.
        seed: the fits' seed.
        progress: a :mod:`recsys.progress` sink for the fits.
        should_stop: polled by models that check it per batch.

    Returns:
        ``trained`` with the metrics added and its ratings dropped.
    """
    import shutil
    from dataclasses import replace

    from recsys.evaluation.protocol import evaluate_model, format_metrics, make_splits
    from recsys.model import registry
    from recsys.model.train import evaluation_factory

    if trained.data is None:
        raise RecsysError(f"model run {trained.run_id}: its ratings are gone; nothing to measure")
    started = time.perf_counter()
    try:
        splits = make_splits(trained.data)
        evaluation = evaluate_model(
            evaluation_factory(trained, progress, should_stop), splits, seed=seed
        )
        popularity = _popularity_on(splits.rank, seed)
    except BaseException as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, KeyboardInterrupt):
            reason = "interrupted"
        try:
            with engine.begin() as conn:
                registry.withdraw_run(conn, trained.run_id, f"evaluation: {reason}")
        finally:
            shutil.rmtree(trained.artifact_path, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    measured = evaluation.as_dict()
    measured["rank"] = {**measured.get("rank", {}), **popularity}
    with engine.begin() as conn:
        registry.add_metrics(conn, trained.run_id, measured)
    _log.info(
        "model run %d evaluation (%.1f s, two extra fits; --no-evaluate skips it): %s",
        trained.run_id,
        seconds,
        format_metrics(evaluation),
    )
    return replace(
        trained,
        metrics={**trained.metrics, **measured},
        evaluation_seconds=seconds,
        seconds=trained.seconds + seconds,
        data=None,
    )


def _measure_step(ctx: Context) -> dict:
    from recsys.model.train import MEASURE_MAX_RATINGS

    if ctx.options.evaluate is False:
        return {"skipped": "--no-evaluate"}
    trained = ctx.state.pop("trained", None)
    if trained is None and "model_run_id" in ctx.state and ctx.options.evaluate is None:
        return {
            "skipped": f"more than {MEASURE_MAX_RATINGS:,} training ratings (--evaluate forces it)"
        }
    if trained is None:
        return {"skipped": "no model trained in this run"}
    result = evaluate_trained(
        ctx.engine,
        trained,
        seed=ctx.options.seed,
        progress=ctx.progress or NO_PROGRESS,
        should_stop=ctx.should_stop,
    )
    return {
        "model_run_id": int(result.run_id),
        "seconds": round(result.evaluation_seconds, 1),
        **{
            f"{split}_{name}": value
            for split in ("seed", "rank")
            for name, value in (result.metrics.get(split) or {}).items()
            if name in ("rmse", "ndcg@10", "recall@10")
        },
    }


def train(
    engine: Engine,
    settings: Settings,
    config: Any,
    *,
    progress: ProgressSink = NO_PROGRESS,
    should_stop: Callable[[], bool] | None = None,
    cluster: EngineOptions | None = None,
) -> Any:
    """Train and register one model run, then (``config.evaluate``) measure it on both splits.

    The same train and measure steps as :func:`run`, without the nightly lock: training
    writes only its own registry row and folder, never what is served.

    Args:
        engine: the database.
        settings: recsys settings.
        config: a :class:`recsys.model.train.TrainConfig`.
        progress: a :mod:`recsys.progress` sink for the fits.
        should_stop: polled by models that check it per batch.
        cluster: where the ranker's tower trains (None: here; see :mod:`recsys.cluster.train`);
            the measure step's fits always run here.

    Returns:
        The :class:`recsys.model.train.TrainResult`, with the protocol's metrics when measured.
    """
    from recsys.cluster.engine import EngineOptions
    from recsys.cluster.train import training_on
    from recsys.model.train import train_run

    with training_on(cluster or EngineOptions(), config.model):
        result = train_run(engine, settings, config, progress=progress, should_stop=should_stop)
    from recsys.model.train import measures

    if not measures(config.evaluate, result.n_ratings):
        from dataclasses import replace

        return replace(result, data=None)
    return evaluate_trained(
        engine, result, seed=config.seed, progress=progress, should_stop=should_stop
    )


def check_model(model: Any, n_users: int = 32, seed: int = 0) -> dict:
    """Fast scores against direct evaluation on sampled users; the verify step's gate.

    Raises:
        DataError: non-finite scores, or fast scores that differ from ``predict``.
    """
    recommender = model.recommender
    n_model_users = len(model.user_ids)
    n_products = len(model.product_ids)
    if n_model_users == 0 or n_products == 0:
        raise DataError("the trained model knows no users or no products")
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(n_model_users, min(n_users, n_model_users), replace=False))
    fast = np.asarray(recommender.score_users(users.astype(np.int32)), dtype=np.float32)
    if fast.shape != (len(users), n_products) or not np.all(np.isfinite(fast)):
        raise DataError(f"the model's scores are broken (shape {fast.shape}, or not finite)")
    if hasattr(recommender, "direct_scores"):
        # a ranking model's direct (unoptimised) evaluation of the same score
        direct = np.asarray(recommender.direct_scores(users.astype(np.int32)), dtype=np.float32)
        scale = max(1.0, float(np.abs(direct).max()))
        err = float(np.abs(fast - direct).max())
        if err > 1e-3 * scale:
            raise DataError(
                f"fast scores differ from the model's direct scores by up to {err:.3g}; "
                "not publishing"
            )
        return {"checked_users": len(users), "max_abs_diff": err, "compared_with": "direct_scores"}
    products = rng.choice(n_products, min(200, n_products), replace=False)
    pairs_u = np.repeat(users, len(products)).astype(np.int32)
    pairs_p = np.tile(products, len(users)).astype(np.int32)
    try:
        direct = np.asarray(recommender.predict(pairs_u, pairs_p), dtype=np.float32).ravel()
    except NotImplementedError:
        return {"checked_users": len(users), "compared_with_predict": False}
    # the notebook's rating models rank by predicted rating, so their fast scores must equal
    # predict; a ranking model (its own score head) declares scores_are_ratings = False (in its
    # catalogue spec or on the object); a model outside the catalogue that predicts is checked
    from recsys.model.catalog import scores_are_ratings

    rating_model = scores_are_ratings(getattr(model, "model_type", None))
    if getattr(recommender, "scores_are_ratings", True if rating_model is None else rating_model):
        expected = direct.reshape(len(users), len(products))
        got = fast[:, products]
        scale = max(1.0, float(np.abs(expected).max()))
        err = float(np.abs(got - expected).max())
        if err > 1e-3 * scale:
            raise DataError(
                f"fast scores differ from model.predict by up to {err:.3g}; not publishing"
            )
        return {"checked_users": len(users), "max_abs_diff": err}
    return {"checked_users": len(users), "compared_with_predict": False}


def _verify_step(ctx: Context) -> dict:
    model = ctx.state.get("model")
    if model is None:
        from recsys.scoring.score import load_model

        model = load_model(ctx.engine, ctx.settings, ctx.state.get("model_run_id"))
        ctx.state["model"] = model
    detail = check_model(model, ctx.options.check_users, ctx.options.seed)
    detail["model_run_id"] = model.run_id
    if getattr(model, "metrics", None):
        detail["metrics"] = model.metrics
    return detail


def score_options(options: PipelineOptions) -> ScoreOptions:
    """The scoring options of a pipeline run."""
    from recsys.scoring.score import ScoreOptions

    return ScoreOptions(
        k=options.k,
        fallback=options.fallback,
        cold_start=options.cold_start,
        memory_mb=options.memory_mb,
        batch_users=options.batch_users,
        max_per_category=options.max_per_category,
        max_per_brand=options.max_per_brand,
    )


def _score_step(ctx: Context) -> dict:
    from recsys.cluster.engine import engine_options

    cluster = engine_options(ctx.settings, ctx.options.engine, ctx.options.ray_address)
    summary = _score(
        ctx.engine,
        ctx.settings,
        score_options(ctx.options),
        model=ctx.state.get("model"),
        model_run=ctx.state.get("model_run_id"),
        publish=False,
        should_stop=ctx.should_stop,
        progress=ctx.progress or NO_PROGRESS,
        cluster=cluster,
    )
    ctx.state["recommendation_run_id"] = summary.run_id
    return {
        "recommendation_run_id": summary.run_id,
        "model_run_id": summary.model_run_id,
        "users": summary.n_users,
        "rows": summary.n_rows,
        "strategies": summary.counts,
        "rule_counts": summary.rule_counts,
        "users_per_second": round(summary.n_users / max(summary.seconds, 1e-9), 1),
        "engine": cluster.engine,
    }


def _publish_step(ctx: Context) -> dict:
    published = _publish(ctx.engine, ctx.settings, ctx.state["recommendation_run_id"])
    return {
        "published": published.run_id,
        "previous": published.previous,
        "keep_runs": ctx.settings.keep_runs,
        "models_pruned": published.models_pruned,
        "gates": {c["gate"]: c["value"] for c in published.gates["checks"]},
    }


def _similar_step(ctx: Context) -> dict:
    if not ctx.options.similar:
        return {"skipped": "--no-similar"}
    from recsys.scoring.similar import build_similar

    summary = build_similar(
        ctx.engine, keep=ctx.settings.keep_runs, progress=ctx.progress or NO_PROGRESS
    )
    return {"similar_run_id": summary.run_id, "rows": summary.n_rows, **summary.counts}


DEFAULT_STEPS: tuple[Step, ...] = (
    Step("load", _load_step),
    Step("features", _features_step),
    Step("train", _train_step),
    Step("measure", _measure_step),
    Step("verify", _verify_step),
    Step("score", _score_step),
    Step("publish", _publish_step),
    Step("similar", _similar_step),
)


# --- the nightly API: each call takes the lock it needs -------------------------------------


@contextmanager
def nightly_lock(engine: Engine) -> Iterator[None]:
    """Hold the nightly lock and mark what killed runs left behind.

    Under the lock no other writer is alive, so pipeline runs and steps still ``running`` and
    recommendation runs still ``scoring`` belong to processes that died; they are marked
    interrupted / failed before the block runs.

    Raises:
        LockBusy: another nightly writer holds the lock; nothing was changed.
    """
    with advisory_lock(engine, NIGHTLY_LOCK, what=NIGHTLY_JOB):
        _clean_up_after_dead_runs(engine)
        yield


def _clean_up_after_dead_runs(engine: Engine) -> None:
    """Under the lock no other run is alive: anything still 'running' was killed."""
    from recsys.scoring.publish import fail_abandoned_runs

    with engine.begin() as conn:
        n = run_records.mark_abandoned(conn)
        m = fail_abandoned_runs(conn)
    if n or m:
        _log.warning(
            "marked %d killed pipeline run(s) interrupted, %d recommendation run(s) failed", n, m
        )


@dataclass(frozen=True)
class PublishResult:
    """A recommendation run switched in for the readers."""

    run_id: int
    previous: int | None
    """The run served before (None: nothing was)."""
    gates: dict
    """The gates as stored on the run (``passed``, ``forced``, ``checks``)."""
    models_pruned: int = 0
    """Model runs whose artifacts were deleted afterwards (beyond ``keep_runs``)."""


def _score(
    engine: Engine,
    settings: Settings,
    options: ScoreOptions,
    *,
    model: ScoringModel | None = None,
    model_run: int | None = None,
    publish: bool = False,
    force: bool = False,
    should_stop: Callable[[], bool] | None = None,
    progress: ProgressSink = NO_PROGRESS,
    cluster: EngineOptions | None = None,
) -> ScoreSummary:
    from recsys.cluster.engine import EngineOptions, block_runner
    from recsys.scoring.gates import GateThresholds
    from recsys.scoring.score import load_model, score_and_write

    if model is None:
        model = load_model(engine, settings, model_run)
    try:
        with block_runner(cluster or EngineOptions()) as runner:
            summary = score_and_write(
                engine,
                model,
                options,
                publish=publish,
                keep=settings.keep_runs,
                should_stop=should_stop,
                progress=None
                if progress is NO_PROGRESS
                else counts_to(progress, "scoring", "users"),
                thresholds=GateThresholds.from_settings(settings),
                force=force,
                runner=runner,
            )
    finally:
        progress.finish()
    if publish:
        from recsys.model.registry import prune_artifacts

        prune_artifacts(engine, settings.models_dir, settings.keep_runs)
    return summary


def score(
    engine: Engine,
    settings: Settings,
    options: ScoreOptions | None = None,
    *,
    model_run: int | None = None,
    publish: bool = True,
    should_stop: Callable[[], bool] | None = None,
    progress: ProgressSink = NO_PROGRESS,
    cluster: EngineOptions | None = None,
) -> ScoreSummary:
    """Score every user with a registered model into a new recommendation run.

    Holds the nightly lock. The run is written in one transaction; with ``publish`` it is
    served when it passes its gates (a failing gate keeps it unpublished), and model artifacts
    beyond ``keep_runs`` are pruned.

    Args:
        engine: the database.
        settings: recsys settings (``keep_runs``, gate thresholds, models folder).
        options: how to score (None: the defaults).
        model_run: the model run to score with (None: the latest successful one).
        publish: serve the run when it is complete.
        should_stop: polled between scoring batches.
        progress: a :mod:`recsys.progress` sink for the users scored.
        cluster: where the blocks run (None: this process; see :mod:`recsys.cluster.engine`).

    Raises:
        LockBusy: another nightly writer holds the lock.
        GateFailed: ``publish`` and a gate failed; the run is kept, unpublished.
        RecsysError: no such model run, or a scoring error.
    """
    from recsys.scoring.score import ScoreOptions

    with nightly_lock(engine):
        return _score(
            engine,
            settings,
            options or ScoreOptions(),
            model_run=model_run,
            publish=publish,
            should_stop=should_stop,
            progress=progress,
            cluster=cluster,
        )


def _publish(
    engine: Engine, settings: Settings, run_id: int | None, *, force: bool = False
) -> PublishResult:
    from recsys.model.registry import prune_artifacts
    from recsys.scoring import publish as publishing
    from recsys.scoring.gates import GateThresholds, publish_gated

    if run_id is None:
        with engine.connect() as conn:
            run_id = publishing.latest_ready_run(conn)
        if run_id is None:
            raise RecsysError("no ready recommendation run; run `recsys score` first")
    previous, gates = publish_gated(
        engine,
        run_id,
        keep=settings.keep_runs,
        thresholds=GateThresholds.from_settings(settings),
        force=force,
    )
    pruned = prune_artifacts(engine, settings.models_dir, settings.keep_runs)
    return PublishResult(int(run_id), previous, gates, len(pruned))


def publish(
    engine: Engine, settings: Settings, run_id: int | None = None, *, force: bool = False
) -> PublishResult:
    """Serve a complete recommendation run (None: the newest ready one) if it passes its gates.

    Holds the nightly lock. The gates are measured and the pointer switched in one
    transaction; old recommendation runs and model artifacts beyond ``keep_runs`` are pruned.

    Args:
        engine: the database.
        settings: recsys settings.
        run_id: the recommendation run to serve.
        force: serve it although a gate fails (recorded on the run).

    Raises:
        LockBusy: another nightly writer holds the lock.
        GateFailed: a gate failed and not ``force``; the served run is unchanged.
        RecsysError: no ready run, or the run is missing or not ready.
    """
    with nightly_lock(engine):
        return _publish(engine, settings, run_id, force=force)


def rollback(engine: Engine) -> tuple[int, int]:
    """Serve the newest ready run older than the served one again, under the nightly lock.

    Returns:
        (the run now served, the run that was served).

    Raises:
        LockBusy: another nightly writer holds the lock.
        RecsysError: nothing is published, or no older run is kept.
    """
    from recsys.scoring import publish as publishing

    with nightly_lock(engine), engine.begin() as conn:
        return publishing.rollback(conn)


def recommendation_runs(engine: Engine, limit: int = 20) -> list[RunInfo]:
    """The kept recommendation runs, newest first (a read: no lock)."""
    from recsys.scoring import publish as publishing

    with engine.connect() as conn:
        return publishing.list_runs(conn, limit)


def recommendations_for(engine: Engine, user: str, n_rated: int = 10) -> UserRecommendations:
    """A user's top-rated products and their served list, as the shop's apps read it.

    A read of the published run: it takes no lock (readers never wait for the nightly job).

    Raises:
        RecsysError: the user is unknown, or nothing is published.
    """
    from recsys.scoring.served import user_recommendations

    with engine.connect() as conn:
        return user_recommendations(conn, user, n_rated)


def demo_recommendations(engine: Engine) -> UserRecommendations:
    """:func:`recommendations_for` the most active user who is served a model list.

    Raises:
        RecsysError: no user is served a model list.
    """
    from recsys.scoring.served import most_active_model_user, user_recommendations

    with engine.connect() as conn:
        user = most_active_model_user(conn)
        if user is None:
            raise RecsysError("the demo published no model recommendations")
        return user_recommendations(conn, user)


@dataclass(frozen=True)
class ModelComparison:
    """What :func:`evaluate` measured: the data it read and each model's figures."""

    n_ratings: int
    n_users: int
    n_products: int
    results: list[Any]
    """:class:`recsys.evaluation.protocol.ModelEvaluation` per model, in the order asked."""


def evaluate(
    engine: Engine,
    settings: Settings,
    names: list[str],
    *,
    options: dict[str, Any] | None = None,
    min_ratings: int = 0,
    seed: int = 0,
) -> ModelComparison:
    """Train catalogue models on the same two splits of the ratings and measure them.

    A read of the ratings (and the current feature set, for models that use text): it takes
    no lock and writes nothing, so it may run beside the nightly job.

    Args:
        engine: the database.
        settings: recsys settings.
        names: catalogue model names.
        options: model options given on the command line (each model takes those it knows).
        min_ratings: keep users and products with more ratings than this.
        seed: the fits' seed.

    Raises:
        RecsysError: an unknown model name.
        DataError: too few ratings, or no feature set for a model that needs text.
    """
    from recsys.evaluation.protocol import evaluate_models
    from recsys.model import catalog
    from recsys.model.data import read_rating_data

    unknown = [n for n in names if n not in catalog.MODELS]
    if not names or unknown:
        raise RecsysError(
            f"unknown model(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(catalog.names())}"
        )
    needs_text = [n for n in names if catalog.needs_text(n)]
    uses_text = needs_text or any(catalog.uses_text(n) for n in names)
    with engine.connect() as conn:
        data = read_rating_data(
            conn, min_ratings=min_ratings, feature_set_id="current" if uses_text else None
        )
    if needs_text and data.feature_set_id is None:
        raise DataError(
            f"{', '.join(needs_text)} need(s) product text vectors and there is no current "
            "feature set; build one with `recsys features build` (or leave them out of --models)"
        )
    if len(data) < 100:
        raise DataError(f"too few ratings to evaluate: {len(data)} (at least 100 are needed)")
    results = evaluate_models(
        data,
        names,
        create=catalog.create,
        params_for=lambda n: catalog.model_params(n, options or {}),
        seed=seed,
    )
    return ModelComparison(len(data), data.n_users, data.n_products, results)


@dataclass(frozen=True)
class SampleSize:
    """How big a generated sample :func:`demo` runs on."""

    users: int = 2000
    products: int = 500
    ratings: int = 40000


def demo(
    engine: Engine,
    settings: Settings,
    sample_dir: Path,
    size: SampleSize,
    options: PipelineOptions,
    *,
    on_step: Callable[[str, str, float], None] | None = None,
) -> tuple[PipelineResult, UserRecommendations]:
    """The whole nightly run on a generated sample, and the list of its most active user.

    Writes the sample files into ``sample_dir`` (seeded by ``options.seed``), runs the default
    steps with a load step that loads those files (already loaded ones are skipped), under
    the nightly lock like :func:`run`, with trigger ``demo``.

    Raises:
        LockBusy: another nightly writer holds the lock.
        RecsysError: a step failed, or no user is served a model list.
    """
    from recsys.ingest.load import load_files
    from recsys.ingest.sample import write_sample

    files = write_sample(
        sample_dir,
        users=size.users,
        products=size.products,
        ratings=size.ratings,
        seed=options.seed,
    )

    def load_step(ctx: Context) -> dict:
        summaries = load_files(
            ctx.engine,
            ctx.settings,
            ratings=[files.ratings_path],
            metadata=[files.metadata_path],
            skip_loaded=True,
        )
        return {"files": len(summaries)}

    steps = [Step("load", load_step), *[s for s in DEFAULT_STEPS if s.name != "load"]]
    result = run(engine, settings, options, trigger="demo", steps=steps, on_step=on_step)
    return result, demo_recommendations(engine)


def history(engine: Engine, limit: int = 10) -> list[dict]:
    """The newest pipeline runs with their steps, newest first (for ``recsys run --history``)."""
    with engine.connect() as conn:
        return run_records.recent_runs(conn, limit)


def recent_runs(conn: sa.Connection, limit: int = 10) -> list[dict]:
    """The newest pipeline runs with their steps, newest first (see :func:`history`)."""
    return run_records.recent_runs(conn, limit)


# --- the run --------------------------------------------------------------------------------


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:500]


def run(
    engine: Engine,
    settings: Settings,
    options: PipelineOptions | None = None,
    *,
    trigger: str = "cli",
    steps: tuple[Step, ...] | list[Step] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[str, str, float], None] | None = None,
    progress: Any = None,
) -> PipelineResult:
    """Run the nightly pipeline once, under the nightly lock.

    Args:
        engine: the database.
        settings: recsys settings.
        options: what to run; defaults throughout when None.
        trigger: recorded with the run (cli, schedule, demo, ...).
        steps: the steps to run (default :data:`DEFAULT_STEPS`); tests pass their own.
        should_stop: polled between steps and scoring batches.
        on_step: called with (step, status, seconds) as each step starts and ends.
        progress: a :mod:`recsys.progress` sink for long steps (training); None: none.

    Returns:
        The successful run's result.

    Raises:
        LockBusy: another run holds the lock; nothing was recorded or changed.
        RecsysError: a step failed (recorded) or the run was interrupted.
    """
    options = options or PipelineOptions()
    steps = tuple(steps or DEFAULT_STEPS)
    stop = should_stop or (lambda: False)
    started = time.perf_counter()
    with nightly_lock(engine):
        run_id = run_records.start_run(engine, trigger, asdict(options))
        _log.info("pipeline run %d started (%s)", run_id, ", ".join(s.name for s in steps))
        ctx = Context(engine, settings, options, stop, progress=progress)
        results: list[StepResult] = []
        for position, step in enumerate(steps):
            if stop():
                names = [s.name for s in steps[position:]]
                run_records.record_unrun_steps(engine, run_id, names, position, "interrupted")
                run_records.finish_run(
                    engine, run_id, "interrupted", f"stopped on request before step {step.name}"
                )
                _write_report(engine, settings, run_id)
                raise PipelineInterrupted(
                    f"pipeline run {run_id} stopped on request before step {step.name}; "
                    "published recommendations unchanged"
                )
            step_id = run_records.start_step(engine, run_id, position, step.name)
            if on_step:
                on_step(step.name, "running", 0.0)
            t0 = time.perf_counter()
            try:
                detail = step.fn(ctx) or {}
            except BaseException as err:
                seconds = time.perf_counter() - t0
                interrupted = isinstance(err, KeyboardInterrupt | Interrupted)
                status = "interrupted" if interrupted else "failed"
                message = _one_line(err)
                if not isinstance(err, RecsysError | KeyboardInterrupt):
                    _log.error("step %s failed:\n%s", step.name, traceback.format_exc())
                run_records.finish_step(engine, step_id, status, seconds, message=message)
                names = [s.name for s in steps[position + 1 :]]
                run_records.record_unrun_steps(engine, run_id, names, position + 1, "skipped")
                run_records.finish_run(
                    engine, run_id, status, f"step {step.name} {status}: {message}"
                )
                _write_report(engine, settings, run_id)
                if on_step:
                    on_step(step.name, status, seconds)
                # a requested stop is no failure: INFO, not ERROR
                _log.log(
                    logging.INFO if interrupted else logging.ERROR,
                    "pipeline run %d: step %s %s after %.1fs: %s",
                    run_id,
                    step.name,
                    status,
                    seconds,
                    message,
                )
                if isinstance(err, RecsysError | KeyboardInterrupt):
                    raise
                raise RecsysError(
                    f"pipeline run {run_id} failed in step {step.name}: {message} "
                    "(published recommendations unchanged; traceback in the log)"
                ) from err
            seconds = time.perf_counter() - t0
            # what a step left in reference cycles (TensorFlow's traced functions hold some)
            # is freed before the next step allocates its own
            gc.collect()
            run_records.finish_step(engine, step_id, "succeeded", seconds, detail=detail)
            results.append(StepResult(step.name, "succeeded", seconds, detail))
            if on_step:
                on_step(step.name, "succeeded", seconds)
            _log.info(
                "pipeline run %d: step %s succeeded in %.1fs %s", run_id, step.name, seconds, detail
            )
        run_records.finish_run(engine, run_id, "succeeded")
        report_path = _write_report(engine, settings, run_id)
    return PipelineResult(
        run_id=run_id,
        status="succeeded",
        steps=results,
        seconds=time.perf_counter() - started,
        recommendation_run_id=ctx.state.get("recommendation_run_id"),
        model_run_id=ctx.state.get("model_run_id"),
        report_path=report_path,
    )


def _write_report(engine: Engine, settings: Settings, run_id: int) -> Path | None:
    """The run's HTML report; a failure only logs a warning (never fails the run)."""
    from recsys.report import write_run_report

    return write_run_report(engine, settings.home, run_id)
