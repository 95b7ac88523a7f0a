"""The report's SQL: every figure is an aggregate computed in PostgreSQL.

Nothing here reads a run's published rows into Python. Coverage, the top products and the
popularity histogram come from ``recommendation_product_counts``, the per-product counts the
scoring run stored with its rows (``recsys.scoring.aggregates``; one row per recommended
product, so the cost does not grow with the number of users), and the run's ``list_stats``.
There the popularity percentile is the one of the moment the run was scored. A run written
without them (before migration 0007) falls back to scanning its rows once, grouped by product
into a temporary table (``ON COMMIT DROP``), with the percentiles computed from the ratings of
now. The popularity percentile of a product is ``percent_rank()`` of its number of ratings
among the products that have ratings (ties share the lower rank, as
``recsys.evaluation.metrics.ranking_metrics`` computes it), bucketed with ``width_bucket`` in
the database.

Overlap with the previous run is measured two ways. Per user, exactly as a user sees it (the
share of their list that was in their previous list), over at most :data:`OVERLAP_USERS` users
drawn with a fixed seed (all users of a smaller run): a row-level comparison of every user would
cost a join of both runs' rows. Per product, over all users and exact, from the stored counts of
both runs: the products both recommended and ``sum(least(this, previous))`` over products,
which bounds from above how many of this run's (user, product) rows were also in the previous
run. Samples (users shown, users compared) are read by index lookups on the recommendations'
primary key ``(run_id, user_id, rank)`` and on ``ratings (user_id, product_id)``.

Columns that later migrations add (``recommendation_runs.gates`` / ``rule_counts``,
``recommendations.reason`` / ``because_product_id``) are detected in ``information_schema``
and read only where they exist.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.errors import RecsysError

TREND_RUNS = 14
"""How many pipeline runs (this one and the ones before it) the step trend shows."""
SAMPLE_USERS = 5
OVERLAP_USERS = 2000
"""Users compared with the previous run (all of them when the run has fewer)."""
EXACT_SAMPLE_MAX_USERS = 50_000
"""Up to this many users in a run, samples are drawn from the run's user ids themselves."""
HISTOGRAM_BUCKETS = 10
WORK_MEM = "128MB"
"""``work_mem`` of the report's transaction (PostgreSQL's default 4MB spills the per-product
aggregates of a large catalogue to disk)."""
TOP_PRODUCTS = 20
RATED_SHOWN = 5


class ReportError(RecsysError):
    """The report cannot be made (no such pipeline run, nothing recorded yet)."""


@dataclass(frozen=True)
class RunHeader:
    """The pipeline run itself."""

    id: int
    trigger: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    message: str | None
    options: dict


@dataclass(frozen=True)
class StepRow:
    step: str
    status: str
    seconds: float | None
    started_at: datetime | None
    finished_at: datetime | None
    message: str | None
    detail: dict


@dataclass(frozen=True)
class TrendRun:
    """One earlier (or this) run's seconds per step, for the trend chart."""

    run_id: int
    status: str
    started_at: datetime
    seconds: dict[str, float]
    statuses: dict[str, str]


@dataclass(frozen=True)
class ModelInfo:
    """The model run that was served (or trained) by the pipeline run."""

    id: int
    model_type: str
    status: str
    params: dict
    metrics: dict
    history: dict
    n_users: int | None
    n_products: int | None
    n_ratings: int | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class RecRunInfo:
    """The recommendation run the pipeline run scored."""

    id: int
    status: str
    k: int
    model_run_id: int | None
    model_type: str | None
    n_users: int
    n_rows: int
    counts: dict[str, int]
    params: dict
    generated_at: datetime | None
    published_at: datetime | None
    served_now: bool
    gates: dict | None
    """None when the column does not exist or is empty for this run."""
    rule_counts: dict | None
    has_gates_column: bool
    has_rule_counts_column: bool
    list_stats: dict | None = None
    """The run-level figures stored with its per-product counts; None: not stored."""


@dataclass(frozen=True)
class TopProduct:
    asin: str
    title: str | None
    brand: str | None
    users: int
    first: int
    mean_rank: float
    percentile: float | None
    """Popularity percentile (0..1) among rated products; None: the product has no ratings."""


