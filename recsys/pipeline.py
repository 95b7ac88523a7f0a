"""The nightly run: the one place that wires the steps together.

``load -> features -> train -> evaluate -> score -> publish``

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

The ``evaluate`` step is a gate before anything is published: it reloads the trained model
from the registry as scoring will, checks that its fast scores (``score_users``) are finite
and equal direct evaluation on sampled users (``direct_scores`` for ranking models that have
it, ``predict`` for the notebook's rating models), and records the run's stored metrics.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.config import Settings
from recsys.db.locks import NIGHTLY_JOB, NIGHTLY_LOCK, advisory_lock
from recsys.errors import DataError, Interrupted, RecsysError

_log = logging.getLogger(__name__)

STEP_NAMES = ("load", "features", "train", "evaluate", "score", "publish", "similar")


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
    evaluate: bool = True
    """Let training evaluate the model on both protocols (metrics stored with the run)."""
    seed: int = 0
    k: int = 10
    fallback: str = "category"
    cold_start: bool = False
    memory_mb: int = 512
    batch_users: int | None = None
    """Users per scoring batch (default: from memory_mb)."""
    check_users: int = 32
    """Users sampled by the evaluate step to compare fast scores with ``predict``."""
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


def _train_step(ctx: Context) -> dict:
    from recsys.model.catalog import DEFAULT_NIGHTLY_MODEL
    from recsys.model.train import TrainConfig, train_run

    o = ctx.options
    config = TrainConfig(
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
    from recsys.progress import NO_PROGRESS

    result = train_run(
        ctx.engine,
        ctx.settings,
        config,
        progress=ctx.progress or NO_PROGRESS,
        should_stop=ctx.should_stop,
    )
    ctx.state["model_run_id"] = int(result.run_id)
    return {
        "model_run_id": int(result.run_id),
        "model": result.model_type,
        **({"requested": config.model} if config.model != result.model_type else {}),
        "users": result.n_users,
        "products": result.n_products,
        "ratings": result.n_ratings,
        "fit_seconds": round(result.fit_seconds, 1),
        "evaluation_seconds": round(result.evaluation_seconds, 1),
    }


def check_model(model: Any, n_users: int = 32, seed: int = 0) -> dict:
    """Fast scores against direct evaluation on sampled users; the evaluate step's gate.

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


def _evaluate_step(ctx: Context) -> dict:
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


def _score_step(ctx: Context) -> dict:
    from recsys.cluster.engine import block_runner, engine_options
    from recsys.scoring.score import ScoreOptions, load_model, score_and_write

    model = ctx.state.get("model")
    if model is None:
        model = load_model(ctx.engine, ctx.settings, ctx.state.get("model_run_id"))
    options = ScoreOptions(
        k=ctx.options.k,
        fallback=ctx.options.fallback,
        cold_start=ctx.options.cold_start,
        memory_mb=ctx.options.memory_mb,
        batch_users=ctx.options.batch_users,
        max_per_category=ctx.options.max_per_category,
        max_per_brand=ctx.options.max_per_brand,
    )
    cluster = engine_options(ctx.settings, ctx.options.engine, ctx.options.ray_address)
    with block_runner(cluster) as runner:
        summary = score_and_write(
            ctx.engine, model, options, publish=False, should_stop=ctx.should_stop, runner=runner
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
    from recsys.model.registry import prune_artifacts
    from recsys.scoring.gates import GateThresholds, publish_gated

    run_id = ctx.state["recommendation_run_id"]
    previous, gates = publish_gated(
        ctx.engine,
        run_id,
        keep=ctx.settings.keep_runs,
        thresholds=GateThresholds.from_settings(ctx.settings),
    )
    pruned = prune_artifacts(ctx.engine, ctx.settings.models_dir, ctx.settings.keep_runs)
    return {
        "published": run_id,
        "previous": previous,
        "keep_runs": ctx.settings.keep_runs,
        "models_pruned": len(pruned),
        "gates": {c["gate"]: c["value"] for c in gates["checks"]},
    }


def _similar_step(ctx: Context) -> dict:
    if not ctx.options.similar:
        return {"skipped": "--no-similar"}
    from recsys.scoring.similar import build_similar

    summary = build_similar(ctx.engine, keep=ctx.settings.keep_runs)
    return {"similar_run_id": summary.run_id, "rows": summary.n_rows, **summary.counts}


DEFAULT_STEPS: tuple[Step, ...] = (
    Step("load", _load_step),
    Step("features", _features_step),
    Step("train", _train_step),
    Step("evaluate", _evaluate_step),
    Step("score", _score_step),
    Step("publish", _publish_step),
    Step("similar", _similar_step),
)


# --- recording -----------------------------------------------------------------------------


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:500]


