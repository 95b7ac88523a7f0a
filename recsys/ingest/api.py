"""The loader's public API for other packages (the embeddings importer in ``recsys.features``).

What a load reports (:class:`LoadSummary`, :class:`Rejected`), the file fingerprint loads are
recognised by (:func:`file_sha256`), and :func:`record_load`, which writes a finished load's
``loads`` row and its rejected lines. Code outside ``recsys.ingest`` imports these from here,
never from the loader's modules.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa

from recsys.db.copy import copy_rows
from recsys.ingest.load import LoadSummary, Rejected
from recsys.ingest.reader import file_sha256

_INSERT_LOAD = sa.text(
    "INSERT INTO loads (path, sha256, format, kind, status, rows_read, rows_loaded, rows_merged,"
    " rows_rejected, message, started_at, finished_at) VALUES (:path, :sha256, :format, :kind,"
    " :status, :rows_read, :rows_loaded, :rows_merged, :rows_rejected, :message, :started_at,"
    " clock_timestamp()) RETURNING id"
)


def record_load(
    conn: sa.Connection,
    summary: LoadSummary,
    started_at: datetime,
    rejects: Iterable[tuple[int, str, str]] = (),
) -> int:
    """Insert the ``loads`` row for ``summary`` and its rejected lines; returns the load id.

    Args:
        conn: a connection inside the caller's transaction.
        summary: the finished load (its ``load_id`` is ignored).
        started_at: when the load began.
        rejects: every rejected line as (line number, raw text, reason).
    """
    load_id = conn.execute(
        _INSERT_LOAD,
        {
            "path": summary.path,
            "sha256": summary.sha256,
            "format": summary.format,
            "kind": summary.kind,
            "status": summary.status,
            "rows_read": summary.rows_read,
            "rows_loaded": summary.rows_loaded,
            "rows_merged": summary.rows_merged,
            "rows_rejected": summary.rows_rejected,
            "message": summary.message,
            "started_at": started_at,
        },
    ).scalar_one()
    copy_rows(
        conn,
        "rejected_rows",
        ("load_id", "line_no", "raw_line", "reason"),
        ((load_id, line_no, raw.replace("\x00", ""), reason) for line_no, raw, reason in rejects),
    )
    return int(load_id)


__all__ = ["LoadSummary", "Rejected", "file_sha256", "record_load"]