@dataclass(frozen=True)
class ListStats:
    """Aggregates over the run's rows."""

    products_recommended: int
    rows: int
    catalogue: int
    rated_products: int
    buckets: list[int]
    """Rows per popularity-percentile bucket: index 0 = products without ratings, then deciles."""
    bucket_products: list[int]
    """Distinct products per bucket (same layout)."""
    top: list[TopProduct]
    stored: bool = False
    """True: read from the counts stored while scoring (popularity of that moment); False:
    aggregated from the run's rows now (popularity of now)."""


@dataclass(frozen=True)
class Overlap:
    previous_run_id: int | None
    users: int = 0
    """Users of this run compared."""
    users_with_previous: int = 0
    """Of those, users who had a list in the previous run."""
    mean_share: float | None = None
    """Mean share of a user's list that was in their previous list."""
    identical: int = 0
    """Users whose list holds the same products as before (any order)."""
    exact: bool = True
    """All users compared (True) or a sample with a fixed seed."""
    note: str | None = None
    products: ProductOverlap | None = None
    """The exact per-product comparison over all users (None: a run has no stored counts)."""


@dataclass(frozen=True)
class ProductOverlap:
    """Both runs' stored per-product counts compared, over all their users (exact)."""

    products: int
    """Distinct products this run recommends."""
    previous_products: int
    """Distinct products the previous run recommended."""
    shared_products: int
    """Products both recommend."""
    rows: int
    """This run's rows."""
    shared_rows_bound: int
    """Sum over products of least(this run's lists, the previous run's lists): at least as many
    as this run's (user, product) rows that were also in the previous run."""


@dataclass(frozen=True)
class SampleItem:
    rank: int
    asin: str
    title: str | None
    score: float
    strategy: str
    reason: str | None = None
    because: str | None = None


@dataclass(frozen=True)
class SampleUser:
    user_id: int
    external_id: str
    n_ratings: int
    rated: list[tuple[str, str | None, float]]
    """(asin, title, rating) of the user's top-rated products."""
    recommended: list[SampleItem]


@dataclass
class ReportData:
    """Everything the page shows, read in one snapshot."""

    run: RunHeader
    steps: list[StepRow]
    trend: list[TrendRun]
    model: ModelInfo | None
    rec: RecRunInfo | None
    lists: ListStats | None
    overlap: Overlap | None
    samples: list[SampleUser]
    has_reason: bool
    has_because: bool
    seed: int
    generated_at: datetime
    query_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# --- helpers -------------------------------------------------------------------------------


def table_columns(conn: sa.Connection, table: str) -> set[str]:
    """The column names of ``table`` in the current schema."""
    rows = conn.execute(
        sa.text(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = :t"
        ),
        {"t": table},
    ).scalars()
    return set(rows)


def resolve_run(conn: sa.Connection, run_id: int | None) -> int:
    """``run_id`` if that pipeline run exists, else the latest one.

    Raises:
        ReportError: no such run, or no runs at all.
    """
    if run_id is None:
        latest = conn.execute(sa.text("SELECT max(id) FROM pipeline_runs")).scalar()
        if latest is None:
            raise ReportError("no pipeline runs recorded yet; run `recsys run` first")
        return int(latest)
    found = conn.execute(
        sa.text("SELECT id FROM pipeline_runs WHERE id = :r"), {"r": run_id}
    ).scalar()
    if found is None:
        raise ReportError(f"no pipeline run {run_id} (see `recsys run --history`)")
    return int(found)


def _run_header(conn: sa.Connection, run_id: int) -> RunHeader:
    row = conn.execute(
        sa.text(
            "SELECT id, trigger, status, started_at, finished_at, message, options "
            "FROM pipeline_runs WHERE id = :r"
        ),
        {"r": run_id},
    ).one()
    return RunHeader(*row[:6], options=dict(row[6] or {}))


def _steps(conn: sa.Connection, run_id: int) -> list[StepRow]:
    rows = conn.execute(
        sa.text(
            "SELECT step, status, seconds, started_at, finished_at, message, detail "
            "FROM pipeline_steps WHERE pipeline_run_id = :r ORDER BY position, id"
        ),
        {"r": run_id},
    ).all()
    return [StepRow(*r[:6], detail=dict(r[6] or {})) for r in rows]


