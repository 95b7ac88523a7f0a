"""The database layer: settings, embedded server, migrations up and down, password hygiene."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from recsys.cli import cli
from recsys.config import Settings
from recsys.db import engine as db

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_postgres_urls_use_psycopg3() -> None:
    assert (
        Settings(database_url="postgres://a:b@h/d").database_url == "postgresql+psycopg://a:b@h/d"
    )
    assert Settings(database_url="postgresql://h/d").database_url == "postgresql+psycopg://h/d"
    assert Settings(database_url="").database_url is None


def test_redact_hides_password() -> None:
    assert "s3cret" not in db.redact("postgresql+psycopg://me:s3cret@host:5432/db")
    assert db.redact("postgresql+psycopg://me:s3cret@host:5432/db").startswith(
        "postgresql+psycopg://me:***@"
    )


def test_unreachable_database_is_one_line_without_password(tmp_path: Path) -> None:
    env = {
        "RECSYS_DATABASE_URL": "postgresql://me:s3cret@127.0.0.1:9/nodb",
        "RECSYS_HOME": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "recsys", "init-db"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "s3cret" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[0].startswith("recsys: error: cannot connect to database")
    assert "Traceback" not in result.stderr


def test_migrations_go_up_and_down(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert db.current_revision(conn) == db.head_revision()
    db.downgrade(engine, "base")
    with engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
        assert db.current_revision(conn) is None
    assert tables <= {"alembic_version"}
    db.migrate(engine)
    with engine.connect() as conn:
        assert {"users", "products", "ratings", "loads", "rejected_rows"} <= set(
            sa.inspect(conn).get_table_names()
        )
        assert db.current_revision(conn) == db.head_revision()


def test_every_revision_downgrades_one_step(engine: sa.Engine) -> None:
    from alembic.script import ScriptDirectory

    revisions = list(ScriptDirectory.from_config(db.alembic_config()).walk_revisions())
    for rev in revisions:  # newest first
        db.downgrade(engine, rev.down_revision or "base")
    db.migrate(engine)
    with engine.connect() as conn:
        assert db.current_revision(conn) == db.head_revision()


def test_app_readers_keep_the_view_across_the_rules_revision(engine: sa.Engine) -> None:
    """0006 recreates current_recommendations: a reader granted the old view may read both views."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    db.downgrade(engine, "0005")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE ROLE "{role}"'))
            conn.execute(sa.text(f'GRANT SELECT ON current_recommendations TO "{role}"'))
        db.migrate(engine)

        def can_select(view: str) -> bool:
            with engine.connect() as conn:
                return bool(
                    conn.execute(
                        sa.text("SELECT has_table_privilege(:r, :v, 'SELECT')"),
                        {"r": role, "v": view},
                    ).scalar()
                )

        assert can_select("current_recommendations")
        assert can_select("current_similar_products")
        db.downgrade(engine, "0005")
        assert can_select("current_recommendations")
        db.migrate(engine)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
            conn.execute(sa.text(f'DROP ROLE "{role}"'))


def test_alembic_command_line_upgrades(db_url: str, tmp_path: Path) -> None:
    alembic = Path(sys.executable).with_name("alembic")
    result = subprocess.run(
        [str(alembic), "upgrade", "head"],
        cwd=REPO_ROOT,
        env={**os.environ, "RECSYS_DATABASE_URL": db_url, "RECSYS_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_embedded_server_starts_reuses_and_stops(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    url = db.start_embedded(settings)
    try:
        assert db.embedded_status(settings).running
        assert db.start_embedded(settings) == url  # reused, not a second server
        engine = db.create_engine(settings)
        db.ensure_schema(engine)
        with engine.connect() as conn:
            assert conn.execute(
                sa.text("SELECT extversion FROM pg_extension WHERE extname='vector'")
            ).scalar()
        engine.dispose()
    finally:
        assert db.stop_embedded(settings)
    assert not db.embedded_status(settings).running


def test_cli_db_commands(tmp_path: Path) -> None:
    env = {"RECSYS_HOME": str(tmp_path / "home"), "RECSYS_DATABASE_URL": ""}
    runner = CliRunner()
    try:
        result = runner.invoke(cli, ["db", "start"], env=env)
        assert result.exit_code == 0, result.output
        result = runner.invoke(cli, ["db", "status"], env=env)
        assert "running" in result.output and f"schema: {db.head_revision()}" in result.output
        result = runner.invoke(cli, ["db", "url"], env=env)
        assert result.output.startswith("postgresql+psycopg://")
    finally:
        result = runner.invoke(cli, ["db", "stop"], env=env)
    assert result.output.strip() == "stopped"


def _compose_command() -> list[str] | None:
    """``docker-compose`` (Debian's package), else the ``docker compose`` plugin, else None."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") is not None:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.mark.subprocess
@pytest.mark.skipif(
    _compose_command() is None,
    reason="neither docker-compose nor the docker compose plugin is installed "
    "(make test installs Debian's docker-compose when run as root)",
)
def test_docker_compose_file_parses() -> None:
    result = subprocess.run(
        [*(_compose_command() or []), "-f", str(REPO_ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "RECSYS_DB_PASSWORD"},
    )
    assert result.returncode == 0, result.stderr
    import yaml

    resolved = yaml.safe_load(result.stdout)["services"]["recsys"]
    assert Path(resolved["build"]["context"]) == REPO_ROOT
    assert resolved["environment"]["RECSYS_DATABASE_URL"].startswith(
        "postgresql://recsys:recsys@db"
    )


def test_compose_recsys_service_runs_the_built_image() -> None:
    import yaml

    service = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["recsys"]
    assert service["build"] == "."
    assert "pip install" not in service["command"]  # installed once, in the image
    assert not any(v.split(":")[0] in {".", "./"} for v in service.get("volumes", []))


def test_dockerfile_installs_recsys_from_its_wheel() -> None:
    lines = [
        line.strip()
        for line in (REPO_ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    copied = " ".join(line for line in lines[: lines.index(stages[1])] if line.startswith("COPY"))
    for source in ("pyproject.toml", "setup.py", "README.md", "alembic", "recsys"):
        assert source in copied.split(), f"the build stage does not copy {source}"
    assert any("pip wheel" in line for line in lines)
    runtime = lines[lines.index(stages[1]) :]
    assert any("COPY --from=build" in line for line in runtime)
    assert any("pip install" in line and ".whl" in line for line in runtime)


def test_docker_compose_file_has_pgvector_and_scheduler() -> None:
    import yaml

    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["db"]["image"].startswith("pgvector/pgvector")
    assert "recsys schedule" in services["recsys"]["command"]
    assert services["recsys"]["environment"]["RECSYS_DATABASE_URL"].startswith("postgresql://")
