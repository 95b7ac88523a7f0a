"""Product text and its cleaning, as the seed notebook did it: pure functions, str -> list[str].

The notebook's steps, in order (:func:`clean_text`):

1. strip HTML tags (``<...>`` becomes a space) and unescape entities (``&amp;`` -> ``&``),
2. lowercase,
3. drop non-ASCII characters,
4. keep ``\\w+`` tokens (ASCII word characters),
5. remove English stopwords (NLTK's list),
6. drop tokens that are only digits.

Stopwords come from NLTK's corpus when it is installed (``NLTK_DATA``); offline, where
``nltk.download`` cannot run, the ``stop-words`` package's English list is used instead and one
warning line says so. That list is larger (1,333 words; it holds 192 of NLTK's 198), so a
fallback build drops more words; the store never mixes vectors from the two lists.

Changing any step, or the text a product is built from, must bump :data:`CLEANING_VERSION`:
the feature store reuses a product's vector only when its cleaned text and the cleaning version
are unchanged.

Which text a product gets (:func:`product_text`), as the notebook: its ``feature`` text; where
empty, its ``description``; where still empty, its category path. ``with_title`` prepends title
and brand (a documented option, off by default). MovieLens products (``is_movie``) get their
title, genres and tags. Raw text is capped at :data:`MAX_TEXT_CHARS` characters first, so one
enormous description cannot stall a build; the cap is recorded in the product's notes.
"""

from __future__ import annotations

import functools
import html
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_log = logging.getLogger(__name__)

CLEANING_VERSION = 1
"""Bump when cleaning or text selection changes: stored hashes then no longer match."""

MAX_TEXT_CHARS = 20_000
"""Raw text beyond this many characters is cut off before cleaning (recorded in notes)."""

_TAG = re.compile(r"<[A-Za-z/!?][^>]*>")
"""A tag starts with ``<`` then a letter, ``/``, ``!`` or ``?`` (as in HTML parsing): ``a < b``
is text, not a tag."""
_TOKEN = re.compile(r"\w+", re.ASCII)


def strip_html(text: str) -> str:
    """Replace HTML tags by spaces and unescape entities: ``'<b>A&amp;B</b>'`` -> ``' A&B '``.

    Tags are removed before entities are unescaped, so an escaped ``&lt;b&gt;`` stays as text
    (``<b>``), the way an HTML parser shows it; a later step drops its punctuation.
    """
    return html.unescape(_TAG.sub(" ", text))


def to_ascii(text: str) -> str:
    """Drop every non-ASCII character: ``'café'`` -> ``'caf'`` (as the notebook did)."""
    return text.encode("ascii", "ignore").decode("ascii")


def tokenize(text: str) -> list[str]:
    """The ``\\w+`` tokens of ASCII text: ``"don't stop-me"`` -> ``['don', 't', 'stop', 'me']``."""
    return _TOKEN.findall(text)


def remove_stopwords(tokens: Iterable[str], stopwords: frozenset[str]) -> list[str]:
    """Tokens that are not stopwords (tokens are expected in lower case)."""
    return [t for t in tokens if t not in stopwords]


def drop_numbers(tokens: Iterable[str]) -> list[str]:
    """Tokens that are not only digits: ``['100', 'x100', '2nd']`` -> ``['x100', '2nd']``."""
    return [t for t in tokens if not t.isdigit()]


def clean_text(text: str | None, stopwords: frozenset[str] | None = None) -> list[str]:
    """The notebook's cleaning: HTML out, lowercase, ASCII only, ``\\w+`` tokens, no stopwords,
    no digit-only tokens.

    Args:
        text: raw product text; None or empty gives ``[]``.
        stopwords: the stopword set; default :func:`english_stopwords`.

    Returns:
        The cleaned tokens in text order (duplicates kept: they weigh in the mean).
    """
    if not text:
        return []
    words = english_stopwords() if stopwords is None else stopwords
    lowered = to_ascii(strip_html(text).lower())
    return [t for t in _TOKEN.findall(lowered) if t not in words and not t.isdigit()]


def english_stopwords() -> frozenset[str]:
    """NLTK's English stopwords, or the ``stop-words`` package's list with one warning line."""
    return _stopwords()[1]


def stopwords_source() -> str:
    """``nltk`` or ``stop-words``: which list :func:`english_stopwords` returns.

    The two lists differ (the stop-words package's English list has 1,333 words and covers 192
    of NLTK's 198), so the feature store counts the source in a set's fingerprint and never
    reuses vectors cleaned with the other list.
    """
    return _stopwords()[0]


@functools.cache
def _stopwords() -> tuple[str, frozenset[str]]:
    try:
        from nltk.corpus import stopwords

        return "nltk", frozenset(stopwords.words("english"))
    except LookupError:
        from stop_words import get_stop_words

        _log.warning(
            "NLTK stopwords corpus not found (set NLTK_DATA or run nltk.download('stopwords')); "
            "using the stop-words package's English list"
        )
        return "stop-words", frozenset(w.lower() for w in get_stop_words("english"))


@dataclass(frozen=True)
class ProductText:
    """The raw text chosen for a product, before cleaning."""

    text: str
    """The chosen text, capped at :data:`MAX_TEXT_CHARS`."""
    fallback: str
    """The category text, cleaned when ``text`` cleans to nothing."""
    source: str
    """feature | description | category | movie | none"""
    capped: bool
    """Whether the raw text was longer than the cap."""


def _joined(parts: Sequence[str | None] | None) -> str:
    if not parts:
        return ""
    return " ".join(p for p in parts if p)


def product_text(
    *,
    feature_text: str | None,
    description: str | None,
    categories: Sequence[str] | None,
    title: str | None = None,
    brand: str | None = None,
    is_movie: bool = False,
    with_title: bool = False,
) -> ProductText:
    """Pick a product's text as the notebook did (see the module docstring).

    Args:
        feature_text: the product's feature bullets (MovieLens: tags).
        description: the product's description.
        categories: the category path (MovieLens: genres).
        title: the title, used for movies and with ``with_title``.
        brand: the brand, used with ``with_title``.
        is_movie: a MovieLens product: title, genres and tags.
        with_title: prepend title and brand to the chosen text.

    Returns:
        The chosen text, its category fallback, which field it came from, and whether it was capped.
    """
    category_text = _joined(categories)
    if is_movie:
        text, source = _joined([title, category_text, feature_text]), "movie"
    elif feature_text and feature_text.strip():
        text, source = feature_text, "feature"
    elif description and description.strip():
        text, source = description, "description"
    elif category_text.strip():
        text, source = category_text, "category"
    else:
        text, source = "", "none"
    if with_title and not is_movie:
        text = _joined([title, brand, text])
        if source == "none" and text:
            source = "title"
    capped = len(text) > MAX_TEXT_CHARS
    if capped:
        text = text[:MAX_TEXT_CHARS]
    return ProductText(text, category_text[:MAX_TEXT_CHARS], source, capped)


def clean_product(chosen: ProductText, stopwords: frozenset[str] | None = None) -> list[str]:
    """Clean a product's text; where that leaves nothing, clean its category text instead."""
    tokens = clean_text(chosen.text, stopwords)
    if not tokens and chosen.fallback:
        tokens = clean_text(chosen.fallback, stopwords)
    return tokens