def _trend(conn: sa.Connection, run_id: int, n: int = TREND_RUNS) -> list[TrendRun]:
    runs = conn.execute(
        sa.text(
            "SELECT id, status, started_at FROM pipeline_runs WHERE id <= :r "
            "ORDER BY id DESC LIMIT :n"
        ),
        {"r": run_id, "n": n},
    ).all()
    if not runs:
        return []
    ids = [int(r[0]) for r in runs]
    steps = conn.execute(
        sa.text(
            "SELECT pipeline_run_id, step, coalesce(sum(seconds), 0), min(status) "
            "FROM pipeline_steps WHERE pipeline_run_id = ANY(:ids) GROUP BY pipeline_run_id, step"
        ),
        {"ids": ids},
    ).all()
    seconds: dict[int, dict[str, float]] = {i: {} for i in ids}
    statuses: dict[int, dict[str, str]] = {i: {} for i in ids}
    for rid, step, sec, status in steps:
        seconds[int(rid)][step] = float(sec)
        statuses[int(rid)][step] = status
    return [
        TrendRun(int(r[0]), r[1], r[2], seconds[int(r[0])], statuses[int(r[0])])
        for r in reversed(runs)
    ]


def _linked_ids(steps: list[StepRow]) -> tuple[int | None, int | None]:
    """(model run, recommendation run) named in the steps' details."""
    model_run = rec_run = None
    for s in steps:
        d = s.detail
        if model_run is None and isinstance(d.get("model_run_id"), int):
            model_run = int(d["model_run_id"])
        if rec_run is None and isinstance(d.get("recommendation_run_id"), int):
            rec_run = int(d["recommendation_run_id"])
    return model_run, rec_run


def _model(conn: sa.Connection, model_run_id: int) -> ModelInfo | None:
    row = conn.execute(
        sa.text(
            "SELECT id, model_type, status, params, metrics, history, n_users, n_products, "
            "n_ratings, started_at, finished_at FROM model_runs WHERE id = :m"
        ),
        {"m": model_run_id},
    ).one_or_none()
    if row is None:
        return None
    return ModelInfo(
        int(row[0]),
        row[1],
        row[2],
        dict(row[3] or {}),
        dict(row[4] or {}),
        dict(row[5] or {}),
        *row[6:],
    )


def _rec_run(conn: sa.Connection, rec_run_id: int, columns: set[str]) -> RecRunInfo | None:
    has_gates, has_rules = "gates" in columns, "rule_counts" in columns
    extra = (", r.gates" if has_gates else ", NULL") + (
        ", r.rule_counts" if has_rules else ", NULL"
    )
    extra += ", r.list_stats" if "list_stats" in columns else ", NULL"
    row = conn.execute(
        sa.text(
            "SELECT r.id, r.status, r.k, r.model_run_id, r.model_type, r.n_users, r.n_rows, "
            "r.counts, r.params, r.generated_at, r.published_at, "
            "(p.run_id IS NOT NULL) AS served" + extra + " FROM recommendation_runs r "
            "LEFT JOIN published_recommendations p ON p.run_id = r.id WHERE r.id = :r"
        ),
        {"r": rec_run_id},
    ).one_or_none()
    if row is None:
        return None
    return RecRunInfo(
        id=int(row[0]),
        status=row[1],
        k=int(row[2]),
        model_run_id=row[3],
        model_type=row[4],
        n_users=int(row[5]),
        n_rows=int(row[6]),
        counts={str(k): int(v) for k, v in dict(row[7] or {}).items()},
        params=dict(row[8] or {}),
        generated_at=row[9],
        published_at=row[10],
        served_now=bool(row[11]),
        gates=dict(row[12]) if row[12] else None,
        rule_counts=dict(row[13]) if row[13] else None,
        has_gates_column=has_gates,
        has_rule_counts_column=has_rules,
        list_stats=dict(row[14]) if row[14] is not None else None,
    )


def _has_rows(conn: sa.Connection, rec_run_id: int) -> bool:
    """Whether the run's rows are kept: one primary-key index probe.

    The ORDER BY follows the primary key ``(run_id, user_id, rank)`` so that the planner reads
    the index: with a few runs in the table each holds a large share of the rows, and a plain
    ``LIMIT 1`` may be planned as a sequential scan that reads every earlier run's rows first.
    """
    return (
        conn.execute(
            sa.text(
                "SELECT 1 FROM recommendations WHERE run_id = :r ORDER BY run_id, user_id, rank "
                "LIMIT 1"
            ),
            {"r": rec_run_id},
        ).scalar()
        is not None
    )


