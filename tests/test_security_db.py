"""The embedded server as recsys sets it up: passwords are checked, the reader can read the view
and nothing else, cannot take or block the nightly lock, and passwords never leak.

These tests start recsys's own embedded server (``start_embedded`` with a temporary
``RECSYS_HOME``), not the test fixtures' server, and stop it at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from recsys.cli import cli
from recsys.config import Settings
from recsys.db import engine as db
from recsys.db.locks import FEATURES_LOCK, NIGHTLY_LOCK, advisory_lock
from recsys.db.roles import saslprep, scram_verifier
from recsys.errors import InputError, LockBusy, RecsysError

pytestmark = pytest.mark.slow

OLD_LOCK_NAMESPACE = 0x5EC5  # the two-key advisory lock the nightly job used to take


@dataclass
class Embedded:
    settings: Settings
    url: str
    env: dict[str, str | None]

    @property
    def pgdata(self) -> Path:
        return db.pgdata_dir(self.settings)

    @property
    def socket_dir(self) -> str:
        return str(make_url(self.url).query["host"])

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.url, poolclass=sa.NullPool)

    def connect(
        self, user: str, password: str | None, dbname: str = "recsys"
    ) -> psycopg.Connection:
        return psycopg.connect(
            host=self.socket_dir, user=user, password=password, dbname=dbname, connect_timeout=10
        )

    def log(self) -> str:
        return (self.pgdata / "log").read_text(errors="replace")


@pytest.fixture(scope="module")
def embedded() -> Iterator[Embedded]:
    home = Path(tempfile.mkdtemp(prefix="recsys-sec-")) / "home"
    settings = Settings(database_url=None, home=home)
    url = db.start_embedded(settings)
    engine = db.create_engine(settings)
    db.ensure_schema(engine)
    engine.dispose()
    env = {"RECSYS_HOME": str(home), "RECSYS_DATABASE_URL": None, "RECSYS_READER_PASSWORD": None}
    try:
        yield Embedded(settings, url, env)
    finally:
        db.stop_embedded(settings)
        shutil.rmtree(home.parent, ignore_errors=True)


def _reader(embedded: Embedded, password: str) -> str:
    name = f"shop_{uuid.uuid4().hex[:8]}"
    result = CliRunner().invoke(
        cli,
        ["db", "create-reader", name],
        env={**embedded.env, "RECSYS_READER_PASSWORD": password},
    )
    assert result.exit_code == 0, result.output
    assert password not in result.output
    return name


# --- passwords are checked -------------------------------------------------------------------


def test_a_reader_needs_its_password(embedded: Embedded) -> None:
    name = _reader(embedded, "right-Pass-1")
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        embedded.connect(name, None)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        embedded.connect(name, "wrong-pass")
    with embedded.connect(name, "right-Pass-1") as conn:
        assert conn.execute("SELECT count(*) FROM current_recommendations").fetchone() == (0,)


def test_the_owner_alone_logs_in_without_a_password_and_only_by_peer(
    embedded: Embedded,
) -> None:
    with embedded.connect("postgres", None) as conn:  # recsys itself, the OS user running it
        rules = conn.execute(
            "SELECT type, user_name, auth_method, options, error FROM pg_hba_file_rules "
            "ORDER BY rule_number"
        ).fetchall()
        ident = conn.execute("SELECT map_name, pg_username FROM pg_ident_file_mappings").fetchall()
    assert all(error is None for *_, error in rules)
    passwordless = [r for r in rules if r[2] != "scram-sha-256"]
    assert passwordless == [("local", ["postgres"], "peer", ["map=recsys_owner"], None)]
    assert {"host", "local"} <= {r[0] for r in rules}
    assert ident and all(m == ("recsys_owner", "postgres") for m in ident)


def test_an_existing_trusting_data_directory_is_secured_at_the_next_start(
    embedded: Embedded,
) -> None:
    name = _reader(embedded, "pw-old-dir")
    (embedded.pgdata / "pg_hba.conf").write_text("local all all trust\n")  # pgserver's rules
    with embedded.connect("postgres", None) as conn:
        conn.execute("SELECT pg_reload_conf()")
    conn = _connect_eventually(embedded, name)  # the probe's hole, before recsys starts again
    conn.close()
    db.start_embedded(embedded.settings)
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        embedded.connect(name, None)


def _connect_eventually(embedded: Embedded, name: str) -> psycopg.Connection:
    import time

    deadline = time.monotonic() + 10
    while True:
        try:
            return embedded.connect(name, None)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("password", ["plain-ascii-42", "pässwörd ünïcode", "ﬁ-ligature\u00a0x"])
def test_the_client_side_scram_verifier_matches_the_servers_login(
    embedded: Embedded, password: str
) -> None:
    name = _reader(embedded, password)
    with embedded.connect(name, password) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (name,)
    assert saslprep("ﬁ") == "fi"
    fixed = scram_verifier("x", salt=b"0123456789abcdef")
    assert fixed.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")


# --- the reader's rights ---------------------------------------------------------------------


def test_the_reader_cannot_create_temp_tables_or_reach_other_databases(
    embedded: Embedded,
) -> None:
    name = _reader(embedded, "pw-rights")
    with embedded.connect(name, "pw-rights") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="temporary tables"):
            conn.execute("CREATE TEMP TABLE mine (x int)")
    for other in ("postgres", "template1"):
        with pytest.raises(psycopg.OperationalError, match="CONNECT privilege"):
            embedded.connect(name, "pw-rights", dbname=other)
    with embedded.connect("postgres", None) as conn:  # the owner keeps both
        conn.execute("CREATE TEMP TABLE mine (x int)")


# --- the nightly lock ------------------------------------------------------------------------


def test_the_readers_advisory_lock_does_not_block_the_nightly_run(embedded: Embedded) -> None:
    from test_nightly_support import add_catalogue, trained_model

    from recsys.pipeline import DEFAULT_STEPS, PipelineOptions, Step, run

    name = _reader(embedded, "pw-lock")
    engine = embedded.engine()
    with engine.begin() as conn:
        add_catalogue(conn, n_users=12, n_products=20, n_ratings=90, seed=5)

    def train(ctx) -> dict:
        with ctx.engine.connect() as conn:
            ctx.state["model"] = trained_model(conn)
        return {"model": "numpy-mf"}

    by_name = {s.name: s for s in DEFAULT_STEPS}
    steps = [Step("train", train), by_name["score"], by_name["publish"]]
    with embedded.connect(name, "pw-lock") as reader:
        key = reader.execute("SELECT hashtext('recsys:nightly')").fetchone()[0]
        reader.execute("SELECT pg_advisory_lock(%s, %s)", (OLD_LOCK_NAMESPACE, key))
        reader.execute("SELECT pg_advisory_lock(hashtext('recsys:nightly'))")
        reader.execute("SELECT pg_advisory_lock(hashtext('recsys:migrate'))")
        result = run(engine, embedded.settings, PipelineOptions(k=3), steps=steps)
        assert result.status == "succeeded"
        served = CliRunner().invoke(cli, ["publish", "--rollback"], env=embedded.env)
        assert not isinstance(served.exception, LockBusy), served.output
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("LOCK TABLE nightly_lock IN EXCLUSIVE MODE NOWAIT")
        reader.rollback()
        for table in ("nightly_lock", "features_lock", "alembic_version"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(f"SELECT * FROM {table} FOR UPDATE NOWAIT")  # noqa: S608
            reader.rollback()
    engine.dispose()


def test_the_lock_is_exclusive_and_holds_back_no_vacuum_horizon(embedded: Embedded) -> None:
    engine = embedded.engine()
    try:
        with advisory_lock(engine, NIGHTLY_LOCK) as held:
            pid = held.connection.driver_connection.info.backend_pid
            with engine.connect() as conn:
                xid, xmin, state = conn.execute(
                    sa.text(
                        "SELECT backend_xid, backend_xmin, state FROM pg_stat_activity "
                        "WHERE pid = :p"
                    ),
                    {"p": pid},
                ).one()
            assert state == "idle in transaction" and xid is None and xmin is None
            with pytest.raises(LockBusy, match=rf"database backend pid {pid}\)"):
                with advisory_lock(engine, NIGHTLY_LOCK):
                    pass
            with advisory_lock(engine, FEATURES_LOCK, what="recsys features build"):
                pass  # another lock is independent
        with advisory_lock(engine, NIGHTLY_LOCK):
            pass  # released
        with advisory_lock(engine, "recsys:other", what="other job"):  # no table: advisory
            with pytest.raises(LockBusy, match="another other job is in progress"):
                with advisory_lock(engine, "recsys:other", what="other job"):
                    pass
    finally:
        engine.dispose()


# --- passwords never leak --------------------------------------------------------------------


def test_db_status_and_errors_redact_a_query_password(embedded: Embedded) -> None:
    socket = embedded.socket_dir
    secret = "SECRET-q-5521"
    url = f"postgresql://postgres@/recsys?host={socket}&password={secret}"
    status = CliRunner().invoke(
        cli, ["db", "status"], env={**embedded.env, "RECSYS_DATABASE_URL": url}
    )
    assert status.exit_code == 0, status.output
    assert "schema: " in status.output and secret not in status.output
    assert "password=***" in status.output
    for bad in (
        f"postgresql://bob@127.0.0.1:1/recsys?password={secret}&connect_timeout=2",
        f"postgresql://bob:{secret}@127.0.0.1:1/recsys?connect_timeout=2",
    ):
        result = CliRunner().invoke(
            cli, ["db", "status"], env={**embedded.env, "RECSYS_DATABASE_URL": bad}
        )
        assert result.exit_code != 0
        assert secret not in result.output and secret not in str(result.exception)
        assert "cannot connect" in str(result.exception)
    assert db.redact(f"host=x user=bob password={secret}") == "host=x user=bob password=***"
    assert db.scrub(f"failed for {secret}", url) == "failed for ***"


def test_no_password_in_cli_output_or_the_server_log(embedded: Embedded, tmp_path: Path) -> None:
    secret = "SECRET-log-9931"
    runner = CliRunner()
    refused = runner.invoke(
        cli,
        ["db", "create-reader", "pg_shop"],
        env={**embedded.env, "RECSYS_READER_PASSWORD": secret},
    )
    assert isinstance(refused.exception, RecsysError) and "reserved" in str(refused.exception)
    on_argv = runner.invoke(
        cli, ["db", "create-reader", "shop_argv", "--password", secret], env=embedded.env
    )
    assert isinstance(on_argv.exception, InputError) and "--password-file" in str(on_argv.exception)
    prompted = runner.invoke(
        cli, ["db", "create-reader", "shop_prompt"], env=embedded.env, input=f"{secret}\n{secret}\n"
    )
    assert prompted.exit_code == 0, prompted.output
    secret_file = tmp_path / "pw"
    secret_file.write_text(secret + "\n")
    from_file = runner.invoke(
        cli,
        ["db", "create-reader", "shop_file", "--password-file", str(secret_file)],
        env=embedded.env,
    )
    assert from_file.exit_code == 0, from_file.output
    with embedded.connect("shop_file", secret) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("shop_file",)
    # a failure on the server: a role that may not create roles tries to
    weak = sa.create_engine(
        make_url(embedded.url).set(username="shop_file", password=secret), poolclass=sa.NullPool
    )
    from recsys.db.roles import create_reader

    with pytest.raises(RecsysError, match="permission denied") as err, weak.begin() as conn:
        create_reader(conn, "shop_other", secret)
    weak.dispose()
    outputs = [refused, on_argv, prompted, from_file]
    for result in outputs:
        assert secret not in result.output and secret not in str(result.exception or "")
    assert secret not in str(err.value)
    log = embedded.log()
    assert "permission denied to create role" in log  # the failure did reach the log...
    assert secret not in log  # ...but never the password
    assert "pg_shop" not in log  # the reserved name never reached the server


def test_startup_keeps_recsys_home_private(embedded: Embedded) -> None:
    mode = embedded.settings.home.stat().st_mode & 0o777
    expected = 0o711 if os.geteuid() == 0 else 0o700  # root: the server's account traverses
    assert mode == expected


def test_the_lock_survives_a_server_wide_idle_transaction_timeout(embedded: Embedded) -> None:
    import time

    engine = embedded.engine()
    with engine.connect() as conn:
        conn.execute(sa.text("ALTER DATABASE recsys SET idle_in_transaction_session_timeout = 500"))
        conn.execute(sa.text("ALTER DATABASE recsys SET transaction_timeout = 500"))
        conn.commit()
    try:
        with advisory_lock(engine, NIGHTLY_LOCK) as held:
            pid = held.connection.driver_connection.info.backend_pid
            time.sleep(1.5)
            with engine.connect() as conn:
                holder = conn.execute(
                    sa.text("SELECT pid FROM pg_locks WHERE relation = 'nightly_lock'::regclass")
                ).scalar()
            assert holder == pid
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text("ALTER DATABASE recsys RESET idle_in_transaction_session_timeout"))
            conn.execute(sa.text("ALTER DATABASE recsys RESET transaction_timeout"))
            conn.commit()
        engine.dispose()
