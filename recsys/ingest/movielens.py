"""MovieLens (GroupLens): 100k (``u.data``, ``u.item``), 1M and 10M (``ratings.dat``,
``movies.dat``, 10M's ``tags.dat``) and "latest" (``ratings.csv``, ``movies.csv``, ``tags.csv``).

Mapping onto recsys tables: user and movie ids become external ids; a movie's title -> title,
its genres -> categories (100k: the names of the 19 genre flags, read from ``u.genre`` beside
``u.item``, falling back to the documented 100k list when it is absent); tags -> feature_text
(all tags of one movie in file order, one per line; a reload replaces them). Ratings: 100k and
1M in whole stars 1-5, 10M and latest in half stars 0.5-5.

The 1M/10M ``.dat`` files have no header and separate fields with ``::``:
``UserID::MovieID::Rating::Timestamp``, ``MovieID::Title::Genres`` (genres ``|``-separated)
and ``UserID::MovieID::Tag::Timestamp``, with integer ids. One ratings format covers both
scales (half stars, 0.5-5; 1M's whole stars are on it). 1M's ``movies.dat`` is Latin-1, 10M's
text is UTF-8: each line is read as UTF-8 when it is valid UTF-8 and as Latin-1 otherwise, so
both load without a flag. A title or tag that itself contains ``::`` keeps it (the outer
fields are split off first). 1M's ``users.dat`` (demographics) holds nothing recsys loads.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from recsys.ingest.rows import (
    BadLine,
    Format,
    ProductRow,
    RatingRow,
    parse_epoch,
    parse_rating,
    register,
    require_id,
)

# The 100k genre flags in u.item order (u.genre), used only when u.genre is not beside u.item.
ML100K_GENRES = (
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()


def parse_udata(line: str) -> RatingRow:
    fields = line.split("\t")
    if len(fields) != 4:
        raise BadLine(f"expected 4 tab-separated fields, got {len(fields)}")
    user, item, rating, timestamp = fields
    return RatingRow(
        require_id(user, "user id"),
        require_id(item, "product id"),
        parse_rating(rating, 1.0, 5.0, 1.0),
        parse_epoch(timestamp),
    )


def read_genres(item_path: Path) -> list[str]:
    """Genre names by flag position from ``u.genre`` beside ``u.item`` (``name|index`` lines)."""
    genre_path = item_path.with_name("u.genre")
    if not genre_path.is_file():
        return list(ML100K_GENRES)
    names: dict[int, str] = {}
    for line in genre_path.read_text(encoding="latin-1").splitlines():
        if "|" in line:
            name, _, index = line.rpartition("|")
            if index.strip().isdigit():
                names[int(index)] = name
    return [names[i] for i in sorted(names)] or list(ML100K_GENRES)


def bind_uitem(path: Path):
    genres = read_genres(path)

    def parse_uitem(line: str) -> ProductRow:
        fields = line.split("|")
        if len(fields) != 5 + len(genres):
            raise BadLine(f"expected {5 + len(genres)} |-separated fields, got {len(fields)}")
        movie = require_id(fields[0], "movie id")
        flags = fields[5:]
        if any(flag not in ("0", "1") for flag in flags):
            raise BadLine("genre flags must be 0 or 1")
        names = [name for name, flag in zip(genres, flags, strict=True) if flag == "1"]
        return ProductRow(
            external_id=movie,
            title=fields[1] or None,
            categories=names or None,
            raw={
                "title": fields[1],
                "release_date": fields[2],
                "video_release_date": fields[3],
                "imdb_url": fields[4],
                "genres": names,
            },
        )

    return parse_uitem


def _csv_fields(line: str, expected: int) -> list[str]:
    try:
        fields = next(csv.reader([line], strict=True))
    except (csv.Error, StopIteration) as err:
        raise BadLine(f"broken CSV: {err}") from None
    if len(fields) != expected:
        raise BadLine(f"expected {expected} comma-separated fields, got {len(fields)}")
    return fields


def _rating_row(user_id: str, movie_id: str, rating: str, timestamp: str) -> RatingRow:
    """A rating of the ``latest`` and ``.dat`` layouts: half stars 0.5-5, epoch seconds."""
    return RatingRow(user_id, movie_id, parse_rating(rating, 0.5, 5.0, 0.5), parse_epoch(timestamp))


def _movie_row(movie_id: str, title: str, genres: str) -> ProductRow:
    """A movie of the ``latest`` and ``.dat`` layouts: ``|``-separated genres as categories."""
    names = [g for g in genres.split("|") if g and g != "(no genres listed)"]
    return ProductRow(
        external_id=movie_id,
        title=title or None,
        categories=names or None,
        raw={"title": title, "genres": names},
    )


def parse_latest_rating(line: str) -> RatingRow:
    user, movie, rating, timestamp = _csv_fields(line, 4)
    return _rating_row(
        require_id(user, "user id"), require_id(movie, "product id"), rating, timestamp
    )


def parse_latest_movie(line: str) -> ProductRow:
    movie, title, genres = _csv_fields(line, 3)
    return _movie_row(require_id(movie, "movie id"), title, genres)


def parse_latest_tag(line: str) -> ProductRow:
    user, movie, tag, timestamp = _csv_fields(line, 4)
    require_id(user, "user id")
    parse_epoch(timestamp)
    return ProductRow(external_id=require_id(movie, "movie id"), feature_text=tag or None)


_USERS_DAT = re.compile(r"\d+::[MF]::\d+::\d+::[\w-]*")
"""A line of MovieLens 1M's users.dat: UserID::Gender::Age::Occupation::Zip-code."""


