"""``recsys load-db`` and ``recsys sample``: getting data in."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from recsys.config import Settings
from recsys.errors import InputError, RecsysError


def _print_summaries(summaries) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="load-db")
    numbers = {"read", "loaded", "merged", "rejected", "seconds"}
    for column in ("file", "format", "status", "read", "loaded", "merged", "rejected", "seconds"):
        table.add_column(column, justify="right" if column in numbers else "left", no_wrap=True)
    for s in summaries:
        table.add_row(
            Path(s.path).name,
            s.format,
            s.status,
            f"{s.rows_read:,}",
            f"{s.rows_loaded:,}",
            f"{s.rows_merged:,}",
            f"{s.rows_rejected:,}",
            f"{s.seconds:.1f}",
        )
    # not a terminal (a log, a pipe): wide enough that nothing is cut
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table)
    for s in summaries:
        for r in s.rejects:
            raw = r.raw_line if len(r.raw_line) <= 80 else r.raw_line[:77] + "..."
            click.echo(f"rejected {Path(s.path).name}:{r.line_no}: {r.reason}: {raw!r}", err=True)
        if s.rows_rejected > len(s.rejects):
            click.echo(
                f"... {s.rows_rejected - len(s.rejects)} more rejected lines of {Path(s.path).name}"
                f" in rejected_rows (load_id {s.load_id})",
                err=True,
            )


@click.command("load-db")
@click.option(
    "--ratings",
    "ratings",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Rating file (repeatable).",
)
@click.option(
    "--metadata",
    "metadata",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Product metadata file (repeatable).",
)
@click.option("--format", "fmt", default=None, help="Force this format instead of detecting it.")
@click.option(
    "--max-reject-rate",
    type=float,
    default=None,
    help="Share of bad lines above which a file is rolled back (default 0.01).",
)
@click.option(
    "--embeddings",
    type=click.Path(path_type=Path),
    default=None,
    help="Import pre-computed product vectors.",
)
@click.option("--name", default=None, help="Feature-set name for --embeddings.")
@click.pass_context
def load_db(ctx, ratings, metadata, fmt, max_reject_rate, embeddings, name) -> None:
    """Load ratings and product metadata files (format detected from the content)."""
    from recsys.commands.database import open_engine
    from recsys.ingest.load import load_files, plan_files
    from recsys.progress import progress_for_terminal

    settings: Settings = ctx.find_root().obj
    if not ratings and not metadata and embeddings is None:
        raise click.UsageError("give at least one --ratings, --metadata or --embeddings file")
    if embeddings is not None and not name:
        raise click.UsageError("--embeddings needs --name (the feature set's name)")
    # check every file before touching the database: a typo fails fast, with one line
    plan_files(ratings=ratings, metadata=metadata, fmt=fmt)
    engine = open_engine(settings)
    summaries = load_files(
        engine,
        settings,
        ratings=ratings,
        metadata=metadata,
        fmt=fmt,
        max_reject_rate=max_reject_rate,
        progress=progress_for_terminal(),
    )
    if embeddings is not None:
        try:
            from recsys.features.importer import import_embeddings
        except ImportError as err:
            raise RecsysError(f"importing embeddings is not available: {err}") from err
        summaries.append(import_embeddings(engine, settings, embeddings, name))
    _print_summaries(summaries)
    failed = [s for s in summaries if s.status == "failed"]
    if failed:
        raise InputError("; ".join(f"{Path(s.path).name}: {s.message}" for s in failed))


@click.command("sample")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--users", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--products", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--ratings", type=click.IntRange(min=1), default=50000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--activity-sigma",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="Skew of user activity (log-normal sigma).",
)
def sample(
    out: Path, users: int, products: int, ratings: int, seed: int, activity_sigma: float
) -> None:
    """Write a synthetic dataset with planted structure (ratings CSV + metadata JSON lines)."""
    from recsys.ingest.sample import write_sample

    files = write_sample(
        out,
        users=users,
        products=products,
        ratings=ratings,
        seed=seed,
        activity_sigma=activity_sigma,
    )
    click.echo(f"ratings:  {files.ratings_path}")
    click.echo(f"metadata: {files.metadata_path}")
    click.echo(f"truth:    {files.truth_path}")


COMMANDS: list[click.Command] = [load_db, sample]
