"""load-db on the real public files in ../shared/data: formats, expected counts, idempotence."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from recsys.ingest.detect import detect_format
from recsys.ingest.load import load_files


def _count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as c:
        return c.execute(sa.text(sql)).scalar_one()


def _snapshot(engine: sa.Engine) -> dict[str, list]:
    with engine.connect() as c:
        return {
            "users": c.execute(sa.text("SELECT id, external_id FROM users ORDER BY id")).all(),
            "products": c.execute(
                sa.text(
                    "SELECT id, external_id, title, brand, description, feature_text, categories,"
                    " main_category, raw::text FROM products ORDER BY id"
                )
            ).all(),
            "ratings": c.execute(
                sa.text(
                    "SELECT user_id, product_id, rating, rated_at FROM ratings"
                    " ORDER BY user_id, product_id"
                )
            ).all(),
        }


@pytest.mark.parametrize(
    ("relative", "kind", "name"),
    [
        ("amazon2018_gift_cards/Gift_Cards_5.json.gz", "ratings", "amazon2018-reviews"),
        ("amazon2018_gift_cards/meta_Gift_Cards.json.gz", "metadata", "amazon2018-metadata"),
        ("amazon2018_all_beauty_5core/All_Beauty_5.json.gz", "ratings", "amazon2018-reviews"),
        ("movielens_ml-100k/u.data", "ratings", "movielens100k-ratings"),
        ("movielens_ml-100k/u.item", "metadata", "movielens100k-items"),
    ],
)
def test_detects_real_formats(shared_data: Path, relative: str, kind: str, name: str) -> None:
    assert detect_format(shared_data / relative) == (kind, name)


def test_gift_cards_reviews_and_metadata(shared_data: Path, engine, settings) -> None:
    folder = shared_data / "amazon2018_gift_cards"
    meta, reviews = load_files(
        engine,
        settings,
        ratings=[folder / "Gift_Cards_5.json.gz"],
        metadata=[folder / "meta_Gift_Cards.json.gz"],
    )
    assert (reviews.rows_read, reviews.rows_loaded, reviews.rows_merged, reviews.rows_rejected) == (
        2972,
        2965,
        7,
        0,
    )
    assert meta.rows_loaded == 1547 and meta.status == "loaded"
    assert _count(engine, "SELECT count(*) FROM ratings") == 2965
    assert _count(engine, "SELECT count(*) FROM users") == 458
    assert _count(engine, "SELECT count(DISTINCT product_id) FROM ratings") == 148
    # every rated product has its metadata (the 5-core products are in the metadata file)
    assert _count(engine, "SELECT count(*) FROM products") == 1547
    with engine.connect() as c:
        row = c.execute(
            sa.text(
                "SELECT title, brand, categories, main_category, raw->>'asin' FROM products"
                " WHERE external_id = 'B001BKEWF2'"
            )
        ).one()
        loads = c.execute(
            sa.text("SELECT format, kind, status, rows_read FROM loads ORDER BY id")
        ).all()
    assert row == (
        "Serendipity 3 $100.00 Gift Card",
        "Serendipity 3",
        ["Gift Cards", "Gift Cards"],
        "Grocery",
        "B001BKEWF2",
    )
    assert loads == [
        ("amazon2018-metadata", "metadata", "loaded", 1547),
        ("amazon2018-reviews", "ratings", "loaded", 2972),
    ]


def test_duplicate_pair_keeps_latest_rating(shared_data: Path, engine, settings) -> None:
    import gzip
    import json

    path = shared_data / "amazon2018_gift_cards" / "Gift_Cards_5.json.gz"
    by_pair: dict[tuple[str, str], list[dict]] = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            r = json.loads(line)
            by_pair.setdefault((r["reviewerID"], r["asin"]), []).append(r)
    load_files(engine, settings, ratings=[path])
    dupes = {k: v for k, v in by_pair.items() if len(v) > 1}
    assert dupes, "the real file has repeated user-product pairs"
    with engine.connect() as c:
        for (user, asin), lines in dupes.items():
            # latest timestamp; equal timestamps: the later line
            best = max(enumerate(lines), key=lambda e: (e[1]["unixReviewTime"], e[0]))[1]
            got = c.execute(
                sa.text(
                    "SELECT r.rating, extract(epoch FROM r.rated_at)::bigint FROM ratings r"
                    " JOIN users u ON u.id = r.user_id JOIN products p ON p.id = r.product_id"
                    " WHERE u.external_id = :u AND p.external_id = :p"
                ),
                {"u": user, "p": asin},
            ).one()
            assert got == (best["overall"], best["unixReviewTime"])


@pytest.mark.parametrize(
    ("relative", "lines", "pairs"),
    [
        ("amazon2018_all_beauty_5core/All_Beauty_5.json.gz", 5269, 4092),
        ("amazon2018_appliances_5core/Appliances_5.json.gz", 2277, 183),
    ],
)
def test_other_5core_counts(shared_data: Path, engine, settings, relative, lines, pairs) -> None:
    (summary,) = load_files(engine, settings, ratings=[shared_data / relative])
    assert (summary.rows_read, summary.rows_loaded, summary.rows_rejected) == (lines, pairs, 0)
    assert summary.rows_merged == lines - pairs
    assert _count(engine, "SELECT count(*) FROM ratings") == pairs


@pytest.mark.slow
def test_movielens_100k(shared_data: Path, engine, settings) -> None:
    folder = shared_data / "movielens_ml-100k"
    meta, ratings = load_files(
        engine, settings, ratings=[folder / "u.data"], metadata=[folder / "u.item"]
    )
    assert (ratings.rows_read, ratings.rows_loaded, ratings.rows_rejected) == (100_000, 100_000, 0)
    assert (meta.rows_read, meta.rows_loaded) == (1682, 1682)
    assert _count(engine, "SELECT count(*) FROM ratings") == 100_000
    assert _count(engine, "SELECT count(*) FROM users") == 943
    assert _count(engine, "SELECT count(*) FROM products") == 1682
    with engine.connect() as c:
        toy = c.execute(
            sa.text("SELECT title, categories FROM products WHERE external_id = '1'")
        ).one()
        rating = c.execute(
            sa.text(
                "SELECT r.rating, extract(epoch FROM r.rated_at)::bigint FROM ratings r"
                " JOIN users u ON u.id = r.user_id JOIN products p ON p.id = r.product_id"
                " WHERE u.external_id = '196' AND p.external_id = '242'"
            )
        ).one()
    assert toy == ("Toy Story (1995)", ["Animation", "Children's", "Comedy"])
    assert rating == (3.0, 881250949)


def test_reload_leaves_the_same_database(shared_data: Path, engine, settings) -> None:
    folder = shared_data / "amazon2018_gift_cards"
    files = dict(
        ratings=[folder / "Gift_Cards_5.json.gz"], metadata=[folder / "meta_Gift_Cards.json.gz"]
    )
    load_files(engine, settings, **files)
    before = _snapshot(engine)
    second = load_files(engine, settings, **files)
    assert [s.status for s in second] == ["loaded", "loaded"]
    assert _snapshot(engine) == before
    skipped = load_files(engine, settings, skip_loaded=True, **files)
    assert [s.status for s in skipped] == ["skipped", "skipped"]
    assert _snapshot(engine) == before
