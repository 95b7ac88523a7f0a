"""Publishing: rows in by COPY, one-transaction switch of the served run, keep the last N.

A run is written in two transactions:

1. :func:`begin_run` commits a ``recommendation_runs`` row with status ``scoring`` (a trace of
   the attempt, even if the process dies);
2. :class:`RunWriter` COPYs every batch of rows into ``recommendations``, counts them per
   product while it does (``recsys.scoring.aggregates``: the per-product counts the report
   reads instead of the rows), stores those counts and marks the run ``ready`` in ONE
   transaction, so a killed writer leaves neither rows nor counts behind.

:func:`publish_run` then moves the single-row pointer ``published_recommendations`` to the new
run in one short transaction. The view ``current_recommendations`` reads the pointer and the
rows in one statement (one snapshot), so a reader sees either the whole previous run or the
whole new one, never a partial or empty list. Old runs beyond ``keep`` are deleted afterwards,
never the published one; :func:`rollback` serves the previous ready run again.

Functions that take a ``Connection`` never commit: the caller owns the transaction.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.db.copy import driver_connection, encode_binary
from recsys.errors import DataError, RecsysError
from recsys.scoring.aggregates import ProductCounts

_log = logging.getLogger(__name__)

STRATEGIES = ("model", "cold_start", "popularity", "category_popularity")
"""Values of the strategy column; a batch stores the index into this tuple."""

COPY_SQL = (
    "COPY recommendations (run_id, user_id, rank, product_id, score, strategy, reason, "
    "because_product_id) FROM STDIN (FORMAT BINARY)"
)

FLUSH_ROWS = 1 << 17
"""Rows buffered by :class:`RunWriter` before one COPY (few statements, bounded memory)."""


@dataclass(frozen=True)
class ScoreBatch:
    """Recommendation rows for a batch of users, as flat arrays (one entry per row)."""

    user_ids: np.ndarray
    """int64: ``users.id``."""
    ranks: np.ndarray
    """int16/int32: 1-based rank within the user's list."""
    product_ids: np.ndarray
    """int64: ``products.id``."""
    scores: np.ndarray
    """float32."""
    strategies: np.ndarray
    """int8: index into :data:`STRATEGIES`."""
    reasons: np.ndarray | None = None
    """int32: index into ``reason_texts`` (-1 or None: no reason, NULL)."""
    because_ids: np.ndarray | None = None
    """int64: ``products.id`` the reason names (-1 or None: NULL)."""
    reason_texts: tuple[str, ...] = ()
    """The reason phrases the codes in ``reasons`` index."""

    def __len__(self) -> int:
        return int(len(self.user_ids))

    @property
    def n_users(self) -> int:
        return int(len(np.unique(self.user_ids)))


@dataclass(frozen=True)
class RunInfo:
    """A recommendation run as recorded."""

    id: int
    status: str
    k: int
    model_run_id: int | None
    model_type: str | None
    generated_at: datetime
    n_users: int
    n_rows: int
    published: bool
    counts: dict
    gates: dict | None = None
    rule_counts: dict | None = None


def _row_dtype(strategy_len: int, reason_len: int | None, because: bool) -> np.dtype:
    # one COPY BINARY tuple: field count, then (length, big-endian value) per column; a NULL
    # is a length of -1 and no value
    fields = [
        ("nfields", ">i2"),
        ("len_run", ">i4"),
        ("run_id", ">i8"),
        ("len_user", ">i4"),
        ("user_id", ">i8"),
        ("len_rank", ">i4"),
        ("rank", ">i2"),
        ("len_product", ">i4"),
        ("product_id", ">i8"),
        ("len_score", ">i4"),
        ("score", ">f4"),
        ("len_strategy", ">i4"),
        ("strategy", f"S{strategy_len}"),
        ("len_reason", ">i4"),
    ]
    if reason_len is not None:
        fields.append(("reason", f"S{reason_len}"))
    fields.append(("len_because", ">i4"))
    if because:
        fields.append(("because", ">i8"))
    return np.dtype(fields)


