"""The nightly pipeline (issue 5): steps recorded, failures stop the run, the lock, interrupts."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from test_nightly_support import add_catalogue, trained_model

from recsys.config import Settings
from recsys.db.locks import NIGHTLY_LOCK, advisory_lock
from recsys.errors import DataError, Interrupted, LockBusy, RecsysError
from recsys.pipeline import DEFAULT_STEPS, PipelineInterrupted, PipelineOptions, Step, run
from recsys.scoring.score import ScoringInterrupted


def _train_numpy_mf(ctx) -> dict:
    with ctx.engine.connect() as conn:
        ctx.state["model"] = trained_model(conn)
    return {"model": "numpy-mf"}


def _steps(train=_train_numpy_mf) -> list[Step]:
    by_name = {s.name: s for s in DEFAULT_STEPS}
    return [Step("train", train), by_name["verify"], by_name["score"], by_name["publish"]]


@pytest.fixture
def catalogue(engine: sa.Engine) -> sa.Engine:
    with engine.begin() as conn:
        add_catalogue(conn, n_users=25, n_products=40, n_ratings=250, seed=3)
    return engine


def _served(engine: sa.Engine) -> int | None:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT run_id FROM published_recommendations")).scalar()


def test_run_records_every_step_and_publishes(catalogue: sa.Engine, settings: Settings) -> None:
    seen: list[tuple[str, str]] = []
    result = run(
        catalogue,
        settings,
        PipelineOptions(k=5),
        steps=_steps(),
        on_step=lambda name, status, _s: seen.append((name, status)),
    )
    assert result.status == "succeeded" and result.recommendation_run_id == _served(catalogue)
    assert seen == [
        (n, s) for n in ("train", "verify", "score", "publish") for s in ("running", "succeeded")
    ]
    with catalogue.connect() as conn:
        status = conn.execute(
            sa.text("SELECT status FROM pipeline_runs WHERE id = :r"), {"r": result.run_id}
        ).scalar_one()
        steps = conn.execute(
            sa.text(
                "SELECT step, status, seconds, detail FROM pipeline_steps "
                "WHERE pipeline_run_id = :r ORDER BY position"
            ),
            {"r": result.run_id},
        ).all()
    assert status == "succeeded"
    assert [(s, st) for s, st, _, _ in steps] == [
        ("train", "succeeded"),
        ("verify", "succeeded"),
        ("score", "succeeded"),
        ("publish", "succeeded"),
    ]
    assert all(sec is not None and sec >= 0 for _, _, sec, _ in steps)
    assert steps[1][3]["max_abs_diff"] < 1e-3  # verify compared fast scores with predict
    assert steps[2][3]["users"] == 25 and steps[2][3]["rows"] == 125


def test_failed_step_stops_the_run_and_keeps_published(
    catalogue: sa.Engine, settings: Settings
) -> None:
    first = run(catalogue, settings, PipelineOptions(k=5), steps=_steps())

    def broken_training(ctx) -> dict:
        _train_numpy_mf(ctx)
        ctx.state["model"].recommender.nan = True
        return {}

    with pytest.raises(DataError, match="broken"):
        run(catalogue, settings, PipelineOptions(k=5), steps=_steps(broken_training))
    assert _served(catalogue) == first.recommendation_run_id
    with catalogue.connect() as conn:
        run_status, message = conn.execute(
            sa.text("SELECT status, message FROM pipeline_runs ORDER BY id DESC LIMIT 1")
        ).one()
        steps = conn.execute(
            sa.text(
                "SELECT step, status FROM pipeline_steps WHERE pipeline_run_id = "
                "(SELECT max(id) FROM pipeline_runs) ORDER BY position"
            )
        ).all()
    assert run_status == "failed" and message.startswith("step verify failed")
    assert steps == [
        ("train", "succeeded"),
        ("verify", "failed"),
        ("score", "skipped"),
        ("publish", "skipped"),
    ]


def test_unexpected_error_becomes_one_line(catalogue: sa.Engine, settings: Settings) -> None:
    def crash(ctx) -> dict:
        raise ZeroDivisionError("division by zero")

    with pytest.raises(RecsysError, match="failed in step train: ZeroDivisionError") as info:
        run(catalogue, settings, steps=_steps(crash))
    assert "\n" not in str(info.value)


def test_second_run_exits_at_once_while_the_lock_is_held(
    catalogue: sa.Engine, settings: Settings
) -> None:
    with advisory_lock(catalogue, NIGHTLY_LOCK):
        with pytest.raises(
            LockBusy, match=r"another nightly job \(recsys run, score or publish\) is in progress"
        ):
            run(catalogue, settings, steps=_steps())
    with catalogue.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM pipeline_runs")).scalar_one() == 0
    assert run(catalogue, settings, steps=_steps()).status == "succeeded"  # released


def test_stop_request_interrupts_between_steps(catalogue: sa.Engine, settings: Settings) -> None:
    calls = {"n": 0}

    def stop_after_train() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    with pytest.raises(PipelineInterrupted, match="before step verify"):
        run(catalogue, settings, steps=_steps(), should_stop=stop_after_train)
    with catalogue.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT status FROM pipeline_runs")).scalar_one() == "interrupted"
        )
        assert _served(catalogue) is None


def test_any_interrupted_error_from_a_step_marks_the_run_interrupted(
    catalogue: sa.Engine, settings: Settings
) -> None:
    assert issubclass(PipelineInterrupted, Interrupted)
    assert issubclass(ScoringInterrupted, Interrupted)

    class TrainingStopped(Interrupted):
        """A stop error the pipeline has never heard of by name."""

    def stop_in_train(ctx) -> dict:
        raise TrainingStopped("asked to stop after epoch 1")

    with pytest.raises(TrainingStopped):
        run(catalogue, settings, steps=_steps(train=stop_in_train))
    with catalogue.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM pipeline_runs")).scalar_one() == (
            "interrupted"
        )
        steps = conn.execute(
            sa.text("SELECT step, status FROM pipeline_steps ORDER BY position")
        ).all()
    assert steps[0] == ("train", "interrupted")
    assert {status for _, status in steps[1:]} == {"skipped"}
    assert _served(catalogue) is None


def test_leftovers_of_a_killed_run_are_marked(catalogue: sa.Engine, settings: Settings) -> None:
    with catalogue.begin() as conn:
        dead = conn.execute(
            sa.text(
                "INSERT INTO pipeline_runs (trigger, status) VALUES ('cli', 'running') RETURNING id"
            )
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO pipeline_steps (pipeline_run_id, position, step, status) "
                "VALUES (:r, 0, 'score', 'running')"
            ),
            {"r": dead},
        )
        conn.execute(sa.text("INSERT INTO recommendation_runs (k, status) VALUES (5, 'scoring')"))
    run(catalogue, settings, steps=_steps())
    with catalogue.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT status FROM pipeline_runs WHERE id = :r"), {"r": dead}
            ).scalar_one()
            == "interrupted"
        )
        assert (
            conn.execute(
                sa.text("SELECT status FROM pipeline_steps WHERE pipeline_run_id = :r"), {"r": dead}
            ).scalar_one()
            == "interrupted"
        )
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM recommendation_runs WHERE status = 'scoring'")
            ).scalar_one()
            == 0
        )


def test_verify_gate_uses_direct_scores_of_ranking_models(catalogue: sa.Engine) -> None:
    from test_nightly_support import NumpyMF

    from recsys.pipeline import check_model
    from recsys.scoring.score import ScoringModel

    class Ranker(NumpyMF):
        name = "ranker"
        offset = 0.0

        def direct_scores(self, users):
            return (self.U[users] @ self.V.T + self.mean + self.offset).astype("float32")

        def predict(self, users, products):  # a rating head unrelated to the ranking score
            return super().predict(users, products) * 0 + 3

    with catalogue.connect() as conn:
        base = trained_model(conn)
    ranker = Ranker()
    ranker.__dict__.update(base.recommender.__dict__)
    model = ScoringModel(ranker, base.user_ids, base.product_ids, model_type="ranker")
    assert check_model(model)["compared_with"] == "direct_scores"
    ranker.offset = 0.5  # the fast path no longer matches the model
    with pytest.raises(DataError, match="direct scores"):
        check_model(model)


def test_score_and_publish_commands_respect_the_nightly_lock(
    catalogue: sa.Engine, cli_env: dict[str, str]
) -> None:
    from click.testing import CliRunner

    from recsys.cli import cli

    with advisory_lock(catalogue, NIGHTLY_LOCK):
        for args in (["score"], ["publish"], ["publish", "--rollback"]):
            result = CliRunner().invoke(cli, args, env=cli_env)
            assert isinstance(result.exception, LockBusy), (args, result.output)


def test_run_history_lists_runs_and_steps(
    catalogue: sa.Engine, settings: Settings, cli_env: dict[str, str]
) -> None:
    from click.testing import CliRunner

    from recsys.cli import cli

    run(catalogue, settings, steps=_steps(), trigger="test")
    result = CliRunner().invoke(cli, ["run", "--history"], env=cli_env)
    assert result.exit_code == 0, result.output
    line = result.output.strip().splitlines()[0]
    assert "test" in line and "succeeded" in line
    assert "train:succeeded" in line and "publish:succeeded" in line


@pytest.mark.parametrize(
    ("evaluate", "limit", "measured"),
    [(None, 100_000, True), (None, 100, False), (True, 100, True), (False, 100_000, False)],
)
def test_measure_step_by_default_only_up_to_the_size_limit(
    catalogue: sa.Engine, settings: Settings, monkeypatch, evaluate, limit, measured
) -> None:
    import recsys.model.train as train_module

    monkeypatch.setattr(train_module, "MEASURE_MAX_RATINGS", limit)
    by_name = {s.name: s for s in DEFAULT_STEPS}
    result = run(
        catalogue,
        settings,
        PipelineOptions(model="popularity", evaluate=evaluate, min_ratings=0, k=5),
        steps=[by_name[n] for n in ("train", "measure", "verify", "score", "publish")],
    )
    assert result.status == "succeeded"
    with catalogue.connect() as conn:
        detail = conn.execute(
            sa.text(
                "SELECT detail FROM pipeline_steps WHERE pipeline_run_id = :r AND step = 'measure'"
            ),
            {"r": result.run_id},
        ).scalar_one()
        params, metrics = conn.execute(
            sa.text("SELECT params, metrics FROM model_runs ORDER BY id DESC LIMIT 1")
        ).one()
    assert ("skipped" not in detail) is measured
    assert ("rank" in metrics) is measured and params["evaluate"] is measured
    if evaluate is None and not measured:
        assert "more than 100 training ratings" in detail["skipped"]
    if evaluate is False:
        assert detail["skipped"] == "--no-evaluate"


def test_a_run_without_a_terminal_logs_the_progress_of_features_scoring_and_similar(
    catalogue: sa.Engine, settings: Settings, caplog
) -> None:
    import logging

    from recsys.progress import progress_for_terminal

    by_name = {s.name: s for s in DEFAULT_STEPS}
    steps = [by_name["features"], *_steps(), by_name["similar"]]
    with caplog.at_level(logging.INFO, logger="recsys.progress"):
        result = run(
            catalogue, settings, PipelineOptions(k=5), steps=steps, progress=progress_for_terminal()
        )
    assert result.status == "succeeded"
    lines = [r.getMessage() for r in caplog.records if r.name == "recsys.progress"]
    assert any(line.startswith("cleaning: ") and "products/s" in line for line in lines), lines
    assert any(
        line.startswith("scoring: 25/25 users") and "users/s" in line and "ETA" in line
        for line in lines
    ), lines
    text = [line for line in lines if line.startswith("similar by text: 1,600/1,600 pairs")]
    assert text and "products=40" in text[-1], lines
    assert any(line.startswith("similar by co-rating: 40/40 products") for line in lines), lines
