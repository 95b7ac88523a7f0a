"""Normalised rows that every source format produces, and the format registry.

A format module turns one decoded line into a :class:`RatingRow` or a :class:`ProductRow`,
or raises :class:`BadLine` with a one-line reason; ``recsys.ingest.load`` does everything else
(decoding, NUL checks, staging, merging). Formats that need context from beside the file
(MovieLens ``u.item`` reads ``u.genre``) bind it in ``Format.parser_for(path)``.

:class:`LoadLimits` holds the per-line limits every load applies on top of the formats' own
checks: the longest line (``RECSYS_MAX_LINE_BYTES``) and how far in the future a rating's
timestamp may lie (``RECSYS_FUTURE_SLACK_SECONDS``). A rating dated after the load's start plus
that slack is rejected as a bad line: the merge keeps the most recent rating of a user and
product, so a wrong future date would otherwise win over every later correct one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from recsys.ingest.reader import DEFAULT_MAX_LINE_BYTES

if TYPE_CHECKING:
    from recsys.config import Settings

# Timestamps outside [1970, 2100) are treated as unparseable: they are typos or ms/s mix-ups.
MAX_EPOCH_SECONDS = 4102444800

DEFAULT_FUTURE_SLACK_SECONDS = 86_400.0
"""Default tolerance for rating timestamps ahead of the clock (clock skew, time zones): 1 day."""


class BadLine(ValueError):
    """A line that cannot be loaded; ``str(err)`` is the reason stored in rejected_rows."""


class RatingRow(NamedTuple):
    """One rating: external user and product ids, the rating, unix seconds."""

    user: str
    product: str
    rating: float
    timestamp: float


class ProductRow(NamedTuple):
    """One product's metadata as read; None means "not given by this line"."""

    external_id: str
    title: str | None = None
    brand: str | None = None
    description: str | None = None
    feature_text: str | None = None
    categories: list[str] | None = None
    main_category: str | None = None
    raw: dict | None = None


Parser = Callable[[str], "RatingRow | ProductRow"]


@dataclass(frozen=True)
class Format:
    """A source format: its name, what it holds and how to parse one line."""

    name: str
    kind: str
    """``ratings`` or ``metadata``."""
    parse: Parser | None = None
    header: str | None = None
    """The exact first line the format starts with (skipped), or None for no header."""
    encoding: str = "utf-8"
    bind: Callable[[Path], Parser] | None = None
    """For formats whose parser needs context from beside the file (u.item -> u.genre)."""
    aggregate_text: bool = False
    """Repeated lines for one product concatenate their feature_text (MovieLens tags)."""
    json_record: Callable[[dict], ProductRow] | None = None
    """Metadata formats of one JSON object a line: the row of a decoded object that is safe to
    store as JSON (no NaN, no NUL, ...), without the checks :attr:`parse` makes for that. The
    fast metadata path (:mod:`recsys.ingest.metafast`) decodes plain lines itself and calls it."""
    description: str = ""

    def parser_for(self, path: Path) -> Parser:
        if self.bind is not None:
            return self.bind(path)
        assert self.parse is not None
        return self.parse


FORMATS: dict[str, Format] = {}


@dataclass(frozen=True)
class LoadLimits:
    """Per-line limits of one load, on top of what each format checks."""

    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    """Longest accepted line in bytes (newline excluded); longer lines are rejected unread."""
    future_slack_seconds: float = DEFAULT_FUTURE_SLACK_SECONDS
    """How far past ``now`` a rating's timestamp may be."""
    now: float = field(default_factory=time.time)
    """The load's reference time (unix seconds), fixed when the limits are made."""

    @classmethod
    def from_settings(cls, settings: Settings) -> LoadLimits:
        """The limits the settings ask for, with ``now`` the current time."""
        return cls(
            max_line_bytes=settings.max_line_bytes,
            future_slack_seconds=settings.future_slack_seconds,
        )

    @property
    def latest_timestamp(self) -> float:
        """The latest rating timestamp accepted (unix seconds)."""
        return self.now + self.future_slack_seconds

    def long_line_reason(self, length: int) -> str:
        """The rejected-row reason for a line of ``length`` bytes over the cap."""
        return (
            f"line of {length:,} bytes is longer than the {self.max_line_bytes:,}-byte cap "
            "(RECSYS_MAX_LINE_BYTES)"
        )

    def future_reason(self, timestamp: float) -> str:
        """The rejected-row reason for a rating dated after :attr:`latest_timestamp`."""
        when = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"timestamp {when} is in the future (more than {self.future_slack_seconds:g} s "
            "after the load started; RECSYS_FUTURE_SLACK_SECONDS)"
        )


