"""MovieLens 1M and 10M ``.dat`` files, written from their documented layouts.

ratings.dat ``UserID::MovieID::Rating::Timestamp``, movies.dat ``MovieID::Title::Genres``
(genres ``|``-separated; 1M's file is Latin-1), 10M's tags.dat
``UserID::MovieID::Tag::Timestamp``; 1M's users.dat holds nothing recsys loads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from recsys.cli import cli
from recsys.errors import InputError
from recsys.ingest.detect import detect_format
from recsys.ingest.load import load_files, load_inbox

RATINGS_SQL = (
    "SELECT u.external_id, p.external_id, r.rating, extract(epoch FROM r.rated_at)::float8 "
    "FROM ratings r JOIN users u ON u.id = r.user_id JOIN products p ON p.id = r.product_id "
    "ORDER BY 1, 2"
)
PRODUCT_SQL = "SELECT external_id, title, feature_text, categories FROM products ORDER BY 1"


def _rows(engine: sa.Engine, sql: str) -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.text(sql)).all()]


def _write(path: Path, lines: list[str], encoding: str) -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def _ml1m(folder: Path) -> tuple[Path, Path, Path]:
    folder.mkdir()
    ratings = _write(
        folder / "ratings.dat",
        ["1::1193::5::978300760", "1::661::3::978302109", "2::1193::4::978298413"],
        "ascii",
    )
    movies = _write(
        folder / "movies.dat",
        [
            "1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
            "661::James and the Giant Peach (1996)::Animation|Children's|Musical",
            "3285::Misérables, Les (1998)::Drama",  # 1M's movies.dat is Latin-1
        ],
        "latin-1",
    )
    users = _write(folder / "users.dat", ["1::F::1::10::48067", "2::M::56::16::70072"], "ascii")
    return ratings, movies, users


def test_movielens_1m_whole_stars_latin1_titles(tmp_path: Path, engine, settings) -> None:
    ratings, movies, _ = _ml1m(tmp_path / "ml-1m")
    assert detect_format(ratings) == ("ratings", "movielens-dat-ratings")
    assert detect_format(movies) == ("metadata", "movielens-dat-movies")
    summaries = load_files(engine, settings, ratings=[ratings], metadata=[movies])
    assert [(s.format, s.rows_read, s.rows_loaded, s.rows_rejected) for s in summaries] == [
        ("movielens-dat-movies", 3, 3, 0),
        ("movielens-dat-ratings", 3, 3, 0),
    ]
    assert _rows(engine, RATINGS_SQL) == [
        ("1", "1193", 5.0, 978300760.0),
        ("1", "661", 3.0, 978302109.0),
        ("2", "1193", 4.0, 978298413.0),
    ]
    assert _rows(engine, PRODUCT_SQL) == [
        ("1193", "One Flew Over the Cuckoo's Nest (1975)", None, ["Drama"]),
        ("3285", "Misérables, Les (1998)", None, ["Drama"]),
        ("661", "James and the Giant Peach (1996)", None, ["Animation", "Children's", "Musical"]),
    ]


def test_movielens_10m_half_stars_utf8_and_tags(tmp_path: Path, engine, settings) -> None:
    ratings = _write(
        tmp_path / "ratings.dat",
        ["1::122::5::838985046", "1::185::4.5::838983525", "2::122::0.5::868245777"],
        "ascii",
    )
    movies = _write(
        tmp_path / "movies.dat",
        [
            "122::Boomerang (1992)::Comedy|Romance",
            "185::Net, The (1995)::Action|Crime|Thriller",
            "8899::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy|Romance",
            "65006::Impulse (2008)::(no genres listed)",
        ],
        "utf-8",  # 10M's text is UTF-8: read as such, not as Latin-1 mojibake
    )
    tags = _write(
        tmp_path / "tags.dat",
        [
            "15::4973::excellent!::1215184630",
            "20::122::dark hero::1188263867",
            "20::4973::Audrey Tautou::1188263880",
            "25::122::007::1188263890",  # a tag that looks like a number stays a tag
        ],
        "utf-8",
    )
    assert detect_format(ratings) == ("ratings", "movielens-dat-ratings")
    assert detect_format(movies) == ("metadata", "movielens-dat-movies")
    assert detect_format(tags) == ("metadata", "movielens-dat-tags")
    load_files(engine, settings, ratings=[ratings], metadata=[movies, tags])
    assert _rows(engine, RATINGS_SQL) == [
        ("1", "122", 5.0, 838985046.0),
        ("1", "185", 4.5, 838983525.0),
        ("2", "122", 0.5, 868245777.0),
    ]
    assert _rows(engine, PRODUCT_SQL) == [
        ("122", "Boomerang (1992)", "dark hero\n007", ["Comedy", "Romance"]),
        ("185", "Net, The (1995)", None, ["Action", "Crime", "Thriller"]),
        ("4973", None, "excellent!\nAudrey Tautou", None),
        ("65006", "Impulse (2008)", None, None),
        (
            "8899",
            "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)",
            None,
            ["Comedy", "Romance"],
        ),
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("1::122::4.25::838985046", "rating 4.25 outside the scale 0.5-5 (step 0.5)"),
        ("1::122::6::838985046", "rating 6 outside the scale 0.5-5 (step 0.5)"),
        ("1::122::5", "expected 4 ::-separated fields, got 3"),
        ("x::122::5::838985046", "user id is not an integer: 'x'"),
        ("1::122::5::soon", "unparseable timestamp: 'soon'"),
    ],
)
def test_bad_ratings_dat_lines_are_rejected_with_reasons(
    tmp_path: Path, engine, settings, line: str, reason: str
) -> None:
    good = [f"{u}::{m}::3::97830{u:04d}" for u in range(1, 21) for m in (1, 2)]
    path = _write(tmp_path / "ratings.dat", [*good[:5], line, *good[5:]], "ascii")
    (s,) = load_files(engine, settings, ratings=[path], max_reject_rate=0.5)
    assert (s.format, s.rows_read, s.rows_rejected) == ("movielens-dat-ratings", 41, 1)
    assert [(r.line_no, r.reason) for r in s.rejects] == [(6, reason)]


def test_users_dat_is_refused_alone_and_ignored_in_the_inbox(
    tmp_path: Path, engine, settings, cli_env
) -> None:
    ratings, movies, users = _ml1m(tmp_path / "ml-1m")
    with pytest.raises(InputError, match=r"users\.dat: MovieLens users\.dat .*nothing in it"):
        detect_format(users)
    result = CliRunner().invoke(cli, ["load-db", str(users)], env=cli_env)
    assert isinstance(result.exception, InputError)
    assert "nothing in it to load" in str(result.exception)
    summaries = load_inbox(engine, settings, tmp_path / "ml-1m")
    assert [Path(s.path).name for s in summaries] == ["movies.dat", "ratings.dat"]
    assert _rows(engine, "SELECT count(*) FROM users") == [(2,)]
