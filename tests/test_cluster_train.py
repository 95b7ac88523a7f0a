"""The ranker's tower trained data-parallel on a real local Ray cluster (2 nodes, 1 CPU each).

``recsys train --engine ray`` trains on both workers and registers the run as a local train
does; its scores agree with the in-process trainer of the same seed to the tolerance stated in
:mod:`recsys.cluster.train` (``benchmarks/ray_train.py`` compares 1 and 2 workers too); a bad
address is one line and exit 2. The cluster is started once
for the module and exactly its processes are stopped at the end.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from recsys.cli import cli
from recsys.cluster.local import LocalCluster, free_port
from recsys.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
SEED = 3
TOLERANCE = 1e-4
"""Largest score difference of 2 workers against in-process (float32 summation order)."""


def _recsys(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args],
        env={**os.environ, **env, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=170,
    )


def test_a_batch_is_split_into_disjoint_shards_that_add_up_to_it() -> None:
    from recsys.cluster.train import shard
    from recsys.data.types import RatingData
    from recsys.model.rank_trainer import make_batch, rating_matrix

    rng = np.random.default_rng(0)
    n = 400
    data = RatingData(
        users=rng.integers(0, 30, n).astype(np.int32),
        products=rng.integers(0, 40, n).astype(np.int32),
        ratings=rng.integers(1, 6, n).astype(np.float32),
        timestamps=np.zeros(n, dtype=np.int64),
        user_ids=np.arange(30, dtype=np.int64),
        product_ids=np.arange(40, dtype=np.int64),
    )
    batch = make_batch(
        np.random.default_rng(1),
        rating_matrix(data, 4.0),
        np.arange(25),
        input_dropout=0.3,
        id_dropout=0.1,
        n_sampled=10,
    )
    parts = [shard(batch, rank, 3) for rank in range(3)]
    assert np.array_equal(np.concatenate([p.users for p in parts]), batch.users)
    assert np.array_equal(np.concatenate([p.valid for p in parts]), batch.valid)
    offsets = np.cumsum([0] + [len(p.users) for p in parts[:-1]])
    rows = np.concatenate([p.target_rows + o for p, o in zip(parts, offsets, strict=True)])
    assert np.array_equal(rows, batch.target_rows)
    items = np.concatenate([p.input_items for p in parts])
    assert np.array_equal(items, batch.input_items)
    assert all(np.array_equal(p.negatives, batch.negatives) for p in parts)


@pytest.mark.subprocess
def test_a_bad_address_is_one_line_and_exit_2(cli_env: dict[str, str]) -> None:
    port = free_port()  # nobody listens there
    result = _recsys(
        ["train", "--model", "ranker", "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"],
        cli_env,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], result.stderr


# --- on a real cluster ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalCluster]:
    """A head and one worker node, 1 CPU each; its workers import this checkout's recsys."""
    pytest.importorskip("ray")
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    cluster = LocalCluster(workers=1, cpus=1, env={"PYTHONPATH": path})
    with cluster:
        yield cluster


@pytest.fixture(scope="module")
def loaded(pg_admin_url: str, template_db: str, tmp_path_factory) -> Iterator[Settings]:
    """A fresh database with a small sample and its text features."""
    from sqlalchemy.engine import make_url

    from recsys.features.store import build_features
    from recsys.ingest.load import load_files
    from recsys.ingest.sample import write_sample

    name = f"recsys_raytrain_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    tmp = tmp_path_factory.mktemp("raytrain")
    settings = Settings(database_url=url, home=tmp / "home")
    engine = sa.create_engine(url)
    files = write_sample(tmp / "sample", users=120, products=50, ratings=2000, seed=5)
    load_files(engine, settings, ratings=[files.ratings_path], metadata=[files.metadata_path])
    build_features(engine, settings, dim=16, epochs=2, min_count=1)
    engine.dispose()
    yield settings
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _config():
    from recsys.model.train import TrainConfig

    return TrainConfig(
        model="ranker",
        epochs=EPOCHS,
        embedding_dim=16,
        min_ratings=0,
        seed=SEED,
        evaluate=False,
    )


