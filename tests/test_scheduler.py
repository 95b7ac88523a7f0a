"""The scheduler (issue 5): fires the job, never two at once, stored in PostgreSQL, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from recsys.errors import RecsysError
from recsys.scheduler import JOB_ID, build_scheduler, cron_trigger

RUNS: list[tuple[float, float]] = []
_RUNS_LOCK = threading.Lock()


def slow_job(options: dict) -> None:
    """An importable job (the PostgreSQL job store keeps a reference) that takes 1.5 s."""
    start = time.monotonic()
    time.sleep(1.5)
    with _RUNS_LOCK:
        RUNS.append((start, time.monotonic()))


def test_scheduler_fires_and_never_runs_two_at_once(engine: sa.Engine) -> None:
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES
    from apscheduler.triggers.cron import CronTrigger

    RUNS.clear()
    skipped: list[object] = []
    scheduler = build_scheduler(
        engine, blocking=False, func=slow_job, trigger=CronTrigger(second="*", timezone="UTC")
    )
    scheduler.add_listener(skipped.append, EVENT_JOB_MAX_INSTANCES)
    scheduler.start()
    try:
        time.sleep(5.5)
    finally:
        scheduler.shutdown(wait=True)
    runs = sorted(RUNS)
    assert len(runs) >= 2, runs
    for (_, end), (next_start, _) in zip(runs, runs[1:], strict=False):
        assert next_start >= end, "two runs overlapped"
    assert skipped, "a trigger fired while the job ran and should have been skipped"


def test_job_is_stored_in_postgres_once_with_safe_defaults(engine: sa.Engine) -> None:
    for cron in ("0 2 * * *", "30 3 * * 1-5"):
        scheduler = build_scheduler(engine, cron=cron, timezone="Europe/Paris", blocking=False)
        scheduler.start(paused=True)
        job = scheduler.get_job(JOB_ID)
        assert job.coalesce is True and job.max_instances == 1
        assert job.misfire_grace_time == 3600
        assert str(job.trigger.timezone) == "Europe/Paris"
        scheduler.shutdown(wait=False)
    with engine.connect() as conn:
        ids = conn.execute(sa.text("SELECT id FROM apscheduler_jobs")).scalars().all()
    assert ids == [JOB_ID]  # replace_existing: the second start replaced the first job
    assert "day_of_week='1-5', hour='3', minute='30'" in repr(job.trigger)


def test_bad_cron_or_timezone_is_one_clear_line() -> None:
    with pytest.raises(RecsysError, match="bad --cron"):
        cron_trigger("every night", "UTC")
    with pytest.raises(RecsysError, match="unknown timezone"):
        cron_trigger("0 2 * * *", "Mars/Olympus")


@pytest.mark.subprocess
def test_schedule_command_stops_cleanly_on_sigterm(cli_env: dict[str, str], db_url: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys", "schedule", "--cron", "0 2 * * *", "--timezone", "UTC"],
        env={**os.environ, **cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    try:
        deadline = time.monotonic() + 60
        stored = None
        while time.monotonic() < deadline and proc.poll() is None:
            with engine.connect() as conn:
                stored = conn.execute(
                    sa.text("SELECT next_run_time FROM apscheduler_jobs WHERE id = :i"),
                    {"i": JOB_ID},
                ).scalar()
            if stored:
                break
            time.sleep(0.3)
        assert stored, "the scheduler never stored its job"
        assert time.gmtime(stored).tm_hour == 2 and time.gmtime(stored).tm_min == 0
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        engine.dispose()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "scheduler stopped" in err


@pytest.mark.subprocess
def test_run_now_fires_the_real_pipeline(cli_env: dict[str, str], engine: sa.Engine) -> None:
    from test_nightly_support import add_catalogue

    with engine.begin() as conn:
        add_catalogue(conn, n_users=30, n_products=25, n_ratings=300, seed=4)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recsys",
            "schedule",
            "--run-now",
            "--model",
            "bias",
            "--no-features",
            "--no-evaluate",
            "--min-ratings",
            "0",
            "-k",
            "3",
        ],
        env={**os.environ, **cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and proc.poll() is None and status is None:
            with engine.connect() as conn:
                status = conn.execute(
                    sa.text("SELECT status FROM pipeline_runs WHERE status <> 'running'")
                ).scalar()
            time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert status == "succeeded", err[-3000:]
    assert proc.returncode == 0, err[-3000:]
    with engine.connect() as conn:
        trigger, users = conn.execute(
            sa.text(
                "SELECT (SELECT trigger FROM pipeline_runs), "
                "count(DISTINCT user_external_id) FROM current_recommendations"
            )
        ).one()
    assert trigger == "schedule-now" and users == 30


@pytest.mark.subprocess
def test_sigterm_during_a_run_stops_it_between_steps(
    cli_env: dict[str, str], engine: sa.Engine, tmp_path
) -> None:
    from test_nightly_support import add_catalogue

    with engine.begin() as conn:
        add_catalogue(conn, n_users=40, n_products=30, n_ratings=400, seed=6)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recsys",
            "schedule",
            "--run-now",
            "--model",
            "hybrid",
            "--epochs",
            "2",
            "--hidden-units",
            "8",
            "--dim",
            "8",
            "--no-evaluate",
            "--min-ratings",
            "0",
        ],
        env={**os.environ, **cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        step = None
        while time.monotonic() < deadline and proc.poll() is None and step is None:
            with engine.connect() as conn:
                step = conn.execute(
                    sa.text(
                        "SELECT step FROM pipeline_steps WHERE status = 'running' "
                        "AND step IN ('features', 'train')"
                    )
                ).scalar()
            time.sleep(0.05)
        assert step, "the run never reached features/train"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    with engine.connect() as conn:
        status = conn.execute(sa.text("SELECT status FROM pipeline_runs")).scalar_one()
        steps = dict(conn.execute(sa.text("SELECT step, status FROM pipeline_steps")).all())
        served = conn.execute(sa.text("SELECT count(*) FROM published_recommendations")).scalar()
    assert status == "interrupted", (steps, err[-2000:])
    assert steps["publish"] == "interrupted" and served == 0
