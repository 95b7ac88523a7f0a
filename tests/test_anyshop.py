"""Any shop's data: the typed catalogue, EASE/ALS/blend as nightly models, ``--model auto``,
the adaptive training filter, and the default ``recsys run`` on real files with and without
product text."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from test_nightly_support import add_catalogue

from recsys.cli import cli
from recsys.config import Settings
from recsys.errors import DataError, RecsysError
from recsys.model import catalog
from recsys.model.base import RatingData


def planted_clusters(
    n_users: int = 120, n_products: int = 60, clusters: int = 6, per_user: int = 8, seed: int = 0
) -> RatingData:
    """Each user rates (5 stars) products of their own cluster only: item-item structure that
    EASE captures and plain popularity cannot."""
    rng = np.random.default_rng(seed)
    size = n_products // clusters
    users, products = [], []
    for u in range(n_users):
        c = u % clusters
        for p in rng.choice(size, per_user, replace=False):
            users.append(u)
            products.append(c * size + int(p))
    n = len(users)
    return RatingData(
        users=np.array(users, dtype=np.int32),
        products=np.array(products, dtype=np.int32),
        ratings=np.full(n, 5.0, dtype=np.float32),
        timestamps=np.arange(n, dtype=np.int64),
        user_ids=np.arange(1, n_users + 1, dtype=np.int64),
        product_ids=np.arange(1, n_products + 1, dtype=np.int64),
    )


# --- the catalogue ------------------------------------------------------------------------


def test_every_spec_config_has_its_class_defaults() -> None:
    """The config is the model's parameter list: same names, same defaults as the class."""
    for name, spec in catalog.SPECS.items():
        signature = inspect.signature(spec.cls().__init__).parameters
        for field, info in spec.config.model_fields.items():
            assert field in signature, (name, field)
            default = signature[field].default
            if default is None and info.default == {}:
                continue  # the class takes None for "no overrides"
            if isinstance(default, tuple):
                default = tuple(tuple(d) if isinstance(d, tuple) else d for d in default)
            assert info.default == default, (name, field, info.default, default)


def test_bad_parameters_and_names_fail_with_one_line() -> None:
    with pytest.raises(RecsysError, match="bad parameters for model 'ease': nope"):
        catalog.create("ease", nope=1)
    with pytest.raises(RecsysError, match="bad parameters for model 'ease': lam"):
        catalog.create("ease", lam="many")
    with pytest.raises(RecsysError, match="unknown model 'nope'; known models: auto, ranker"):
        catalog.create("nope")
    assert catalog.DEFAULT_NIGHTLY_MODEL == catalog.AUTO
    assert catalog.model_params("ranker", {"epochs": 3, "hidden_units": 8}) == {"epochs": 3}
    assert catalog.model_params("ease", {"epochs": 3}) == {}
    from recsys.model.train import TrainConfig

    # auto passes the shared options on to the candidates that take them
    assert TrainConfig(model="auto", epochs=3, batch_size=8).model_params() == {
        "params": {"ranker": {"epochs": 3}}
    }


# --- EASE, ALS and blend as nightly models ------------------------------------------------


def test_ease_scores_are_the_closed_form_and_fold_in(tmp_path: Path) -> None:
    data = planted_clusters()
    model = catalog.create("ease", lam=10.0)
    model.fit(data)
    x = np.zeros((data.n_users, data.n_products))
    x[data.users, data.products] = 1.0
    p = np.linalg.inv(x.T @ x + 10.0 * np.eye(data.n_products))
    b = np.eye(data.n_products) - p / np.diag(p)[None, :]
    users = np.arange(0, data.n_users, 7)
    np.testing.assert_allclose(model.score_users(users), x[users] @ b, atol=1e-4)
    model.save(tmp_path / "ease")
    loaded = catalog.load(tmp_path / "ease")
    np.testing.assert_array_equal(loaded.score_users(users), model.score_users(users))
    # fold-in: a user known only by a history row scores as a training user with that row
    np.testing.assert_allclose(loaded.score_histories(x[users]), x[users] @ b, atol=1e-4)