def register(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


# --- helpers shared by format modules -------------------------------------------------------


def shown(value: object, limit: int = 40) -> str:
    """``value`` for a one-line reason: its first ``limit`` characters, quoted."""
    try:
        text = str(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return "<an integer too long to show>"
    return repr(text[:limit])


def require_id(value: object, what: str) -> str:
    """A non-empty external id as text."""
    if value is None or isinstance(value, (dict, list, bool)):
        raise BadLine(f"missing {what}")
    try:
        text = str(value).strip()
    except ValueError:  # an int beyond Python's digit limit for str()
        raise BadLine(f"{what} is an integer too long to use") from None
    if not text:
        raise BadLine(f"missing {what}")
    return text


def parse_rating(value: object, low: float, high: float, step: float) -> float:
    """A rating on the format's scale [low, high] in multiples of ``step``."""
    if isinstance(value, bool) or value is None:
        raise BadLine(f"rating is not a number: {value!r}")
    try:
        rating = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise BadLine(f"rating is not a number: {shown(value)}") from None
    if not math.isfinite(rating):
        raise BadLine(f"rating is not a number: {shown(value)}")
    if not low <= rating <= high or abs(rating / step - round(rating / step)) > 1e-9:
        raise BadLine(f"rating {rating:g} outside the scale {low:g}-{high:g} (step {step:g})")
    return rating


def parse_epoch(value: object, *, divisor: int = 1) -> float:
    """Unix time (seconds, or milliseconds with divisor=1000) as seconds."""
    if isinstance(value, bool) or value is None:
        raise BadLine(f"unparseable timestamp: {value!r}")
    try:
        if isinstance(value, str):
            value = value.strip()
            number = int(value) if value.lstrip("-").isdigit() else float(value)
        else:
            number = value
        seconds = number / divisor if divisor != 1 else number
    except (TypeError, ValueError, OverflowError):
        raise BadLine(f"unparseable timestamp: {shown(value)}") from None
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise BadLine(f"unparseable timestamp: {shown(value)}")
    if not 0 <= seconds < MAX_EPOCH_SECONDS:
        raise BadLine(f"timestamp out of range: {shown(value)}")
    return seconds


def text_or_none(value: object, sep: str = "\n") -> str | None:
    """A text field as read: strings kept verbatim, lists joined by ``sep``, empty -> None."""
    if value is None:
        return None
    if isinstance(value, list):
        parts = [str(v) for v in value if v is not None and str(v) != ""]
        return sep.join(parts) if parts else None
    text = str(value)
    return text if text != "" else None


def check_json_safe(raw: dict) -> None:
    """Reject up front what PostgreSQL's jsonb refuses or JSON cannot hold.

    That is \\u0000, lone surrogates, NaN and Infinity (Python's json reads them), keys that
    are not text or numbers (Python dict literals allow tuples) and integers too long to print.
    """
    try:
        dumped = json.dumps(raw, ensure_ascii=False, default=str, allow_nan=False)
    except ValueError as err:
        if "JSON compliant" in str(err):
            raise BadLine("NaN or Infinity in a field (not valid JSON)") from None
        raise BadLine(f"a field cannot be stored as JSON: {str(err)[:60]}") from None
    except TypeError as err:
        raise BadLine(f"a field cannot be stored as JSON: {str(err)[:60]}") from None
    except RecursionError:
        raise BadLine("a field is nested too deeply to store as JSON") from None
    if "\\u0000" in dumped:
        raise BadLine("NUL character in a field")
    try:
        dumped.encode("utf-8")
    except UnicodeEncodeError:
        raise BadLine("invalid Unicode (lone surrogate) in a field") from None
