"""Job locks: one nightly writer at a time, across processes and machines.

Each lock is a table of its own (created by migration 0005) that the holder locks with
``LOCK TABLE ... IN EXCLUSIVE MODE NOWAIT`` in a transaction kept open on a dedicated
connection for as long as the ``with`` block runs. It never waits: a second process gets
:class:`LockBusy` at once, with the holder's pid. If the holder dies (even ``kill -9``) its
connection closes and the server releases the lock, so a crash never leaves the job locked out.

Why a table lock and not ``pg_advisory_lock``: any role that can connect may take any advisory
lock, so the read-only role could lock the nightly job out. ``LOCK TABLE`` in this mode needs
UPDATE, DELETE or TRUNCATE rights on the table, which only the owner has.

What holding it costs: the lock transaction writes nothing, so it gets no transaction id, and
in READ COMMITTED it keeps no snapshot between statements. It therefore holds back neither
VACUUM's cleanup horizon nor anything else in the database. EXCLUSIVE mode still lets plain
SELECTs of the lock table through (``pg_dump`` is not blocked); only autovacuum of the lock table
itself waits, and that table never changes. The lock transaction disables
``idle_in_transaction_session_timeout`` (and, from PostgreSQL 17, ``transaction_timeout``) for
itself, so a server that sets one does not end the lock in the middle of a long run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.errors import LockBusy, RecsysError

_log = logging.getLogger(__name__)

NIGHTLY_LOCK = "recsys:nightly"
"""Held by `recsys run`, `recsys score` and `recsys publish`: the writers of recommendations."""

FEATURES_LOCK = "recsys:features"
"""Held by `recsys features build`."""

NIGHTLY_JOB = "nightly job (recsys run, score or publish)"
"""How the lock message names whoever holds NIGHTLY_LOCK."""

LOCK_TABLES: dict[str, str] = {NIGHTLY_LOCK: "nightly_lock", FEATURES_LOCK: "features_lock"}
"""The table behind each lock name (see alembic revision 0005)."""

LOCK_NAMESPACE = 0x5EC5
"""First key of the two-key advisory lock a name without a lock table falls back to."""


def _table(name: str) -> str | None:
    return LOCK_TABLES.get(name)


def lock_holder(conn: sa.Connection, name: str) -> int | None:
    """The backend pid holding lock ``name``, or None."""
    if _table(name) is None:
        return conn.execute(
            sa.text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = :ns AND objid = (hashtext(:n)::bigint & 4294967295)::oid "
                "AND objsubid = 2 LIMIT 1"
            ),
            {"ns": LOCK_NAMESPACE, "n": name},
        ).scalar()
    return conn.execute(
        sa.text(
            "SELECT pid FROM pg_locks WHERE locktype = 'relation' AND granted "
            "AND mode = 'ExclusiveLock' AND relation = to_regclass(:t) "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "LIMIT 1"
        ),
        {"t": _table(name)},
    ).scalar()


@contextmanager
def advisory_lock(
    engine: Engine, name: str = NIGHTLY_LOCK, *, what: str = NIGHTLY_JOB
) -> Iterator[sa.Connection]:
    """Hold job lock ``name`` for the duration of the block, or fail at once.

    (The name is historical: the lock is a table lock the read-only role cannot take.)

    Args:
        engine: the database (migrated to revision 0005 or later).
        name: :data:`NIGHTLY_LOCK` or :data:`FEATURES_LOCK`. Any other name gets a
            session-level advisory lock, which every role that can connect could also take:
            give a lock that matters a table in :data:`LOCK_TABLES`.
        what: how the message names the holder's activity.

    Yields:
        The connection that holds the lock in an open transaction (do not use it for work:
        a commit on it would release the lock; use other connections).

    Raises:
        LockBusy: another session holds the lock.
        RecsysError: the lock table does not exist (the schema is not migrated).
    """
    from psycopg import errors as pg_errors

    table = _table(name)
    if table is None:
        with _advisory(engine, name, what) as conn:
            yield conn
        return
    conn = engine.connect()
    try:
        conn.execute(sa.text("SET LOCAL idle_in_transaction_session_timeout = 0"))
        if conn.connection.driver_connection.info.server_version >= 170000:
            conn.execute(sa.text("SET LOCAL transaction_timeout = 0"))
        try:
            conn.execute(sa.text(f"LOCK TABLE {table} IN EXCLUSIVE MODE NOWAIT"))
        except sa.exc.DBAPIError as err:
            conn.rollback()
            if isinstance(err.orig, pg_errors.LockNotAvailable):
                holder = lock_holder(conn, name)
                conn.rollback()
                by = f" (database backend pid {holder})" if holder else ""
                raise LockBusy(
                    f"another {what} is in progress{by}; this one exits without doing anything"
                ) from None
            if isinstance(err.orig, pg_errors.UndefinedTable):
                raise RecsysError(
                    f"the lock table {table} does not exist: migrate the database first "
                    "(recsys init-db)"
                ) from None
            raise
        _log.debug("lock %s taken", name)
        try:
            yield conn
        finally:
            try:
                conn.rollback()
            except Exception:  # the connection is gone: the server released the lock with it
                _log.debug("lock %s released with its connection", name)
    finally:
        conn.close()


@contextmanager
def _advisory(engine: Engine, name: str, what: str) -> Iterator[sa.Connection]:
    """A session-level ``pg_try_advisory_lock`` on a connection of its own."""
    conn = engine.connect()
    try:
        key = int(conn.execute(sa.text("SELECT hashtext(:n)"), {"n": name}).scalar_one())
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
