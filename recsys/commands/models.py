"""``recsys train``, ``recsys evaluate`` and ``recsys runs list|show``: models and their registry.

TensorFlow is imported only when a Keras model is actually built (inside the model code), so
these commands' ``--help`` stays instant.
"""

from __future__ import annotations

import json
import os

import click

from recsys.commands.engine import engine_options
from recsys.config import Settings


def _default_evaluate() -> str:
    from recsys.model import catalog

    return ",".join(catalog.EVALUATE_DEFAULT)


def _console():
    from recsys.progress import console

    return console(highlight=False)


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ start-up chatter is not progress; keep errors only
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _model_options(func):
    options = [
        click.option(
            "--epochs",
            type=click.IntRange(min=1),
            help="Maximum epochs (Keras models; default 20).",
        ),
        click.option("--batch-size", type=click.IntRange(min=1), help="Batch size (default 1024)."),
        click.option(
            "--learning-rate",
            type=click.FloatRange(min=0, min_open=True),
            help="SGD learning rate (default 0.1).",
        ),
        click.option(
            "--embedding-dim", type=click.IntRange(min=1), help="K (default mf 10, deep/hybrid 32)."
        ),
        click.option(
            "--hidden-units",
            type=click.IntRange(min=1),
            help="Width of the Dense layer (default 1024).",
        ),
        click.option(
            "--min-ratings",
            type=click.IntRange(min=0),
            default=None,
            help="Keep users and products with MORE than this many ratings (0: all; default: "
            "adaptive, every rating up to 2M ratings, see README).",
        ),
        click.option(
            "--seed", type=int, default=0, show_default=True, help="Random seed (deterministic)."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _options(kwargs: dict) -> dict:
    return {
        k: kwargs[k]
        for k in ("epochs", "batch_size", "learning_rate", "embedding_dim", "hidden_units")
    }


def _catalogue_names() -> str:
    from recsys.model import catalog

    return ", ".join(
        n + (f" (recsys[{s.extra}])" if s.extra else "") for n, s in catalog.SPECS.items()
    )


def _model_help() -> str:
    from recsys.model import catalog

    return "Model: " + catalog.help_text()


@click.command("train")
@click.option("--model", "model_name", default=None, help=_model_help())
@_model_options
@click.option(
    "--evaluate/--no-evaluate",
    default=True,
    show_default=True,
    help="Also run both evaluation protocols (two extra fits: about 2x the final fit).",
)
@click.option(
    "--feature-set",
    "feature_set",
    default="current",
    show_default=True,
    help="Feature set id for the text vectors, or 'current'.",
)
@engine_options
@click.pass_context
def train(
    ctx: click.Context,
    model_name: str | None,
    evaluate: bool,
    feature_set: str,
    engine: str | None,
    ray_address: str | None,
    **kwargs,
) -> None:
    """Train a model from the database and record the run in the model registry."""
    from recsys import pipeline
    from recsys.commands.database import open_engine
    from recsys.errors import RecsysError
    from recsys.model import catalog
    from recsys.model.train import TrainConfig

    _quiet_tensorflow()
    settings: Settings = ctx.find_root().obj
    name = model_name or catalog.DEFAULT_NIGHTLY_MODEL
    if feature_set != "current" and not feature_set.isdigit():
        raise RecsysError(f"--feature-set must be an id or 'current', got {feature_set!r}")
    config = TrainConfig(
        model=name,
        min_ratings=kwargs["min_ratings"],
        seed=kwargs["seed"],
        evaluate=evaluate,
        feature_set_id="current" if feature_set == "current" else int(feature_set),
        **_options(kwargs),
    )
    from recsys.cluster.engine import check_engine
    from recsys.cluster.engine import engine_options as engine_options_from

    cluster = check_engine(engine_options_from(settings, engine, ray_address))
    db = open_engine(settings)
    from recsys.progress import progress_for_terminal

    result = pipeline.train(db, settings, config, progress=progress_for_terminal(), cluster=cluster)
    out = _console()
    out.print(
        f"model run {result.run_id}: {result.model_type} trained on {result.n_ratings} ratings of "
        f"{result.n_users} users and {result.n_products} products in {result.seconds:.1f} s"
    )
    if result.history.train_loss:
        h = result.history
        out.print(
            f"epochs {len(h.train_loss)}, best {h.best_epoch} ({h.stopped_reason}); "
            f"final train loss {h.train_loss[-1]:.4f}"
            + (f", best val loss {min(h.val_loss):.4f}" if h.val_loss else "")
        )
    if result.metrics:
        out.print(_metrics_line(result.metrics))
    out.print(f"artifacts: {result.artifact_path}")


def _fmt(value: object, spec: str = ".4f") -> str:
    """A metric for display; None (NaN stored as JSON null) shows as '-'."""
    return "-" if value is None else format(value, spec)


def _metrics_line(metrics: dict) -> str:
    parts = []
    seed = metrics.get("seed") or {}
    if seed:
        parts.append(f"seed split RMSE {_fmt(seed.get('rmse'))} MAE {_fmt(seed.get('mae'))}")
    rank = metrics.get("rank") or {}
    if rank:
        parts.append(
            f"rank split Recall@10 {_fmt(rank.get('recall@10'))} "
            f"NDCG@10 {_fmt(rank.get('ndcg@10'))} "
            f"coverage@10 {_fmt(rank.get('coverage@10'))} "
            f"popularity pct {_fmt(rank.get('popularity_percentile'), '.3f')}"
        )
    internal = metrics.get("internal") or {}
    if internal:
        parts.append(
            f"internal split NDCG@10 {_fmt(internal.get('ndcg@10'))} "
            f"(popularity {_fmt(internal.get('popularity_ndcg@10'))}, seed {internal.get('seed')})"
        )
    return "; ".join(parts)


def _auto_lines(metrics: dict) -> list[str]:
    """``--model auto``'s candidates, one line each (empty when auto did not run)."""
    auto = metrics.get("auto") or {}
    if not auto:
        return []
    lines = [f"auto: chose {auto.get('chosen')} on the train-internal split"]
    for c in auto.get("candidates") or []:
        extra = f", weight {c['weight']:g}" if c.get("weight") is not None else ""
        mark = " *" if c.get("model") == auto.get("chosen") else ""
        lines.append(
            f"  {c.get('model'):<12} NDCG@10 {_fmt(c.get('ndcg@10'))}  "
            f"fit {_fmt(c.get('fit_seconds'), '.1f')} s{extra}{mark}"
        )
    for s in auto.get("skipped") or []:
        lines.append(f"  {s.get('model'):<12} skipped: {s.get('reason')}")
    return lines


@click.command("evaluate")
@click.option(
    "--models",
    default=_default_evaluate(),
    show_default=True,
    help="Comma-separated catalogue models to compare: " + _catalogue_names() + ".",
)
@_model_options
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write the results as JSON to this file.",
)
@click.pass_context
def evaluate(ctx: click.Context, models: str, json_path: str | None, **kwargs) -> None:
    """Train the models on the same splits and compare them on both protocols."""
    from recsys import pipeline
    from recsys.commands.database import open_engine
    from recsys.evaluation.protocol import metrics_table

    _quiet_tensorflow()
    settings: Settings = ctx.find_root().obj
    names = [n.strip() for n in models.split(",") if n.strip()]
    found = pipeline.evaluate(
        open_engine(settings),
        settings,
        names,
        options=_options(kwargs),
        min_ratings=kwargs["min_ratings"] or 0,
        seed=kwargs["seed"],
    )
    results = found.results
    title = (
        f"{found.n_ratings} ratings, {found.n_users} users, {found.n_products} products "
        f"(min_ratings {kwargs['min_ratings'] or 0}, seed {kwargs['seed']})"
    )
    _console().print(metrics_table(results, title=title))
    if json_path:
        payload = {r.model: r.as_dict() for r in results}
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)


