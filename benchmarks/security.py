"""Cost of the hardening: securing the embedded server at start, and the nightly table lock.

Starts an embedded server in a temporary RECSYS_HOME (stopped and deleted at the end) and
measures, in the same run:

* ``start_embedded`` on a running server whose rules are already recsys's (every command pays
  this) against the same call after the rules were reset to trust-everyone (rewrite, reload and
  the probe that waits until passwords are required);
* taking and releasing the nightly lock (``LOCK TABLE ... IN EXCLUSIVE MODE NOWAIT`` in a
  transaction on its own connection) against the session advisory lock it replaced, on the
  same engine.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def main() -> None:
    import sqlalchemy as sa

    from recsys.config import Settings
    from recsys.db import engine as db
    from recsys.db.locks import LOCK_NAMESPACE, NIGHTLY_LOCK, advisory_lock

    work = Path(tempfile.mkdtemp(prefix="recsys-bench-security-"))
    settings = Settings(database_url=None, home=work / "home")
    try:
        tick = time.perf_counter()
        url = db.start_embedded(settings)
        print(
            f"first start (initdb, rules written before the server starts): "
            f"{time.perf_counter() - tick:.2f} s"
        )
        engine = db.create_engine(settings)
        db.ensure_schema(engine)
        hba = db.pgdata_dir(settings) / "pg_hba.conf"
        reuse = _timed(lambda: db.start_embedded(settings), 20)

        def reset_and_start() -> None:
            hba.write_text("local all all trust\n")
            db.start_embedded(settings)

        secure = _timed(reset_and_start, 5)
        print(
            f"start_embedded on a running server: rules unchanged {reuse * 1e3:.1f} ms, "
            f"rules rewritten + reload + probe {secure * 1e3:.1f} ms (ratio {secure / reuse:.1f})"
        )

        def table_lock() -> None:
            with advisory_lock(engine, NIGHTLY_LOCK):
                pass

        def old_advisory_lock() -> None:
            with engine.connect() as conn:
                conn.execute(
                    sa.text("SELECT pg_try_advisory_lock(:ns, hashtext('recsys:nightly'))"),
                    {"ns": LOCK_NAMESPACE},
                )
                conn.commit()
                conn.execute(
                    sa.text("SELECT pg_advisory_unlock(:ns, hashtext('recsys:nightly'))"),
                    {"ns": LOCK_NAMESPACE},
                )
                conn.commit()

        for fn in (table_lock, old_advisory_lock):  # warm the pool
            fn()
        table = _timed(table_lock, 200)
        advisory = _timed(old_advisory_lock, 200)
        print(
            f"nightly lock take+release: table lock {table * 1e3:.2f} ms, advisory lock "
            f"{advisory * 1e3:.2f} ms (ratio {table / advisory:.2f})"
        )
        engine.dispose()
        del url
    finally:
        db.stop_embedded(settings)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