# --- the lists -----------------------------------------------------------------------------

_PER_PRODUCT = """
CREATE TEMPORARY TABLE report_products ON COMMIT DROP AS
SELECT product_id,
       count(*) AS users,
       count(*) FILTER (WHERE rank = 1) AS first,
       avg(rank)::float8 AS mean_rank
FROM recommendations
WHERE run_id = :r
GROUP BY product_id
"""

_PERCENTILES = """
CREATE TEMPORARY TABLE report_percentiles ON COMMIT DROP AS
SELECT product_id, percent_rank() OVER (ORDER BY n)::float8 AS pr
FROM (SELECT product_id, count(*) AS n FROM ratings GROUP BY product_id) pop
"""

_HISTOGRAM = f"""
SELECT CASE WHEN pc.pr IS NULL THEN 0
            ELSE least(width_bucket(pc.pr, 0, 1, {HISTOGRAM_BUCKETS}), {HISTOGRAM_BUCKETS}) END
           AS bucket,
       sum(rp.users)::bigint AS rows,
       count(*) AS products
FROM report_products rp
LEFT JOIN report_percentiles pc USING (product_id)
GROUP BY 1
ORDER BY 1
"""

_TOP = """
SELECT p.external_id, p.title, p.brand, rp.users, rp.first, rp.mean_rank, pc.pr
FROM report_products rp
JOIN products p ON p.id = rp.product_id
LEFT JOIN report_percentiles pc ON pc.product_id = rp.product_id
ORDER BY rp.users DESC, p.external_id
LIMIT :n
"""


_STORED_HISTOGRAM = f"""
SELECT CASE WHEN popularity_pct IS NULL THEN 0
            ELSE least(width_bucket(popularity_pct, 0, 1, {HISTOGRAM_BUCKETS}),
                       {HISTOGRAM_BUCKETS}) END
           AS bucket,
       sum(n_users)::bigint AS rows,
       count(*) AS products
FROM recommendation_product_counts
WHERE run_id = :r
GROUP BY 1
ORDER BY 1
"""

# only the products with at least the 20th largest count are joined to ``products`` (for the
# tie-break by ASIN), not all the run's products
_STORED_TOP = """
SELECT p.external_id, p.title, p.brand, c.n_users, c.n_first,
       c.rank_sum::float8 / c.n_users AS mean_rank, c.popularity_pct
FROM recommendation_product_counts c
JOIN products p ON p.id = c.product_id
WHERE c.run_id = :r
  AND c.n_users >= coalesce((SELECT n_users FROM recommendation_product_counts
                             WHERE run_id = :r ORDER BY n_users DESC
                             LIMIT 1 OFFSET :n - 1), 0)
ORDER BY c.n_users DESC, p.external_id
LIMIT :n
"""


def stored_list_stats(conn: sa.Connection, rec: RecRunInfo) -> ListStats:
    """Coverage, histogram and top products from the run's stored per-product counts.

    Reads one row per recommended product (``recommendation_product_counts``), none of the
    run's rows; the catalogue, rated-product and percentile figures are those of the moment the
    run was scored.
    """
    stats = rec.list_stats or {}
    buckets = [0] * (HISTOGRAM_BUCKETS + 1)
    bucket_products = [0] * (HISTOGRAM_BUCKETS + 1)
    for bucket, n_rows, n_products in conn.execute(sa.text(_STORED_HISTOGRAM), {"r": rec.id}):
        buckets[int(bucket)] = int(n_rows)
        bucket_products[int(bucket)] = int(n_products)
    top = [
        TopProduct(r[0], r[1], r[2], int(r[3]), int(r[4]), float(r[5]), r[6])
        for r in conn.execute(sa.text(_STORED_TOP), {"r": rec.id, "n": TOP_PRODUCTS})
    ]
    return ListStats(
        products_recommended=int(sum(bucket_products)),
        rows=int(sum(buckets)),
        catalogue=int(stats.get("catalogue", 0)),
        rated_products=int(stats.get("rated_products", 0)),
        buckets=buckets,
        bucket_products=bucket_products,
        top=top,
        stored=True,
    )


