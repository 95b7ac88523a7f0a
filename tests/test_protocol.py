"""The evaluation harness: every model on the same splits, figures equal to the metric functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_model_data import load_ml100k

from recsys.evaluation.metrics import ranking_metrics, rating_metrics
from recsys.evaluation.protocol import evaluate_models, make_splits, metrics_table
from recsys.model import catalog
from recsys.model.data import read_rating_data

pytestmark = pytest.mark.slow


@pytest.fixture
def ml_small(conn, shared_data: Path):
    load_ml100k(conn, shared_data, max_users=200)
    return read_rating_data(conn, min_ratings=0, feature_set_id=None)


def test_models_side_by_side_on_the_same_splits(ml_small) -> None:
    splits = make_splits(ml_small)
    results = evaluate_models(
        ml_small,
        ["popularity", "bias", "mf"],
        create=catalog.create,
        splits=splits,
        params_for=lambda n: catalog.model_params(n, {"epochs": 1}),
        seed=0,
    )
    assert [r.model for r in results] == ["popularity", "bias", "mf"]
    popularity, bias, mf = results
    assert popularity.seed is None  # no rating head
    assert bias.seed is not None and mf.seed is not None
    # every model is measured on the same users and test rows
    assert len({r.rank["n_eval_users"] for r in results}) == 1
    assert bias.seed["n_test"] == mf.seed["n_test"] > 0
    # the harness reports exactly what the metric functions give for the same fitted model
    model = catalog.create("popularity")
    model.fit(splits.rank.train)
    assert popularity.rank == ranking_metrics(
        model.score_users, splits.rank.train, splits.rank.test
    )
    model = catalog.create("bias")
    model.fit(splits.seed.train)
    assert bias.seed == rating_metrics(model.predict, splits.seed.train, splits.seed.test)
    # sanity on real data: popularity beats the bias baseline at top-10 (as in ANCHORS.md)
    assert popularity.rank["ndcg@10"] > bias.rank["ndcg@10"]
    assert 0.85 < bias.seed["rmse"] < 1.15
    assert mf.params["epochs"] == 1
    table = metrics_table(results)
    assert table.row_count == 3


def test_seed_split_is_the_notebooks(ml_small) -> None:
    splits = make_splits(ml_small)
    n = len(ml_small)
    assert len(splits.seed.test) == int(np.ceil(0.3 * n))
    assert len(splits.seed.train) + len(splits.seed.test) == n
    assert len(splits.rank.train) + len(splits.rank.test) == n
