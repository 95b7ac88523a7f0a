"""The nightly batch: ``score``, ``publish``, ``run``, ``schedule``, ``recommend``, ``demo``."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import click
import sqlalchemy as sa

from recsys.commands.database import open_engine
from recsys.commands.engine import ENGINE_OPTIONS, engine_options
from recsys.config import Settings
from recsys.errors import RecsysError
from recsys.progress import progress_for_terminal


def _settings(ctx: click.Context) -> Settings:
    return ctx.find_root().obj


def _console():
    import sys

    from rich.console import Console

    # not a terminal (a log, a pipe): wide enough that titles and reasons are not cut
    return Console() if sys.stdout.isatty() else Console(width=200)


class _ScoreProgress:
    """A rich progress bar with a users/s rate, fed by score_batches' progress callback."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} users/s"),
            TimeElapsedColumn(),
            transient=True,
        )
        self.task = None
        self.started = time.perf_counter()

    def __enter__(self) -> _ScoreProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task("scoring", total=total, rate="-")
        rate = done / max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(self.task, completed=done, rate=f"{rate:,.0f}")


def _print_summary(summary) -> None:
    from rich.table import Table

    table = Table(title=f"recommendation run {summary.run_id}")
    for column in ("model run", "k", "users", "rows", "strategies (users)", "seconds", "served"):
        table.add_column(column)
    table.add_row(
        str(summary.model_run_id),
        str(summary.k),
        f"{summary.n_users:,}",
        f"{summary.n_rows:,}",
        ", ".join(f"{k} {v:,}" for k, v in sorted(summary.counts.items())),
        f"{summary.seconds:.1f}",
        "yes" if summary.published else "no (recsys publish)",
    )
    _console().print(table)


_k_option = click.option(
    "-k",
    "k",
    type=click.IntRange(1, 1000),
    default=10,
    show_default=True,
    help="List length per user.",
)
_fallback_option = click.option(
    "--fallback",
    type=click.Choice(["category", "popularity"]),
    default="category",
    show_default=True,
    help="For users the model does not know: popular in their categories, or popular overall.",
)
_cold_option = click.option(
    "--cold-start",
    is_flag=True,
    help="Also score new products (text vector, no ratings) through their text vector.",
)
_category_cap_option = click.option(
    "--max-per-category",
    type=click.IntRange(1),
    default=None,
    help="At most N products of one category per list (the fallback's category).",
)
_brand_cap_option = click.option(
    "--max-per-brand",
    type=click.IntRange(1),
    default=None,
    help="At most N products of one brand per list.",
)


@click.command("score")
@click.option(
    "--run",
    "model_run",
    type=int,
    default=None,
    help="Model run to score with (default: the latest successful one).",
)
@_k_option
@_fallback_option
@_cold_option
@_category_cap_option
@_brand_cap_option
@click.option(
    "--memory-mb",
    type=click.IntRange(16),
    default=512,
    show_default=True,
    help="Working memory for one batch of users x products.",
)
@click.option(
    "--batch-users",
    type=click.IntRange(1),
    default=None,
    help="Users per batch (overrides --memory-mb).",
)
@click.option(
    "--publish/--no-publish",
    default=True,
    show_default=True,
    help="Serve the new run as soon as it is complete.",
)
@engine_options
@click.pass_context
def score_command(
    ctx,
    model_run,
    k,
    fallback,
    cold_start,
    max_per_category,
    max_per_brand,
    memory_mb,
    batch_users,
    publish,
    **cluster,
) -> None:
    """Score every user against every product they have not rated; exact top-k.

    Writes a new recommendation run (one transaction) and, unless --no-publish, serves it.
    Holds the nightly lock, so it never races `recsys run`.
    """
    from recsys.cluster.engine import block_runner, check_engine
    from recsys.cluster.engine import engine_options as engine_options_from
    from recsys.db.locks import NIGHTLY_JOB, NIGHTLY_LOCK, advisory_lock
    from recsys.scoring.publish import fail_abandoned_runs
    from recsys.scoring.score import ScoreOptions, load_model, score_and_write

    settings = _settings(ctx)
    engine = open_engine(settings)
    from recsys.scoring.gates import GateThresholds

    options = ScoreOptions(
        k=k,
        fallback=fallback,
        cold_start=cold_start,
        memory_mb=memory_mb,
        batch_users=batch_users,
        max_per_category=max_per_category,
        max_per_brand=max_per_brand,
    )
    cluster_options = check_engine(engine_options_from(settings, **cluster))
    with advisory_lock(engine, NIGHTLY_LOCK, what=NIGHTLY_JOB):
        with engine.begin() as conn:
            fail_abandoned_runs(conn)
        model = load_model(engine, settings, model_run)
        with (
            block_runner(cluster_options) as runner,
            _ScoreProgress() as progress,
        ):
            summary = score_and_write(
                engine,
                model,
                options,
                publish=publish,
                keep=settings.keep_runs,
                progress=progress,
                thresholds=GateThresholds.from_settings(settings),
                runner=runner,
            )
        if publish:
            from recsys.model.registry import prune_artifacts

            prune_artifacts(engine, settings.models_dir, settings.keep_runs)
    _print_summary(summary)


