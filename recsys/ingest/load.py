"""Loading files into users, products and ratings: one file, one transaction.

A file is loaded whole or not at all, inside one transaction:

* rating files of the delimited formats the fast path knows (:mod:`recsys.ingest.fast`) are
  parsed, deduplicated and id-mapped in-process with numpy/pyarrow, then COPYed in binary;
* metadata files of the JSON-object formats take the fast metadata path
  (:mod:`recsys.ingest.metafast`): plain lines are decoded once and stored with their own JSON
  text, every other line is parsed by its format as on the general path;
* every other file takes the general path: lines parsed one at a time by the file's format
  (``recsys.ingest.<format>``), streamed as COPY into a TEMP staging table
  (:mod:`recsys.ingest.stage`), and merged set-based (:mod:`recsys.ingest.merge`). The fast path
  hands a file it does not represent (a huge line, a corrupt gzip ...) to the general path
  before writing anything, so both give the same database, counts and rejected rows.

Either way: duplicates inside the file resolve to the latest ``rated_at`` (equal timestamps: the
later line); a rating already in the database is replaced when the file's is as recent or more
recent, so loading the same file twice leaves the same database; a row in ``loads`` (status
``loaded``) and the file's rejected lines are written.

Malformed lines never stop the load: each goes to ``rejected_rows`` with its line number, the
raw line (made storable: NUL bytes removed, invalid UTF-8 bytes backslash-escaped) and the
reason. Rejected lines are spilled to a temporary file, not kept in memory. When more than
``max_reject_rate`` of the lines are bad, the file's data is rolled back and the failure is
recorded in a *separate* transaction (a ``loads`` row with status ``failed`` plus its rejected
rows, no data), so the user can inspect what was wrong with ``SELECT * FROM rejected_rows``.

A kill or Ctrl-C mid-file aborts the open transaction: the database is exactly as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.config import Settings
from recsys.errors import InputError
from recsys.ingest import fast, metafast
from recsys.ingest.inbox import inbox_files, is_companion, plan_files
from recsys.ingest.merge import BULK_ROWS, merge_staged_products, merge_staged_ratings, record_load
from recsys.ingest.reader import LineSource, file_sha256
from recsys.ingest.rows import Format, LoadLimits
from recsys.ingest.stage import FileProgress, parsed_lines, stage_products, stage_ratings
from recsys.ingest.summary import (
    SHOWN_REJECTS,
    Counts,
    LoadSummary,
    Rejected,
    Rejects,
    finished,
    make_summary,
)
from recsys.progress import NO_PROGRESS, ProgressSink

__all__ = [
    "BULK_ROWS",
    "SHOWN_REJECTS",
    "LoadSummary",
    "ProgressHook",
    "Rejected",
    "is_companion",
    "load_file",
    "load_files",
    "load_inbox",
    "plan_files",
]

_log = logging.getLogger(__name__)

ProgressHook = ProgressSink
"""What loading reports progress to (rows, rows/s and an ETA per file)."""


class _TooManyRejects(Exception):
    pass


def _check_rejects(path: Path, counts: Counts, max_reject_rate: float) -> None:
    if counts.read == 0:
        raise InputError(f"{path}: no data lines")
    if counts.rejected > max_reject_rate * counts.read:
        raise _TooManyRejects


@dataclass(frozen=True)
class _FileLoad:
    """What both paths need of one file's load (its counters travel beside it: the fast path
    hands a file to the general path with fresh ones)."""

    engine: Engine
    path: Path
    fmt: Format
    max_reject_rate: float
    progress: FileProgress
    started: float
    """``time.perf_counter()`` when the load began."""
    started_at: datetime
    limits: LoadLimits
    fast_path: bool = True
    """Whether the fast metadata path may stage the file (:mod:`recsys.ingest.metafast`)."""


def _load_general(job: _FileLoad, counts: Counts, rejects: Rejects) -> tuple[LoadSummary, int]:
    engine, path, fmt, progress, limits = job.engine, job.path, job.fmt, job.progress, job.limits
    max_reject_rate, started, started_at = job.max_reject_rate, job.started, job.started_at
    with LineSource(path, max_line_bytes=limits.max_line_bytes) as source:
        progress.size = source.size
        with engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))
            merge = None
            if job.fast_path and metafast.supports(fmt):
                merge = metafast.stage_products(
                    conn, source, fmt, counts, rejects, progress, limits
                )
            else:
                rows = parsed_lines(source, fmt, counts, rejects, progress, limits)
                if fmt.kind == "ratings":
                    stage_ratings(conn, rows)  # type: ignore[arg-type]
                else:
                    stage_products(conn, rows)  # type: ignore[arg-type]
            sha256 = source.sha256()
            progress.update(counts.read, source.bytes_read)
            try:
                _check_rejects(path, counts, max_reject_rate)
            except _TooManyRejects as err:
                err.sha256 = sha256  # type: ignore[attr-defined]
                raise
            _log.debug(
                "%s: staged %d lines in %.1fs", path, counts.read, time.perf_counter() - started
            )
            if merge is not None:
                distinct = merge()
            elif fmt.kind == "ratings":
                distinct = merge_staged_ratings(conn)
            else:
                distinct = merge_staged_products(conn, fmt.aggregate_text)
            summary = make_summary(path, sha256, fmt, counts, "loaded", None, started, distinct)
            return summary, record_load(conn, summary, started_at, rejects)


def _load_fast(job: _FileLoad, counts: Counts, rejects: Rejects) -> tuple[LoadSummary, int]:
    engine, path, fmt, progress, limits = job.engine, job.path, job.fmt, job.progress, job.limits
    max_reject_rate, started, started_at = job.max_reject_rate, job.started, job.started_at
    parsed = fast.read_ratings(path, fmt, counts, rejects, progress, limits)
    progress.finish()
    try:
        _check_rejects(path, counts, max_reject_rate)
    except _TooManyRejects as err:
        err.sha256 = parsed.sha256  # type: ignore[attr-defined]
        raise
    _log.debug("%s: read %d lines in %.1fs", path, counts.read, time.perf_counter() - started)
    with engine.begin() as conn:
        distinct = fast.write_ratings(conn, parsed)
        summary = make_summary(path, parsed.sha256, fmt, counts, "loaded", None, started, distinct)
        return summary, record_load(conn, summary, started_at, rejects)


def load_file(
    engine: Engine,
    path: Path,
    fmt: Format,
    *,
    max_reject_rate: float,
    progress: ProgressSink = NO_PROGRESS,
    fast_path: bool = True,
    limits: LoadLimits | None = None,
) -> LoadSummary:
    """Load one file in one transaction (see the module docstring).

    Args:
        engine: the database.
        path: the file, plain or gzip.
        fmt: its format (from :func:`recsys.ingest.detect.detect_format` or ``--format``).
        max_reject_rate: share of rejected lines above which the file is rolled back.
        progress: where rows, rows/s and the ETA are reported.
        fast_path: use the fast path for the formats it knows (False: always the general
            path; both give the same database).
        limits: line cap and future-timestamp slack (default: the documented defaults, now).

    Returns:
        The summary; ``status`` is ``failed`` when the reject rate was exceeded (nothing but the
        failed load's log and rejected rows was written).
    """
    path = Path(path)
    limits = LoadLimits() if limits is None else limits
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    size = path.stat().st_size if path.is_file() else 0
    counts = Counts()
    rejects = Rejects(counts, fmt.encoding)
    file_progress = FileProgress(progress, f"load {path.name}", size)
    job = _FileLoad(
        engine, path, fmt, max_reject_rate, file_progress, started, started_at, limits, fast_path
    )
    try:
        try:
            summary = None
            if fast_path and fast.supports(fmt):
                try:
                    summary, load_id = _load_fast(job, counts, rejects)
                except fast.FastPathUnsupported as why:
                    _log.info("%s: general loader (%s)", path, why)
                    file_progress.finish()
                    rejects.close()
                    counts = Counts()
                    rejects = Rejects(counts, fmt.encoding)
            if summary is None:
                summary, load_id = _load_general(job, counts, rejects)
        except _TooManyRejects as err:
            share = counts.rejected / counts.read
            message = (
                f"{counts.rejected} of {counts.read} lines rejected ({share:.1%}), more than "
                f"--max-reject-rate {max_reject_rate:.1%}: the file was rolled back"
            )
            sha256 = err.sha256  # type: ignore[attr-defined]
            summary = make_summary(path, sha256, fmt, counts, "failed", message, started, 0)
            with engine.begin() as conn:
                load_id = record_load(conn, summary, started_at, rejects)
    finally:
        rejects.close()
        file_progress.finish()
    summary = finished(summary, started, load_id)
    _log.info(
        "%s: %s, %d lines, %d loaded, %d merged, %d rejected",
        path,
        summary.status,
        summary.rows_read,
        summary.rows_loaded,
        summary.rows_merged,
        summary.rows_rejected,
    )
    return summary


def _already_loaded(engine: Engine, sha256: str) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(
                sa.text("SELECT 1 FROM loads WHERE sha256 = :s AND status = 'loaded' LIMIT 1"),
                {"s": sha256},
            ).first()
            is not None
        )


def load_files(
    engine: Engine,
    settings: Settings,
    *,
    ratings: Sequence[Path] = (),
    metadata: Sequence[Path] = (),
    fmt: str | None = None,
    max_reject_rate: float | None = None,
    skip_loaded: bool = False,
    progress: ProgressSink = NO_PROGRESS,
    fast_path: bool = True,
) -> list[LoadSummary]:
    """Load rating and metadata files, metadata first, each in its own transaction.

    Args:
        engine: a migrated database.
        settings: recsys settings (``max_reject_rate`` default).
        ratings: rating files.
        metadata: product metadata files.
        fmt: force this format for every file instead of detecting it.
        max_reject_rate: overrides ``settings.max_reject_rate``.
        skip_loaded: skip files whose sha256 is already in ``loads`` with status ``loaded``.
        progress: where rows, rows/s and the ETA of each file are reported.
        fast_path: see :func:`load_file`.

    Returns:
        One summary per file, in load order. A file over the reject rate has status
        ``failed`` (the caller decides whether that is fatal; the CLI exits non-zero).

    Raises:
        InputError: a file cannot be loaded at all (checked for every file before loading any).
    """
    rate = settings.max_reject_rate if max_reject_rate is None else max_reject_rate
    if not 0 <= rate <= 1:
        raise InputError(f"--max-reject-rate must be between 0 and 1, got {rate}")
    limits = LoadLimits.from_settings(settings)
    summaries: list[LoadSummary] = []
    plan = plan_files(
        ratings=ratings, metadata=metadata, fmt=fmt, max_line_bytes=limits.max_line_bytes
    )
    for path, chosen in plan:
        if skip_loaded:
            sha256 = file_sha256(path)
            if _already_loaded(engine, sha256):
                _log.info("%s: already loaded (sha256 %s), skipped", path, sha256[:12])
                summaries.append(
                    LoadSummary(
                        str(path),
                        sha256,
                        chosen.name,
                        chosen.kind,
                        0,
                        0,
                        0,
                        0,
                        "skipped",
                        "already loaded",
                        0.0,
                    )
                )
                continue
        summaries.append(
            load_file(
                engine,
                path,
                chosen,
                max_reject_rate=rate,
                progress=progress,
                fast_path=fast_path,
                limits=limits,
            )
        )
    return summaries


def load_inbox(
    engine: Engine, settings: Settings, directory: Path, progress: ProgressSink = NO_PROGRESS
) -> list[LoadSummary]:
    """Load every new file of ``directory``: metadata first, then ratings.

    A file whose sha256 is already in ``loads`` with status ``loaded`` is skipped. Dataset
    companions that hold nothing to load (``u.genre``, ``README``, ``*.md``, MovieLens split
    files ``u1.base`` ...) are ignored; any other file of unknown format is an error, so nothing
    in the inbox is silently left behind.

    Raises:
        InputError: the directory is missing, or a file in it cannot be loaded.
    """
    ratings, metadata = inbox_files(directory, max_line_bytes=settings.max_line_bytes)
    return load_files(
        engine,
        settings,
        ratings=ratings,
        metadata=metadata,
        skip_loaded=True,
        progress=progress,
    )
