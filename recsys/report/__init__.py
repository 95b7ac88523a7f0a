"""The nightly report: one static HTML page per pipeline run (``recsys report``).

``queries`` reads every figure as an SQL aggregate, ``charts`` draws them with matplotlib
(PNG data URIs), ``render`` writes the page. :func:`write_report` puts them together;
:func:`write_run_report` is what the nightly run calls at its end (it never raises).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from sqlalchemy.engine import Engine

from recsys.report.queries import ReportData, ReportError, read_report

__all__ = [
    "ReportData",
    "ReportError",
    "build_report",
    "read_report",
    "report_path",
    "write_report",
    "write_run_report",
]

_log = logging.getLogger(__name__)


def report_path(home: Path, run_id: int) -> Path:
    """Where the nightly run writes its report: ``home/reports/<run>.html``."""
    return Path(home) / "reports" / f"{run_id}.html"


def build_report(engine: Engine, run_id: int | None = None, *, seed: int = 0) -> tuple[int, str]:
    """(pipeline run id, page) of run ``run_id`` (default: the latest).

    Raises:
        ReportError: no such run, or no runs at all.
    """
    from recsys.report.render import render

    data = read_report(engine, run_id, seed=seed)
    return data.run.id, render(data)


def write_report(
    engine: Engine,
    home: Path,
    run_id: int | None = None,
    out: Path | None = None,
    *,
    seed: int = 0,
) -> Path:
    """Write the report of ``run_id`` to ``out`` (default ``home/reports/<run>.html``).

    The file is written next to its final name and renamed into place, so a reader never
    sees half a page.

    Raises:
        ReportError: no such run, or no runs at all.
    """
    started = time.perf_counter()
    rid, page = build_report(engine, run_id, seed=seed)
    path = Path(out) if out is not None else report_path(home, rid)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(page, encoding="utf-8")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    _log.info("report of pipeline run %d: %s (%.1f s)", rid, path, time.perf_counter() - started)
    return path


def write_run_report(engine: Engine, home: Path, run_id: int) -> Path | None:
    """The nightly run's report; a failure is logged as a warning and returns None."""
    try:
        return write_report(engine, home, run_id)
    except Exception as err:  # the report must never fail the nightly run
        _log.warning("pipeline run %d: no report written: %s: %s", run_id, type(err).__name__, err)
        return None
