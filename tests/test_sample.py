"""recsys sample: deterministic, loadable, and the planted structure is really there."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from recsys.cli import cli
from recsys.errors import InputError
from recsys.ingest.detect import detect_format
from recsys.ingest.load import load_files
from recsys.ingest.sample import expected_ratings, load_truth, write_sample


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("sample")
    return write_sample(out, users=600, products=300, ratings=12_000, seed=7)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deterministic_per_seed(sample, tmp_path: Path) -> None:
    again = write_sample(tmp_path / "a", users=600, products=300, ratings=12_000, seed=7)
    other = write_sample(tmp_path / "b", users=600, products=300, ratings=12_000, seed=8)
    assert _digest(again.ratings_path) == _digest(sample.ratings_path)
    assert gzip.decompress(again.metadata_path.read_bytes()) == gzip.decompress(
        sample.metadata_path.read_bytes()
    )
    assert _digest(other.ratings_path) != _digest(sample.ratings_path)


def test_layout_counts_and_skew(sample) -> None:
    lines = sample.ratings_path.read_text().splitlines()
    assert len(lines) == sample.ratings == 12_000
    rows = [line.split(",") for line in lines]
    assert all(len(r) == 4 for r in rows)
    pairs = {(r[0], r[1]) for r in rows}
    assert len(pairs) == 12_000  # each (user, product) at most once
    assert len({r[1] for r in rows}) == 600
    stars = Counter(float(r[2]) for r in rows)
    assert set(stars) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert (stars[4.0] + stars[5.0]) / 12_000 > 0.6  # mostly 4 and 5 stars
    assert stars[1.0] < stars[3.0] < stars[5.0]
    popularity = sorted(Counter(r[0] for r in rows).values(), reverse=True)
    assert sum(popularity[:30]) / 12_000 > 0.3  # long tail: top 10% of products hold > 30%
    assert detect_format(sample.ratings_path) == ("ratings", "ratings-csv")
    assert detect_format(sample.metadata_path) == ("metadata", "amazon2018-metadata")


def test_ratings_follow_the_planted_factors(sample) -> None:
    truth = load_truth(sample.truth_path)
    user_index = {u: i for i, u in enumerate(truth["user_ids"].tolist())}
    product_index = {p: i for i, p in enumerate(truth["product_ids"].tolist())}
    observed, planted = [], []
    expected_by_user = {}
    for line in sample.ratings_path.read_text().splitlines():
        product, user, star, _ = line.split(",")
        u = user_index[user]
        if u not in expected_by_user:
            expected_by_user[u] = expected_ratings(truth, u)
        observed.append(float(star))
        planted.append(expected_by_user[u][product_index[product]])
    assert np.corrcoef(observed, planted)[0, 1] > 0.6
    # users rate products of the topics they like: the rated products' topic mixture is closer
    # to the user's taste than a random product's is
    rated_match, random_match = [], []
    rng = np.random.default_rng(0)
    for line in sample.ratings_path.read_text().splitlines()[:3000]:
        product, user, _, _ = line.split(",")
        taste = truth["user_topics"][user_index[user]]
        rated_match.append(float(taste @ truth["product_topics"][product_index[product]]))
        random_match.append(float(taste @ truth["product_topics"][rng.integers(300)]))
    assert np.mean(rated_match) > 1.5 * np.mean(random_match)


def test_text_words_depend_on_topics(sample) -> None:
    truth = load_truth(sample.truth_path)
    dominant = truth["product_topics"].argmax(axis=1)
    words: list[set[str]] = []
    with gzip.open(sample.metadata_path, "rt") as handle:
        records = [json.loads(line) for line in handle]
    assert [r["asin"] for r in records] == truth["product_ids"].tolist()
    for r in records:
        assert {"asin", "title", "feature", "description", "category", "brand", "main_cat"} <= set(
            r
        )
        words.append(set(" ".join(r["feature"]).split()))
    assert any("<" in r["description"][0] for r in records)  # some HTML, as real data has

    def jaccard(a: set[str], b: set[str]) -> float:
        return len(a & b) / len(a | b)

    same = [
        jaccard(words[i], words[j])
        for i in range(60)
        for j in range(i + 1, 60)
        if dominant[i] == dominant[j]
    ]
    diff = [
        jaccard(words[i], words[j])
        for i in range(60)
        for j in range(i + 1, 60)
        if dominant[i] != dominant[j]
    ]
    assert np.mean(same) > 3 * np.mean(diff)


def test_sample_loads(sample, engine, settings) -> None:
    meta, ratings = load_files(
        engine, settings, ratings=[sample.ratings_path], metadata=[sample.metadata_path]
    )
    assert (meta.rows_loaded, ratings.rows_loaded, ratings.rows_rejected) == (300, 12_000, 0)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM users")).scalar_one() == 600
        assert (
            c.execute(sa.text("SELECT count(*) FROM products WHERE title IS NOT NULL")).scalar_one()
            == 300
        )


def test_cli_sample_and_bad_sizes(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "sample",
            "--out",
            str(tmp_path),
            "--users",
            "50",
            "--products",
            "40",
            "--ratings",
            "500",
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "ratings.csv").read_text().splitlines()) == 500
    with pytest.raises(InputError, match="do not fit"):
        write_sample(tmp_path / "x", users=2, products=2, ratings=10, seed=0)
