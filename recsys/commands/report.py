"""``recsys report``: the HTML report of a pipeline run."""

from __future__ import annotations

from pathlib import Path

import click

from recsys.commands.database import open_engine
from recsys.config import Settings


@click.command("report")
@click.option(
    "--run",
    "run_id",
    type=click.IntRange(1),
    default=None,
    help="Pipeline run (see `recsys run --history`; default: the latest).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the page (default: RECSYS_HOME/reports/<run>.html).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the users drawn for the samples and the overlap.",
)
@click.pass_context
def report_command(ctx: click.Context, run_id: int | None, out: Path | None, seed: int) -> None:
    """Write one static HTML page about a nightly run: steps, training, quality, the lists."""
    from recsys.report import write_report

    settings: Settings = ctx.find_root().obj
    engine = open_engine(settings)
    path = write_report(engine, settings.home, run_id, out, seed=seed)
    click.echo(f"report: {path}")


COMMANDS: list[click.Command] = [report_command]
