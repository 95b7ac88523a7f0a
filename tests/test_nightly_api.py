"""The nightly API in recsys.pipeline: each call takes the lock it needs; the CLI stays thin."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from test_nightly_support import add_catalogue, trained_model

from recsys import pipeline
from recsys.config import Settings
from recsys.db.locks import NIGHTLY_LOCK, advisory_lock
from recsys.errors import LockBusy, RecsysError
from recsys.pipeline import DEFAULT_STEPS, PipelineOptions, Step

COMMANDS = Path(__file__).resolve().parents[1] / "recsys" / "commands"
SQL = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|LOCK\s+TABLE|"
    r"CREATE\s+(TABLE|VIEW|ROLE|INDEX)|TRUNCATE\s)",
    re.IGNORECASE | re.DOTALL,
)


def _train(ctx) -> dict:
    with ctx.engine.connect() as conn:
        ctx.state["model"] = trained_model(conn)
    return {"model": "numpy-mf"}


def _steps() -> list[Step]:
    by_name = {s.name: s for s in DEFAULT_STEPS}
    return [Step("train", _train), by_name["verify"], by_name["score"], by_name["publish"]]


@pytest.fixture
def catalogue(engine: sa.Engine) -> sa.Engine:
    with engine.begin() as conn:
        add_catalogue(conn, n_users=20, n_products=30, n_ratings=200, seed=4)
    return engine


def _served(engine: sa.Engine) -> int | None:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT run_id FROM published_recommendations")).scalar()


def test_every_writer_takes_the_nightly_lock(catalogue: sa.Engine, settings: Settings) -> None:
    first = pipeline.run(catalogue, settings, PipelineOptions(k=4), steps=_steps())
    second = pipeline.run(catalogue, settings, PipelineOptions(k=4), steps=_steps())
    assert _served(catalogue) == second.recommendation_run_id
    writers = {
        "score": lambda: pipeline.score(catalogue, settings),
        "publish": lambda: pipeline.publish(catalogue, settings, first.recommendation_run_id),
        "rollback": lambda: pipeline.rollback(catalogue),
        "run": lambda: pipeline.run(catalogue, settings, steps=_steps()),
    }
    with advisory_lock(catalogue, NIGHTLY_LOCK):
        for name, call in writers.items():
            with pytest.raises(LockBusy):
                call()
            assert _served(catalogue) == second.recommendation_run_id, name
        # reads never wait for the nightly job
        found = pipeline.recommendations_for(catalogue, "u0")
        assert found.user == "u0" and len(found.recommended) == 4
        assert [r.rank for r in found.recommended] == [1, 2, 3, 4]
        assert pipeline.history(catalogue)[0]["id"] == second.run_id
    # released: the same calls go through
    served, previous = pipeline.rollback(catalogue)
    assert (served, previous) == (first.recommendation_run_id, second.recommendation_run_id)
    published = pipeline.publish(catalogue, settings, second.recommendation_run_id)
    assert published.previous == first.recommendation_run_id and published.gates["passed"]
    assert _served(catalogue) == second.recommendation_run_id


def test_recommendations_for_unknown_user_and_nothing_published(catalogue: sa.Engine) -> None:
    with pytest.raises(RecsysError, match="unknown user 'nobody'"):
        pipeline.recommendations_for(catalogue, "nobody")
    with pytest.raises(RecsysError, match="no recommendations are published"):
        pipeline.recommendations_for(catalogue, "u0")


def test_publish_without_a_ready_run_says_so(catalogue: sa.Engine, settings: Settings) -> None:
    with pytest.raises(RecsysError, match="no ready recommendation run"):
        pipeline.publish(catalogue, settings)


def test_old_evaluate_and_new_verify_steps_both_show(
    catalogue: sa.Engine, settings: Settings, cli_env: dict[str, str]
) -> None:
    from recsys.cli import cli
    from recsys.report import write_report

    with catalogue.begin() as conn:  # a run recorded when the check was called evaluate
        old = conn.execute(
            sa.text(
                "INSERT INTO pipeline_runs (trigger, status, finished_at) "
                "VALUES ('schedule', 'succeeded', now()) RETURNING id"
            )
        ).scalar_one()
        for position, step in enumerate(("train", "evaluate", "score", "publish")):
            conn.execute(
                sa.text(
                    "INSERT INTO pipeline_steps (pipeline_run_id, position, step, status, "
                    "finished_at, seconds) VALUES (:r, :p, :s, 'succeeded', now(), 1.5)"
                ),
                {"r": old, "p": position, "s": step},
            )
    new = pipeline.run(catalogue, settings, PipelineOptions(k=4), steps=_steps())
    assert [s.name for s in new.steps] == ["train", "verify", "score", "publish"]
    result = CliRunner().invoke(cli, ["run", "--history"], env=cli_env)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert "verify:succeeded" in lines[0] and "evaluate" not in lines[0]
    assert "evaluate:succeeded(2s)" in lines[1]
    for run_id, step in ((old, "evaluate"), (new.run_id, "verify")):
        html = write_report(catalogue, settings.home, run_id).read_text()
        assert f'data-step="{step}"' in html


def _problems(name: str, tree: ast.Module) -> list[str]:
    """What a thin command module must not hold: SQL text, database access, locks, progress UI."""
    found = []
    # text shown to the user (f-strings: the demo's hint how to read the lists; docstrings:
    # the help) is not run
    shown = {
        id(part)
        for node in ast.walk(tree)
        if isinstance(node, ast.JoinedStr)
        for part in node.values
    }
    shown |= {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in shown and SQL.search(node.value):
                found.append(f"{name}: SQL {node.value[:40]!r}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            modules += [a.name for a in node.names]
            for module in modules:
                if module.split(".")[0] == "sqlalchemy" or module in (
                    "recsys.db.locks",
                    "rich.progress",
                    "rich.console",
                ):
                    found.append(f"{name}: imports {module}")
        elif isinstance(node, ast.Name | ast.Attribute):
            word = node.id if isinstance(node, ast.Name) else node.attr
            if word in ("advisory_lock", "nightly_lock", "execute", "Console"):
                found.append(f"{name}: uses {word}")
        elif isinstance(node, ast.ClassDef) and "Progress" in node.name:
            found.append(f"{name}: defines {node.name}")
    return found


def test_command_modules_hold_no_sql_locks_or_progress_classes() -> None:
    found = []
    for path in sorted(COMMANDS.glob("*.py")):
        found += _problems(path.name, ast.parse(path.read_text(), str(path)))
    assert not found, "\n".join(found)


def test_the_source_check_sees_sql_locks_and_progress_classes() -> None:
    source = (
        "import sqlalchemy as sa\n"
        "from recsys.db.locks import advisory_lock\n"
        "class _ScoreProgress:\n"
        "    pass\n"
        "def f(engine):\n"
        "    with advisory_lock(engine), engine.connect() as conn:\n"
        "        conn.execute(sa.text('select id from users'))\n"
    )
    found = " | ".join(_problems("x.py", ast.parse(source)))
    for expected in (
        "imports sqlalchemy",
        "imports recsys.db.locks",
        "defines _ScoreProgress",
        "uses advisory_lock",
        "uses execute",
        "SQL 'select id from users'",
    ):
        assert expected in found, (expected, found)


def _real_steps() -> list[Step]:
    by_name = {s.name: s for s in DEFAULT_STEPS}
    return [by_name[n] for n in ("train", "measure", "verify", "score", "publish")]


def _model_run(engine: sa.Engine, run_id: int) -> sa.RowMapping:
    with engine.connect() as conn:
        return (
            conn.execute(sa.text("SELECT * FROM model_runs WHERE id = :r"), {"r": run_id})
            .mappings()
            .one()
        )


def test_measure_is_its_own_step_and_adds_the_protocol_metrics(
    catalogue: sa.Engine, settings: Settings
) -> None:
    from recsys.evaluation.protocol import evaluate_model, make_splits
    from recsys.model import catalog
    from recsys.model.data import read_rating_data

    options = PipelineOptions(model="bias", min_ratings=0, k=4, build_features=False)
    result = pipeline.run(catalogue, settings, options, steps=_real_steps())
    assert [s.name for s in result.steps] == ["train", "measure", "verify", "score", "publish"]
    measure = result.steps[1].detail
    row = _model_run(catalogue, result.model_run_id)
    assert row["status"] == "succeeded" and measure["model_run_id"] == row["id"]
    # the stored figures are the protocol's on the ratings the run trained on
    with catalogue.connect() as conn:
        data = read_rating_data(conn, min_ratings=0, feature_set_id=None)
    again = evaluate_model(lambda: catalog.create("bias"), make_splits(data), seed=0)
    assert row["metrics"]["seed"]["rmse"] == pytest.approx(again.seed["rmse"])
    assert row["metrics"]["rank"]["ndcg@10"] == pytest.approx(again.rank["ndcg@10"])
    assert measure["seed_rmse"] == pytest.approx(again.seed["rmse"])
    assert "internal" in row["metrics"]  # the train-internal figure the gate reads is kept
    # --no-evaluate: the step is recorded as skipped and nothing is measured
    quick = pipeline.run(
        catalogue,
        settings,
        PipelineOptions(**{**options.__dict__, "evaluate": False}),
        steps=_real_steps(),
    )
    assert quick.steps[1].detail == {"skipped": "--no-evaluate"}
    assert "seed" not in _model_run(catalogue, quick.model_run_id)["metrics"]


def test_a_failed_measurement_withdraws_the_model_run(
    catalogue: sa.Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.evaluation import protocol

    def broken(*args, **kwargs):
        raise RecsysError("the seed split is empty")

    monkeypatch.setattr(protocol, "evaluate_model", broken)
    options = PipelineOptions(model="bias", min_ratings=0, k=4, build_features=False)
    with pytest.raises(RecsysError, match="the seed split is empty"):
        pipeline.run(catalogue, settings, options, steps=_real_steps())
    with catalogue.connect() as conn:
        (model_run,) = conn.execute(sa.text("SELECT id FROM model_runs")).scalars().all()
        steps = conn.execute(
            sa.text("SELECT step, status FROM pipeline_steps ORDER BY position")
        ).all()
    row = _model_run(catalogue, model_run)
    assert row["status"] == "failed" and row["failure_reason"].startswith("evaluation: ")
    assert row["artifact_path"] is None
    assert not (Path(settings.models_dir) / str(model_run)).exists()  # artifacts deleted
    assert steps[:2] == [("train", "succeeded"), ("measure", "failed")]
    assert _served(catalogue) is None
    # a withdrawn run is never scored by default
    with pytest.raises(RecsysError):
        pipeline.score(catalogue, settings)
