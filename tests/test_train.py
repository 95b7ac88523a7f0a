"""train_run end to end on real data (ml-100k subset), the registry row and artifacts, bad input."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from test_model_data import add_feature_set, load_ml100k

from recsys import pipeline
from recsys.errors import DataError
from recsys.model.keras_models import TrainingDiverged
from recsys.model.registry import load_run
from recsys.model.train import TrainConfig, train_run

pytestmark = pytest.mark.slow
SMALL = {"epochs": 2, "hidden_units": 32}


def _runs(engine: sa.Engine) -> list[dict]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(sa.text("SELECT * FROM model_runs ORDER BY id")).mappings()
        ]


def test_hybrid_end_to_end_on_ml100k(engine: sa.Engine, settings, shared_data: Path) -> None:
    with engine.begin() as conn:
        load_ml100k(conn, shared_data, max_users=150)
        pids = [r[0] for r in conn.execute(sa.text("SELECT id FROM products ORDER BY id"))]
        rng = np.random.default_rng(3)
        # text for 80% of products: the others train with a zero vector and has_text False
        fs_id = add_feature_set(conn, {p: rng.normal(size=6) for p in pids if rng.random() < 0.8})
    # training and then the protocol's measurement, as `recsys train` runs them
    result = pipeline.train(
        engine, settings, TrainConfig(model="hybrid", seed=1, min_ratings=5, **SMALL)
    )
    (run,) = _runs(engine)
    assert run["status"] == "succeeded" and run["id"] == result.run_id
    assert run["feature_set_id"] == fs_id and run["n_ratings"] == result.n_ratings > 5000
    assert run["host"] == socket.gethostname() and run["pid"] == os.getpid()
    assert run["params"]["hidden_units"] == 32 and run["params"]["min_ratings"] == 5
    for key in ("rmse", "mae"):
        assert 0.5 < run["metrics"]["seed"][key] < 2.0
    assert 0.0 <= run["metrics"]["rank"]["ndcg@10"] <= 1.0
    assert run["metrics"]["rank"]["n_eval_users"] > 50
    assert len(run["history"]["train_loss"]) == 2
    folder = Path(run["artifact_path"])
    assert folder == settings.models_dir / str(result.run_id)
    assert (folder / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in settings.models_dir.iterdir() if p.name.startswith(".tmp")]
    with engine.connect() as conn:
        loaded = load_run(conn, settings)
    assert loaded.run_id == result.run_id and loaded.model_type == "hybrid"
    assert loaded.feature_set_id == fs_id and len(loaded.product_ids) == result.n_products
    scores = loaded.recommender.score_users(np.array([0, 1]))
    assert scores.shape == (2, result.n_products) and np.isfinite(scores).all()


def test_too_few_ratings_fails_run_with_counts(
    engine: sa.Engine, settings, shared_data: Path
) -> None:
    with engine.begin() as conn:
        load_ml100k(conn, shared_data, max_users=3)
    with pytest.raises(
        DataError, match=r"too few ratings to train: \d+ ratings of 3 users .* more than 1 "
    ):
        train_run(
            engine,
            settings,
            TrainConfig(model="mf", min_ratings=1, min_train_ratings=1000, evaluate=False, **SMALL),
        )
    (run,) = _runs(engine)
    assert run["status"] == "failed" and "too few ratings" in run["failure_reason"]
    with engine.connect() as conn, pytest.raises(DataError, match="no trained model"):
        load_run(conn, settings)


def test_hybrid_without_feature_set_names_the_command(
    engine: sa.Engine, settings, shared_data: Path
) -> None:
    with engine.begin() as conn:
        load_ml100k(conn, shared_data, max_users=30)
    with pytest.raises(DataError, match="recsys features build"):
        train_run(engine, settings, TrainConfig(model="hybrid", min_ratings=0, **SMALL))
    assert _runs(engine)[0]["status"] == "failed"


def test_nan_loss_marks_run_failed(engine: sa.Engine, settings, shared_data: Path) -> None:
    with engine.begin() as conn:
        load_ml100k(conn, shared_data, max_users=40)
    with pytest.raises(TrainingDiverged, match="NaN"):
        train_run(
            engine,
            settings,
            TrainConfig(model="mf", learning_rate=1e12, min_ratings=0, evaluate=False, epochs=3),
        )
    (run,) = _runs(engine)
    assert run["status"] == "failed" and "NaN" in run["failure_reason"]
    assert run["artifact_path"] is None
    assert not settings.models_dir.exists() or not list(settings.models_dir.iterdir())
