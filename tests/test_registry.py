"""Model registry: a killed or failed training never leaves a usable run; checksums; migration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from test_model_data import load_ml100k

from recsys.db import engine as db
from recsys.errors import DataError, RecsysError
from recsys.model import registry
from recsys.model.registry import ArtifactError, load_run
from recsys.model.train import TrainConfig, train_run

pytestmark = pytest.mark.slow
FAST = {"model": "bias", "min_ratings": 0, "evaluate": False}


def _statuses(engine: sa.Engine) -> list[tuple[int, str, str | None]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text("SELECT id, status, failure_reason FROM model_runs ORDER BY id")
            )
        ]


def test_run_is_running_until_artifacts_are_in_place(
    engine, settings, shared_data, monkeypatch
) -> None:
    with engine.begin() as conn:
        load_ml100k(conn, shared_data, max_users=40)
    seen = {}
    original = registry.publish_artifacts

    def publish(staging: Path, models_dir: Path, run_id: int):
        # while artifacts are written the row is running and no folder carries the run's name
        seen["status"] = _statuses(engine)[-1][1]
        seen["final_exists_before"] = (models_dir / str(run_id)).exists()
        seen["staging_name"] = staging.name
        return original(staging, models_dir, run_id)

    monkeypatch.setattr(registry, "publish_artifacts", publish)
    result = train_run(engine, settings, TrainConfig(**FAST))
    assert seen == {
        "status": "running",
        "final_exists_before": False,
        "staging_name": f".tmp-{result.run_id}-{os.getpid()}",
    }
    assert _statuses(engine) == [(result.run_id, "succeeded", None)]
    with engine.connect() as conn:
        loaded = load_run(conn, settings, result.run_id)
    assert loaded.model_type == "bias" and loaded.rating_scale == (1.0, 5.0)


def test_failure_after_rename_leaves_no_successful_run(
    engine, settings, shared_data, monkeypatch
) -> None:
    with engine.begin() as conn:
        load_ml100k(conn, shared_data, max_users=40)

    def broken_finish(*args, **kwargs):
        raise OSError("database went away")

    monkeypatch.setattr(registry, "finish_run", broken_finish)
    with pytest.raises(OSError):
        train_run(engine, settings, TrainConfig(**FAST))
    ((run_id, status, reason),) = _statuses(engine)
    assert status == "failed" and reason == "database went away"
    assert not (settings.models_dir / str(run_id)).exists()
    assert list(settings.models_dir.iterdir()) == []
    with engine.connect() as conn, pytest.raises(DataError, match="no trained model"):
        load_run(conn, settings)
    with (
        engine.connect() as conn,
        pytest.raises(RecsysError, match=f"model run {run_id} is failed: database went away"),
    ):
        load_run(conn, settings, run_id)


def test_tampered_artifacts_are_refused(engine, settings, shared_data) -> None:
    with engine.begin() as conn:
        load_ml100k(conn, shared_data, max_users=40)
    result = train_run(engine, settings, TrainConfig(**FAST))
    ids = result.artifact_path / registry.USER_IDS
    np.save(ids, np.load(ids)[::-1])
    with engine.connect() as conn, pytest.raises(ArtifactError, match="changed or damaged"):
        load_run(conn, settings)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE model_runs SET checksum = 'x'"))
    with (
        engine.connect() as conn,
        pytest.raises(ArtifactError, match="do not match the registry checksum"),
    ):
        load_run(conn, settings)


def test_unknown_run_and_moved_home(engine, settings, shared_data, tmp_path) -> None:
    with engine.begin() as conn:
        load_ml100k(conn, shared_data, max_users=40)
    result = train_run(engine, settings, TrainConfig(**FAST))
    with engine.connect() as conn, pytest.raises(RecsysError, match="no model run 999"):
        load_run(conn, settings, 999)
    # RECSYS_HOME moved: the run is found under the new models_dir by its folder name
    moved = settings.model_copy(update={"home": tmp_path / "moved"})
    moved.models_dir.mkdir(parents=True)
    result.artifact_path.rename(moved.models_dir / str(result.run_id))
    with engine.connect() as conn:
        assert load_run(conn, moved).run_id == result.run_id


def test_killed_training_is_never_successful_and_is_marked_interrupted(
    engine, settings, shared_data, db_url
) -> None:
    with engine.begin() as conn:
        load_ml100k(conn, shared_data, max_users=120)
    script = (
        "import sys, logging; logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "from recsys.config import Settings\n"
        "from recsys.db.engine import engine_for_url\n"
        "from recsys.model.train import TrainConfig, train_run\n"
        f"s = Settings(database_url={db_url!r}, home={str(settings.home)!r})\n"
        "train_run(engine_for_url(s.database_url), s, TrainConfig(model='deep', epochs=200, "
        "hidden_units=64, batch_size=64, min_ratings=0, evaluate=False))\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        for line in proc.stderr:  # wait until it is inside the epochs
            if "epoch 1/200" in line:
                break
        assert proc.poll() is None, "the trainer ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ((run_id, status, _),) = _statuses(engine)
    assert status == "running"
    with engine.connect() as conn, pytest.raises(DataError, match="no trained model"):
        load_run(conn, settings)
    # the next training notices the dead trainer
    second = train_run(engine, settings, TrainConfig(**FAST))
    assert _statuses(engine) == [
        (run_id, "failed", "interrupted: the training process died"),
        (second.run_id, "succeeded", None),
    ]
    assert not (settings.models_dir / str(run_id)).exists()


def test_live_trainer_is_not_marked_interrupted(conn) -> None:
    run_id = registry.start_run(conn, "mf", {})
    assert registry.mark_interrupted(conn) == []  # our own pid is alive
    conn.execute(sa.text("UPDATE model_runs SET pid = 2147483000 WHERE id = :i"), {"i": run_id})
    assert registry.mark_interrupted(conn) == [run_id]


def test_migration_downgrade_and_upgrade(engine) -> None:
    db.downgrade(engine, "0002")
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table("model_runs")
    db.migrate(engine)
    with engine.begin() as conn:
        assert sa.inspect(conn).has_table("model_runs")
        with pytest.raises(sa.exc.IntegrityError):  # succeeded needs an artifact and checksum
            conn.execute(
                sa.text("INSERT INTO model_runs (model_type, status) VALUES ('mf', 'succeeded')")
            )
