"""The general path's staging: lines parsed one at a time by their format, COPYed into TEMP tables.

Every line goes through :func:`parse_line` (NUL, UTF-8 and empty-line checks, then the format's
parser), so a bad line is rejected with the same reason whichever path reads the file
(:mod:`recsys.ingest.fast` sends every line it does not parse itself through it too). Valid
rows are streamed as COPY into ``stage_ratings`` or ``stage_products`` (per kind), so memory
stays bounded whatever the file size.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import sqlalchemy as sa

from recsys.db.copy import copy_rows, copy_text, escape_text
from recsys.ingest.reader import LineSource, LongLine
from recsys.ingest.rows import BadLine, Format, LoadLimits, Parser, ProductRow, RatingRow
from recsys.ingest.summary import Counts, Rejects
from recsys.progress import ProgressSink, set_total

_CHUNK_ROWS = 20_000

T = TypeVar("T")


class FileProgress:
    """Rows/s and an ETA for one file on a :class:`~recsys.progress.ProgressSink`.

    The phase starts at the first update, with the file's row count estimated from the stored
    bytes the rows read so far took (so the ETA holds for gzip files too); every update refines
    the estimate from all rows read so far, so a file whose first rows are shorter or longer
    than the rest does not run past 100%.
    """

    def __init__(self, sink: ProgressSink, phase: str, size: int) -> None:
        self.sink = sink
        self.phase = phase
        self.size = size
        self._started = False

    def update(self, rows: int, bytes_read: int) -> None:
        """``rows`` data lines read so far, ``bytes_read`` stored bytes consumed."""
        if not self._started:
            estimate = round(self.size * rows / bytes_read) if bytes_read else None
            self.sink.start(self.phase, estimate, "rows")
            self._started = True
        elif bytes_read:
            set_total(self.sink, max(rows, round(self.size * rows / bytes_read)))
        self.sink.update(rows)

    def finish(self) -> None:
        """End the phase (if it started)."""
        if self._started:
            self.sink.finish()
            self._started = False


def is_header(line_no: int, raw: bytes, fmt: Format) -> bool:
    """Whether this line is the format's header line (only ever line 1)."""
    return (
        line_no == 1
        and fmt.header is not None
        and raw.decode(fmt.encoding, "replace").strip() == fmt.header
    )


def parse_line(
    raw: bytes, parse: Parser, encoding: str, limits: LoadLimits | None = None
) -> RatingRow | ProductRow:
    """One data line as a row.

    With ``limits``, a rating dated after ``limits.latest_timestamp`` is a bad line too.

    Raises:
        BadLine: the line cannot be loaded; ``str(err)`` is the reason stored in rejected_rows.
    """
    if b"\x00" in raw:
        raise BadLine("NUL byte in line")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        raise BadLine(f"invalid UTF-8 at byte {err.start}") from None
    if not text.strip():
        raise BadLine("empty line")
    try:
        row = parse(text)
    except BadLine:
        raise
    except (RecursionError, MemoryError) as err:  # absurdly nested JSON
        raise BadLine(f"unparseable line: {type(err).__name__}") from None
    except (ValueError, TypeError, OverflowError) as err:  # a value no parser check foresaw
        raise BadLine(f"unparseable line: {type(err).__name__}: {str(err)[:80]}") from None
    if (
        limits is not None
        and isinstance(row, RatingRow)
        and row.timestamp > limits.latest_timestamp
    ):
        raise BadLine(limits.future_reason(row.timestamp))
    return row


def parsed_lines(
    source: LineSource,
    fmt: Format,
    counts: Counts,
    rejects: Rejects,
    progress: FileProgress,
    limits: LoadLimits,
    quick: Callable[[bytes], T | None] | None = None,
) -> Iterator[tuple[int, RatingRow | ProductRow | T]]:
    """Valid rows of the file with their line numbers; bad lines go to ``rejects``.

    With ``quick``, each data line (not over the cap, not the header) is first given to it; what
    it returns instead of None is yielded for that line as is, and a line it returns None for
    is parsed by :func:`parse_line` as without it.
    """
    parse = fmt.parser_for(source.path)
    encoding = fmt.encoding
    for line_no, raw in source:
        if isinstance(raw, LongLine):  # over the cap: rejected unread
            counts.read += 1
            rejects.add(line_no, raw, limits.long_line_reason(raw.length))
            continue
        if line_no == 1 and is_header(line_no, raw, fmt):
            continue
        counts.read += 1
        if counts.read % _CHUNK_ROWS == 0:
            progress.update(counts.read, source.bytes_read)
        if quick is not None:
            done = quick(raw)
            if done is not None:
                yield line_no, done
                continue
        try:
            row = parse_line(raw, parse, encoding, limits)
        except BadLine as err:
            rejects.add(line_no, raw, str(err))
            continue
        yield line_no, row


def _cell(value: str) -> str:
    return value if value.isalnum() else escape_text(value)


def _rating_chunks(rows: Iterable[tuple[int, RatingRow]]) -> Iterator[str]:
    batch: list[str] = []
    append = batch.append
    for line_no, row in rows:
        append(
            f"{line_no}\t{_cell(row.user)}\t{_cell(row.product)}\t{row.rating!r}\t{row.timestamp!r}\n"
        )
        if len(batch) >= _CHUNK_ROWS:
            yield "".join(batch)
            batch.clear()
    yield "".join(batch)


def _product_rows(rows: Iterable[tuple[int, ProductRow]]) -> Iterator[Sequence]:
    for line_no, row in rows:
        yield (
            line_no,
            row.external_id,
            row.title,
            row.brand,
            row.description,
            row.feature_text,
            None if row.categories is None else json.dumps(row.categories, ensure_ascii=False),
            row.main_category,
            None if row.raw is None else json.dumps(row.raw, ensure_ascii=False, default=str),
        )


_STAGE_RATINGS = sa.text(
    "CREATE TEMP TABLE stage_ratings (line_no bigint, user_ext text, product_ext text, "
    "rating real, ts double precision) ON COMMIT DROP"
)
STAGE_PRODUCTS = sa.text(
    "CREATE TEMP TABLE stage_products (line_no bigint, external_id text, title text, brand text, "
    "description text, feature_text text, categories text, main_category text, raw text) "
    "ON COMMIT DROP"
)
PRODUCT_COLUMNS = (
    "line_no",
    "external_id",
    "title",
    "brand",
    "description",
    "feature_text",
    "categories",
    "main_category",
    "raw",
)


def stage_ratings(conn: sa.Connection, rows: Iterable[tuple[int, RatingRow]]) -> None:
    """COPY rating rows into the TEMP table ``stage_ratings`` (dropped at commit)."""
    conn.execute(_STAGE_RATINGS)
    copy_text(
        conn,
        "stage_ratings",
        ("line_no", "user_ext", "product_ext", "rating", "ts"),
        _rating_chunks(rows),
    )


def stage_products(conn: sa.Connection, rows: Iterable[tuple[int, ProductRow]]) -> None:
    """COPY metadata rows into the TEMP table ``stage_products`` (dropped at commit)."""
    conn.execute(STAGE_PRODUCTS)
    copy_rows(conn, "stage_products", PRODUCT_COLUMNS, _product_rows(rows))