@click.group("runs")
def runs() -> None:
    """The model registry: trained model runs."""


@runs.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.pass_context
def runs_list(ctx: click.Context, limit: int) -> None:
    """The newest model runs."""
    from rich.table import Table

    from recsys.commands.database import open_engine
    from recsys.model.registry import list_runs

    settings: Settings = ctx.find_root().obj
    engine = open_engine(settings)
    with engine.connect() as conn:
        rows = list_runs(conn, limit)
    if not rows:
        click.echo("no model runs yet; train one with `recsys train`")
        return
    table = Table(title="model runs")
    for column in ("id", "model", "status", "started", "ratings", "RMSE", "NDCG@10", "note"):
        table.add_column(column)
    for row in rows:
        metrics = row["metrics"] or {}
        seed = metrics.get("seed") or {}
        rank = metrics.get("rank") or {}
        table.add_row(
            str(row["id"]),
            row["model_type"],
            row["status"],
            row["started_at"].strftime("%Y-%m-%d %H:%M:%S"),
            str(row["n_ratings"] or "-"),
            f"{seed['rmse']:.4f}" if seed.get("rmse") is not None else "-",
            f"{rank['ndcg@10']:.4f}" if rank.get("ndcg@10") is not None else "-",
            row["failure_reason"] or "",
        )
    _console().print(table)


@runs.command("show")
@click.argument("run_id", type=int)
@click.pass_context
def runs_show(ctx: click.Context, run_id: int) -> None:
    """Everything recorded about one model run."""
    from recsys.commands.database import open_engine
    from recsys.model.registry import CURVE, get_run

    settings: Settings = ctx.find_root().obj
    engine = open_engine(settings)
    with engine.connect() as conn:
        row = get_run(conn, run_id)
    out = _console()
    for key in (
        "id",
        "model_type",
        "status",
        "failure_reason",
        "started_at",
        "finished_at",
        "n_users",
        "n_products",
        "n_ratings",
        "feature_set_id",
        "host",
        "pid",
        "artifact_path",
        "checksum",
    ):
        if row.get(key) is not None:
            out.print(f"{key}: {row[key]}")
    out.print(f"params: {json.dumps(row['params'], sort_keys=True)}")
    if row["metrics"]:
        out.print(f"metrics: {_metrics_line(row['metrics'])}")
        for line in _auto_lines(row["metrics"]):
            out.print(line)
    history = row["history"] or {}
    for epoch, loss in enumerate(history.get("train_loss") or [], start=1):
        val = (history.get("val_loss") or [])[epoch - 1 : epoch]
        out.print(
            f"epoch {epoch}: loss {loss:.4f}"
            + (f", val_loss {val[0]:.4f}" if val and val[0] is not None else "")
        )
    if row["artifact_path"]:
        out.print(f"training curve: {row['artifact_path']}/{CURVE}")


COMMANDS: list[click.Command] = [train, evaluate, runs]
