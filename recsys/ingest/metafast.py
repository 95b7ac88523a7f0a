"""The fast metadata path: JSON-object metadata lines staged without re-encoding their JSON.

For formats with :attr:`~recsys.ingest.rows.Format.json_record` (Amazon 2018 and 2023
metadata), a *plain* line is decoded once with Python's own JSON decoder, its fields are taken
by the format's own functions, and the line's own text is staged as ``raw`` instead of the
decoded object dumped again. Rejected lines, counts, the line cap and the reject-rate rollback
are the general path's. Into an empty ``products`` table (a first load) each product's first line
is COPYed straight into ``products`` and only its later lines are staged and merged over it by
the general merge; into a table with rows, every line is staged in ``stage_products`` and merged
as on the general path. Both give the same database as the general path (surrogate ids aside).

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
same row, or the same rejection with the same reason.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, NoReturn

import sqlalchemy as sa

from recsys.db.copy import copy_text
from recsys.ingest.merge import merge_products_sql, merge_staged_products
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
    """Whether the fast metadata path reads files of this format (JSON-object lines whose
    repeated products keep the latest value per field, not concatenated text)."""
    return fmt.kind == "metadata" and fmt.json_record is not None and not fmt.aggregate_text


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


def _array(values: list[str]) -> str:
    """``values`` as a PostgreSQL array literal of quoted text elements."""
    quoted = (v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return "{" + ",".join(f'"{v}"' for v in quoted) + "}"


def _fields(row: ProductRow, categories: str | None) -> str:
    """The columns from ``external_id`` to ``main_category``, as tab-separated COPY text."""
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


def _staged(row: ProductRow, raw: bytes) -> bytes:
    """A ``stage_products`` line after ``line_no`` (``raw`` already a COPY cell)."""
    categories = None if row.categories is None else _json_list(row.categories)
    return b"%s\t%s\n" % (_fields(row, categories).encode("utf-8"), raw)


def _direct(row: ProductRow, raw: bytes) -> bytes:
    """A ``products`` line for :data:`PRODUCTS_COLUMNS` (``raw`` already a COPY cell)."""
    categories = None if row.categories is None else _array(row.categories)
    return b"%s\t%s\n" % (_fields(row, categories).encode("utf-8"), raw)


class Plain(NamedTuple):
    """A plain line's row and its own JSON text as a COPY cell."""

    row: ProductRow
    raw: bytes


def plain_line(raw: bytes, fmt: Format) -> Plain | None:
    """The row of a plain line (see the module docstring) with the line's own JSON as the COPY
    cell for ``raw``; None when the line is not plain."""
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
    return Plain(row, raw)


def _plain(item: ProductRow | Plain) -> Plain:
    """A row the general parser made, with its object dumped as the general path does."""
    if isinstance(item, Plain):
        return item
    if item.raw is None:
        return Plain(item, b"\\N")
    dumped = json.dumps(item.raw, ensure_ascii=False, default=str)
    return Plain(item, _cell(dumped).encode("utf-8"))


def _pieces(lines: Iterable[bytes]) -> Iterator[bytes]:
    """``lines`` joined into pieces of about :data:`_COPY_BYTES`."""
    parts: list[bytes] = []
    size = 0
    for line in lines:
        parts.append(line)
        size += len(line)
        if size >= _COPY_BYTES:
            yield b"".join(parts)
            parts.clear()
            size = 0
    yield b"".join(parts)


def _staged_lines(rows: Iterable[tuple[int, ProductRow | Plain]]) -> Iterator[bytes]:
    for line_no, item in rows:
        row, raw = _plain(item)
        yield b"%d\t%s" % (line_no, _staged(row, raw))


PRODUCTS_COLUMNS = PRODUCT_COLUMNS[1:]
"""The staged columns without ``line_no``: what a first load COPYs into ``products``."""


_EMPTY = sa.text("SELECT NOT EXISTS (SELECT 1 FROM products)")


def _first_load(conn: sa.Connection) -> bool:
    """Whether ``products`` is empty; if so, it is locked against other writers until the
    transaction ends (readers go on), so it stays empty but for this load."""
    if not conn.execute(_EMPTY).scalar_one():
        return False
    conn.execute(sa.text("LOCK TABLE products IN SHARE ROW EXCLUSIVE MODE"))
    return conn.execute(_EMPTY).scalar_one()


def _load_direct(
    conn: sa.Connection, rows: Iterable[tuple[int, ProductRow | Plain]], fmt: Format
) -> Callable[[], int]:
    """COPY each product's first line straight into the empty ``products``; later lines of a
    product are spilled, staged after, and merged over it by the general merge."""
    seen: set[str] = set()
    with tempfile.TemporaryFile() as repeats:

        def first_lines() -> Iterator[bytes]:
            for line_no, item in rows:
                row, raw = _plain(item)
                if row.external_id in seen:
                    repeats.write(b"%d\t%s" % (line_no, _staged(row, raw)))
                else:
                    seen.add(row.external_id)
                    yield _direct(row, raw)

        copy_text(conn, "products", PRODUCTS_COLUMNS, _pieces(first_lines()))  # type: ignore[arg-type]
        has_repeats = repeats.tell() > 0
        if has_repeats:
            repeats.seek(0)
            conn.execute(STAGE_PRODUCTS)
            copy_text(conn, "stage_products", PRODUCT_COLUMNS, _pieces(repeats))  # type: ignore[arg-type]

    def merge() -> int:
        if has_repeats:
            conn.execute(merge_products_sql(fmt.aggregate_text))
        return len(seen)

    return merge


def stage_products(
    conn: sa.Connection,
    source: LineSource,
    fmt: Format,
    counts: Counts,
    rejects: Rejects,
    progress: FileProgress,
    limits: LoadLimits,
) -> Callable[[], int]:
    """Read ``source``, writing its valid lines to the database; bad lines go to ``rejects``.

    Plain lines are taken as they are, every other line through the format's parser. Into an
    empty ``products`` table (a first load), each product's first line is COPYed straight into
    ``products`` and its later lines are staged; otherwise every line is staged in
    ``stage_products`` as on the general path.

    Returns:
        The merge still to run (after the reject-rate check), which returns the number of
        distinct products; it gives what :func:`~recsys.ingest.merge.merge_staged_products`
        gives for every line staged.
    """

    def quick(raw: bytes) -> Plain | None:
        return plain_line(raw, fmt)

    rows = parsed_lines(source, fmt, counts, rejects, progress, limits, quick)
    if _first_load(conn):
        return _load_direct(conn, rows, fmt)  # type: ignore[arg-type]
    conn.execute(STAGE_PRODUCTS)
    copy_text(conn, "stage_products", PRODUCT_COLUMNS, _pieces(_staged_lines(rows)))  # type: ignore[arg-type]
    return lambda: merge_staged_products(conn, fmt.aggregate_text)
