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
from recsys.ingest.merge import insert_load
from recsys.ingest.reader import file_sha256


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
    load_id = insert_load(conn, summary, started_at)
    copy_rows(
        conn,
        "rejected_rows",
        ("load_id", "line_no", "raw_line", "reason"),
        ((load_id, line_no, raw.replace("\x00", ""), reason) for line_no, raw, reason in rejects),
    )
    return int(load_id)


__all__ = ["LoadSummary", "Rejected", "file_sha256", "record_load"]
