"""The nightly batch: ``score``, ``publish``, ``run``, ``schedule``, ``recommend``, ``demo``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from recsys.commands.database import open_engine
from recsys.commands.engine import ENGINE_OPTIONS, engine_options
from recsys.config import Settings
from recsys.progress import console, progress_for_terminal


def _settings(ctx: click.Context) -> Settings:
    return ctx.find_root().obj


def _console():
    return console(wide=True)


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
    from recsys import pipeline
    from recsys.cluster.engine import check_engine
    from recsys.cluster.engine import engine_options as engine_options_from
    from recsys.scoring.score import ScoreOptions

    settings = _settings(ctx)
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
    summary = pipeline.score(
        open_engine(settings),
        settings,
        options,
        model_run=model_run,
        publish=publish,
        progress=progress_for_terminal(),
        cluster=cluster_options,
    )
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
    from recsys import pipeline
    from recsys.scoring.publish import format_gates

    settings = _settings(ctx)
    engine = open_engine(settings)
    if list_runs:
        from rich.table import Table

        runs = pipeline.recommendation_runs(engine)
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
                format_gates(r.gates),
            )
        _console().print(table)
        return
    if rollback and run_id is not None:
        raise click.UsageError("--rollback and --run are exclusive")
    if rollback and force:
        raise click.UsageError("--force applies to --run, not --rollback")
    if rollback:
        served, previous = pipeline.rollback(engine)
        click.echo(f"rolled back: serving run {served} again (was {previous})")
        return
    published = pipeline.publish(engine, settings, run_id, force=force)
    forced = " (forced past its failed gates)" if published.gates["forced"] else ""
    click.echo(f"serving recommendation run {published.run_id} (was {published.previous}){forced}")


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
            default=None,
            help="Measure the model on both protocols after training (the measure step). "
            "Default: only when it trains on at most 500,000 ratings.",
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
    """The nightly pipeline: load inbox, features, train, measure, verify, score, publish.

    Each step is recorded in pipeline_runs / pipeline_steps. A second concurrent run exits at
    once (exit 2). A failed step stops the run and leaves the served recommendations as they
    were.
    """
    from recsys import pipeline
    from recsys.cluster.engine import check_engine, engine_options

    settings = _settings(ctx)
    engine = open_engine(settings)
    if history:
        for r in pipeline.history(engine):
            steps = " ".join(
                f"{s['step']}:{s['status']}" + (f"({s['seconds']:.0f}s)" if s["seconds"] else "")
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


def print_recommendations(found) -> None:
    """Render a :class:`recsys.scoring.served.UserRecommendations` as two tables."""
    from rich.table import Table

    user, rated, recommended = found.user, found.rated, found.recommended
    out = _console()
    table = Table(title=f"user {user}: top-rated products")
    for column in ("rating", "product", "title", "brand"):
        table.add_column(column)
    for r in rated:
        table.add_row(f"{r.rating:g}", r.asin, (r.title or "")[:60], r.brand or "")
    out.print(table)
    if not recommended:
        out.print(f"user {user} has no list in the published run (new since it was scored)")
        return
    generated = recommended[0].generated_at
    table = Table(title=f"user {user}: recommendations (generated {generated:%Y-%m-%d %H:%M})")
    for column in ("rank", "product", "title", "brand", "score", "strategy", "reason"):
        table.add_column(column)
    for r in recommended:
        table.add_row(
            str(r.rank),
            r.asin,
            (r.title or "")[:60],
            r.brand or "",
            f"{r.score:.4g}",
            r.strategy,
            (r.reason or "")[:70],
        )
    out.print(table)


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
    from recsys import pipeline

    print_recommendations(pipeline.recommendations_for(open_engine(_settings(ctx)), user, n_rated))


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

    settings = _settings(ctx)
    sample_dir = Path(workdir) / "sample"
    click.echo(f"-> writing a sample of {ratings:,} ratings into {sample_dir}", err=True)
    options = replace(
        pipeline.PipelineOptions(),
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        hidden_units=hidden_units,
        evaluate=False,
        seed=seed,
    )
    result, found = pipeline.demo(
        open_engine(settings),
        settings,
        sample_dir,
        pipeline.SampleSize(users=users, products=products, ratings=ratings),
        options,
        on_step=_on_step,
    )
    _print_pipeline(result)
    print_recommendations(found)
    user = found.user
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
