"""Every format on small files written from its documented layout; detection; merging."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from recsys.ingest.detect import detect_format
from recsys.ingest.load import load_files


def _rows(engine: sa.Engine, sql: str, **params) -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.text(sql), params).all()]


RATINGS_SQL = (
    "SELECT u.external_id, p.external_id, r.rating, extract(epoch FROM r.rated_at)::float8"
    " FROM ratings r JOIN users u ON u.id = r.user_id JOIN products p ON p.id = r.product_id"
    " ORDER BY 1, 2"
)
PRODUCT_SQL = (
    "SELECT external_id, title, brand, description, feature_text, categories, main_category"
    " FROM products ORDER BY external_id"
)


def _write(path: Path, lines: list[str], *, gz: bool = False, encoding: str = "utf-8") -> Path:
    data = ("\n".join(lines) + "\n").encode(encoding)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_seed_ratings_csv(tmp_path: Path, engine, settings) -> None:
    path = _write(
        tmp_path / "Electronics.csv",
        [
            "0132793040,AKM1MP6P0OYPR,5.0,1365811200",
            "0321732944,A2CX7LUOHB2NDG,5.0,1341100800",
            "0132793040,A2CX7LUOHB2NDG,1.0,1367193600",
        ],
    )
    assert detect_format(path) == ("ratings", "ratings-csv")
    (s,) = load_files(engine, settings, ratings=[path])
    assert (s.rows_read, s.rows_loaded, s.rows_rejected) == (3, 3, 0)
    assert _rows(engine, RATINGS_SQL) == [
        ("A2CX7LUOHB2NDG", "0132793040", 1.0, 1367193600.0),
        ("A2CX7LUOHB2NDG", "0321732944", 5.0, 1341100800.0),
        ("AKM1MP6P0OYPR", "0132793040", 5.0, 1365811200.0),
    ]


def test_amazon2018_metadata_imageurl_variant_and_repeats_merge(
    tmp_path: Path, engine, settings
) -> None:
    first = {
        "asin": "B1",
        "title": "Cable",
        "feature": ["<b>USB</b> 2.0", "1 m"],
        "description": [],
        "category": ["Electronics", "Cables"],
        "brand": "",
        "main_cat": "Electronics",
        "imageURL": ["u1"],
        "imageURLHighRes": ["h1"],
    }
    again = {"asin": "B1", "brand": "Acme", "description": ["Long <i>cable</i>"], "price": "$3"}
    other = {
        "asin": "B2",
        "title": "Plug",
        "image": ["i2"],
        "category": [],
        "main_cat": "<img src=x>",
    }
    path = _write(
        tmp_path / "meta.json.gz",
        [json.dumps(first), json.dumps(other), json.dumps(again)],
        gz=True,
    )
    assert detect_format(path) == ("metadata", "amazon2018-metadata")
    (s,) = load_files(engine, settings, metadata=[path])
    assert (s.rows_read, s.rows_loaded, s.rows_merged) == (3, 2, 1)
    assert _rows(engine, PRODUCT_SQL) == [
        (
            "B1",
            "Cable",
            "Acme",
            "Long <i>cable</i>",
            "<b>USB</b> 2.0\n1 m",
            ["Electronics", "Cables"],
            "Electronics",
        ),
        ("B2", "Plug", None, None, None, None, "<img src=x>"),
    ]
    raw = _rows(engine, "SELECT raw FROM products WHERE external_id = 'B1'")[0][0]
    assert raw["imageURL"] == ["u1"] and raw["price"] == "$3" and raw["brand"] == "Acme"


def test_amazon2014_reviews_and_dict_literal_metadata(tmp_path: Path, engine, settings) -> None:
    reviews = _write(
        tmp_path / "reviews_Books.json",
        [
            json.dumps(
                {
                    "reviewerID": "U1",
                    "asin": "A1",
                    "helpful": [2, 3],
                    "overall": 4.0,
                    "unixReviewTime": 1393545600,
                    "reviewTime": "02 28, 2014",
                }
            ),
        ],
    )
    meta = _write(
        tmp_path / "meta_Books.json",
        [
            "{'asin': 'A1', 'title': \"Don't Panic\", 'salesRank': {'Books': 12}, "
            "'categories': [['Books', 'Fiction'], ['Books', 'Humour']], 'imUrl': 'http://x', "
            "'description': 'A <br/>guide', 'related': {'also_bought': ['A2']}}",
            "{'asin': 'A2', 'categories': [['Electronics']], 'brand': 'Sony'}",
        ],
    )
    assert detect_format(reviews) == ("ratings", "amazon2014-reviews")
    assert detect_format(meta) == ("metadata", "amazon2014-metadata")
    load_files(engine, settings, ratings=[reviews], metadata=[meta])
    assert _rows(engine, RATINGS_SQL) == [("U1", "A1", 4.0, 1393545600.0)]
    assert _rows(engine, PRODUCT_SQL) == [
        ("A1", "Don't Panic", None, "A <br/>guide", None, ["Books", "Fiction", "Humour"], "Books"),
        ("A2", None, "Sony", None, None, ["Electronics"], "Electronics"),
    ]


def test_amazon2014_metadata_is_never_evaluated(tmp_path: Path, engine, settings) -> None:
    marker = tmp_path / "pwned"
    path = _write(
        tmp_path / "meta.json",
        [
            "{'asin': 'A1', 'title': 'ok'}",
            f"__import__('pathlib').Path({str(marker)!r}).touch()",
        ],
    )
    (s,) = load_files(
        engine, settings, metadata=[path], fmt="amazon2014-metadata", max_reject_rate=1
    )
    assert not marker.exists()
    assert (s.rows_loaded, s.rows_rejected) == (1, 1)
    assert s.rejects[0].reason.startswith("broken dict literal")


def test_amazon2023_uses_parent_asin_and_milliseconds(tmp_path: Path, engine, settings) -> None:
    reviews = _write(
        tmp_path / "All_Beauty.jsonl",
        [
            json.dumps(
                {
                    "rating": 5.0,
                    "title": "Nice",
                    "text": "x",
                    "asin": "B0V1",
                    "parent_asin": "B0P",
                    "user_id": "U1",
                    "timestamp": 1588687728923,
                    "verified_purchase": True,
                }
            ),
            json.dumps(
                {
                    "rating": 3.0,
                    "asin": "B0V2",
                    "parent_asin": "B0P",
                    "user_id": "U1",
                    "timestamp": 1588687728000,
                }
            ),
            json.dumps({"rating": 2.0, "asin": "B0X", "user_id": "U2", "timestamp": 1600000000000}),
        ],
    )
    meta = _write(
        tmp_path / "meta_All_Beauty.jsonl",
        [
            json.dumps(
                {
                    "main_category": "All Beauty",
                    "title": "Brush",
                    "average_rating": 4.8,
                    "features": ["soft", "pink"],
                    "description": ["A brush"],
                    "store": "Brushco",
                    "categories": ["Beauty", "Tools"],
                    "parent_asin": "B0P",
                }
            ),
        ],
    )
    assert detect_format(reviews) == ("ratings", "amazon2023-reviews")
    assert detect_format(meta) == ("metadata", "amazon2023-metadata")
    _, s = load_files(engine, settings, ratings=[reviews], metadata=[meta])
    assert (s.rows_read, s.rows_loaded, s.rows_merged) == (3, 2, 1)
    assert _rows(engine, RATINGS_SQL) == [
        ("U1", "B0P", 5.0, 1588687728.923),
        ("U2", "B0X", 2.0, 1600000000.0),
    ]
    assert _rows(engine, PRODUCT_SQL)[0] == (
        "B0P",
        "Brush",
        "Brushco",
        "A brush",
        "soft\npink",
        ["Beauty", "Tools"],
        "All Beauty",
    )


def test_movielens_latest(tmp_path: Path, engine, settings) -> None:
    ratings = _write(
        tmp_path / "ratings.csv",
        [
            "userId,movieId,rating,timestamp",
            "1,1,4.0,964982703",
            "1,3,0.5,964981247",
            "2,1,3.5,964982224",
        ],
    )
    movies = _write(
        tmp_path / "movies.csv",
        [
            "movieId,title,genres",
            "1,Toy Story (1995),Adventure|Animation|Children",
            '3,"American President, The (1995)",(no genres listed)',
        ],
    )
    tags = _write(
        tmp_path / "tags.csv",
        [
            "userId,movieId,tag,timestamp",
            "2,1,pixar,1445714994",
            '7,1,"fun, clever",1445714996',
            "2,3,politics,1445715054",
        ],
    )
    assert detect_format(ratings) == ("ratings", "movielens-ratings")
    assert detect_format(movies) == ("metadata", "movielens-movies")
    assert detect_format(tags) == ("metadata", "movielens-tags")
    summaries = load_files(engine, settings, ratings=[ratings], metadata=[movies, tags])
    assert [s.rows_read for s in summaries] == [2, 3, 3]  # header rows are not data
    assert _rows(engine, RATINGS_SQL) == [
        ("1", "1", 4.0, 964982703.0),
        ("1", "3", 0.5, 964981247.0),
        ("2", "1", 3.5, 964982224.0),
    ]
    assert _rows(engine, PRODUCT_SQL) == [
        (
            "1",
            "Toy Story (1995)",
            None,
            None,
            "pixar\nfun, clever",
            ["Adventure", "Animation", "Children"],
            None,
        ),
        ("3", "American President, The (1995)", None, None, "politics", None, None),
    ]
    # reloading the tags replaces them (idempotent), it does not append
    load_files(engine, settings, metadata=[tags])
    assert _rows(engine, "SELECT feature_text FROM products WHERE external_id = '1'") == [
        ("pixar\nfun, clever",)
    ]


def test_movielens_100k_small_latin1_without_u_genre(tmp_path: Path, engine, settings) -> None:
    flags = ["0"] * 19
    flags[5] = "1"  # Comedy
    item = _write(
        tmp_path / "u.item",
        ["7|Café Society (1995)|01-Jan-1995||http://x|" + "|".join(flags)],
        encoding="latin-1",
    )
    data = _write(tmp_path / "u.data", ["10\t7\t3\t881250949"])
    assert detect_format(item) == ("metadata", "movielens100k-items")
    load_files(engine, settings, ratings=[data], metadata=[item])
    assert _rows(engine, "SELECT external_id, title, categories FROM products") == [
        ("7", "Café Society (1995)", ["Comedy"])
    ]
    assert _rows(engine, RATINGS_SQL) == [("10", "7", 3.0, 881250949.0)]


@pytest.mark.parametrize("name", ["ratings-csv", "movielens100k-ratings"])
def test_forced_format(tmp_path: Path, engine, settings, name: str) -> None:
    sep = "," if name == "ratings-csv" else "\t"
    path = _write(tmp_path / "x.txt", [sep.join(["P1", "U1", "2", "1000000000"])])
    (s,) = load_files(engine, settings, ratings=[path], fmt=name)
    assert s.format == name and s.rows_loaded == 1
