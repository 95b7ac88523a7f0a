"""Model artifacts are pruned with RECSYS_KEEP_RUNS (never what a kept or served run needs), and
RECSYS_HOME and everything recsys writes are private (0700 / 0600) unless RECSYS_UMASK says
otherwise."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from test_nightly_support import add_catalogue

from recsys.cli import cli
from recsys.config import Settings
from recsys.errors import RecsysError
from recsys.model import registry
from recsys.model.train import TrainConfig, train_run
from recsys.pipeline import PipelineOptions, run

POPULARITY = TrainConfig(model="popularity", evaluate=False, min_ratings=0, min_train_ratings=1)


def _train(engine: sa.Engine, settings: Settings, n: int) -> list[int]:
    return [train_run(engine, settings, POPULARITY).run_id for _ in range(n)]


def _folders(settings: Settings) -> set[str]:
    return (
        {p.name for p in settings.models_dir.iterdir()} if settings.models_dir.exists() else set()
    )


def _recommendation_run(conn: sa.Connection, model_run_id: int, status: str = "ready") -> int:
    return conn.execute(
        sa.text(
            "INSERT INTO recommendation_runs (model_run_id, model_type, k, status) "
            "VALUES (:m, 'popularity', 3, :s) RETURNING id"
        ),
        {"m": model_run_id, "s": status},
    ).scalar_one()


def test_prune_keeps_the_newest_and_every_model_a_kept_run_needs(
    engine: sa.Engine, settings: Settings
) -> None:
    with engine.begin() as conn:
        add_catalogue(conn, n_users=10, n_products=15, n_ratings=60, seed=2)
    first, second, third, fourth, fifth = _train(engine, settings, 5)
    with engine.begin() as conn:
        served = _recommendation_run(conn, first)  # served after a rollback: an old model
        conn.execute(
            sa.text("INSERT INTO published_recommendations (id, run_id) VALUES (1, :r)"),
            {"r": served},
        )
        _recommendation_run(conn, second)  # kept for rollback
        _recommendation_run(conn, third, status="failed")  # a failed run needs nothing
        failed = registry.start_run(conn, "popularity", {})
        conn.execute(
            sa.text("UPDATE model_runs SET status = 'failed' WHERE id = :i"), {"i": failed}
        )
    leftovers = [
        settings.models_dir / str(failed),  # a trainer killed after its rename
        settings.models_dir / f".tmp-{third}-99999",  # a dead trainer's staging folder
    ]
    stranger = settings.models_dir / "987654"  # no row of this database names it
    for folder in [*leftovers, stranger]:
        folder.mkdir()
        (folder / "x").write_text("x")

    pruned = registry.prune_artifacts(engine, settings.models_dir, keep=2)

    assert pruned == [third]
    assert _folders(settings) == {str(i) for i in (first, second, fourth, fifth)} | {"987654"}
    with engine.connect() as conn:
        pruned_at = conn.execute(
            sa.text("SELECT artifacts_pruned_at FROM model_runs WHERE id = :i"), {"i": third}
        ).scalar()
        assert pruned_at is not None
        with pytest.raises(registry.ArtifactError, match=f"model run {third} were pruned"):
            registry.load_run(conn, settings, third)
        assert registry.load_run(conn, settings, first).run_id == first  # the served model
        assert registry.load_run(conn, settings).run_id == fifth  # the current model
    assert registry.prune_artifacts(engine, settings.models_dir, keep=2) == []  # idempotent


def test_nightly_runs_keep_as_many_model_folders_as_keep_runs(
    engine: sa.Engine, tmp_path: Path, db_url: str
) -> None:
    settings = Settings(database_url=db_url, home=tmp_path / "home", keep_runs=2)
    with engine.begin() as conn:
        add_catalogue(conn, n_users=15, n_products=25, n_ratings=200, seed=4)
    options = PipelineOptions(
        model="popularity", build_features=False, evaluate=False, k=3, min_ratings=0
    )
    results = [run(engine, settings, options) for _ in range(4)]
    assert all(r.status == "succeeded" for r in results)
    with engine.connect() as conn:
        succeeded = (
            conn.execute(
                sa.text("SELECT id FROM model_runs WHERE status = 'succeeded' ORDER BY id")
            )
            .scalars()
            .all()
        )
        kept_models = set(
            conn.execute(
                sa.text("SELECT model_run_id FROM recommendation_runs WHERE status = 'ready'")
            ).scalars()
        )
    assert len(succeeded) == 4
    assert _folders(settings) == {str(i) for i in succeeded[-2:]} == {str(i) for i in kept_models}
    rolled = CliRunner().invoke(
        cli,
        ["publish", "--rollback"],
        env={
            "RECSYS_DATABASE_URL": db_url,
            "RECSYS_HOME": str(settings.home),
            "RECSYS_KEEP_RUNS": "2",
        },
    )
    assert rolled.exit_code == 0, rolled.output
    with engine.connect() as conn:
        served_model = conn.execute(
            sa.text(
                "SELECT r.model_run_id FROM recommendation_runs r "
                "JOIN published_recommendations p ON p.run_id = r.id"
            )
        ).scalar_one()
        assert registry.load_run(conn, settings, served_model).run_id == served_model


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def restore_umask():
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def test_artifacts_and_home_are_private_by_default(
    engine: sa.Engine, cli_env: dict[str, str], tmp_path: Path, restore_umask
) -> None:
    with engine.begin() as conn:
        add_catalogue(conn, n_users=15, n_products=25, n_ratings=200, seed=1)
    result = CliRunner().invoke(
        cli, ["train", "--model", "popularity", "--no-evaluate", "--min-ratings", "0"], env=cli_env
    )
    assert result.exit_code == 0, result.output
    home = Path(cli_env["RECSYS_HOME"])
    paths = [home, *home.rglob("*")]
    assert any(p.is_file() for p in paths) and any(p.is_dir() for p in paths[1:])
    for path in paths:
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path


def test_an_existing_open_home_is_tightened_and_recsys_umask_opens_it(
    engine: sa.Engine, cli_env: dict[str, str], tmp_path: Path, restore_umask
) -> None:
    home = Path(cli_env["RECSYS_HOME"])
    (home / "models").mkdir(parents=True)
    os.chmod(home, 0o755)
    os.chmod(home / "models", 0o755)
    assert CliRunner().invoke(cli, ["runs", "list"], env=cli_env).exit_code == 0
    assert _mode(home) == 0o700 and _mode(home / "models") == 0o700
    with engine.begin() as conn:
        add_catalogue(conn, n_users=15, n_products=25, n_ratings=200, seed=1)
    opened = {**cli_env, "RECSYS_UMASK": "022"}
    result = CliRunner().invoke(
        cli, ["train", "--model", "popularity", "--no-evaluate", "--min-ratings", "0"], env=opened
    )
    assert result.exit_code == 0, result.output
    files = [p for p in (home / "models").rglob("*") if p.is_file()]
    assert files and all(_mode(p) == 0o644 for p in files)
    assert _mode(home) == 0o755
    bad = CliRunner().invoke(cli, ["runs", "list"], env={**cli_env, "RECSYS_UMASK": "9x"})
    assert isinstance(bad.exception, RecsysError) and "RECSYS_UMASK" in str(bad.exception)
