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
    "--password-file",
    type=click.File("r", encoding="utf-8"),
    default=None,
    help="Read the password from the first line of this file ('-': standard input).",
)
@click.option("--password", "password_arg", default=None, hidden=True)
@click.pass_context
def db_create_reader(
    ctx: click.Context, name: str, password_file, password_arg: str | None
) -> None:
    """Create login role NAME that can SELECT current_recommendations and nothing else.

    The password comes from --password-file, else RECSYS_READER_PASSWORD, else a hidden prompt
    (asked twice). A password on the command line would show in `ps` and shell history, so
    --password is refused.
    """
    import os

    from recsys.db.roles import check_role_name, create_reader
    from recsys.errors import InputError

    if password_arg is not None:
        raise InputError(
            "--password is refused: a password on the command line shows in ps and shell "
            "history; use --password-file, RECSYS_READER_PASSWORD or the prompt"
        )
    check_role_name(name)  # before the prompt and before anything reaches the server
    if password_file is not None:
        password = password_file.readline().rstrip("\r\n")
        if not password:
            raise InputError(f"{password_file.name}: the first line (the password) is empty")
    elif os.environ.get("RECSYS_READER_PASSWORD"):
        password = os.environ["RECSYS_READER_PASSWORD"]
    else:
        password = click.prompt(
            f"Password for {name}", hide_input=True, confirmation_prompt=True, err=True
        )
    settings: Settings = ctx.find_root().obj
    with open_engine(settings).begin() as conn:
        result = create_reader(conn, name, password, own_server=not settings.database_url)
    verb = "created" if result.created else "updated"
    click.echo(f"{verb} role {name}: SELECT on current_recommendations only")
    for note in result.notes:
        click.echo(f"  {note}")


@click.command("init-db")
@click.pass_context
def init_db(ctx: click.Context) -> None:
    """Create or upgrade the schema to the latest migration."""
    settings: Settings = ctx.find_root().obj
    engine = open_engine(settings)
    with engine.connect() as conn:
        click.echo(f"schema at {db.current_revision(conn)}")


COMMANDS: list[click.Command] = [db_group, init_db]