def _clean_up_after_dead_runs(engine: Engine) -> None:
    """Under the lock no other run is alive: anything still 'running' was killed."""
    from recsys.scoring.publish import fail_abandoned_runs

    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE pipeline_steps SET status = 'interrupted', finished_at = now(), "
                "message = 'the process stopped during this step' WHERE status = 'running'"
            )
        )
        n = conn.execute(
            sa.text(
                "UPDATE pipeline_runs SET status = 'interrupted', finished_at = now(), "
                "message = 'the process stopped (killed or crashed) before finishing' "
                "WHERE status = 'running'"
            )
        ).rowcount
        m = fail_abandoned_runs(conn)
    if n or m:
        _log.warning(
            "marked %d killed pipeline run(s) interrupted, %d recommendation run(s) failed", n, m
        )


def _record(engine: Engine, sql: str, params: dict) -> Any:
    with engine.begin() as conn:
        result = conn.execute(sa.text(sql), params)
        return result.scalar() if result.returns_rows else None


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
    with advisory_lock(engine, NIGHTLY_LOCK, what=NIGHTLY_JOB):
        _clean_up_after_dead_runs(engine)
        run_id = int(
            _record(
                engine,
                "INSERT INTO pipeline_runs (trigger, status, pid, host, options) "
                "VALUES (:t, 'running', :pid, :host, CAST(:o AS jsonb)) RETURNING id",
                {
                    "t": trigger,
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "o": json.dumps(asdict(options)),
                },
            )
        )
        _log.info("pipeline run %d started (%s)", run_id, ", ".join(s.name for s in steps))
        ctx = Context(engine, settings, options, stop, progress=progress)
        results: list[StepResult] = []
        for position, step in enumerate(steps):
            if stop():
                _finish_remaining(engine, run_id, steps[position:], position, "interrupted")
                _record(
                    engine,
                    "UPDATE pipeline_runs SET status = 'interrupted', finished_at = now(), "
                    "message = :m WHERE id = :r",
                    {"r": run_id, "m": f"stopped on request before step {step.name}"},
                )
                _write_report(engine, settings, run_id)
                raise PipelineInterrupted(
                    f"pipeline run {run_id} stopped on request before step {step.name}; "
                    "published recommendations unchanged"
                )
            step_id = _record(
                engine,
                "INSERT INTO pipeline_steps (pipeline_run_id, position, step, status) "
                "VALUES (:r, :p, :s, 'running') RETURNING id",
                {"r": run_id, "p": position, "s": step.name},
            )
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
                _record(
                    engine,
                    "UPDATE pipeline_steps SET status = :st, finished_at = now(), seconds = :sec, "
                    "message = :m WHERE id = :id",
                    {"st": status, "sec": seconds, "m": message, "id": step_id},
                )
                _finish_remaining(engine, run_id, steps[position + 1 :], position + 1, "skipped")
                _record(
                    engine,
                    "UPDATE pipeline_runs SET status = :st, finished_at = now(), message = :m "
                    "WHERE id = :r",
                    {"st": status, "r": run_id, "m": f"step {step.name} {status}: {message}"},
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
            _record(
                engine,
                "UPDATE pipeline_steps SET status = 'succeeded', finished_at = now(), "
                "seconds = :sec, detail = CAST(:d AS jsonb) WHERE id = :id",
                {"sec": seconds, "d": json.dumps(detail, default=str), "id": step_id},
            )
            results.append(StepResult(step.name, "succeeded", seconds, detail))
            if on_step:
                on_step(step.name, "succeeded", seconds)
            _log.info(
                "pipeline run %d: step %s succeeded in %.1fs %s", run_id, step.name, seconds, detail
            )
        _record(
            engine,
            "UPDATE pipeline_runs SET status = 'succeeded', finished_at = now() WHERE id = :r",
            {"r": run_id},
        )
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


def _finish_remaining(
    engine: Engine, run_id: int, steps: tuple[Step, ...], first_position: int, status: str
) -> None:
    if not steps:
        return
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO pipeline_steps (pipeline_run_id, position, step, status, finished_at, "
                "seconds) VALUES (:r, :p, :s, :st, now(), 0)"
            ),
            [
                {"r": run_id, "p": first_position + i, "s": s.name, "st": status}
                for i, s in enumerate(steps)
            ],
        )


def recent_runs(conn: sa.Connection, limit: int = 10) -> list[dict]:
    """The newest pipeline runs with their steps, newest first (for ``recsys run --history``)."""
    runs = (
        conn.execute(
            sa.text(
                "SELECT id, trigger, status, started_at, finished_at, message FROM pipeline_runs "
                "ORDER BY id DESC LIMIT :n"
            ),
            {"n": limit},
        )
        .mappings()
        .all()
    )
    out = []
    for r in runs:
        steps = (
            conn.execute(
                sa.text(
                    "SELECT step, status, seconds, message FROM pipeline_steps "
                    "WHERE pipeline_run_id = :r ORDER BY position"
                ),
                {"r": r["id"]},
            )
            .mappings()
            .all()
        )
        out.append({**dict(r), "steps": [dict(s) for s in steps]})
    return out