def list_stats(conn: sa.Connection, rec_run_id: int) -> ListStats:
    """Coverage, the popularity-percentile histogram and the top products of one run, from its
    rows (runs without stored counts: one scan of the rows, and of the ratings).

    Must run inside a transaction (the temporary tables are dropped at its commit).
    """
    conn.execute(sa.text(_PER_PRODUCT), {"r": rec_run_id})
    conn.execute(sa.text(_PERCENTILES))
    products_recommended, rows = conn.execute(
        sa.text("SELECT count(*), coalesce(sum(users), 0) FROM report_products")
    ).one()
    catalogue = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
    rated = conn.execute(sa.text("SELECT count(*) FROM report_percentiles")).scalar_one()
    buckets = [0] * (HISTOGRAM_BUCKETS + 1)
    bucket_products = [0] * (HISTOGRAM_BUCKETS + 1)
    for bucket, n_rows, n_products in conn.execute(sa.text(_HISTOGRAM)):
        buckets[int(bucket)] = int(n_rows)
        bucket_products[int(bucket)] = int(n_products)
    top = [
        TopProduct(r[0], r[1], r[2], int(r[3]), int(r[4]), float(r[5]), r[6])
        for r in conn.execute(sa.text(_TOP), {"n": TOP_PRODUCTS})
    ]
    return ListStats(
        products_recommended=int(products_recommended),
        rows=int(rows),
        catalogue=int(catalogue),
        rated_products=int(rated),
        buckets=buckets,
        bucket_products=bucket_products,
        top=top,
    )


# --- samples of users ----------------------------------------------------------------------


def sample_run_users(
    conn: sa.Connection, rec_run_id: int, n: int, seed: int, n_users: int
) -> tuple[list[int], bool]:
    """Up to ``n`` user ids with a list in the run, drawn with ``seed``; (ids, all_of_them).

    Small runs: a draw from the run's own user ids (an index range scan of rank-1 rows).
    Large runs: user ids drawn uniformly between the smallest and largest id, kept where the
    user has a list in the run (one primary-key lookup each), in draw order.
    """
    rng = np.random.default_rng(seed)
    if n_users <= EXACT_SAMPLE_MAX_USERS:
        ids = np.array(
            conn.execute(
                sa.text(
                    "SELECT user_id FROM recommendations WHERE run_id = :r AND rank = 1 "
                    "ORDER BY user_id"
                ),
                {"r": rec_run_id},
            )
            .scalars()
            .all(),
            dtype=np.int64,
        )
        if len(ids) <= n:
            return ids.tolist(), True
        return rng.choice(ids, n, replace=False).tolist(), False
    lo, hi = conn.execute(sa.text("SELECT min(id), max(id) FROM users")).one()
    if lo is None:
        return [], True
    found: list[int] = []
    seen: set[int] = set()
    for size in (4 * n, 64 * n, 1024 * n):
        candidates = [
            int(c) for c in rng.integers(int(lo), int(hi) + 1, size) if int(c) not in seen
        ]
        seen.update(candidates)
        hits = (
            conn.execute(
                sa.text(
                    "SELECT c.u FROM unnest(CAST(:ids AS bigint[])) WITH ORDINALITY AS c(u, i) "
                    "WHERE EXISTS (SELECT 1 FROM recommendations r "
                    "WHERE r.run_id = :r AND r.user_id = c.u AND r.rank = 1) ORDER BY c.i"
                ),
                {"ids": candidates, "r": rec_run_id},
            )
            .scalars()
            .all()
        )
        found.extend(int(h) for h in hits)
        if len(found) >= n:
            return found[:n], False
    return found, False


def previous_run(conn: sa.Connection, rec_run_id: int) -> int | None:
    """The newest ready recommendation run before ``rec_run_id``."""
    return conn.execute(
        sa.text("SELECT max(id) FROM recommendation_runs WHERE id < :r AND status = 'ready'"),
        {"r": rec_run_id},
    ).scalar()