def is_users_dat_line(line: str) -> bool:
    """Whether ``line`` has the layout of 1M's ``users.dat`` (nothing recsys loads)."""
    return _USERS_DAT.fullmatch(line.strip()) is not None


def _dat_text(text: str) -> str:
    """A ``.dat`` field decoded as UTF-8 when valid, else kept as Latin-1 (see the module doc).

    The line arrives decoded as Latin-1, which maps each byte to one code point, so
    re-encoding gives back the exact bytes.
    """
    if text.isascii():
        return text
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return text


def _dat_int_id(value: str, what: str) -> str:
    if not value.isdigit() or not value.isascii():
        raise BadLine(f"{what} is not an integer: {value[:40]!r}")
    return value


def _dat_fields(line: str, expected: int, text_at: int | None = None) -> list[str]:
    """The ``::``-separated fields; extra separators belong to the text field ``text_at``."""
    fields = line.split("::")
    if len(fields) > expected and text_at is not None:
        tail = expected - text_at - 1
        text = "::".join(fields[text_at : len(fields) - tail])
        fields = fields[:text_at] + [text] + fields[len(fields) - tail :]
    if len(fields) != expected:
        raise BadLine(f"expected {expected} ::-separated fields, got {len(fields)}")
    return fields


def parse_dat_rating(line: str) -> RatingRow:
    user, movie, rating, timestamp = _dat_fields(line, 4)
    return _rating_row(
        _dat_int_id(user, "user id"), _dat_int_id(movie, "movie id"), rating, timestamp
    )


def parse_dat_movie(line: str) -> ProductRow:
    movie, title, genres = _dat_fields(line, 3, text_at=1)
    title = _dat_text(title)
    genres = _dat_text(genres)
    if not any(c.isalpha() for c in genres) or any(c.isdigit() for c in genres):
        # genre names are words; this keeps 1M's users.dat (...::Zip-code) from reading as movies
        raise BadLine(f"genres are not |-separated names: {genres[:40]!r}")
    return _movie_row(_dat_int_id(movie, "movie id"), title, genres)


def parse_dat_tag(line: str) -> ProductRow:
    user, movie, tag, timestamp = _dat_fields(line, 4, text_at=2)
    _dat_int_id(user, "user id")
    if not timestamp.strip().isdigit():
        raise BadLine(f"unparseable timestamp: {timestamp[:40]!r}")
    parse_epoch(timestamp)
    return ProductRow(
        external_id=_dat_int_id(movie, "movie id"), feature_text=_dat_text(tag) or None
    )


UDATA = register(
    Format("movielens100k-ratings", "ratings", parse_udata, description="MovieLens 100k u.data")
)
UITEM = register(
    Format(
        "movielens100k-items",
        "metadata",
        encoding="latin-1",
        bind=bind_uitem,
        description="MovieLens 100k u.item (Latin-1, genres from u.genre)",
    )
)
LATEST_RATINGS = register(
    Format(
        "movielens-ratings",
        "ratings",
        parse_latest_rating,
        header="userId,movieId,rating,timestamp",
        description="MovieLens latest ratings.csv",
    )
)
LATEST_MOVIES = register(
    Format(
        "movielens-movies",
        "metadata",
        parse_latest_movie,
        header="movieId,title,genres",
        description="MovieLens latest movies.csv",
    )
)
LATEST_TAGS = register(
    Format(
        "movielens-tags",
        "metadata",
        parse_latest_tag,
        header="userId,movieId,tag,timestamp",
        aggregate_text=True,
        description="MovieLens latest tags.csv (tags -> feature_text)",
    )
)
DAT_RATINGS = register(
    Format(
        "movielens-dat-ratings",
        "ratings",
        parse_dat_rating,
        encoding="latin-1",
        description="MovieLens 1M/10M ratings.dat (UserID::MovieID::Rating::Timestamp)",
    )
)
DAT_MOVIES = register(
    Format(
        "movielens-dat-movies",
        "metadata",
        parse_dat_movie,
        encoding="latin-1",
        description="MovieLens 1M/10M movies.dat (MovieID::Title::Genres; Latin-1 or UTF-8)",
    )
)
DAT_TAGS = register(
    Format(
        "movielens-dat-tags",
        "metadata",
        parse_dat_tag,
        encoding="latin-1",
        aggregate_text=True,
        description="MovieLens 10M tags.dat (UserID::MovieID::Tag::Timestamp) -> feature_text",
    )
)
