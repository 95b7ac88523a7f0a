"""The schema the migrations build, against what the code and the SQL files say it is.

* The SQLAlchemy models (``recsys.db.models``) describe every table, column, type and index the
  migrations create (Alembic's ``compare_metadata``), except the tables another library owns.
* Each ``sql/views/*.sql`` file defines the view exactly as the migrations create it.
* Every ``sql/queries/*.sql`` runs against a migrated database with a published run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from test_nightly_support import add_catalogue, trained_model

from recsys.db.models import Base
from recsys.scoring.score import ScoreOptions, score_and_write

REPO_ROOT = Path(__file__).resolve().parents[1]
VIEWS = sorted((REPO_ROOT / "sql" / "views").glob("*.sql"))
QUERIES = sorted((REPO_ROOT / "sql" / "queries").glob("*.sql"))

# tables the migrations create that the models deliberately leave out: table -> reason
NOT_MODELLED = {
    "apscheduler_jobs": "APScheduler's job store: the library's layout (checked on its own below)",
}


def _differences(conn: sa.Connection, metadata: sa.MetaData, include) -> list:
    context = MigrationContext.configure(
        conn,
        opts={"compare_type": True, "compare_server_default": True, "include_object": include},
    )
    return compare_metadata(context, metadata)


def _table_of(obj, name: str, type_: str) -> str | None:
    if type_ == "table":
        return name
    table = getattr(obj, "table", None)
    return getattr(table, "name", None)


def test_models_match_the_migrated_schema(conn: sa.Connection) -> None:
    def include(obj, name, type_, reflected, compare_to) -> bool:
        return _table_of(obj, name, type_) not in NOT_MODELLED

    differences = _differences(conn, Base.metadata, include)
    assert differences == [], "recsys/db/models.py and the migrations differ:\n" + "\n".join(
        map(str, differences)
    )
    # the exceptions are real tables, so the list cannot outlive them
    assert set(NOT_MODELLED) <= set(sa.inspect(conn).get_table_names())


def test_scheduler_table_is_the_one_apscheduler_creates(conn: sa.Connection) -> None:
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    store = SQLAlchemyJobStore(engine=conn.engine, tablename="apscheduler_jobs")

    def include(obj, name, type_, reflected, compare_to) -> bool:
        return _table_of(obj, name, type_) == "apscheduler_jobs"

    differences = _differences(conn, store.jobs_t.metadata, include)
    assert differences == [], "\n".join(map(str, differences))


def _view_name(sql_text: str) -> str:
    found = re.search(r"CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+([a-z_][a-z0-9_]*)", sql_text, re.I)
    assert found, "no CREATE VIEW in the file"
    return found.group(1)


def _view_columns(conn: sa.Connection, schema: str, name: str) -> list[tuple[str, str]]:
    return [
        tuple(row)
        for row in conn.execute(
            sa.text(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :s AND c.relname = :v AND a.attnum > 0 ORDER BY a.attnum"
            ),
            {"s": schema, "v": name},
        )
    ]


def test_there_is_a_file_for_every_migrated_view(conn: sa.Connection) -> None:
    migrated = set(sa.inspect(conn).get_view_names())
    assert migrated == {_view_name(path.read_text()) for path in VIEWS}


@pytest.mark.parametrize("path", VIEWS, ids=[p.name for p in VIEWS])
def test_view_file_equals_the_migrated_view(conn: sa.Connection, path: Path) -> None:
    text = path.read_text()
    name = _view_name(text)
    # the file's definition, built in a scratch schema over the same tables
    conn.exec_driver_sql("CREATE SCHEMA view_file_check")
    conn.exec_driver_sql("SET LOCAL search_path = view_file_check, public")
    conn.exec_driver_sql(text)
    conn.exec_driver_sql("SET LOCAL search_path = public")

    def definition(schema: str) -> str:
        return conn.execute(
            sa.text("SELECT pg_get_viewdef(CAST(:v AS regclass), true)"), {"v": f"{schema}.{name}"}
        ).scalar_one()

    assert definition("view_file_check") == definition("public")
    assert _view_columns(conn, "view_file_check", name) == _view_columns(conn, "public", name)


def _statements(sql_text: str) -> list[str]:
    """The file's statements: comment lines dropped, split at the semicolons that end them."""
    lines = [line for line in sql_text.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


@pytest.fixture
def published(engine: sa.Engine) -> tuple[sa.Engine, str]:
    """A database with a catalogue, ratings and a published run of k=5 lists."""
    with engine.begin() as conn:
        add_catalogue(conn, n_users=20, n_products=30, n_ratings=200, seed=7)
    with engine.connect() as conn:
        model = trained_model(conn)
    score_and_write(engine, model, ScoreOptions(k=5))
    with engine.connect() as conn:
        user = conn.execute(
            sa.text("SELECT user_external_id FROM current_recommendations LIMIT 1")
        ).scalar_one()
    return engine, user


def test_every_query_file_has_statements() -> None:
    assert QUERIES, "no files in sql/queries"
    for path in QUERIES:
        assert _statements(path.read_text()), path.name


@pytest.mark.parametrize("path", QUERIES, ids=[p.name for p in QUERIES])
def test_query_file_runs_on_a_published_run(published, path: Path) -> None:
    engine, user = published
    # psql variables (``:name``, set with ``psql -v``) become bound parameters
    values = {"user": user}
    with engine.connect() as conn:
        for statement in _statements(path.read_text()):
            names = set(re.findall(r"(?<!:):([a-z_]+)\b", statement))
            assert names <= set(values), f"{path.name}: no test value for {names - set(values)}"
            rows = conn.execute(sa.text(statement), {n: values[n] for n in names}).all()
            assert rows, f"{path.name}: no rows from\n{statement}"
            if names == {"user"}:
                assert [row.rank for row in rows] == [1, 2, 3, 4, 5]
