"""What loading a file reports: its summary, its rejected lines, and the spill that holds them."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from recsys.db.copy import escape_text
from recsys.ingest.rows import Format

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


@dataclass
class Counts:
    """Data lines read and rejected so far, with the first few rejects kept for the summary."""

    read: int = 0
    rejected: int = 0
    shown: list[Rejected] = field(default_factory=list)


def sanitise(raw: bytes, encoding: str) -> str:
    """The raw line as text PostgreSQL accepts: NUL removed, undecodable bytes as \\xNN."""
    text = raw.replace(b"\x00", b"").decode(encoding, errors="backslashreplace")
    return text[:_MAX_RAW_CHARS]


class Rejects:
    """Rejected lines spilled to a temporary file as COPY text (bounded memory)."""

    def __init__(self, counts: Counts, encoding: str) -> None:
        self.counts = counts
        self.encoding = encoding
        self.spill: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8")

    def add(self, line_no: int, raw: bytes, reason: str) -> None:
        """Record one rejected line."""
        text = sanitise(raw, self.encoding)
        self.counts.rejected += 1
        if len(self.counts.shown) < SHOWN_REJECTS:
            self.counts.shown.append(Rejected(line_no, reason, text))
        self.spill.write(f"{line_no}\t{escape_text(text)}\t{escape_text(reason)}\n")

    def chunks(self, load_id: int) -> Iterator[str]:
        """The spilled lines as COPY text for ``rejected_rows (load_id, line_no, raw, reason)``."""
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
        """Delete the spill file."""
        self.spill.close()


def make_summary(
    path: Path,
    sha256: str,
    fmt: Format,
    counts: Counts,
    status: str,
    message: str | None,
    started: float,
    distinct: int,
) -> LoadSummary:
    """The summary of one file from its counts and the number of distinct keys written."""
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


def finished(summary: LoadSummary, started: float, load_id: int) -> LoadSummary:
    """The summary with its final duration and load id."""
    return replace(summary, seconds=time.perf_counter() - started, load_id=load_id)
