"""MovieLens (GroupLens): 100k (``u.data``, ``u.item``) and "latest" (``ratings.csv``,
``movies.csv``, ``tags.csv``).

Mapping onto recsys tables: user and movie ids become external ids; a movie's title -> title,
its genres -> categories (100k: the names of the 19 genre flags, read from ``u.genre`` beside
``u.item``, falling back to the documented 100k list when it is absent); tags -> feature_text
(all tags of one movie in file order, one per line; a reload replaces them). Ratings: 100k in
whole stars 1-5, latest in half stars 0.5-5.
"""

from __future__ import annotations

import csv
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


def parse_latest_rating(line: str) -> RatingRow:
    user, movie, rating, timestamp = _csv_fields(line, 4)
    return RatingRow(
        require_id(user, "user id"),
        require_id(movie, "product id"),
        parse_rating(rating, 0.5, 5.0, 0.5),
        parse_epoch(timestamp),
    )


def parse_latest_movie(line: str) -> ProductRow:
    movie, title, genres = _csv_fields(line, 3)
    names = [g for g in genres.split("|") if g and g != "(no genres listed)"]
    return ProductRow(
        external_id=require_id(movie, "movie id"),
        title=title or None,
        categories=names or None,
        raw={"title": title, "genres": names},
    )


def parse_latest_tag(line: str) -> ProductRow:
    user, movie, tag, timestamp = _csv_fields(line, 4)
    require_id(user, "user id")
    parse_epoch(timestamp)
    return ProductRow(external_id=require_id(movie, "movie id"), feature_text=tag or None)


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
