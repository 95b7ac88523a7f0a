"""The fast metadata path: JSON-object metadata lines staged without re-encoding their JSON.

For formats with :attr:`~recsys.ingest.rows.Format.json_record` (Amazon 2018 and 2023
metadata), a *plain* line is decoded once with Python's own JSON decoder, its fields are taken
by the format's own functions, and the line's own text is staged as ``raw`` instead of the
decoded object dumped again. Everything else about the load (staging table columns, the merge,
rejected lines, counts, the line cap) is the general path's, so both give the same database.

A line is plain when none of what the format's parser checks on top of decoding can apply to it
and its text holds the same JSON value as the decoded object dumped again:

* no NUL byte, valid UTF-8, and no ``\\u`` escape anywhere (the only ways to a NUL character or
  a lone surrogate in a decoded value, which ``check_json_safe`` rejects);
* at most :data:`MAX_BRACKETS` ``[`` and ``{`` bytes, so nesting is far from any recursion
  limit (a deeper line is decided by the general parser, recursion errors and all);
* no float, ``NaN`` or ``Infinity`` token (the decoder stops at the first one): a float is
  stored as Python's ``repr`` of it, which need not spell the same number as the line does
  (``1.50``, ``1e2``), and NaN, Infinity or a float too large for a double are rejected;
* it decodes to an object the format's ``json_record`` accepts.

Integers keep their digits both ways (``-0`` reads as ``0`` both ways; more than 4,300 digits
make Python's decoder fail, so such a line is not plain), a repeated key keeps its last value
both ways, and neither whitespace nor the other escapes survive into ``jsonb``. Every other
line goes through :func:`recsys.ingest.stage.parse_line` exactly as on the general path: the
same row, or the same rejection with the same reason. ``raw`` is staged as text either way and
parsed as ``jsonb`` by the merge, as on the general path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import NoReturn

import sqlalchemy as sa

from recsys.db.copy import copy_text
from recsys.ingest.reader import LineSource
from recsys.ingest.rows import BadLine, Format, LoadLimits, ProductRow
from recsys.ingest.stage import PRODUCT_COLUMNS, STAGE_PRODUCTS, FileProgress, parsed_lines
from recsys.ingest.summary import Counts, Rejects

MAX_BRACKETS = 256
"""A line with more ``[`` and ``{`` bytes than this is left to the general parser."""

_COPY_BYTES = 1 << 20
"""Staged rows are sent to the server in pieces of about this many bytes."""


class _NotPlain(Exception):
    """A float, NaN or Infinity token: the line is left to the general parser."""


def _not_plain(_token: str) -> NoReturn:
    raise _NotPlain


_DECODE = json.JSONDecoder(parse_float=_not_plain, parse_constant=_not_plain).decode
"""``json.loads`` for lines without float, NaN or Infinity tokens (it stops at the first)."""


def supports(fmt: Format) -> bool:
    """Whether the fast metadata path reads files of this format."""
    return fmt.kind == "metadata" and fmt.json_record is not None


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode
"""``json.dumps(value, ensure_ascii=False)``."""

_JSON_ESCAPED = re.compile(r'[\x00-\x1f"\\]')
"""What JSON text escapes inside a string (with ``ensure_ascii=False``)."""


def _cell(value: str | None) -> str:
    """``value`` as a COPY text cell (what :func:`~recsys.db.copy.escape_text` gives)."""
    if value is None:
        return "\\N"
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\n" in value:
        value = value.replace("\n", "\\n")
    if "\t" in value:
        value = value.replace("\t", "\\t")
    if "\r" in value:
        value = value.replace("\r", "\\r")
    return value


def _json_list(values: list[str]) -> str:
    """``values`` (strings) as JSON text: ``json.dumps(values, ensure_ascii=False)``."""
    joined = '", "'.join(values)
    if _JSON_ESCAPED.search(joined) is None:
        return f'["{joined}"]'
    return _ENCODE(values)


def _fields(row: ProductRow) -> str:
    """The staged columns from ``external_id`` to ``main_category``, tab-separated."""
    categories = None if row.categories is None else _json_list(row.categories)
    return "\t".join(
        (
            _cell(row.external_id),
            _cell(row.title),
            _cell(row.brand),
            _cell(row.description),
            _cell(row.feature_text),
            _cell(categories),
            _cell(row.main_category),
        )
    )


def plain_line(raw: bytes, fmt: Format) -> bytes | None:
    """The staged columns after ``line_no`` of a plain line (see the module docstring), as
    COPY text with the line's own JSON as ``raw``; None when the line is not plain."""
    if b"\\u" in raw or b"\x00" in raw or raw.count(b"[") + raw.count(b"{") > MAX_BRACKETS:
        return None
    try:
        text = raw.decode("utf-8")
        record = _DECODE(text)
    except (ValueError, _NotPlain, RecursionError, MemoryError):
        return None
    if not isinstance(record, dict):
        return None
    try:
        row = fmt.json_record(record)  # type: ignore[misc]
    except (BadLine, ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        return None
    if b"\\" in raw or b"\t" in raw or b"\r" in raw:
        raw = raw.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\r", b"\\r")
    return b"%s\t%s\n" % (_fields(row).encode("utf-8"), raw)


def _general_line(row: ProductRow) -> bytes:
    """The staged columns after ``line_no`` of a row the general parser made."""
    raw = None if row.raw is None else json.dumps(row.raw, ensure_ascii=False, default=str)
    return f"{_fields(row)}\t{_cell(raw)}\n".encode()


def _chunks(rows: Iterable[tuple[int, ProductRow | bytes]]) -> Iterator[bytes]:
    parts: list[bytes] = []
    size = 0
    for line_no, row in rows:
        tail = row if isinstance(row, bytes) else _general_line(row)
        parts.append(b"%d\t" % line_no)
        parts.append(tail)
        size += len(tail)
        if size >= _COPY_BYTES:
            yield b"".join(parts)
            parts.clear()
            size = 0
    yield b"".join(parts)


def stage_products(
    conn: sa.Connection,
    source: LineSource,
    fmt: Format,
    counts: Counts,
    rejects: Rejects,
    progress: FileProgress,
    limits: LoadLimits,
) -> None:
    """Read ``source`` and COPY its valid lines into ``stage_products`` (see
    :func:`recsys.ingest.stage.stage_products`): plain lines as they are, every other line
    through the format's parser; bad lines go to ``rejects``."""

    def quick(raw: bytes) -> bytes | None:
        return plain_line(raw, fmt)

    rows = parsed_lines(source, fmt, counts, rejects, progress, limits, quick)
    conn.execute(STAGE_PRODUCTS)
    copy_text(conn, "stage_products", PRODUCT_COLUMNS, _chunks(rows))  # type: ignore[arg-type]