_OVERLAP = """
WITH u AS (SELECT unnest(CAST(:ids AS bigint[])) AS user_id),
cur AS (SELECT r.user_id, r.product_id FROM u JOIN recommendations r
        ON r.run_id = :r AND r.user_id = u.user_id),
prev AS (SELECT r.user_id, r.product_id FROM u JOIN recommendations r
         ON r.run_id = :p AND r.user_id = u.user_id),
prev_n AS (SELECT user_id, count(*) AS n FROM prev GROUP BY user_id),
per_user AS (
    SELECT c.user_id, count(*) AS n, count(p.product_id) AS shared
    FROM cur c LEFT JOIN prev p ON p.user_id = c.user_id AND p.product_id = c.product_id
    GROUP BY c.user_id)
SELECT count(*) AS users,
       count(pn.user_id) AS with_previous,
       avg(pu.shared::float8 / pu.n) FILTER (WHERE pn.user_id IS NOT NULL) AS mean_share,
       count(*) FILTER (WHERE pu.shared = pu.n AND pn.n = pu.n) AS identical
FROM per_user pu LEFT JOIN prev_n pn ON pn.user_id = pu.user_id
"""


_PRODUCT_OVERLAP = """
SELECT count(c.product_id) AS products,
       count(p.product_id) AS previous_products,
       count(*) FILTER (WHERE c.product_id IS NOT NULL AND p.product_id IS NOT NULL) AS shared,
       coalesce(sum(c.n_users), 0)::bigint AS rows,
       -- least() ignores NULLs: only products of both runs count
       coalesce(sum(least(c.n_users, p.n_users))
                FILTER (WHERE c.product_id IS NOT NULL AND p.product_id IS NOT NULL), 0)::bigint
           AS shared_rows_bound
FROM (SELECT product_id, n_users FROM recommendation_product_counts WHERE run_id = :r) c
FULL JOIN (SELECT product_id, n_users FROM recommendation_product_counts WHERE run_id = :p) p
  ON p.product_id = c.product_id
"""


def product_overlap(conn: sa.Connection, rec_run_id: int, previous_run_id: int) -> ProductOverlap:
    """Both runs' stored per-product counts compared (both must have them)."""
    row = conn.execute(sa.text(_PRODUCT_OVERLAP), {"r": rec_run_id, "p": previous_run_id}).one()
    return ProductOverlap(*(int(v) for v in row))


def _has_stored_counts(conn: sa.Connection, rec_run_id: int) -> bool:
    return (
        conn.execute(
            sa.text("SELECT list_stats IS NOT NULL FROM recommendation_runs WHERE id = :r"),
            {"r": rec_run_id},
        ).scalar()
        is True
    )


def overlap(conn: sa.Connection, rec: RecRunInfo, seed: int) -> Overlap:
    """How much of each user's list was already in their list of the previous ready run.

    Per user over a seeded sample (or all users of a small run), and per product over all users
    where both runs have stored counts (see the module docstring).
    """
    prev = previous_run(conn, rec.id)
    if prev is None:
        return Overlap(None, note="no earlier recommendation run")
    if not _has_rows(conn, prev):
        return Overlap(int(prev), note=f"the rows of run {prev} are pruned (keep_runs)")
    products = None
    if rec.list_stats is not None and _has_stored_counts(conn, int(prev)):
        products = product_overlap(conn, rec.id, int(prev))
    ids, exact = sample_run_users(conn, rec.id, OVERLAP_USERS, seed, rec.n_users)
    users, with_prev, share, identical = conn.execute(
        sa.text(_OVERLAP), {"ids": ids, "r": rec.id, "p": prev}
    ).one()
    return Overlap(
        int(prev),
        users=int(users),
        users_with_previous=int(with_prev),
        mean_share=None if share is None else float(share),
        identical=int(identical),
        exact=exact,
        products=products,
    )


