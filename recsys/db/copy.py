"""COPY helpers: bulk rows into PostgreSQL through psycopg 3's ``cursor.copy``.

Two ways in: :func:`copy_text` writes pre-formatted COPY text in large chunks (fastest for
simple rows: one ``write`` per ~1 MB instead of one call per row), :func:`copy_rows` uses
``write_row`` (psycopg escapes every value; used for metadata with arbitrary text and JSON).
Table and column names go through ``psycopg.sql.Identifier``, never f-strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from psycopg import sql

_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def escape_text(value: str) -> str:
    """A value escaped for COPY's text format (backslash, tab, newline, carriage return)."""
    return value.translate(_ESCAPE)


def driver_connection(conn: sa.Connection):
    """The psycopg connection under a SQLAlchemy Connection (same transaction)."""
    return conn.connection.driver_connection


def _copy_statement(table: str, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )


def copy_text(
    conn: sa.Connection, table: str, columns: Sequence[str], chunks: Iterable[str]
) -> None:
    """COPY pre-formatted text (tab-separated, escaped with :func:`escape_text`, one row a line)."""
    with driver_connection(conn).cursor() as cur:
        with cur.copy(_copy_statement(table, columns)) as copy:
            for chunk in chunks:
                if chunk:
                    copy.write(chunk)


def copy_rows(
    conn: sa.Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence]
) -> None:
    """COPY rows of Python values (``None`` -> NULL) with ``write_row``."""
    with driver_connection(conn).cursor() as cur:
        with cur.copy(_copy_statement(table, columns)) as copy:
            for row in rows:
                copy.write_row(row)
