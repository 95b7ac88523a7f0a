"""Format detection from a file's content (never its name).

The first non-blank lines are tried against each format in turn: headers (MovieLens latest)
first, then JSON objects by their keys, Python dict literals (Amazon 2014 metadata), then
``::``-separated MovieLens 1M/10M lines (ratings, then tags, then movies), then delimited text
by field count and field shapes. The format that parses most of the first lines wins;
``--format`` bypasses all this.

A line that cannot be classified never stops detection: nesting too deep for the JSON parser
or a line over the line cap simply gives no vote (the load then rejects that line with its
number). Only when no line votes is the file refused, with one line saying why.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from recsys.errors import InputError
from recsys.ingest import FORMAT_MODULES  # noqa: F401  (registers every format)
from recsys.ingest.movielens import is_users_dat_line
from recsys.ingest.reader import DEFAULT_MAX_LINE_BYTES, LongLine, head_lines
from recsys.ingest.rows import FORMATS, BadLine, Format

_NOT_THIS_FORMAT = (BadLine, ValueError, TypeError, OverflowError)
"""A parser failing in any of these ways on a line means the line is not in its format."""

_DAT_FORMATS = ("movielens-dat-ratings", "movielens-dat-tags", "movielens-dat-movies")
"""Tried in this order: a ratings line also reads as a tag, a tag line never as a rating."""


def _json_format(record: dict) -> str | None:
    keys = set(record)
    if "reviewerID" in keys or "overall" in keys:
        return "amazon2014-reviews" if "helpful" in keys else "amazon2018-reviews"
    if "user_id" in keys and "rating" in keys:
        return "amazon2023-reviews"
    if "parent_asin" in keys and ({"main_category", "features", "categories", "store"} & keys):
        return "amazon2023-metadata"
    if "asin" in keys:
        if {"categories", "salesRank", "imUrl", "related"} & keys and "category" not in keys:
            return "amazon2014-metadata"
        return "amazon2018-metadata"
    return None


def _guess(line: str) -> str | None:
    stripped = line.strip()
    for fmt in FORMATS.values():
        if fmt.header is not None and stripped == fmt.header:
            return fmt.name
    if stripped.startswith("{"):
        try:
            record = json.loads(stripped)
        except (RecursionError, MemoryError):
            return None
        except ValueError:
            try:
                record = ast.literal_eval(stripped)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return None
            if isinstance(record, dict) and "asin" in record:
                return "amazon2014-metadata"
            return None
        return _json_format(record) if isinstance(record, dict) else None
    if "::" in stripped:
        for name in _DAT_FORMATS:
            try:
                FORMATS[name].parse(stripped)  # type: ignore[misc]
                return name
            except _NOT_THIS_FORMAT:
                pass
        return None
    for name in ("ratings-csv", "movielens100k-ratings"):
        try:
            FORMATS[name].parse(stripped)  # type: ignore[misc]
            return name
        except _NOT_THIS_FORMAT:
            pass
    fields = stripped.split("|")
    if len(fields) == 24 and fields[0].isdigit():
        return "movielens100k-items"
    return None


def detect_format(path: Path, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> tuple[str, str]:
    """The kind (``ratings`` | ``metadata``) and format name of the file at ``path``.

    Args:
        path: the file, plain or gzip.
        max_line_bytes: lines longer than this are not read whole and give no vote.

    Raises:
        InputError: missing, unreadable or empty file, or no known format matches.
    """
    path = Path(path)
    lines = head_lines(path, max_line_bytes=max_line_bytes)
    if not lines:
        raise InputError(f"{path}: file is empty (no data lines)")
    long_lines = sum(isinstance(line, LongLine) for line in lines)
    if long_lines == len(lines):
        raise InputError(
            f"{path}: unknown format: its first lines are longer than the {max_line_bytes:,}-byte"
            " line cap (RECSYS_MAX_LINE_BYTES)"
        )
    texts = [line.decode("latin-1") for line in lines if not isinstance(line, LongLine)]
    # a header decides at once; otherwise vote over the first lines
    first = _guess(texts[0])
    if first is not None and FORMATS[first].header is not None:
        return FORMATS[first].kind, first
    votes: dict[str, int] = {}
    for text in texts:
        name = _guess(text)
        if name is not None:
            votes[name] = votes.get(name, 0) + 1
    if not votes and all(is_users_dat_line(text) for text in texts):
        raise InputError(f"{path}: MovieLens users.dat (user demographics): nothing in it to load")
    if not votes:
        names = ", ".join(sorted(FORMATS))
        raise InputError(f"{path}: unknown format (use --format with one of: {names})")
    name = max(votes, key=votes.__getitem__)
    return FORMATS[name].kind, name


def get_format(name: str) -> Format:
    """The format called ``name``; InputError naming the choices otherwise."""
    if name not in FORMATS:
        raise InputError(f"unknown format {name!r} (one of: {', '.join(sorted(FORMATS))})")
    return FORMATS[name]