@click.command("publish")
@click.option(
    "--run",
    "run_id",
    type=int,
    default=None,
    help="Recommendation run to serve (default: the newest ready run).",
)
@click.option("--rollback", is_flag=True, help="Serve the previous ready run again.")
@click.option(
    "--list", "list_runs", is_flag=True, help="List the kept runs with their gates and exit."
)
@click.option("--force", is_flag=True, help="Serve the run even if it fails a gate (recorded).")
@click.pass_context
def publish_command(ctx, run_id, rollback, list_runs, force) -> None:
    """Switch the recommendations apps read to a complete run, in one transaction.

    The run must pass its gates first (full lists, coverage, overlap with the served run, the
    model's NDCG against popularity); a failing gate keeps the served run and exits 2.
    """
    from recsys.db.locks import NIGHTLY_JOB, NIGHTLY_LOCK, advisory_lock
    from recsys.scoring import publish

    settings = _settings(ctx)
    engine = open_engine(settings)
    if list_runs:
        from rich.table import Table

        with engine.connect() as conn:
            runs = publish.list_runs(conn)
        table = Table(title="recommendation runs")
        for column in (
            "run",
            "status",
            "served",
            "generated",
            "model run",
            "k",
            "users",
            "rows",
            "gates",
        ):
            table.add_column(column)
        for r in runs:
            table.add_row(
                str(r.id),
                r.status,
                "*" if r.published else "",
                f"{r.generated_at:%Y-%m-%d %H:%M}",
                str(r.model_run_id or ""),
                str(r.k),
                f"{r.n_users:,}",
                f"{r.n_rows:,}",
                publish.format_gates(r.gates),
            )
        _console().print(table)
        return
    if rollback and run_id is not None:
        raise click.UsageError("--rollback and --run are exclusive")
    if rollback and force:
        raise click.UsageError("--force applies to --run, not --rollback")
    from recsys.scoring.gates import GateThresholds, publish_gated

    with advisory_lock(engine, NIGHTLY_LOCK, what=NIGHTLY_JOB):
        with engine.begin() as conn:
            if rollback:
                served, previous = publish.rollback(conn)
                click.echo(f"rolled back: serving run {served} again (was {previous})")
                return
            if run_id is None:
                run_id = publish.latest_ready_run(conn)
                if run_id is None:
                    raise RecsysError("no ready recommendation run; run `recsys score` first")
        previous, gates = publish_gated(
            engine,
            run_id,
            keep=settings.keep_runs,
            thresholds=GateThresholds.from_settings(settings),
            force=force,
        )
        from recsys.model.registry import prune_artifacts

        prune_artifacts(engine, settings.models_dir, settings.keep_runs)
    forced = " (forced past its failed gates)" if gates["forced"] else ""
    click.echo(f"serving recommendation run {run_id} (was {previous}){forced}")


def _pipeline_options(**kw) -> object:
    from recsys.pipeline import PipelineOptions

    return PipelineOptions(**{k: v for k, v in kw.items() if v is not None})


