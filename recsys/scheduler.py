"""APScheduler 3 around :func:`recsys.pipeline.run`: the nightly job, in PostgreSQL.

* ``BlockingScheduler``: the scheduler is the only thing the ``recsys schedule`` process does.
* Job store: ``SQLAlchemyJobStore`` in the recsys database (table ``apscheduler_jobs``, created
  by migration 0004), so the schedule survives restarts; the job has a fixed id and is added
  with ``replace_existing=True``, so restarting with a new ``--cron`` replaces it instead of
  adding a second one.
* ``CronTrigger.from_crontab(cron, timezone=...)``: a 5-field crontab in an explicit timezone.
* ``coalesce=True``: after downtime, missed nights run once, not once per missed night.
* ``max_instances=1``: a run never starts while the previous one is still going (and the
  pipeline's advisory lock also stops a run started elsewhere, e.g. a manual ``recsys run``).
* ``misfire_grace_time=3600``: a run up to an hour late (a busy machine, a restart around 2am)
  still happens; APScheduler's default of 1 second would silently skip it.
* One worker thread: the job is CPU-bound (TensorFlow has its own threads).
* SIGTERM / SIGINT: stop scheduling, ask the running pipeline to stop at its next step or
  scoring batch (nothing half-done is ever published), and exit 0.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from sqlalchemy.engine import Engine

from recsys.errors import LockBusy, RecsysError
from recsys.pipeline import PipelineOptions

_log = logging.getLogger(__name__)

JOB_ID = "recsys-nightly"
RUN_NOW_JOB_ID = "recsys-nightly-now"
JOBS_TABLE = "apscheduler_jobs"
DEFAULT_CRON = "0 2 * * *"
DEFAULT_MISFIRE_GRACE = 3600

STOP = threading.Event()
"""Set on SIGTERM/SIGINT; the running pipeline polls it."""


def nightly_job(options: dict[str, Any], trigger: str = "schedule") -> None:
    """The scheduled job: one pipeline run with ``options`` (a PipelineOptions as a dict).

    Top level (importable as ``recsys.scheduler:nightly_job``) because the PostgreSQL job store
    keeps a reference to it. Settings are read from the environment at run time, so no
    password is ever pickled into the job table. Errors are logged, never raised: the scheduler
    keeps going and tries again next night.
    """
    from recsys.config import load_settings
    from recsys.db import engine as db
    from recsys.errors import TrainingInterrupted
    from recsys.pipeline import PipelineInterrupted, run
    from recsys.progress import progress_for_terminal

    settings = load_settings()
    try:
        engine = db.create_engine(settings)
        db.ensure_schema(engine)
        result = run(
            engine,
            settings,
            PipelineOptions(**options),
            trigger=trigger,
            should_stop=STOP.is_set,
            progress=progress_for_terminal(),
        )
        _log.warning(
            "nightly run %d succeeded in %.0fs (recommendation run %s)",
            result.run_id,
            result.seconds,
            result.recommendation_run_id,
        )
    except LockBusy as err:
        _log.warning("nightly run skipped: %s", err)
    except (PipelineInterrupted, TrainingInterrupted) as err:
        _log.info("nightly run stopped on request: %s", err)
    except RecsysError as err:
        _log.error("nightly run failed: %s", err)
    except Exception:
        _log.exception("nightly run crashed")


def _timezone(name: str):
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise RecsysError(
            f"unknown timezone {name!r} (use an IANA name such as UTC or Europe/Paris)"
        ) from err


def cron_trigger(cron: str, timezone: str):
    """A CronTrigger from a 5-field crontab line in ``timezone``.

    Raises:
        RecsysError: the line or the timezone is not valid.
    """
    from apscheduler.triggers.cron import CronTrigger

    tz = _timezone(timezone)
    try:
        return CronTrigger.from_crontab(cron, timezone=tz)
    except ValueError as err:
        raise RecsysError(
            f"bad --cron {cron!r}: {err} (5 fields: minute hour day month weekday)"
        ) from err


def build_scheduler(
    engine: Engine,
    *,
    cron: str = DEFAULT_CRON,
    timezone: str = "UTC",
    options: PipelineOptions | None = None,
    run_now: bool = False,
    blocking: bool = True,
    func: Callable[..., None] | str = nightly_job,
    trigger: Any = None,
    misfire_grace_time: int = DEFAULT_MISFIRE_GRACE,
):
    """The scheduler with the nightly job stored in PostgreSQL (not started).

    Args:
        engine: the recsys database (job store).
        cron: 5-field crontab for the nightly run.
        timezone: IANA timezone the crontab is read in.
        options: pipeline options for every run.
        run_now: also run once as soon as the scheduler starts.
        blocking: BlockingScheduler (the ``recsys schedule`` process) or BackgroundScheduler.
        func: the job (tests pass their own importable function).
        trigger: overrides ``cron`` (tests use a seconds-level trigger).
        misfire_grace_time: how late (seconds) a run may still start.
    """
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler

    tz = _timezone(timezone)
    trigger = trigger if trigger is not None else cron_trigger(cron, timezone)
    kind = BlockingScheduler if blocking else BackgroundScheduler
    scheduler = kind(
        jobstores={"default": SQLAlchemyJobStore(engine=engine, tablename=JOBS_TABLE)},
        executors={"default": ThreadPoolExecutor(max_workers=1)},
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": misfire_grace_time,
        },
        timezone=tz,
    )
    kwargs = {"options": asdict(options or PipelineOptions())}
    scheduler.add_job(
        func,
        trigger,
        id=JOB_ID,
        name="recsys nightly run",
        kwargs=kwargs,
        replace_existing=True,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=misfire_grace_time,
    )
    if run_now:
        scheduler.add_job(
            func,
            "date",
            id=RUN_NOW_JOB_ID,
            name="recsys run (--run-now)",
            kwargs={**kwargs, "trigger": "schedule-now"} if func is nightly_job else kwargs,
            replace_existing=True,
            misfire_grace_time=None,
        )
    return scheduler


def run_scheduler(
    engine: Engine,
    *,
    cron: str = DEFAULT_CRON,
    timezone: str = "UTC",
    options: PipelineOptions | None = None,
    run_now: bool = False,
    on_started: Callable[[Any], None] | None = None,
) -> None:
    """Run the scheduler in the foreground until SIGTERM or SIGINT (then return cleanly)."""
    scheduler = build_scheduler(
        engine, cron=cron, timezone=timezone, options=options, run_now=run_now
    )

    def stop(signum: int, _frame: Any) -> None:
        _log.warning("received %s: stopping the scheduler", signal.Signals(signum).name)
        STOP.set()
        try:
            scheduler.shutdown(wait=False)
        except Exception:  # not running yet / already stopped
            pass

    STOP.clear()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if on_started is not None:
            from apscheduler.events import EVENT_SCHEDULER_STARTED

            scheduler.add_listener(lambda _e: on_started(scheduler), EVENT_SCHEDULER_STARTED)
        scheduler.start()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _log.warning("scheduler stopped")
