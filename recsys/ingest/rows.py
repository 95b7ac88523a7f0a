"""Normalised rows that every source format produces, and the format registry.

A format module turns one decoded line into a :class:`RatingRow` or a :class:`ProductRow`,
or raises :class:`BadLine` with a one-line reason; ``recsys.ingest.load`` does everything else
(decoding, NUL checks, staging, merging). Formats that need context from beside the file
(MovieLens ``u.item`` reads ``u.genre``) bind it in ``Format.parser_for(path)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

# Timestamps outside [1970, 2100) are treated as unparseable: they are typos or ms/s mix-ups.
MAX_EPOCH_SECONDS = 4102444800


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
    description: str = ""

    def parser_for(self, path: Path) -> Parser:
        if self.bind is not None:
            return self.bind(path)
        assert self.parse is not None
        return self.parse


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


# --- helpers shared by format modules -------------------------------------------------------


def require_id(value: object, what: str) -> str:
    """A non-empty external id as text."""
    if value is None or isinstance(value, (dict, list, bool)):
        raise BadLine(f"missing {what}")
    text = str(value).strip()
    if not text:
        raise BadLine(f"missing {what}")
    return text


def parse_rating(value: object, low: float, high: float, step: float) -> float:
    """A rating on the format's scale [low, high] in multiples of ``step``."""
    if isinstance(value, bool) or value is None:
        raise BadLine(f"rating is not a number: {value!r}")
    try:
        rating = float(value)
    except (TypeError, ValueError):
        raise BadLine(f"rating is not a number: {str(value)[:40]!r}") from None
    if not math.isfinite(rating):
        raise BadLine(f"rating is not a number: {str(value)[:40]!r}")
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
    except (TypeError, ValueError):
        raise BadLine(f"unparseable timestamp: {str(value)[:40]!r}") from None
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise BadLine(f"unparseable timestamp: {str(value)[:40]!r}")
    if not 0 <= seconds < MAX_EPOCH_SECONDS:
        raise BadLine(f"timestamp out of range: {value!r}")
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
    """PostgreSQL's jsonb refuses \\u0000 and lone surrogates: reject such lines up front."""
    dumped = json.dumps(raw, ensure_ascii=False, default=str)
    if "\\u0000" in dumped:
        raise BadLine("NUL character in a field")
    try:
        dumped.encode("utf-8")
    except UnicodeEncodeError:
        raise BadLine("invalid Unicode (lone surrogate) in a field") from None