def test_als_saved_loaded_and_folded_in_like_implicit(tmp_path: Path) -> None:
    pytest.importorskip("implicit")
    from implicit.cpu.als import AlternatingLeastSquares

    from recsys.model.ease import interaction_matrix

    data = planted_clusters()
    model = catalog.create("als", factors=8, regularization=0.1, alpha=4.0, iterations=5)
    model.fit(data)
    model.save(tmp_path / "als")
    loaded = catalog.load(tmp_path / "als")
    users = np.arange(0, data.n_users, 5)
    np.testing.assert_array_equal(loaded.score_users(users), model.score_users(users))
    np.testing.assert_allclose(
        model.score_users(users), model.user_factors[users] @ model.product_factors.T, rtol=1e-6
    )
    # fold-in equals implicit's own exact (Cholesky) recalculation for the same rows
    reference = AlternatingLeastSquares(
        factors=8, regularization=0.1, alpha=4.0, use_cg=False, num_threads=1
    )
    reference.item_factors = loaded.product_factors.copy()
    rows = interaction_matrix(data)[users]
    expected = reference.recalculate_user(users, rows)
    np.testing.assert_allclose(loaded.fold_in(rows), expected, rtol=1e-3, atol=1e-4)
    # the scorer's dot-product form: the factors with a zero bias, and the same fold-in from
    # (row, product) entries (a duplicate counts once)
    u, v, b = loaded.score_factors()
    np.testing.assert_array_equal(b, 0)
    np.testing.assert_allclose(u[users] @ v.T + b, model.score_users(users), rtol=1e-6)
    entries = rows.tocoo()
    items = np.concatenate([entries.col, entries.col[:3]])
    owners = np.concatenate([entries.row, entries.row[:3]])
    np.testing.assert_allclose(
        loaded.user_vectors_for(items, owners, len(users)), loaded.fold_in(rows), rtol=1e-6
    )


@pytest.mark.slow
def test_blend_is_the_standardised_mix_and_loads_exactly(tmp_path: Path) -> None:
    from recsys.model.blend import standardise

    data = planted_clusters()
    blend = catalog.create(
        "blend", weight=0.3, ranker={"epochs": 2, "dim": 8, "rating_head": False}, ease={"lam": 5}
    )
    blend.fit(data)
    users = np.arange(0, data.n_users, 9)
    expected = 0.3 * standardise(blend.ranker.score_users(users)) + 0.7 * standardise(
        blend.ease.score_users(users)
    )
    np.testing.assert_allclose(blend.score_users(users), expected, atol=1e-5)
    np.testing.assert_allclose(blend.direct_scores(users), expected, atol=1e-3)
    blend.save(tmp_path / "blend")
    loaded = catalog.load(tmp_path / "blend")
    np.testing.assert_allclose(loaded.score_users(users), blend.score_users(users), atol=1e-6)


@pytest.mark.parametrize("name", ["ease", "als"])
def test_ease_and_als_from_the_registry_publish_their_exact_top_k(
    name: str, engine: sa.Engine, settings: Settings
) -> None:
    """Trained by the nightly run, loaded back from the registry, the published lists are the
    brute-force top-k of the model's scores over each user's unrated products."""
    if name == "als":
        pytest.importorskip("implicit")
    from recsys import pipeline
    from recsys.scoring.score import load_model

    with engine.begin() as conn:
        add_catalogue(conn, n_users=40, n_products=25, n_ratings=300, seed=6)
    options = pipeline.PipelineOptions(model=name, build_features=False, evaluate=False, k=5)
    result = pipeline.run(engine, settings, options)
    model = load_model(engine, settings, result.model_run_id)
    assert model.recommender.name == name
    with engine.connect() as conn:
        rated = set(conn.execute(sa.text("SELECT user_id, product_id FROM ratings")).all())
        published = conn.execute(
            sa.text(
                "SELECT u.id, p.id FROM current_recommendations c "
                "JOIN users u ON u.external_id = c.user_external_id "
                "JOIN products p ON p.external_id = c.asin ORDER BY u.id, c.rank"
            )
        ).all()
    lists: dict[int, list[int]] = {}
    for user_id, product_id in published:
        lists.setdefault(int(user_id), []).append(int(product_id))
    scores = model.recommender.score_users(np.arange(len(model.user_ids)))
    for row, user_id in enumerate(model.user_ids.tolist()):
        candidates = [
            (-float(scores[row, col]), int(pid))
            for col, pid in enumerate(model.product_ids.tolist())
            if (user_id, pid) not in rated
        ]
        assert lists[user_id] == [pid for _, pid in sorted(candidates)[:5]]