def _model_help() -> str:
    from recsys.model import catalog

    return "Model: " + catalog.help_text()


def _pipeline_decorators(f):
    options = [
        click.option(
            "--inbox",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Load new files from this folder first (already loaded ones skipped).",
        ),
        click.option("--model", default=None, help=_model_help()),
        click.option("--epochs", type=click.IntRange(1), default=None),
        click.option("--batch-size", type=click.IntRange(1), default=None),
        click.option(
            "--word-vectors",
            default=None,
            help="Word vectors for the features step (default: train on the catalogue).",
        ),
        click.option(
            "--dim",
            type=click.IntRange(1),
            default=None,
            help="Text vector dimension for the features step (default 100).",
        ),
        click.option("--embedding-dim", type=click.IntRange(1), default=None),
        click.option("--hidden-units", type=click.IntRange(1), default=None),
        click.option(
            "--min-ratings",
            type=click.IntRange(0),
            default=None,
            help="Keep users and products with more ratings than this (default: adaptive).",
        ),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option(
            "--features/--no-features",
            "build_features",
            default=True,
            show_default=True,
            help="Rebuild product text vectors (incremental).",
        ),
        click.option(
            "--evaluate/--no-evaluate",
            default=True,
            show_default=True,
            help="Evaluate the model on both protocols while training.",
        ),
        _k_option,
        _fallback_option,
        _cold_option,
        _category_cap_option,
        _brand_cap_option,
        click.option(
            "--similar/--no-similar",
            default=True,
            show_default=True,
            help="Build and publish the similar-products lists after publishing.",
        ),
        click.option(
            "--memory-mb",
            type=click.IntRange(16),
            default=None,
            help="Working memory for one scoring batch (default 512).",
        ),
        click.option(
            "--batch-users",
            type=click.IntRange(1),
            default=None,
            help="Users per scoring batch (overrides --memory-mb).",
        ),
        *ENGINE_OPTIONS,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _options_from(kw: dict):
    if kw.get("inbox") is not None:
        kw["inbox"] = str(Path(kw["inbox"]).resolve())
    if kw.get("word_vectors") not in (None, "train", "glove-6b-50d"):
        from recsys.features.vectors import check_vectors_file

        check_vectors_file(Path(kw["word_vectors"]))  # a pickle is refused before any step
    return _pipeline_options(**kw)


def _print_pipeline(result) -> None:
    from rich.table import Table

    table = Table(title=f"pipeline run {result.run_id}: {result.status} in {result.seconds:.0f}s")
    for column in ("step", "status", "seconds", "detail"):
        table.add_column(column)
    for step in result.steps:
        detail = ", ".join(f"{k}={v}" for k, v in step.detail.items() if k != "metrics")
        table.add_row(step.name, step.status, f"{step.seconds:.1f}", detail[:90])
    _console().print(table)


def _on_step(name: str, status: str, seconds: float) -> None:
    if status == "running":
        click.echo(f"-> {name} ...", err=True)
    else:
        click.echo(f"   {name} {status} in {seconds:.1f}s", err=True)


@click.command("run")
@_pipeline_decorators
@click.option("--history", is_flag=True, help="Show the last pipeline runs and exit.")
@click.pass_context
def run_command(ctx, history, **kw) -> None:
    """The nightly pipeline: load inbox, features, train, evaluate, score, publish.

    Each step is recorded in pipeline_runs / pipeline_steps. A second concurrent run exits at
    once (exit 2). A failed step stops the run and leaves the served recommendations as they
    were.
    """
    from recsys import pipeline
    from recsys.cluster.engine import check_engine, engine_options

    settings = _settings(ctx)
    engine = open_engine(settings)
    if history:
        with engine.connect() as conn:
            for r in pipeline.recent_runs(conn):
                steps = " ".join(
                    f"{s['step']}:{s['status']}"
                    + (f"({s['seconds']:.0f}s)" if s["seconds"] else "")
                    for s in r["steps"]
                )
                click.echo(
                    f"{r['id']:>5} {r['started_at']:%Y-%m-%d %H:%M} {r['trigger']:<8} "
                    f"{r['status']:<11} {steps}"
                )
        return
    check_engine(engine_options(settings, kw.get("engine"), kw.get("ray_address")))
    result = _run_stoppable(
        lambda stop: pipeline.run(
            engine,
            settings,
            _options_from(kw),
            trigger="cli",
            on_step=_on_step,
            should_stop=stop,
            progress=progress_for_terminal(),
        )
    )
    _print_pipeline(result)
    if result.report_path is not None:
        click.echo(f"report: {result.report_path}")


def _run_stoppable(run):
    """``run(should_stop)`` with SIGTERM turned into a stop request (within a training batch
    or between scoring batches) instead of killing the process mid-step."""
    import logging
    import signal
    import threading

    stop = threading.Event()

    def request_stop(signum, _frame) -> None:
        logging.getLogger("recsys.pipeline").info(
            "received %s: stopping the run", signal.Signals(signum).name
        )
        stop.set()

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        return run(stop.is_set)
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command("schedule")
@click.option(
    "--cron",
    default="0 2 * * *",
    show_default=True,
    help="When to run (5-field crontab: minute hour day month weekday).",
)
@click.option("--timezone", default="UTC", show_default=True, help="IANA timezone of --cron.")
@click.option("--run-now", is_flag=True, help="Also run once right away.")
@_pipeline_decorators
@click.pass_context
def schedule_command(ctx, cron, timezone, run_now, **kw) -> None:
    """Run the nightly pipeline on a schedule (APScheduler, job stored in PostgreSQL).

    Stops cleanly on SIGTERM / SIGINT: the run in progress stops at its next step, nothing
    half-done is published.
    """
    from recsys.scheduler import cron_trigger, run_scheduler

    settings = _settings(ctx)
    cron_trigger(cron, timezone)  # a bad line fails here, before the database is touched
    engine = open_engine(settings)

    def started(scheduler) -> None:
        job = scheduler.get_job("recsys-nightly")
        click.echo(
            f"scheduler started: next run {job.next_run_time:%Y-%m-%d %H:%M %Z}"
            + (" (and one now)" if run_now else ""),
            err=True,
        )

    run_scheduler(
        engine,
        cron=cron,
        timezone=timezone,
        options=_options_from(kw),
        run_now=run_now,
        on_started=started,
    )


def show_recommendations(conn: sa.Connection, user: str, n_rated: int = 10) -> tuple[list, list]:
    """(top-rated products, current list) of the user with external id ``user``.

    Raises:
        RecsysError: the user is unknown, or nothing is published.
    """
    user_id = conn.execute(
        sa.text("SELECT id FROM users WHERE external_id = :u"), {"u": user}
    ).scalar()
    if user_id is None:
        raise RecsysError(f"unknown user {user!r}: no such external id in the users table")
    rated = conn.execute(
        sa.text(
            "SELECT p.external_id, p.title, p.brand, r.rating FROM ratings r "
            "JOIN products p ON p.id = r.product_id WHERE r.user_id = :u "
            "ORDER BY r.rating DESC, r.rated_at DESC, p.id LIMIT :n"
        ),
        {"u": user_id, "n": n_rated},
    ).all()
    if conn.execute(sa.text("SELECT run_id FROM published_recommendations")).scalar() is None:
        raise RecsysError("no recommendations are published yet; run `recsys run` (or score)")
    recommended = conn.execute(
        sa.text(
            "SELECT rank, asin, title, brand, score, strategy, generated_at, reason "
            "FROM current_recommendations WHERE user_external_id = :u ORDER BY rank"
        ),
        {"u": user},
    ).all()
    return rated, recommended


def print_recommendations(user: str, rated: list, recommended: list) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title=f"user {user}: top-rated products")
    for column in ("rating", "product", "title", "brand"):
        table.add_column(column)
    for asin, title, brand, rating in rated:
        table.add_row(f"{rating:g}", asin, (title or "")[:60], brand or "")
    console.print(table)
    if not recommended:
        console.print(f"user {user} has no list in the published run (new since it was scored)")
        return
    table = Table(
        title=f"user {user}: recommendations (generated {recommended[0][6]:%Y-%m-%d %H:%M})"
    )
    for column in ("rank", "product", "title", "brand", "score", "strategy", "reason"):
        table.add_column(column)
    for rank, asin, title, brand, score, strategy, _, reason in recommended:
        table.add_row(
            str(rank),
            asin,
            (title or "")[:60],
            brand or "",
            f"{score:.4g}",
            strategy,
            (reason or "")[:70],
        )
    console.print(table)


