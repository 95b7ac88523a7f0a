"""``recsys load-db`` and ``recsys sample``: getting data in."""

from __future__ import annotations

import os
from pathlib import Path

import click

from recsys.config import Settings
from recsys.errors import InputError, RecsysError


def _print_summaries(summaries) -> None:
    from rich.table import Table

    from recsys.progress import console

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
    console(wide=True).print(table)
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


def _print_availability(result) -> None:
    click.echo(
        f"availability: {result.products:,} products ({result.unavailable:,} unavailable), "
        f"{result.changed:,} changed"
    )


_FILE_LIST_OPTIONS = ("--ratings", "--metadata")


class _FileListCommand(click.Command):
    """A command whose ``--ratings`` and ``--metadata`` each take one or more files.

    ``--metadata movies.csv tags.csv`` (what a shell glob expands to) is rewritten to
    ``--metadata movies.csv --metadata tags.csv`` before click parses it: every argument after
    one of these flags that does not start with ``-`` belongs to it, up to the next option or
    ``--``. Files given before any such flag, or after ``--``, are positional.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _expand_file_lists(args))


def _expand_file_lists(args: list[str]) -> list[str]:
    expanded: list[str] = []
    owner: str | None = None  # the file-list flag that bare arguments belong to now
    needs_value = False  # owner was just given without "=": its first value follows
    for index, arg in enumerate(args):
        if arg == "--":
            expanded.extend(args[index:])
            break
        if arg.startswith("-") and arg != "-":
            flag, equals, _ = arg.partition("=")
            owner = flag if flag in _FILE_LIST_OPTIONS else None
            needs_value = owner is not None and not equals
            expanded.append(arg)
        elif owner is not None and not needs_value:
            expanded.extend((owner, arg))
        else:
            expanded.append(arg)
            needs_value = False
    return expanded


def _split_by_kind(
    files: tuple[Path, ...], fmt: str | None, max_line_bytes: int
) -> tuple[list[Path], list[Path]]:
    """Positional files sorted into ratings and metadata by their content (or ``--format``)."""
    from recsys.ingest.detect import detect_format, get_format

    ratings: list[Path] = []
    metadata: list[Path] = []
    for path in files:
        kind = (
            get_format(fmt).kind
            if fmt is not None
            else detect_format(path, max_line_bytes=max_line_bytes)[0]
        )
        (ratings if kind == "ratings" else metadata).append(path)
    return ratings, metadata


def _unique(paths: list[Path]) -> list[Path]:
    """``paths`` without repeats of one file (a glob and an explicit name, say), in order."""
    seen: set[Path] = set()
    kept: list[Path] = []
    for path in paths:
        key = Path(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            kept.append(path)
    return kept


@click.command("load-db", cls=_FileListCommand)
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--ratings",
    "ratings",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Rating file(s): --ratings a.csv b.csv, or repeat the flag.",
)
@click.option(
    "--metadata",
    "metadata",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Product metadata file(s): --metadata movies.csv tags.csv, or repeat the flag.",
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
@click.option(
    "--availability",
    type=click.Path(path_type=Path),
    default=None,
    help="CSV asin,available: set products.available (unknown asins reject the file).",
)
@click.pass_context
def load_db(
    ctx, files, ratings, metadata, fmt, max_reject_rate, embeddings, name, availability
) -> None:
    """Load rating and product metadata FILES (kind and format detected from the content).

    Files given as plain arguments are sorted into ratings and metadata by their content;
    --ratings and --metadata say the kind (and check it). Metadata loads first; an
    --availability file is applied after the loads.
    """
    from recsys.commands.database import open_engine
    from recsys.ingest.load import load_files, plan_files
    from recsys.progress import progress_for_terminal

    settings: Settings = ctx.find_root().obj
    nothing_to_load = not files and not ratings and not metadata and embeddings is None
    if nothing_to_load and availability is None:
        raise click.UsageError(
            "give at least one --ratings, --metadata, --embeddings or --availability file, "
            "or FILE arguments"
        )
    if nothing_to_load:
        from recsys.scoring.rules import load_availability

        _print_availability(load_availability(open_engine(settings), availability))
        return
    if embeddings is not None and not name:
        raise click.UsageError("--embeddings needs --name (the feature set's name)")
    found_ratings, found_metadata = _split_by_kind(files, fmt, settings.max_line_bytes)
    ratings = _unique([*ratings, *found_ratings])
    metadata = _unique([*metadata, *found_metadata])
    # check every file before touching the database: a typo fails fast, with one line
    plan_files(ratings=ratings, metadata=metadata, fmt=fmt, max_line_bytes=settings.max_line_bytes)
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
    if availability is not None:
        from recsys.scoring.rules import load_availability

        _print_availability(load_availability(engine, availability))
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
