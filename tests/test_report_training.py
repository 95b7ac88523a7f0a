"""The served model's training on the report: the ranker records its internal-validation
NDCG@10 per evaluation in ``model_runs.history`` and the page draws it; a model trained with
``--no-evaluate`` gets a page that says which splits were not measured."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from test_nightly_support import add_catalogue
from test_report import Page

from recsys.config import Settings

pytestmark = pytest.mark.slow


def _report_of_model_run(engine: sa.Engine, settings: Settings, model_run: int) -> Page:
    """The report of a pipeline run whose train step trained ``model_run``."""
    from recsys.report import write_report

    with engine.begin() as conn:
        pipeline_run = conn.execute(
            sa.text(
                "INSERT INTO pipeline_runs (trigger, status, finished_at) "
                "VALUES ('cli', 'succeeded', now()) RETURNING id"
            )
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO pipeline_steps (pipeline_run_id, position, step, status, seconds, "
                "detail) VALUES (:r, 0, 'train', 'succeeded', 1.0, CAST(:d AS jsonb))"
            ),
            {"r": pipeline_run, "d": json.dumps({"model_run_id": model_run})},
        )
    return Page(write_report(engine, settings.home, pipeline_run).read_text(encoding="utf-8"))


def test_the_rankers_history_holds_its_validation_ndcg_and_the_page_draws_it(
    engine: sa.Engine, settings: Settings
) -> None:
    from recsys.model.train import TrainConfig, train_run
    from recsys.report.render import ndcg_points

    with engine.begin() as conn:
        add_catalogue(conn, n_users=60, n_products=30, n_ratings=700, seed=6)
    result = train_run(
        engine,
        settings,
        TrainConfig(
            model="ranker",
            embedding_dim=8,
            min_ratings=0,
            evaluate=False,
            min_train_ratings=10,
            params={"max_epochs": 6, "eval_every": 2, "patience": 5, "rating_head": False},
        ),
    )
    with engine.connect() as conn:
        history, params = conn.execute(
            sa.text("SELECT history, params FROM model_runs WHERE id = :m"), {"m": result.run_id}
        ).one()
    evaluations = history["val_ndcg"]
    # the epoch search evaluated every 2 epochs up to 6 (patience 5: it never stopped early)
    assert [e for e, _ in evaluations] == [2, 4, 6]
    assert all(0.0 <= v <= 1.0 for _, v in evaluations)
    assert history["best_epoch"] == params["tuned_epochs"]
    assert params["tuned_epochs"] in (2, 4, 6)
    # the kept epoch is the best evaluated one (a gain counts from 1e-4 up)
    kept, top = None, -1.0
    for epoch, value in evaluations:
        if value > top + 1e-4:
            kept, top = epoch, value
    assert params["tuned_epochs"] == kept
    assert ndcg_points(history, params) == [(float(e), float(v)) for e, v in evaluations]

    page = _report_of_model_run(engine, settings, result.run_id)
    assert page.charts["training-ndcg"].startswith("data:image/png;base64,")
    assert "not recorded in this model run" not in page.text
    # trained with --no-evaluate (and no internal split): the page says what was not measured
    assert page.figures["quality"] == ""
    assert "trained with --no-evaluate" in page.text
    assert page.figures["not-measured-rank"] == "not measured"
    assert page.figures["not-measured-internal"] == "not measured"


def test_no_evaluate_with_auto_says_the_rank_split_was_not_measured(
    engine: sa.Engine, settings: Settings
) -> None:
    metrics = {
        "internal": {"ndcg@10": 0.3, "popularity_ndcg@10": 0.1, "seed": 0},
        "auto": {"chosen": "ease", "candidates": [{"model": "ease", "ndcg@10": 0.3}]},
    }
    with engine.begin() as conn:
        model_run = conn.execute(
            sa.text(
                "INSERT INTO model_runs (model_type, status, params, metrics, history) VALUES "
                "('ease', 'failed', CAST(:p AS jsonb), CAST(:m AS jsonb), '{}') RETURNING id"
            ),
            {"p": json.dumps({"evaluate": False}), "m": json.dumps(metrics)},
        ).scalar_one()
    page = _report_of_model_run(engine, settings, model_run)
    splits = {r["data-split"] for r in page.rows["quality"]}
    assert splits == {"train-internal", "--model auto"}
    assert page.figures["not-measured-rank"] == "not measured"
    assert "not-measured-internal" not in page.figures
    assert "--no-evaluate, which skips the evaluation protocol" in page.text

    # an evaluated run says nothing of the kind
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE model_runs SET params = '{\"evaluate\": true}' WHERE id = :m"),
            {"m": model_run},
        )
    page = _report_of_model_run(engine, settings, model_run)
    assert not any(name.startswith("not-measured") for name in page.figures)