def _scores(settings: Settings, run_id: int) -> np.ndarray:
    from recsys.scoring.score import load_model

    engine = sa.create_engine(settings.database_url)
    try:
        model = load_model(engine, settings, run_id)
        return np.asarray(model.recommender.score_users(np.arange(40)), dtype=np.float64)
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_workers_train_the_in_process_model_and_register_the_run(
    ray_cluster: LocalCluster, loaded: Settings, caplog
) -> None:
    from recsys.model.train import train_run

    settings = loaded
    env = {
        "RECSYS_DATABASE_URL": settings.database_url,
        "RECSYS_HOME": str(settings.home),
        "RECSYS_RAY_ADDRESS": ray_cluster.address,
    }
    args = ["train", "--model", "ranker", "--engine", "ray", "--no-evaluate", "--min-ratings"]
    args += ["0", "--epochs", str(EPOCHS), "--embedding-dim", "16", "--seed", str(SEED)]
    with caplog.at_level(logging.INFO, logger="recsys.cluster.train"):
        result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output[-3000:]
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as conn:
        two_run, status, model_type = conn.execute(
            sa.text("SELECT id, status, model_type FROM model_runs ORDER BY id DESC LIMIT 1")
        ).one()
    assert status == "succeeded" and model_type == "ranker", status

    assert "training the tower on 2 Ray workers" in caplog.text
    # the same fit with the in-process trainer
    local_run = train_run(engine, settings, _config()).run_id
    with engine.connect() as conn:
        paths = dict(
            conn.execute(
                sa.text("SELECT id, artifact_path FROM model_runs WHERE id IN (:a, :b)"),
                {"a": two_run, "b": local_run},
            ).all()
        )
    engine.dispose()
    # the same artifacts as a local train
    names = [sorted(p.name for p in Path(paths[r]).iterdir()) for r in (two_run, local_run)]
    assert names[0] == names[1] and names[0], names
    two = _scores(settings, two_run)
    assert np.all(np.isfinite(two)) and two.std() > 0  # a trained, not a constant, model
    np.testing.assert_allclose(two, _scores(settings, local_run), rtol=0, atol=TOLERANCE)


def test_a_failed_worker_is_named_by_its_own_error() -> None:
    from recsys.cluster.train import _root_cause

    class WorkerGroupError(Exception):
        def __init__(self) -> None:
            super().__init__("Training failed due to worker errors:\n...")
            self.worker_failures = {1: OSError("cannot bind port 12345"), 0: ValueError("x")}

    assert _root_cause(WorkerGroupError()) == "ValueError: x"


def test_more_workers_than_the_cluster_has_cpus_is_one_clear_error(
    ray_cluster: LocalCluster,
) -> None:
    from recsys.cluster.engine import ClusterError, EngineOptions
    from recsys.cluster.train import training_on

    options = EngineOptions(engine="ray", ray_address=ray_cluster.address)
    with pytest.raises(ClusterError, match="needs 3 workers with one CPU each .* has 2 CPUs"):
        with training_on(options, "ranker", workers=3):
            pass


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_training_that_does_not_finish_in_time_is_one_clear_error(
    ray_cluster: LocalCluster, loaded: Settings
) -> None:
    """The driver does not wait forever (here: every CPU of the cluster is held by an actor),
    and the connection stays usable for the training it gave up on until that ends."""
    import ray

    from recsys.cluster import engine as cluster_engine
    from recsys.cluster.engine import ClusterError, EngineOptions
    from recsys.cluster.train import training_on
    from recsys.model.train import train_run

    @ray.remote(num_cpus=1)
    class Blocker:
        def ready(self) -> bool:
            return True

    options = EngineOptions(engine="ray", ray_address=ray_cluster.address, task_timeout_s=5)
    engine = sa.create_engine(loaded.database_url)
    ray.init(address=ray_cluster.address, namespace="recsys-test", log_to_driver=False)
    try:
        blockers = [Blocker.remote() for _ in range(2)]  # one CPU on each of the two nodes
        assert ray.get([b.ready.remote() for b in blockers], timeout=60)
        with pytest.raises(ClusterError, match="did not finish within 5 s"):
            with training_on(options, "ranker"):
                train_run(engine, loaded, _config())
        with engine.connect() as conn:
            status = conn.execute(
                sa.text("SELECT status FROM model_runs ORDER BY id DESC LIMIT 1")
            ).scalar()
        assert status == "failed"
        running = [t for t in cluster_engine._STILL_RUNNING if t.is_alive()]
        assert running  # the given-up training is known, so no connection closes under it
        for blocker in blockers:  # now it gets its CPUs and ends on its own
            ray.kill(blocker)
        for thread in running:
            thread.join(timeout=300)
        assert not any(t.is_alive() for t in running)
    finally:
        ray.shutdown()
        engine.dispose()