def samples(
    conn: sa.Connection,
    rec: RecRunInfo,
    seed: int,
    *,
    has_reason: bool,
    has_because: bool,
    n: int = SAMPLE_USERS,
) -> list[SampleUser]:
    """``n`` users drawn with ``seed``: their top-rated products beside their list."""
    ids, _ = sample_run_users(conn, rec.id, n, seed, rec.n_users)
    if not ids:
        return []
    users = conn.execute(
        sa.text(
            "SELECT u.id, u.external_id, "
            "(SELECT count(*) FROM ratings r WHERE r.user_id = u.id) "
            "FROM users u WHERE u.id = ANY(:ids)"
        ),
        {"ids": ids},
    ).all()
    by_id = {int(r[0]): (r[1], int(r[2])) for r in users}
    rated: dict[int, list] = {i: [] for i in ids}
    for uid, asin, title, rating in conn.execute(
        sa.text(
            "SELECT x.user_id, p.external_id, p.title, x.rating "
            "FROM unnest(CAST(:ids AS bigint[])) AS u(id) CROSS JOIN LATERAL "
            "(SELECT r.user_id, r.product_id, r.rating FROM ratings r "
            "WHERE r.user_id = u.id ORDER BY r.rating DESC, r.rated_at DESC, r.product_id "
            "LIMIT :n) x JOIN products p ON p.id = x.product_id "
            "ORDER BY x.user_id, x.rating DESC"
        ),
        {"ids": ids, "n": RATED_SHOWN},
    ):
        rated[int(uid)].append((asin, title, float(rating)))
    reason = "r.reason" if has_reason else "NULL"
    because = "bp.title" if has_because else "NULL"
    because_join = " LEFT JOIN products bp ON bp.id = r.because_product_id" if has_because else ""
    lists: dict[int, list[SampleItem]] = {i: [] for i in ids}
    for row in conn.execute(
        sa.text(
            f"SELECT r.user_id, r.rank, p.external_id, p.title, r.score, r.strategy, {reason}, "
            f"{because} FROM recommendations r JOIN products p ON p.id = r.product_id"
            f"{because_join} WHERE r.run_id = :r AND r.user_id = ANY(:ids) "
            "ORDER BY r.user_id, r.rank"
        ),
        {"r": rec.id, "ids": ids},
    ):
        lists[int(row[0])].append(SampleItem(int(row[1]), *row[2:8]))
    return [SampleUser(i, by_id[i][0], by_id[i][1], rated[i], lists[i]) for i in ids if i in by_id]


# --- everything ----------------------------------------------------------------------------


def read_report(engine: Engine, run_id: int | None = None, *, seed: int = 0) -> ReportData:
    """Read every figure of the report of pipeline run ``run_id`` (default: the latest).

    Everything is read in one REPEATABLE READ transaction (one snapshot), rolled back at the
    end: it writes nothing but its temporary tables.

    Raises:
        ReportError: no such run, or no runs at all.
    """
    started = time.perf_counter()
    with engine.connect() as conn, conn.begin():
        conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        # the per-product aggregates hash up to one row per product: keep them in memory
        conn.execute(sa.text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
        rid = resolve_run(conn, run_id)
        header = _run_header(conn, rid)
        steps = _steps(conn, rid)
        trend = _trend(conn, rid)
        model_run_id, rec_run_id = _linked_ids(steps)
        rec_columns = table_columns(conn, "recommendation_runs")
        row_columns = table_columns(conn, "recommendations")
        has_reason = "reason" in row_columns
        has_because = "because_product_id" in row_columns
        notes: list[str] = []
        rec = _rec_run(conn, rec_run_id, rec_columns) if rec_run_id is not None else None
        if model_run_id is None and rec is not None:
            model_run_id = rec.model_run_id
        model = _model(conn, model_run_id) if model_run_id is not None else None
        lists = over = None
        sample_users: list[SampleUser] = []
        if rec is not None and rec.status == "ready" and _has_rows(conn, rec.id):
            if rec.list_stats is not None:
                lists = stored_list_stats(conn, rec)
            else:
                lists = list_stats(conn, rec.id)
            over = overlap(conn, rec, seed)
            sample_users = samples(conn, rec, seed, has_reason=has_reason, has_because=has_because)
        elif rec is not None:
            notes.append(
                f"recommendation run {rec.id} is {rec.status}"
                + (" and its rows are pruned" if rec.status == "ready" else "")
            )
        conn.rollback()
    return ReportData(
        run=header,
        steps=steps,
        trend=trend,
        model=model,
        rec=rec,
        lists=lists,
        overlap=over,
        samples=sample_users,
        has_reason=has_reason,
        has_because=has_because,
        seed=seed,
        generated_at=datetime.now().astimezone(),
        query_seconds=time.perf_counter() - started,
        notes=notes,
    )


def metric(metrics: dict, *path: str) -> Any:
    """``metrics[path[0]][path[1]]...`` or None where any part is missing."""
    node: Any = metrics
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
