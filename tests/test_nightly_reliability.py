"""Reliability of the nightly job (issue 5, item 8), through real `recsys run` subprocesses.

kill -9 during scoring leaves the previous recommendations served and the next run succeeds;
two concurrent runs: one works, the other exits at once with the lock message; no user is
ever recommended a product they rated; every user always has exactly k rows.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

K = 5
RUN_ARGS = [
    "run",
    "--model",
    "hybrid",
    "--epochs",
    "2",
    "--hidden-units",
    "16",
    "--no-evaluate",
    "--min-ratings",
    "0",
    "-k",
    str(K),
]


def _recsys(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "recsys", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _wait_for(engine: sa.Engine, sql: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended (rc {proc.returncode}) before {sql!r}: {err[-2000:]}")
        with engine.connect() as conn:
            if conn.execute(sa.text(sql)).scalar():
                return
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {sql!r}")


def _served_state(engine: sa.Engine) -> tuple[int, int, int, int, int]:
    """(served run, users in view, min rows per user, max rows per user, rated-and-recommended)."""
    with engine.connect() as conn:
        served = conn.execute(sa.text("SELECT run_id FROM published_recommendations")).scalar()
        users, low, high = conn.execute(
            sa.text(
                "SELECT count(*), min(n), max(n) FROM (SELECT user_external_id, count(*) AS n "
                "FROM current_recommendations GROUP BY 1) t"
            )
        ).one()
        rated = conn.execute(
            sa.text(
                "SELECT count(*) FROM recommendations r JOIN ratings x "
                "ON x.user_id = r.user_id AND x.product_id = r.product_id"
            )
        ).scalar_one()
    return served, users, low, high, rated


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    from recsys.ingest.sample import write_sample

    files = write_sample(tmp_path / "sample", users=800, products=120, ratings=12000, seed=5)
    folder = tmp_path / "inbox"
    folder.mkdir()
    shutil.copy(files.ratings_path, folder)
    shutil.copy(files.metadata_path, folder)
    return folder


def test_kill_during_scoring_then_concurrent_runs(
    inbox: Path, cli_env: dict[str, str], db_url: str
) -> None:
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    args = [*RUN_ARGS, "--inbox", str(inbox)]
    try:
        first = _recsys(args, cli_env)
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, err[-3000:]
        served, users, low, high, rated = _served_state(engine)
        with engine.connect() as conn:
            n_users = conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one()
        assert (users, low, high, rated) == (n_users, K, K, 0) and n_users == 800

        # kill -9 in the middle of scoring (tiny batches make scoring last)
        victim = _recsys([*args, "--batch-users", "1", "--no-features"], cli_env)
        _wait_for(
            engine, "SELECT count(*) FROM recommendation_runs WHERE status = 'scoring'", victim
        )
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        assert victim.returncode == -signal.SIGKILL
        assert _served_state(engine) == (served, n_users, K, K, 0)
        with engine.connect() as conn:
            # killed mid-scoring: its run is still 'scoring', and none of its rows committed
            assert (
                conn.execute(
                    sa.text("SELECT status FROM recommendation_runs ORDER BY id DESC LIMIT 1")
                ).scalar_one()
                == "scoring"
            )
            assert (
                conn.execute(
                    sa.text("SELECT count(*) FROM recommendations WHERE run_id <> :r"),
                    {"r": served},
                ).scalar_one()
                == 0
            )

        # two runs at once: the first works, the second exits at once with the lock message
        with engine.connect() as conn:
            last = conn.execute(sa.text("SELECT max(id) FROM pipeline_runs")).scalar_one()
        runner = _recsys(args, cli_env)
        _wait_for(
            engine,
            f"SELECT count(*) FROM pipeline_runs WHERE status = 'running' AND id > {last}",
            runner,
        )
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "recsys", *args],
            env={**os.environ, **cli_env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith(
            "recsys: error: another nightly job (recsys run, score or publish) is in progress"
        )
        assert "Traceback" not in second.stderr
        assert time.monotonic() - started < 60
        out, err = runner.communicate(timeout=300)
        assert runner.returncode == 0, err[-3000:]

        new_served, users, low, high, rated = _served_state(engine)
        assert new_served > served and (users, low, high, rated) == (n_users, K, K, 0)
        with engine.connect() as conn:
            statuses = (
                conn.execute(sa.text("SELECT status FROM pipeline_runs ORDER BY id"))
                .scalars()
                .all()
            )
            scoring_left = conn.execute(
                sa.text("SELECT count(*) FROM recommendation_runs WHERE status = 'scoring'")
            ).scalar_one()
            loads = conn.execute(sa.text("SELECT count(*) FROM loads")).scalar_one()
        # the lock-refused run left no trace; the killed one is marked by the next run
        assert statuses == ["succeeded", "interrupted", "succeeded"]
        assert scoring_left == 0
        assert loads == 2  # the inbox files were loaded once, then skipped by checksum
    finally:
        engine.dispose()
