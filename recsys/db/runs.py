"""The nightly pipeline's run records: ``pipeline_runs`` and ``pipeline_steps``.

Each function runs in its own short transaction (``engine.begin()``), so every change to a
run or a step is committed as it happens and a crash leaves a trace. Plain create / update /
read, written with SQLAlchemy Core on the tables of :mod:`recsys.db.models`.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.db.models import PipelineRun, PipelineStep

RUNS = PipelineRun.__table__
STEPS = PipelineStep.__table__


def _jsonable(value: Any) -> Any:
    """``value`` as JSON types (dates, paths and the like as strings)."""
    return json.loads(json.dumps(value, default=str))


def start_run(engine: Engine, trigger: str, options: dict) -> int:
    """Insert a ``running`` pipeline run of this process; returns its id."""
    with engine.begin() as conn:
        return int(
            conn.execute(
                sa.insert(RUNS)
                .values(
                    trigger=trigger,
                    status="running",
                    pid=os.getpid(),
                    host=socket.gethostname(),
                    options=_jsonable(options),
                )
                .returning(RUNS.c.id)
            ).scalar_one()
        )


def finish_run(engine: Engine, run_id: int, status: str, message: str | None = None) -> None:
    """Set a run's final status (succeeded, failed, interrupted) and its end time."""
    values: dict[str, Any] = {"status": status, "finished_at": sa.func.now()}
    if message is not None:
        values["message"] = message
    with engine.begin() as conn:
        conn.execute(sa.update(RUNS).where(RUNS.c.id == run_id).values(**values))


def start_step(engine: Engine, run_id: int, position: int, step: str) -> int:
    """Insert a ``running`` step of run ``run_id``; returns its id."""
    with engine.begin() as conn:
        return int(
            conn.execute(
                sa.insert(STEPS)
                .values(pipeline_run_id=run_id, position=position, step=step, status="running")
                .returning(STEPS.c.id)
            ).scalar_one()
        )


def finish_step(
    engine: Engine,
    step_id: int,
    status: str,
    seconds: float,
    *,
    detail: dict | None = None,
    message: str | None = None,
) -> None:
    """Set a step's outcome, end time and seconds, with its detail (succeeded) or message."""
    values: dict[str, Any] = {"status": status, "finished_at": sa.func.now(), "seconds": seconds}
    if detail is not None:
        values["detail"] = _jsonable(detail)
    if message is not None:
        values["message"] = message
    with engine.begin() as conn:
        conn.execute(sa.update(STEPS).where(STEPS.c.id == step_id).values(**values))


def record_unrun_steps(
    engine: Engine, run_id: int, names: Sequence[str], first_position: int, status: str
) -> None:
    """Record steps that did not run (``skipped`` after a failure, ``interrupted`` on a stop)."""
    if not names:
        return
    with engine.begin() as conn:
        conn.execute(
            sa.insert(STEPS).values(finished_at=sa.func.now(), seconds=0),
            [
                {
                    "pipeline_run_id": run_id,
                    "position": first_position + i,
                    "step": name,
                    "status": status,
                }
                for i, name in enumerate(names)
            ],
        )


def mark_abandoned(conn: sa.Connection) -> int:
    """Mark every ``running`` run and step ``interrupted``; returns the number of runs.

    Only safe under the nightly lock: then no other run is alive, and anything still
    ``running`` belongs to a process that was killed or crashed.
    """
    conn.execute(
        sa.update(STEPS)
        .where(STEPS.c.status == "running")
        .values(
            status="interrupted",
            finished_at=sa.func.now(),
            message="the process stopped during this step",
        )
    )
    return conn.execute(
        sa.update(RUNS)
        .where(RUNS.c.status == "running")
        .values(
            status="interrupted",
            finished_at=sa.func.now(),
            message="the process stopped (killed or crashed) before finishing",
        )
    ).rowcount


def recent_runs(conn: sa.Connection, limit: int = 10) -> list[dict]:
    """The newest pipeline runs with their steps (in order), newest first."""
    runs = (
        conn.execute(
            sa.select(
                RUNS.c.id,
                RUNS.c.trigger,
                RUNS.c.status,
                RUNS.c.started_at,
                RUNS.c.finished_at,
                RUNS.c.message,
            )
            .order_by(RUNS.c.id.desc())
            .limit(limit)
        )
        .mappings()
        .all()
    )
    out = []
    for r in runs:
        steps = (
            conn.execute(
                sa.select(STEPS.c.step, STEPS.c.status, STEPS.c.seconds, STEPS.c.message)
                .where(STEPS.c.pipeline_run_id == r["id"])
                .order_by(STEPS.c.position)
            )
            .mappings()
            .all()
        )
        out.append({**dict(r), "steps": [dict(s) for s in steps]})
    return out
