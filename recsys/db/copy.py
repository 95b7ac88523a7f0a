"""COPY helpers: bulk rows into and out of PostgreSQL through psycopg 3's ``cursor.copy``.

Two ways in for Python values: :func:`copy_text` writes pre-formatted COPY text in large chunks
(fastest for simple rows: one ``write`` per ~1 MB instead of one call per row), :func:`copy_rows`
uses ``write_row`` (psycopg escapes every value; used for metadata with arbitrary text and JSON).
Table and column names go through ``psycopg.sql.Identifier``, never f-strings.

For numeric arrays, the binary format: callers lay out fixed-size tuples as a numpy structured
array (field count, then per column an int32 length and the big-endian value);
:func:`encode_binary` frames them as a complete stream (header and trailer) and
:func:`binary_body` returns the tuples of a stream read with ``COPY ... TO STDOUT``;
:func:`copy_bigint_arrays` reads a query's bigint[] columns that way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import sqlalchemy as sa
from psycopg import sql

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
COPY_HEADER = COPY_SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
"""The binary format's header: the signature, int32 flags (0) and header-extension length (0)."""
COPY_TRAILER = b"\xff\xff"
"""The int16 field count -1 that ends a binary stream."""

_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def escape_text(value: str) -> str:
    """A value escaped for COPY's text format (backslash, tab, newline, carriage return)."""
    return value.translate(_ESCAPE)


def driver_connection(conn: sa.Connection):
    """The psycopg connection under a SQLAlchemy Connection (same transaction)."""
    return conn.connection.driver_connection


def encode_binary(tuples: Iterable[bytes | np.ndarray]) -> bytes:
    """A complete COPY BINARY stream: the header, the encoded tuples in order, the trailer.

    Args:
        tuples: encoded tuples, as bytes or as numpy structured arrays of tuples.
    """
    parts = [COPY_HEADER]
    parts += [t.tobytes() if isinstance(t, np.ndarray) else bytes(t) for t in tuples]
    parts.append(COPY_TRAILER)
    return b"".join(parts)


def header_length(stream: bytes | bytearray | memoryview) -> int:
    """Bytes before the first tuple of a COPY BINARY stream (header plus its extension).

    Raises:
        ValueError: ``stream`` does not start with the binary format's header.
    """
    head = bytes(stream[: len(COPY_HEADER)])
    if len(head) < len(COPY_HEADER) or not head.startswith(COPY_SIGNATURE):
        raise ValueError("not a COPY BINARY stream")
    return len(COPY_HEADER) + int.from_bytes(head[-4:], "big")


def binary_body(stream: bytes | bytearray | memoryview) -> memoryview:
    """The tuples of a complete COPY BINARY stream, without its header and trailer.

    Raises:
        ValueError: not a complete binary stream.
    """
    view = memoryview(stream)
    if bytes(view[-len(COPY_TRAILER) :]) != COPY_TRAILER:
        raise ValueError("COPY BINARY stream without its trailer")
    return view[header_length(view) : len(view) - len(COPY_TRAILER)]


_BIGINT_ELEMENT = np.dtype([("length", ">i4"), ("value", ">i8")])
_INT8_OID = 20


def _bigint_array(field: memoryview) -> np.ndarray:
    """One bigint[] value in PostgreSQL's binary array format (one dimension, no NULLs)."""
    ndim, has_null, oid = np.frombuffer(field[:12], dtype=">i4")
    if oid != _INT8_OID or has_null or ndim > 1:
        raise ValueError("not a one-dimensional bigint[] without NULLs")
    if ndim == 0:
        return np.zeros(0, dtype=np.int64)
    size = int(np.frombuffer(field[12:16], dtype=">i4")[0])
    elements = np.frombuffer(field[20:], dtype=_BIGINT_ELEMENT)
    if len(elements) != size or (elements["length"] != 8).any():
        raise ValueError("bigint[] with elements of the wrong size")
    return elements["value"].astype(np.int64)


def copy_bigint_arrays(
    conn: sa.Connection, query: str, params: dict | None = None
) -> list[np.ndarray]:
    """The ``bigint[]`` columns of a one-row ``query`` as int64 arrays, by one COPY BINARY.

    A query that aggregates its rows into arrays (``array_agg``) comes back as one COPY message
    instead of one per row, and is parsed by numpy (a NULL array reads as empty).

    Args:
        conn: the caller's connection (same transaction and snapshot).
        query: a SELECT of one row of bigint[] columns, with psycopg ``%(name)s`` placeholders
            (bound by psycopg on the client: COPY takes no server-side parameters).

    Raises:
        ValueError: the stream is not one row of one-dimensional bigint[] without NULLs.
    """
    buffer = bytearray()
    statement = f"COPY ({query}) TO STDOUT (FORMAT BINARY)"
    with driver_connection(conn).cursor() as cur, cur.copy(statement, params) as copy:
        for chunk in copy:
            buffer += chunk
    body = binary_body(buffer)
    n_fields = int.from_bytes(body[:2], "big", signed=True)
    arrays, at = [], 2
    for _ in range(n_fields):
        length = int.from_bytes(body[at : at + 4], "big", signed=True)
        at += 4
        if length < 0:
            arrays.append(np.zeros(0, dtype=np.int64))
            continue
        arrays.append(_bigint_array(body[at : at + length]))
        at += length
    if at != len(body):
        raise ValueError("COPY stream is not one row")
    return arrays


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
