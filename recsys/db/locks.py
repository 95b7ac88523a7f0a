"""PostgreSQL advisory locks: one nightly writer at a time, across processes and machines.

The lock is a session-level ``pg_try_advisory_lock`` held on a connection of its own for as long
as the ``with`` block runs. It never waits: a second process gets :class:`LockBusy` at once,
with the holder's pid. If the holder dies (even ``kill -9``) its connection closes and the
server releases the lock, so a crash never leaves the job locked out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.errors import LockBusy

_log = logging.getLogger(__name__)

LOCK_NAMESPACE = 0x5EC5
"""First key of the two-key advisory lock form, so recsys never collides with other apps."""

NIGHTLY_LOCK = "recsys:nightly"
"""Held by `recsys run`, `recsys score` and `recsys publish`: the writers of recommendations."""

NIGHTLY_JOB = "nightly job (recsys run, score or publish)"
"""How the lock message names whoever holds NIGHTLY_LOCK."""


def _key(conn: sa.Connection, name: str) -> int:
    return int(conn.execute(sa.text("SELECT hashtext(:n)"), {"n": name}).scalar_one())


def lock_holder(conn: sa.Connection, name: str) -> int | None:
    """The backend pid holding advisory lock ``name``, or None."""
    return conn.execute(
        sa.text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = :ns AND objid = (hashtext(:n)::bigint & 4294967295)::oid "
            "AND objsubid = 2 LIMIT 1"
        ),
        {"ns": LOCK_NAMESPACE, "n": name},
    ).scalar()


@contextmanager
def advisory_lock(
    engine: Engine, name: str = NIGHTLY_LOCK, *, what: str = NIGHTLY_JOB
) -> Iterator[sa.Connection]:
    """Hold advisory lock ``name`` for the duration of the block, or fail at once.

    Args:
        engine: the database.
        name: the lock's name (hashed to a key).
        what: how the message names the holder's activity.

    Yields:
        The connection that holds the lock (do not close it; use other connections for work).

    Raises:
        LockBusy: another session holds the lock.
    """
    conn = engine.connect()
    try:
        key = _key(conn, name)
        got = conn.execute(
            sa.text("SELECT pg_try_advisory_lock(:ns, :k)"), {"ns": LOCK_NAMESPACE, "k": key}
        ).scalar_one()
        conn.commit()
        if not got:
            holder = lock_holder(conn, name)
            by = f" (database backend pid {holder})" if holder else ""
            raise LockBusy(
                f"another {what} is in progress{by}; this one exits without doing anything"
            )
        _log.debug("advisory lock %s taken", name)
        try:
            yield conn
        finally:
            try:
                conn.rollback()
                conn.execute(
                    sa.text("SELECT pg_advisory_unlock(:ns, :k)"), {"ns": LOCK_NAMESPACE, "k": key}
                )
                conn.commit()
            except Exception:  # the connection is gone: the server released the lock with it
                _log.debug("advisory lock %s released with its connection", name)
    finally:
        conn.close()