def batch_to_copy_binary(run_id: int, batch: ScoreBatch) -> bytes:
    """The batch as a complete COPY BINARY stream, built with numpy rather than row by row.

    Rows are grouped by (strategy, reason, whether a because-product is named) so that every
    group has fixed-size tuples (text lengths and NULLs are part of the tuple); row order does
    not matter to COPY.

    Raises:
        DataError: a score is NaN or infinite (a broken model must not be published).
    """
    n = len(batch)
    if n and not np.all(np.isfinite(batch.scores)):
        bad = int((~np.isfinite(batch.scores)).sum())
        raise DataError(f"recommendation run {run_id}: the model produced {bad} non-finite scores")
    parts = []
    reasons = (
        np.full(n, -1, dtype=np.int64)
        if batch.reasons is None
        else np.asarray(batch.reasons, dtype=np.int64)
    )
    because = (
        np.full(n, -1, dtype=np.int64)
        if batch.because_ids is None
        else np.asarray(batch.because_ids, dtype=np.int64)
    )
    n_reasons = len(batch.reason_texts) + 1
    key = (np.asarray(batch.strategies, dtype=np.int64) * n_reasons + reasons + 1) * 2 + (
        because >= 0
    )
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    bounds = np.flatnonzero(np.diff(sorted_key)) + 1
    for rows in np.split(order, bounds) if n else []:
        group = int(key[rows[0]])
        has_because = bool(group % 2)
        code = (group // 2) % n_reasons - 1
        strategy = STRATEGIES[(group // 2) // n_reasons].encode()
        reason = batch.reason_texts[code].encode() if code >= 0 else None
        tuples = np.empty(
            len(rows),
            dtype=_row_dtype(len(strategy), None if reason is None else len(reason), has_because),
        )
        tuples["nfields"] = 8
        tuples["len_run"] = tuples["len_user"] = tuples["len_product"] = 8
        tuples["len_rank"] = 2
        tuples["len_score"] = 4
        tuples["len_strategy"] = len(strategy)
        tuples["run_id"] = run_id
        tuples["user_id"] = batch.user_ids[rows]
        tuples["rank"] = batch.ranks[rows]
        tuples["product_id"] = batch.product_ids[rows]
        tuples["score"] = batch.scores[rows]
        tuples["strategy"] = strategy
        if reason is None:
            tuples["len_reason"] = -1
        else:
            tuples["len_reason"] = len(reason)
            tuples["reason"] = reason
        if has_because:
            tuples["len_because"] = 8
            tuples["because"] = because[rows]
        else:
            tuples["len_because"] = -1
        parts.append(tuples.tobytes())
    return encode_binary(parts)


def begin_run(
    conn: sa.Connection,
    *,
    k: int,
    model_run_id: int | None,
    model_type: str | None,
    params: dict | None = None,
) -> int:
    """Record a new run in status ``scoring`` and return its id (the caller commits)."""
    return int(
        conn.execute(
            sa.text(
                "INSERT INTO recommendation_runs (model_run_id, model_type, k, status, params) "
                "VALUES (:m, :t, :k, 'scoring', CAST(:p AS jsonb)) RETURNING id"
            ),
            {"m": model_run_id, "t": model_type, "k": k, "p": json.dumps(params or {})},
        ).scalar_one()
    )


def fail_run(conn: sa.Connection, run_id: int, message: str) -> None:
    """Mark a run that did not finish as ``failed`` with one line of reason."""
    conn.execute(
        sa.text(
            "UPDATE recommendation_runs SET status = 'failed', finished_at = now(), message = :m "
            "WHERE id = :r AND status = 'scoring'"
        ),
        {"r": run_id, "m": message.splitlines()[0][:500] if message else None},
    )


def fail_abandoned_runs(conn: sa.Connection) -> int:
    """Mark runs left in ``scoring`` by a dead writer as failed.

    Call only while holding the nightly lock (``recsys.db.locks``): then no live writer exists.
    """
    result = conn.execute(
        sa.text(
            "UPDATE recommendation_runs SET status = 'failed', finished_at = now(), "
            "message = 'abandoned: the writing process stopped before finishing' "
            "WHERE status = 'scoring'"
        )
    )
    return int(result.rowcount or 0)


class RunWriter:
    """COPY batches of rows for one run inside the caller's transaction.

    Batches are buffered up to :data:`FLUSH_ROWS` rows and written by one COPY each; each
    COPYed batch is counted per product (:class:`recsys.scoring.aggregates.ProductCounts`) and
    :meth:`finish` stores the counts with the run.

    Usage::

        with engine.begin() as conn:
            writer = RunWriter(conn, run_id)
            for batch in batches:
                writer.write(batch)
            writer.finish(counts)
    """

    def __init__(self, conn: sa.Connection, run_id: int) -> None:
        self.conn = conn
        self.run_id = run_id
        self.n_rows = 0
        self._n_users = 0
        self._pending: list[ScoreBatch] = []
        self._pending_rows = 0
        self.product_counts = ProductCounts()

    def write(self, batch: ScoreBatch) -> int:
        """Queue one batch (COPYed once enough rows are queued); returns its row count."""
        if not len(batch):
            return 0
        if len(batch) and not np.all(np.isfinite(batch.scores)):
            batch_to_copy_binary(self.run_id, batch)  # raises the DataError
        self._pending.append(batch)
        self._pending_rows += len(batch)
        self.n_rows += len(batch)
        self._n_users += batch.n_users
        if self._pending_rows >= FLUSH_ROWS:
            self.flush()
        return len(batch)

    def flush(self) -> None:
        """COPY the queued batches now."""
        if not self._pending:
            return
        batch = _concat(self._pending)
        self._pending, self._pending_rows = [], 0
        data = batch_to_copy_binary(self.run_id, batch)
        raw = driver_connection(self.conn)
        with raw.cursor() as cur, cur.copy(COPY_SQL) as copy:
            copy.write(data)
        self.product_counts.add(batch.product_ids, batch.ranks)

    def finish(
        self,
        counts: dict | None = None,
        *,
        rule_counts: dict | None = None,
        params: dict | None = None,
    ) -> None:
        """Store the per-product counts and mark the run ``ready`` with its row and user
        counts (same transaction as the rows)."""
        self.flush()
        self.product_counts.write(self.conn, self.run_id)
        n_users = self._n_users
        self.conn.execute(
            sa.text(
                "UPDATE recommendation_runs SET status = 'ready', finished_at = now(), "
                "n_rows = :n, n_users = :u, counts = CAST(:c AS jsonb), "
                "rule_counts = CAST(:rc AS jsonb), params = coalesce(CAST(:p AS jsonb), params) "
                "WHERE id = :r"
            ),
            {
                "r": self.run_id,
                "n": self.n_rows,
                "u": n_users,
                "c": json.dumps(counts or {}),
                "rc": json.dumps(rule_counts or {}),
                "p": None if params is None else json.dumps(params),
            },
        )


def _concat(batches: list[ScoreBatch]) -> ScoreBatch:
    """One batch of the rows of several (their reason vocabularies must be the same)."""
    if len(batches) == 1:
        return batches[0]
    texts = batches[0].reason_texts
    for b in batches:
        if b.reason_texts and b.reason_texts != texts:
            if texts:
                raise ValueError("batches of one run must share their reason texts")
            texts = b.reason_texts

    def column(name: str, fill: int, dtype) -> np.ndarray:
        return np.concatenate(
            [
                np.full(len(b), fill, dtype=dtype)
                if getattr(b, name) is None
                else np.asarray(getattr(b, name), dtype=dtype)
                for b in batches
            ]
        )

    return ScoreBatch(
        np.concatenate([b.user_ids for b in batches]),
        np.concatenate([b.ranks for b in batches]),
        np.concatenate([b.product_ids for b in batches]),
        np.concatenate([b.scores for b in batches]),
        np.concatenate([b.strategies for b in batches]),
        column("reasons", -1, np.int64),
        column("because_ids", -1, np.int64),
        texts,
    )


def published_run_id(conn: sa.Connection) -> int | None:
    """The run apps are served now, or None before the first publish."""
    return conn.execute(sa.text("SELECT run_id FROM published_recommendations")).scalar()


def publish_run(conn: sa.Connection, run_id: int) -> int | None:
    """Serve ``run_id``: move the pointer in the caller's transaction. Returns the previous run.

    Raises:
        RecsysError: the run does not exist or is not ``ready``.
    """
    status = conn.execute(
        sa.text("SELECT status FROM recommendation_runs WHERE id = :r FOR SHARE"), {"r": run_id}
    ).scalar()
    if status is None:
        raise RecsysError(
            f"recommendation run {run_id} does not exist (see `recsys publish --list`)"
        )
    if status != "ready":
        raise RecsysError(
            f"recommendation run {run_id} is {status}, not ready: it cannot be served"
        )
    previous = conn.execute(
        sa.text("SELECT run_id FROM published_recommendations WHERE id = 1 FOR UPDATE")
    ).scalar()
    conn.execute(
        sa.text(
            "INSERT INTO published_recommendations (id, run_id, published_at) "
            "VALUES (1, :r, now()) "
            "ON CONFLICT (id) DO UPDATE SET run_id = EXCLUDED.run_id, published_at = now()"
        ),
        {"r": run_id},
    )
    conn.execute(
        sa.text("UPDATE recommendation_runs SET published_at = now() WHERE id = :r"), {"r": run_id}
    )
    _log.info("published recommendation run %d (previous %s)", run_id, previous)
    return previous


def latest_ready_run(conn: sa.Connection) -> int | None:
    """The newest run in status ``ready``."""
    return conn.execute(
        sa.text("SELECT max(id) FROM recommendation_runs WHERE status = 'ready'")
    ).scalar()


def rollback(conn: sa.Connection) -> tuple[int, int]:
    """Serve the newest ready run older than the published one again.

    Returns:
        (run now served, run that was served).

    Raises:
        RecsysError: nothing is published, or no older run is kept.
    """
    current = published_run_id(conn)
    if current is None:
        raise RecsysError("nothing is published yet, so there is nothing to roll back")
    previous = conn.execute(
        sa.text("SELECT max(id) FROM recommendation_runs WHERE status = 'ready' AND id < :r"),
        {"r": current},
    ).scalar()
    if previous is None:
        raise RecsysError(
            f"run {current} is served and no older ready run is kept (keep_runs limits how many)"
        )
    publish_run(conn, previous)
    return int(previous), int(current)


def prune_runs(conn: sa.Connection, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` ready runs, and failed runs older than those.

    The published run is never deleted, whatever its age (after a rollback it may be old).
    ``recommendations`` has no foreign key (COPY speed), so its rows are deleted here too; the
    run's ``recommendation_product_counts`` go with it (``ON DELETE CASCADE``).
    Returns the ids deleted.
    """
    keep = max(1, int(keep))
    doomed = (
        conn.execute(
            sa.text(
                """
                WITH kept AS (
                    SELECT id FROM recommendation_runs WHERE status = 'ready'
                    ORDER BY id DESC LIMIT :keep
                )
                SELECT r.id FROM recommendation_runs r
                WHERE r.status <> 'scoring'
                  AND r.id NOT IN (SELECT id FROM kept)
                  AND r.id NOT IN (SELECT run_id FROM published_recommendations)
                  AND r.id < (SELECT coalesce(min(id), 0) FROM kept)
                ORDER BY r.id
                """
            ),
            {"keep": keep},
        )
        .scalars()
        .all()
    )
    deleted = [int(r) for r in doomed]
    if deleted:
        conn.execute(
            sa.text("DELETE FROM recommendations WHERE run_id = ANY(:ids)"), {"ids": deleted}
        )
        conn.execute(
            sa.text("DELETE FROM recommendation_runs WHERE id = ANY(:ids)"), {"ids": deleted}
        )
        _log.info("deleted old recommendation runs %s", deleted)
    return deleted


def publish_and_prune(engine: Engine, run_id: int, keep: int) -> int | None:
    """Publish ``run_id`` (one transaction), then delete runs beyond ``keep`` (another).

    Returns the previously published run.
    """
    with engine.begin() as conn:
        previous = publish_run(conn, run_id)
    with engine.begin() as conn:
        prune_runs(conn, keep)
    return previous


def list_runs(conn: sa.Connection, limit: int = 20) -> list[RunInfo]:
    """The newest runs, newest first."""
    rows = conn.execute(
        sa.text(
            "SELECT r.id, r.status, r.k, r.model_run_id, r.model_type, r.generated_at, r.n_users, "
            "r.n_rows, (p.run_id IS NOT NULL) AS published, r.counts, r.gates, r.rule_counts "
            "FROM recommendation_runs r LEFT JOIN published_recommendations p ON p.run_id = r.id "
            "ORDER BY r.id DESC LIMIT :n"
        ),
        {"n": limit},
    ).all()
    return [RunInfo(*row) for row in rows]


def format_gates(gates: dict | None) -> str:
    """One line of a run's gate figures: ``full_lists 1 ok, coverage 0.31 ok, ... FORCED``."""
    if not gates:
        return "not checked"
    parts = []
    for check in gates.get("checks", []):
        value = check.get("value")
        shown = "n/a" if value is None else f"{value:.3g}"
        parts.append(f"{check['gate']} {shown} {'ok' if check.get('passed') else 'FAIL'}")
    if gates.get("forced"):
        parts.append("FORCED")
    return ", ".join(parts)