# --- auto ---------------------------------------------------------------------------------


def test_auto_picks_the_planted_winner_and_serves_it_refitted() -> None:
    data = planted_clusters()
    auto = catalog.create("auto", candidates=["popularity", "ease"])
    auto.fit(data)
    scores = {c["model"]: c["ndcg@10"] for c in auto.selection["candidates"]}
    assert auto.selection["chosen"] == "ease" and auto.chosen_name == "ease"
    assert scores["ease"] > scores["popularity"] + 0.3  # clearly best, as planted
    assert auto.internal["ndcg@10"] == scores["ease"]
    assert auto.internal["popularity_ndcg@10"] == scores["popularity"]
    assert all(c["fit_seconds"] >= 0 for c in auto.selection["candidates"])
    # what is served is EASE refitted on ALL the data (same scores as a direct EASE fit)
    direct = catalog.create("ease")
    direct.fit(data)
    users = np.arange(data.n_users)
    np.testing.assert_allclose(auto.score_users(users), direct.score_users(users), atol=1e-6)


def test_auto_leaves_out_what_does_not_fit() -> None:
    data = planted_clusters()
    auto = catalog.create("auto", ease_memory_mb=0)
    names, skipped = auto.plan(data)
    assert "ease" not in names and "ranker" in names and "popularity" in names
    assert any(s["model"] == "ease" and "MiB budget" in s["reason"] for s in skipped)


def test_auto_through_train_run_records_its_contest(
    engine: sa.Engine, settings: Settings, cli_env: dict[str, str]
) -> None:
    from recsys.model.train import TrainConfig, train_run
    from recsys.scoring.score import load_model

    with engine.begin() as conn:
        add_catalogue(conn, n_users=60, n_products=30, n_ratings=600, seed=4)
    result = train_run(
        engine,
        settings,
        TrainConfig(model="auto", params={"candidates": ["popularity", "ease"]}, evaluate=False),
    )
    assert result.model_type in ("popularity", "ease")
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT model_type, params, metrics FROM model_runs WHERE id = :r"),
            {"r": result.run_id},
        ).one()
    assert row.model_type == result.model_type and row.params["requested"] == "auto"
    assert row.params["min_ratings"] == 0  # the adaptive filter keeps small data whole
    auto = row.metrics["auto"]
    assert auto["chosen"] == result.model_type
    assert [c["model"] for c in auto["candidates"]] == ["popularity", "ease"]  # as asked
    assert set(row.metrics["internal"]) == {"ndcg@10", "popularity_ndcg@10", "seed"}
    assert load_model(engine, settings, result.run_id).recommender.name == result.model_type
    shown = CliRunner().invoke(cli, ["runs", "show", str(result.run_id)], env=cli_env)
    assert shown.exit_code == 0, shown.output
    assert f"auto: chose {result.model_type}" in shown.output
    assert "internal split NDCG@10" in shown.output and "popularity" in shown.output


# --- the training filter ------------------------------------------------------------------


