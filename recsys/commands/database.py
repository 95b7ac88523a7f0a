"""``recsys db ...`` and ``recsys init-db``: the database itself."""

from __future__ import annotations

import click

from recsys.config import Settings
from recsys.db import engine as db


def open_engine(settings: Settings, *, migrate: bool = True):
    """The engine for commands: connects (starting the embedded server if needed) and migrates.

    Every command that touches tables calls this, so migrations are applied automatically.
    """
    engine = db.create_engine(settings)
    if migrate:
        db.ensure_schema(engine)
    return engine


@click.group("db")
def db_group() -> None:
    """Manage the database (the embedded server when RECSYS_DATABASE_URL is unset)."""


@db_group.command("status")
@click.pass_context
def db_status(ctx: click.Context) -> None:
    """Show which database recsys uses and whether it is up and migrated."""
    settings: Settings = ctx.find_root().obj
    if settings.database_url:
        click.echo(f"database: external {db.redact(settings.database_url)}")
        engine = db.engine_for_url(settings.database_url)
    else:
        status = db.embedded_status(settings)
        state = (
            "running" if status.running else ("stopped" if status.initialised else "not created")
        )
        click.echo(f"database: embedded PostgreSQL in {status.pgdata} ({state})")
        if not status.running:
            return
        click.echo(f"pid: {status.pid}")
        engine = db.create_engine(settings)
    with engine.connect() as conn:
        current = db.current_revision(conn)
    head = db.head_revision()
    click.echo(f"schema: {current or 'empty'} (latest {head})")


@db_group.command("start")
@click.pass_context
def db_start(ctx: click.Context) -> None:
    """Start the embedded server (reuses a running one) and migrate it."""
    settings: Settings = ctx.find_root().obj
    if settings.database_url:
        click.echo(
            f"RECSYS_DATABASE_URL is set ({db.redact(settings.database_url)}): nothing to start"
        )
        return
    open_engine(settings)
    click.echo(f"embedded PostgreSQL running in {db.pgdata_dir(settings)}")


@db_group.command("stop")
@click.pass_context
def db_stop(ctx: click.Context) -> None:
    """Stop the embedded server."""
    settings: Settings = ctx.find_root().obj
    if settings.database_url:
        click.echo("RECSYS_DATABASE_URL is set: recsys does not manage that server")
        return
    stopped = db.stop_embedded(settings)
    click.echo("stopped" if stopped else "not running")


@db_group.command("url")
@click.option("--show-password", is_flag=True, help="Print the password too (for scripts).")
@click.pass_context
def db_url(ctx: click.Context, show_password: bool) -> None:
    """Print the database URL (the password hidden unless asked)."""
    settings: Settings = ctx.find_root().obj
    url = db.database_url(settings)
    click.echo(url if show_password else db.redact(url))


@db_group.command("create-reader")
@click.argument("name")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    envvar="RECSYS_READER_PASSWORD",
    help="Or RECSYS_READER_PASSWORD; prompted if unset.",
)
@click.pass_context
def db_create_reader(ctx: click.Context, name: str, password: str) -> None:
    """Create login role NAME that can SELECT current_recommendations and nothing else."""
    from recsys.db.roles import create_reader

    with open_engine(ctx.find_root().obj).begin() as conn:
        created = create_reader(conn, name, password)
    verb = "created" if created else "updated"
    click.echo(f"{verb} role {name}: SELECT on current_recommendations only")


@click.command("init-db")
@click.pass_context
def init_db(ctx: click.Context) -> None:
    """Create or upgrade the schema to the latest migration."""
    settings: Settings = ctx.find_root().obj
    engine = open_engine(settings)
    with engine.connect() as conn:
        click.echo(f"schema at {db.current_revision(conn)}")


COMMANDS: list[click.Command] = [db_group, init_db]
