"""Loading files into users, products and ratings: streamed, COPY-staged, merged set-based.

One file = one transaction. Lines are parsed one at a time by the file's format
(``recsys.ingest.<format>``) and streamed as COPY text into a TEMP staging table, so memory stays
bounded whatever the file size. Then, still in the same transaction:

* duplicates inside the file are resolved in SQL (ratings: ``DISTINCT ON (user, product)``
  keeping the latest ``rated_at``, equal timestamps the later line; metadata: per field the
  last non-empty value, ``raw`` merged key by key with later lines winning, MovieLens tags
  concatenated in file order);
* one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` each creates the users and products the
  ratings refer to and merges ratings/metadata into the tables. A rating already in the
  database is replaced when the file's rating is as recent or more recent (``>=``), so loading
  the same file twice leaves the same database;
* a row in ``loads`` (status ``loaded``) and the file's rejected lines are written.

Malformed lines never stop the load: each goes to ``rejected_rows`` with its line number, the
raw line (made storable: NUL bytes removed, invalid UTF-8 bytes backslash-escaped) and the
reason. Rejected lines are spilled to a temporary file, not kept in memory. When more than
``max_reject_rate`` of the lines are bad, the file's data is rolled back and the failure is
recorded in a *separate* transaction (a ``loads`` row with status ``failed`` plus its rejected
rows, no data), so the user can inspect what was wrong with ``SELECT * FROM rejected_rows``.

A kill or Ctrl-C mid-file aborts the open transaction: the database is exactly as before.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.config import Settings
from recsys.db.copy import copy_rows, copy_text, escape_text
from recsys.errors import InputError
from recsys.ingest.detect import detect_format, get_format
from recsys.ingest.reader import (
    DEFAULT_MAX_LINE_BYTES,
    LineSource,
    LongLine,
    check_readable,
    file_problem,
    file_sha256,
)
from recsys.ingest.rows import BadLine, Format, LoadLimits, ProductRow, RatingRow

_log = logging.getLogger(__name__)

SHOWN_REJECTS = 5
"""How many rejected lines a summary carries for printing."""
_CHUNK_ROWS = 20_000
_MAX_RAW_CHARS = 100_000
"""A rejected line is stored up to this many characters (a broken file can have huge lines)."""


@dataclass(frozen=True)
class Rejected:
    """A rejected line, as shown to the user."""

    line_no: int
    reason: str
    raw_line: str


@dataclass(frozen=True)
class LoadSummary:
    """What loading one file did; the same type reports embedding imports (recsys.features).

    ``rows_read`` counts data lines (a header line is not one); ``rows_loaded`` the distinct
    keys written (user-product pairs, products); ``rows_merged`` the valid lines that merged
    into another line of the same key; ``rows_rejected`` the malformed lines. So
    ``rows_read == rows_loaded + rows_merged + rows_rejected``.
    """

    path: str
    sha256: str
    format: str
    kind: str
    rows_read: int
    rows_loaded: int
    rows_merged: int
    rows_rejected: int
    status: str
    """``loaded`` | ``failed`` | ``skipped`` (already loaded; nothing written)."""
    message: str | None
    seconds: float
    rejects: tuple[Rejected, ...] = field(default=())
    """The first few rejected lines (all of them are in rejected_rows)."""
    load_id: int | None = None


class ProgressHook(Protocol):
    """Progress reporting for long files (the CLI implements it with rich)."""

    def start(self, path: Path, total_bytes: int) -> None: ...

    def update(self, bytes_read: int, rows: int) -> None: ...

    def finish(self) -> None: ...


class _TooManyRejects(Exception):
    pass


@dataclass
class _Counts:
    read: int = 0
    rejected: int = 0
    shown: list[Rejected] = field(default_factory=list)


def _sanitise(raw: bytes, encoding: str) -> str:
    """The raw line as text PostgreSQL accepts: NUL removed, undecodable bytes as \\xNN."""
    text = raw.replace(b"\x00", b"").decode(encoding, errors="backslashreplace")
    return text[:_MAX_RAW_CHARS]


class _Rejects:
    """Rejected lines spilled to a temporary file as COPY text (bounded memory)."""

    def __init__(self, counts: _Counts, encoding: str) -> None:
        self.counts = counts
        self.encoding = encoding
        self.spill: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8")

    def add(self, line_no: int, raw: bytes, reason: str) -> None:
        text = _sanitise(raw, self.encoding)
        self.counts.rejected += 1
        if len(self.counts.shown) < SHOWN_REJECTS:
            self.counts.shown.append(Rejected(line_no, reason, text))
        self.spill.write(f"{line_no}\t{escape_text(text)}\t{escape_text(reason)}\n")

    def chunks(self, load_id: int) -> Iterator[str]:
        self.spill.flush()
        self.spill.seek(0)
        prefix = f"{load_id}\t"
        batch: list[str] = []
        for line in self.spill:
            batch.append(prefix + line)
            if len(batch) >= _CHUNK_ROWS:
                yield "".join(batch)
                batch.clear()
        yield "".join(batch)

    def close(self) -> None:
        self.spill.close()


def _parsed_lines(
    source: LineSource,
    fmt: Format,
    counts: _Counts,
    rejects: _Rejects,
    progress: ProgressHook | None,
    limits: LoadLimits,
) -> Iterator[tuple[int, RatingRow | ProductRow]]:
    """Valid rows of the file with their line numbers; bad lines go to ``rejects``."""
    parse = fmt.parser_for(source.path)
    encoding = fmt.encoding
    header = fmt.header
    latest = limits.latest_timestamp if fmt.kind == "ratings" else None
    for line_no, raw in source:
        if (
            line_no == 1
            and header is not None
            and raw.decode(encoding, "replace").strip() == header
        ):
            continue
        counts.read += 1
        if progress is not None and counts.read % _CHUNK_ROWS == 0:
            progress.update(source.bytes_read, counts.read)
        if isinstance(raw, LongLine):
            rejects.add(line_no, raw, limits.long_line_reason(raw.length))
            continue
        if b"\x00" in raw:
            rejects.add(line_no, raw, "NUL byte in line")
            continue
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as err:
            rejects.add(line_no, raw, f"invalid UTF-8 at byte {err.start}")
            continue
        if not text.strip():
            rejects.add(line_no, raw, "empty line")
            continue
        try:
            row = parse(text)
        except BadLine as err:
            rejects.add(line_no, raw, str(err))
            continue
        except (RecursionError, MemoryError) as err:  # absurdly nested JSON
            rejects.add(line_no, raw, f"unparseable line: {type(err).__name__}")
            continue
        except (ValueError, TypeError, OverflowError) as err:  # a value no parser check foresaw
            rejects.add(line_no, raw, f"unparseable line: {type(err).__name__}: {str(err)[:80]}")
            continue
        if latest is not None and row.timestamp > latest:  # type: ignore[union-attr]
            rejects.add(line_no, raw, limits.future_reason(row.timestamp))  # type: ignore[union-attr]
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
_STAGE_PRODUCTS = sa.text(
    "CREATE TEMP TABLE stage_products (line_no bigint, external_id text, title text, brand text, "
    "description text, feature_text text, categories text, main_category text, raw text) "
    "ON COMMIT DROP"
)

# Latest rating per (user, product); equal timestamps: the later line.
_DEDUP_RATINGS = sa.text(
    "CREATE TEMP TABLE dedup_ratings ON COMMIT DROP AS "
    "SELECT DISTINCT ON (user_ext, product_ext) user_ext, product_ext, rating, ts "
    "FROM stage_ratings ORDER BY user_ext, product_ext, ts DESC, line_no DESC"
)
_INSERT_USERS = sa.text(
    "INSERT INTO users (external_id) SELECT DISTINCT user_ext FROM dedup_ratings "
    "ON CONFLICT (external_id) DO NOTHING"
)
_INSERT_RATED_PRODUCTS = sa.text(
    "INSERT INTO products (external_id) SELECT DISTINCT product_ext FROM dedup_ratings "
    "ON CONFLICT (external_id) DO NOTHING"
)
_MERGE_RATINGS = sa.text(
    "INSERT INTO ratings (user_id, product_id, rating, rated_at) "
    "SELECT u.id, p.id, d.rating, to_timestamp(d.ts) FROM dedup_ratings d "
    "JOIN users u ON u.external_id = d.user_ext "
    "JOIN products p ON p.external_id = d.product_ext "
    "ORDER BY 1, 2 "  # primary-key order: the index fills sequentially
    "ON CONFLICT (user_id, product_id) DO UPDATE "
    "SET rating = EXCLUDED.rating, rated_at = EXCLUDED.rated_at "
    "WHERE EXCLUDED.rated_at >= ratings.rated_at"
)

BULK_ROWS = 200_000
"""From this many distinct ratings in one file, the merge drops the ratings foreign keys and the
product index, inserts, then recreates them (validated in one pass each). Row-by-row foreign-key
triggers and random index inserts made the merge ~3x slower (measured at 500k rows). The DDL runs
inside the file's transaction, so a failure or kill restores them; it locks ``ratings``
exclusively for the rest of the load, which a nightly batch load can afford."""
_DROP_RATING_CHECKS = (
    "ALTER TABLE ratings DROP CONSTRAINT fk_ratings_user_id_users, "
    "DROP CONSTRAINT fk_ratings_product_id_products",
    "DROP INDEX ix_ratings_product_id",
)
_RESTORE_RATING_CHECKS = (
    "CREATE INDEX ix_ratings_product_id ON ratings (product_id)",
    "ALTER TABLE ratings ADD CONSTRAINT fk_ratings_user_id_users FOREIGN KEY (user_id) "
    "REFERENCES users (id) ON DELETE CASCADE, ADD CONSTRAINT fk_ratings_product_id_products "
    "FOREIGN KEY (product_id) REFERENCES products (id) ON DELETE CASCADE",
)


def _merge_ratings(conn: sa.Connection, distinct: int) -> None:
    bulk = distinct >= BULK_ROWS
    if bulk:
        for statement in _DROP_RATING_CHECKS:
            conn.execute(sa.text(statement))
    conn.execute(_MERGE_RATINGS)
    if bulk:
        for statement in _RESTORE_RATING_CHECKS:
            conn.execute(sa.text(statement))


def _last(column: str) -> str:
    # the value of the latest line that gives one (column names are our constants)
    return f"(array_agg({column} ORDER BY line_no DESC) FILTER (WHERE {column} IS NOT NULL))[1]"


def _merge_products_sql(aggregate_text: bool) -> sa.TextClause:
    feature_text = (
        "string_agg(feature_text, E'\\n' ORDER BY line_no)"
        if aggregate_text
        else _last("feature_text")
    )
    return sa.text(
        "WITH merged_raw AS ("
        "  SELECT s.external_id, jsonb_object_agg(e.key, e.value ORDER BY s.line_no) AS raw"
        "  FROM stage_products s CROSS JOIN LATERAL jsonb_each(s.raw::jsonb) e"
        "  WHERE s.raw IS NOT NULL GROUP BY s.external_id"
        "), merged AS ("
        f"  SELECT external_id, {_last('title')} AS title, {_last('brand')} AS brand,"
        f"  {_last('description')} AS description, {feature_text} AS feature_text,"
        f"  {_last('categories')} AS categories, {_last('main_category')} AS main_category"
        "  FROM stage_products GROUP BY external_id"
        ") "
        "INSERT INTO products (external_id, title, brand, description, feature_text, categories,"
        " main_category, raw) "
        "SELECT m.external_id, m.title, m.brand, m.description, m.feature_text,"
        " CASE WHEN m.categories IS NULL THEN NULL"
        "  ELSE ARRAY(SELECT jsonb_array_elements_text(m.categories::jsonb)) END,"
        " m.main_category, r.raw "
        "FROM merged m LEFT JOIN merged_raw r USING (external_id) "
        "ON CONFLICT (external_id) DO UPDATE SET"
        " title = COALESCE(EXCLUDED.title, products.title),"
        " brand = COALESCE(EXCLUDED.brand, products.brand),"
        " description = COALESCE(EXCLUDED.description, products.description),"
        " feature_text = COALESCE(EXCLUDED.feature_text, products.feature_text),"
        " categories = COALESCE(EXCLUDED.categories, products.categories),"
        " main_category = COALESCE(EXCLUDED.main_category, products.main_category),"
        " raw = CASE WHEN EXCLUDED.raw IS NULL THEN products.raw"
        "  ELSE COALESCE(products.raw, '{}'::jsonb) || EXCLUDED.raw END,"
        " updated_at = now()"
    )


_INSERT_LOAD = sa.text(
    "INSERT INTO loads (path, sha256, format, kind, status, rows_read, rows_loaded, rows_merged,"
    " rows_rejected, message, started_at, finished_at) VALUES (:path, :sha256, :format, :kind,"
    " :status, :rows_read, :rows_loaded, :rows_merged, :rows_rejected, :message, :started_at,"
    " clock_timestamp()) RETURNING id"
)


def _record_load(
    conn: sa.Connection, summary: LoadSummary, started_at: datetime, rejects: _Rejects
) -> int:
    load_id = conn.execute(
        _INSERT_LOAD,
        {
            "path": summary.path,
            "sha256": summary.sha256,
            "format": summary.format,
            "kind": summary.kind,
            "status": summary.status,
            "rows_read": summary.rows_read,
            "rows_loaded": summary.rows_loaded,
            "rows_merged": summary.rows_merged,
            "rows_rejected": summary.rows_rejected,
            "message": summary.message,
            "started_at": started_at,
        },
    ).scalar_one()
    if summary.rows_rejected:
        copy_text(
            conn,
            "rejected_rows",
            ("load_id", "line_no", "raw_line", "reason"),
            rejects.chunks(load_id),
        )
    return load_id


def load_file(
    engine: Engine,
    path: Path,
    fmt: Format,
    *,
    max_reject_rate: float,
    progress: ProgressHook | None = None,
    limits: LoadLimits | None = None,
) -> LoadSummary:
    """Load one file in one transaction (see the module docstring).

    Args:
        engine: the database.
        path: the file, plain or gzip.
        fmt: its format (from :func:`recsys.ingest.detect.detect_format` or ``--format``).
        max_reject_rate: share of rejected lines above which the file is rolled back.
        progress: optional progress reporting.
        limits: line cap and future-timestamp slack (default: the documented defaults, now).

    Returns:
        The summary; ``status`` is ``failed`` when the reject rate was exceeded (nothing but the
        failed load's log and rejected rows was written).
    """
    path = Path(path)
    limits = LoadLimits() if limits is None else limits
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    counts = _Counts()
    rejects = _Rejects(counts, fmt.encoding)
    sha256 = ""
    try:
        with LineSource(path, max_line_bytes=limits.max_line_bytes) as source:
            if progress is not None:
                progress.start(path, source.size)
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))
                    rows = _parsed_lines(source, fmt, counts, rejects, progress, limits)
                    if fmt.kind == "ratings":
                        conn.execute(_STAGE_RATINGS)
                        copy_text(
                            conn,
                            "stage_ratings",
                            ("line_no", "user_ext", "product_ext", "rating", "ts"),
                            _rating_chunks(rows),  # type: ignore[arg-type]
                        )
                    else:
                        conn.execute(_STAGE_PRODUCTS)
                        copy_rows(
                            conn,
                            "stage_products",
                            (
                                "line_no",
                                "external_id",
                                "title",
                                "brand",
                                "description",
                                "feature_text",
                                "categories",
                                "main_category",
                                "raw",
                            ),
                            _product_rows(rows),  # type: ignore[arg-type]
                        )
                    sha256 = source.sha256()
                    if progress is not None:
                        progress.update(source.bytes_read, counts.read)
                    if counts.read == 0:
                        raise InputError(f"{path}: no data lines")
                    if counts.rejected > max_reject_rate * counts.read:
                        raise _TooManyRejects
                    _log.debug(
                        "%s: staged %d lines in %.1fs",
                        path,
                        counts.read,
                        time.perf_counter() - started,
                    )
                    if fmt.kind == "ratings":
                        distinct = conn.execute(_DEDUP_RATINGS).rowcount
                        _log.debug("deduplicated: %.1fs", time.perf_counter() - started)
                        conn.execute(_INSERT_USERS)
                        conn.execute(_INSERT_RATED_PRODUCTS)
                        _log.debug("users and products: %.1fs", time.perf_counter() - started)
                        _merge_ratings(conn, distinct)
                        _log.debug("ratings merged: %.1fs", time.perf_counter() - started)
                    else:
                        distinct = conn.execute(
                            sa.text("SELECT count(DISTINCT external_id) FROM stage_products")
                        ).scalar_one()
                        conn.execute(_merge_products_sql(fmt.aggregate_text))
                    summary = _summary(path, sha256, fmt, counts, "loaded", None, started, distinct)
                    load_id = _record_load(conn, summary, started_at, rejects)
            except _TooManyRejects:
                share = counts.rejected / counts.read
                message = (
                    f"{counts.rejected} of {counts.read} lines rejected ({share:.1%}), more than "
                    f"--max-reject-rate {max_reject_rate:.1%}: the file was rolled back"
                )
                summary = _summary(path, sha256, fmt, counts, "failed", message, started, 0)
                with engine.begin() as conn:
                    load_id = _record_load(conn, summary, started_at, rejects)
    finally:
        rejects.close()
        if progress is not None:
            progress.finish()
    summary = _replace_seconds(summary, started, load_id)
    _log.info(
        "%s: %s, %d lines, %d loaded, %d merged, %d rejected",
        path,
        summary.status,
        summary.rows_read,
        summary.rows_loaded,
        summary.rows_merged,
        summary.rows_rejected,
    )
    return summary


def _summary(
    path: Path,
    sha256: str,
    fmt: Format,
    counts: _Counts,
    status: str,
    message: str | None,
    started: float,
    distinct: int,
) -> LoadSummary:
    valid = counts.read - counts.rejected
    loaded = distinct if status == "loaded" else 0
    merged = valid - distinct if status == "loaded" else 0
    return LoadSummary(
        path=str(path),
        sha256=sha256,
        format=fmt.name,
        kind=fmt.kind,
        rows_read=counts.read,
        rows_loaded=loaded,
        rows_merged=merged,
        rows_rejected=counts.rejected,
        status=status,
        message=message,
        seconds=time.perf_counter() - started,
        rejects=tuple(counts.shown),
    )


def _replace_seconds(summary: LoadSummary, started: float, load_id: int) -> LoadSummary:
    from dataclasses import replace

    return replace(summary, seconds=time.perf_counter() - started, load_id=load_id)


def plan_files(
    *,
    ratings: Sequence[Path] = (),
    metadata: Sequence[Path] = (),
    fmt: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> list[tuple[Path, Format]]:
    """Each file with its format, metadata first; fails before any loading on a bad file.

    Raises:
        InputError: a missing, unreadable or empty file, an unknown format, or a file whose
            content is not what its option says (ratings given as --metadata or vice versa).
    """
    plan: list[tuple[Path, Format]] = []
    for role, paths in (("metadata", metadata), ("ratings", ratings)):
        for path in map(Path, paths):
            check_readable(path)
            if fmt is not None:
                chosen = get_format(fmt)
            else:
                _, name = detect_format(path, max_line_bytes=max_line_bytes)
                chosen = get_format(name)
            if chosen.kind != role:
                raise InputError(
                    f"{path}: given as --{role} but it holds {chosen.kind} (format {chosen.name})"
                )
            plan.append((path, chosen))
    return plan


def _already_loaded(engine: Engine, sha256: str) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(
                sa.text("SELECT 1 FROM loads WHERE sha256 = :s AND status = 'loaded' LIMIT 1"),
                {"s": sha256},
            ).first()
            is not None
        )


def load_files(
    engine: Engine,
    settings: Settings,
    *,
    ratings: Sequence[Path] = (),
    metadata: Sequence[Path] = (),
    fmt: str | None = None,
    max_reject_rate: float | None = None,
    skip_loaded: bool = False,
    progress: ProgressHook | None = None,
) -> list[LoadSummary]:
    """Load rating and metadata files, metadata first, each in its own transaction.

    Args:
        engine: a migrated database.
        settings: recsys settings (``max_reject_rate`` default).
        ratings: rating files.
        metadata: product metadata files.
        fmt: force this format for every file instead of detecting it.
        max_reject_rate: overrides ``settings.max_reject_rate``.
        skip_loaded: skip files whose sha256 is already in ``loads`` with status ``loaded``.
        progress: optional progress reporting.

    Returns:
        One summary per file, in load order. A file over the reject rate has status
        ``failed`` (the caller decides whether that is fatal; the CLI exits non-zero).

    Raises:
        InputError: a file cannot be loaded at all (checked for every file before loading any).
    """
    rate = settings.max_reject_rate if max_reject_rate is None else max_reject_rate
    if not 0 <= rate <= 1:
        raise InputError(f"--max-reject-rate must be between 0 and 1, got {rate}")
    limits = LoadLimits.from_settings(settings)
    summaries: list[LoadSummary] = []
    plan = plan_files(
        ratings=ratings, metadata=metadata, fmt=fmt, max_line_bytes=limits.max_line_bytes
    )
    for path, chosen in plan:
        if skip_loaded:
            sha256 = file_sha256(path)
            if _already_loaded(engine, sha256):
                _log.info("%s: already loaded (sha256 %s), skipped", path, sha256[:12])
                summaries.append(
                    LoadSummary(
                        str(path),
                        sha256,
                        chosen.name,
                        chosen.kind,
                        0,
                        0,
                        0,
                        0,
                        "skipped",
                        "already loaded",
                        0.0,
                    )
                )
                continue
        summaries.append(
            load_file(engine, path, chosen, max_reject_rate=rate, progress=progress, limits=limits)
        )
    return summaries


# Files that come with the datasets but hold nothing to load (MovieLens companions, notes).
_COMPANIONS = {
    "u.genre",
    "u.info",
    "u.occupation",
    "u.user",
    "users.dat",
    "links.csv",
    "genome-scores.csv",
    "genome-tags.csv",
}


def _is_companion(path: Path) -> bool:
    name = path.name
    if (
        name in _COMPANIONS
        or name.startswith(("README", "."))
        or path.suffix.lower() in {".md", ".txt", ".html", ".pdf"}
    ):
        return True
    # MovieLens 100k's u1.base ... ub.test are splits of u.data: loading them adds nothing
    return name[:1] == "u" and name.endswith((".base", ".test"))


def _inbox_files(directory: Path) -> list[Path]:
    """The inbox's files to load, sorted; InputError for an entry that is not a readable file.

    Sub-directories are skipped (an inbox may keep processed files in one) and dataset
    companions are ignored (:func:`_is_companion`). Anything else that is not a regular file
    (a FIFO, a socket, a device, a symlink loop or a broken symlink) is refused with one line
    naming it, as an unknown format is: nothing in the inbox is silently left behind.
    """
    files: list[Path] = []
    for path in sorted(directory.iterdir()):
        if _is_companion(path) or path.is_dir():
            continue
        problem = file_problem(path)
        if problem is not None:
            raise InputError(f"{path}: {problem}; remove it from the inbox or fix it")
        files.append(path)
    return files


def load_inbox(engine: Engine, settings: Settings, directory: Path) -> list[LoadSummary]:
    """Load every new file of ``directory``: metadata first, then ratings.

    A file whose sha256 is already in ``loads`` with status ``loaded`` is skipped. Dataset
    companions that hold nothing to load (``u.genre``, ``README``, ``*.md``, MovieLens split
    files ``u1.base`` ...) are ignored; any other file of unknown format is an error, so nothing
    in the inbox is silently left behind.

    Raises:
        InputError: the directory is missing, or a file in it cannot be loaded.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such directory")
    ratings: list[Path] = []
    metadata: list[Path] = []
    for path in _inbox_files(directory):
        kind, _ = detect_format(path, max_line_bytes=settings.max_line_bytes)
        (ratings if kind == "ratings" else metadata).append(path)
    return load_files(engine, settings, ratings=ratings, metadata=metadata, skip_loaded=True)
