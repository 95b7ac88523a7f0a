"""load-db through a real subprocess: a normal load, a load killed mid-file, no database; inbox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from recsys.ingest.load import load_inbox

pytestmark = pytest.mark.subprocess


def _run(args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def _counts(db_url: str) -> tuple[int, int, int, int]:
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.connect() as c:
        return tuple(
            c.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()  # our constant names
            for table in ("users", "products", "ratings", "loads")
        )


def test_subprocess_load_prints_summary(shared_data: Path, cli_env, db_url) -> None:
    result = _run(
        [
            "load-db",
            "--ratings",
            str(shared_data / "amazon2018_gift_cards" / "Gift_Cards_5.json.gz"),
        ],
        cli_env,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "Gift_Cards_5.json.gz" in result.stdout
        and "2,965" in result.stdout
        and "2,972" in result.stdout
    )
    assert _counts(db_url) == (458, 148, 2965, 1)


def test_unreachable_database_is_one_line_without_password(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("P1,U1,5.0,1300000000\n")
    env = {
        "RECSYS_DATABASE_URL": "postgresql://bob:hunter2secret@127.0.0.1:1/shop",
        "RECSYS_HOME": str(tmp_path),
    }
    result = _run(["load-db", "--ratings", str(path)], env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recsys: error: cannot connect to database")
    assert "hunter2secret" not in result.stderr and "Traceback" not in result.stderr


def test_killed_mid_file_leaves_database_unchanged(tmp_path: Path, cli_env, db_url) -> None:
    small = tmp_path / "small.csv"
    small.write_text("P1,U1,5.0,1300000000\nP2,U2,4.0,1300000001\n")
    assert _run(["load-db", "--ratings", str(small)], cli_env).returncode == 0
    before = _counts(db_url)
    assert before == (2, 2, 2, 1)
    big = tmp_path / "big.csv"
    with open(big, "w") as handle:
        for block in range(20):
            handle.write(
                "".join(
                    f"P{i % 9973},U{block}_{i},4.0,{1_300_000_000 + i}\n" for i in range(50_000)
                )
            )
    process = subprocess.Popen(
        [sys.executable, "-m", "recsys", "load-db", "--ratings", str(big)],
        env={**os.environ, **cli_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    database = sa.engine.make_url(db_url).database
    deadline = time.monotonic() + 60
    writing = False
    with engine.connect() as c:
        while time.monotonic() < deadline and process.poll() is None:
            # the load has started writing once a COPY (staging or bulk) is running
            writing = (
                c.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = :d AND query LIKE 'COPY%FROM STDIN%'"
                    ),
                    {"d": database},
                ).scalar_one()
                > 0
            )
            c.rollback()  # pg_stat_activity is a snapshot per transaction: take a fresh one
            if writing:
                break
            time.sleep(0.05)
    assert writing, "the load never reached its COPY"
    time.sleep(0.5)
    assert process.poll() is None, (
        "the load finished before it could be killed: make the file bigger"
    )
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert _counts(db_url) == before


def test_inbox_loads_new_files_metadata_first_and_skips_loaded(
    shared_data: Path, tmp_path: Path, engine, settings
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    source = shared_data / "amazon2018_gift_cards"
    for name in ("Gift_Cards_5.json.gz", "meta_Gift_Cards.json.gz"):
        (inbox / name).symlink_to(source / name)
    (inbox / "README.md").write_text("notes\n")
    first = load_inbox(engine, settings, inbox)
    assert [(Path(s.path).name, s.status) for s in first] == [
        ("meta_Gift_Cards.json.gz", "loaded"),
        ("Gift_Cards_5.json.gz", "loaded"),
    ]
    (inbox / "more.csv").write_text("B004LLIKVU,NEWUSER,5.0,1600000000\n")
    second = load_inbox(engine, settings, inbox)
    assert [s.status for s in second] == ["skipped", "skipped", "loaded"]
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM ratings")).scalar_one() == 2966