def test_adaptive_filter_keeps_small_data_and_relaxes_on_large(
    conn: sa.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.model import train
    from recsys.model.train import TrainConfig, choose_min_ratings

    add_catalogue(conn, n_users=60, n_products=30, n_ratings=360, seed=1)  # ~6 per user
    assert choose_min_ratings(conn, TrainConfig())[0] == 0
    assert choose_min_ratings(conn, TrainConfig(min_ratings=7)) == (7, "--min-ratings 7")
    # pretend this is large data: the notebook's 10 would drop most ratings, so it relaxes
    monkeypatch.setattr(train, "AUTO_FILTER_ABOVE", 100)
    threshold, why = choose_min_ratings(conn, TrainConfig(min_train_ratings=10))
    kept = conn.execute(sa.text(train._FILTERED_COUNT_SQL), {"t": threshold}).scalar_one()
    strict = conn.execute(sa.text(train._FILTERED_COUNT_SQL), {"t": 10}).scalar_one()
    assert strict < 180  # the notebook's filter would keep under half
    assert threshold < 10 and kept >= 180 and "adaptive" in why


@pytest.mark.subprocess
def test_tiny_data_fails_with_one_line_and_exit_2(engine: sa.Engine, cli_env: dict) -> None:
    with engine.begin() as conn:
        add_catalogue(conn, n_users=5, n_products=40, n_ratings=150, seed=2)
    result = subprocess.run(
        [sys.executable, "-m", "recsys", "run", "--no-features", "--model", "popularity"],
        env={**os.environ, **cli_env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("recsys: error:")]
    assert len(errors) == 1 and "too few ratings" in errors[0] and "5 users" in errors[0]
    assert "Traceback" not in result.stderr


# --- real files through the default nightly run -------------------------------------------


def _served(engine: sa.Engine) -> tuple[int, int, set[int]]:
    with engine.connect() as conn:
        users = conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one()
        counts = conn.execute(
            sa.text(
                "SELECT user_external_id, count(*) FROM current_recommendations "
                "GROUP BY user_external_id"
            )
        ).all()
    return users, len(counts), {int(c) for _, c in counts}


@pytest.mark.slow
def test_no_metadata_file_through_recsys_run_publishes_a_full_list_for_everyone(
    shared_data: Path, engine: sa.Engine, cli_env: dict[str, str]
) -> None:
    """All Beauty (ratings only): features records "no product text", the ranker trains on
    ids alone, every user gets 10 products."""
    runner = CliRunner()
    path = shared_data / "amazon2018_all_beauty_5core" / "All_Beauty_5.json.gz"
    loaded = runner.invoke(cli, ["load-db", "--ratings", str(path)], env=cli_env)
    assert loaded.exit_code == 0, loaded.output
    result = runner.invoke(
        cli, ["run", "--model", "ranker", "--epochs", "3", "--no-evaluate"], env=cli_env
    )
    assert result.exit_code == 0, result.output
    users, listed, sizes = _served(engine)
    assert listed == users and sizes == {10}
    with engine.connect() as conn:
        detail = conn.execute(
            sa.text("SELECT detail FROM pipeline_steps WHERE step = 'features'")
        ).scalar_one()
        params = conn.execute(sa.text("SELECT params FROM model_runs")).scalar_one()
    assert detail == {"skipped": "no product text"}
    assert params["text_path"] is False


@pytest.mark.slow
def test_small_real_file_through_the_default_recsys_run_publishes(
    shared_data: Path, engine: sa.Engine, cli_env: dict[str, str]
) -> None:
    """Appliances (47 users, 183 distinct ratings): the defaults keep every rating, auto picks
    a model, every user gets a list; internal and auto metrics are recorded."""
    runner = CliRunner()
    path = shared_data / "amazon2018_appliances_5core" / "Appliances_5.json.gz"
    assert runner.invoke(cli, ["load-db", "--ratings", str(path)], env=cli_env).exit_code == 0
    result = runner.invoke(cli, ["run", "--no-evaluate"], env=cli_env)
    assert result.exit_code == 0, result.output
    users, listed, sizes = _served(engine)
    assert listed == users == 47 and sizes == {10}
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT model_type, params, metrics FROM model_runs")).one()
    assert row.params["min_ratings"] == 0 and row.params["requested"] == "auto"
    assert row.metrics["auto"]["chosen"] == row.model_type
    assert {c["model"] for c in row.metrics["auto"]["candidates"]} >= {"ranker", "popularity"}


def test_models_that_need_text_still_say_so(engine: sa.Engine, settings: Settings) -> None:
    from recsys.model.train import TrainConfig, train_run

    with engine.begin() as conn:
        add_catalogue(conn, n_users=30, n_products=20, n_ratings=300, seed=5)
    with pytest.raises(DataError, match="hybrid model needs product text vectors"):
        train_run(engine, settings, TrainConfig(model="hybrid", evaluate=False))