@click.command("recommend")
@click.argument("user")
@click.option(
    "--rated",
    "n_rated",
    type=click.IntRange(0),
    default=10,
    show_default=True,
    help="How many of the user's top-rated products to show.",
)
@click.pass_context
def recommend_command(ctx, user, n_rated) -> None:
    """Show USER's top-rated products, then their current recommendations (as apps read them)."""
    engine = open_engine(_settings(ctx))
    with engine.connect() as conn:
        rated, recommended = show_recommendations(conn, user, n_rated)
    print_recommendations(user, rated, recommended)


@click.command("demo")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where the sample files go.",
)
@click.option("--users", type=click.IntRange(10), default=2000, show_default=True)
@click.option("--products", type=click.IntRange(20), default=500, show_default=True)
@click.option("--ratings", type=click.IntRange(100), default=40000, show_default=True)
@click.option("--model", default=None, help=_model_help())
@click.option(
    "--epochs", type=click.IntRange(1), default=None, help="Epochs (models that take them)."
)
@click.option("--batch-size", type=click.IntRange(1), default=None)
@click.option("--hidden-units", type=click.IntRange(1), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def demo_command(
    ctx, workdir, users, products, ratings, model, epochs, batch_size, hidden_units, seed
) -> None:
    """The whole nightly job on a generated sample: generate, load, features, train, score, publish.

    The default nightly model (``auto`` unless --model) with the default training filter;
    the protocol evaluation is skipped to keep it short. Ends by printing one user's
    recommendations.
    """
    from recsys import pipeline
    from recsys.ingest.load import load_files
    from recsys.ingest.sample import write_sample

    settings = _settings(ctx)
    engine = open_engine(settings)
    sample_dir = Path(workdir) / "sample"
    click.echo(f"-> writing a sample of {ratings:,} ratings into {sample_dir}", err=True)
    files = write_sample(sample_dir, users=users, products=products, ratings=ratings, seed=seed)

    def load_step(step_ctx) -> dict:
        summaries = load_files(
            step_ctx.engine,
            step_ctx.settings,
            ratings=[files.ratings_path],
            metadata=[files.metadata_path],
            skip_loaded=True,
        )
        return {"files": len(summaries)}

    steps = [
        pipeline.Step("load", load_step),
        *[s for s in pipeline.DEFAULT_STEPS if s.name != "load"],
    ]
    options = replace(
        pipeline.PipelineOptions(),
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        hidden_units=hidden_units,
        evaluate=False,
        seed=seed,
    )
    result = pipeline.run(engine, settings, options, trigger="demo", steps=steps, on_step=_on_step)
    _print_pipeline(result)
    with engine.connect() as conn:
        # the most active user with a model list: their rated products say the most
        user = conn.execute(
            sa.text(
                "SELECT u.external_id FROM users u JOIN ratings r ON r.user_id = u.id "
                "WHERE EXISTS (SELECT 1 FROM current_recommendations c "
                "WHERE c.user_external_id = u.external_id AND c.strategy = 'model') "
                "GROUP BY u.id ORDER BY count(*) DESC, u.id LIMIT 1"
            )
        ).scalar()
        if user is None:
            raise RecsysError("the demo published no model recommendations")
        rated, recommended = show_recommendations(conn, user)
    print_recommendations(user, rated, recommended)
    click.echo(
        f"\nread them with SQL: SELECT * FROM current_recommendations WHERE "
        f"user_external_id = '{user}' ORDER BY rank;",
        err=True,
    )


COMMANDS: list[click.Command] = [
    score_command,
    publish_command,
    run_command,
    schedule_command,
    recommend_command,
    demo_command,
]
