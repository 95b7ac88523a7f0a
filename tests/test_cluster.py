"""Scoring on a real local Ray cluster (a head and one worker node, 1 CPU each).

The cluster engine publishes the same lists and scores as the local engine on the same model;
a worker node killed mid-run costs nothing but time (Ray reruns its tasks on the head); a block
that fails on a worker fails the run and keeps the served recommendations; a bad address is one
line and exit 2. The cluster is started once for the module and exactly its processes are
stopped at the end (never ``ray stop``, which would stop other people's Ray too).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from recsys.cli import cli
from recsys.cluster.engine import (
    ClusterUnavailable,
    EngineOptions,
    block_runner,
    parse_address,
    require_ray,
)
from recsys.cluster.local import LocalCluster, free_port
from recsys.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
K = 5
BATCH = 16

# --- without a cluster ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "address", [None, "", "localhost", "host:port", "10.0.0.1:0", "10.0.0.1:70000"]
)
def test_a_missing_or_malformed_address_is_one_clear_error(address) -> None:
    with pytest.raises(ClusterUnavailable, match="HOST:PORT"):
        parse_address(address)


def test_without_ray_installed_the_engine_says_how_to_get_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ClusterUnavailable, match=r"recsys\[ray\]"):
        require_ray()


def test_an_unknown_engine_is_refused() -> None:
    with pytest.raises(Exception, match="unknown engine"):
        EngineOptions(engine="spark")


def _recsys(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args],
        env={**os.environ, **env, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.subprocess
def test_an_unreachable_address_is_one_line_and_exit_2(cli_env: dict[str, str], engine) -> None:
    port = free_port()  # nobody listens there
    for command in (["score"], ["run", "--no-features"]):
        started = time.monotonic()
        result = _recsys(
            [*command, "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"], cli_env
        )
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], result.stderr
        assert time.monotonic() - started < 60
    # the environment variables choose the engine too; a missing address is one line as well
    result = _recsys(["score"], {**cli_env, "RECSYS_ENGINE": "ray"})
    assert result.returncode == 2 and "--ray-address" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with engine.connect() as conn:  # nothing was started
        assert conn.execute(sa.text("SELECT count(*) FROM recommendation_runs")).scalar() == 0


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
def module_db(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh migrated database shared by this module's cluster tests."""
    from sqlalchemy.engine import make_url

    name = f"recsys_ray_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def trained(module_db: str, tmp_path_factory) -> tuple[sa.Engine, Settings, int]:
    """A small trained ranker, with an unavailable product, a boost and an exclusion."""
    from recsys.features.store import build_features
    from recsys.ingest.load import load_files
    from recsys.ingest.sample import write_sample
    from recsys.model.train import TrainConfig, train_run
    from recsys.scoring.score import ScoreOptions, load_model, score_and_write

    tmp = tmp_path_factory.mktemp("ray")
    settings = Settings(database_url=module_db, home=tmp / "home")
    engine = sa.create_engine(module_db)
    files = write_sample(tmp / "sample", users=120, products=50, ratings=2000, seed=5)
    load_files(engine, settings, ratings=[files.ratings_path], metadata=[files.metadata_path])
    build_features(engine, settings, dim=16, epochs=2, min_count=1)
    result = train_run(
        engine,
        settings,
        TrainConfig(
            model="ranker",
            epochs=5,
            embedding_dim=16,
            min_ratings=0,
            evaluate=False,
            min_train_ratings=10,
        ),
    )
    # the rules name the products the model lists first most often, so that each one fires
    model = load_model(engine, settings, result.run_id)
    probe_run = score_and_write(engine, model, ScoreOptions(k=K), publish=False).run_id
    with engine.begin() as conn:
        first, second, third = conn.execute(
            sa.text(
                "SELECT p.external_id FROM recommendations r JOIN products p "
                "ON p.id = r.product_id WHERE r.run_id = :r AND r.rank = 1 "
                "GROUP BY p.external_id ORDER BY count(*) DESC, p.external_id LIMIT 3"
            ),
            {"r": probe_run},
        ).scalars()
        conn.execute(
            sa.text("UPDATE products SET available = false WHERE external_id = :a"), {"a": first}
        )
        conn.execute(
            sa.text("INSERT INTO product_boosts (asin, factor) VALUES (:a, 3)"), {"a": second}
        )
        conn.execute(
            sa.text(
                "INSERT INTO user_exclusions (user_external_id, asin) "
                "SELECT external_id, :a FROM users"
            ),
            {"a": third},
        )
    yield engine, settings, result.run_id
    engine.dispose()


def _env(settings: Settings) -> dict[str, str]:
    return {"RECSYS_DATABASE_URL": settings.database_url, "RECSYS_HOME": str(settings.home)}


def _served(engine: sa.Engine) -> tuple[int, list[tuple]]:
    with engine.connect() as conn:
        run_id = conn.execute(sa.text("SELECT run_id FROM published_recommendations")).scalar()
        rows = conn.execute(
            sa.text(
                "SELECT user_external_id, rank, asin, score, strategy, reason "
                "FROM current_recommendations ORDER BY user_external_id, rank"
            )
        ).all()
    return run_id, [tuple(r) for r in rows]


def _same_lists(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b) and len(a) > 0
    assert [(r[0], r[1], r[2], r[4], r[5]) for r in a] == [
        (r[0], r[1], r[2], r[4], r[5]) for r in b
    ]
    np.testing.assert_allclose(
        np.array([r[3] for r in a]), np.array([r[3] for r in b]), rtol=1e-6, atol=1e-6
    )


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_cluster_publishes_the_same_lists_as_one_process(
    ray_cluster: LocalCluster, trained
) -> None:
    engine, settings, model_run = trained
    common = ["score", "--run", str(model_run), "-k", str(K), "--batch-users", str(BATCH)]
    local = CliRunner().invoke(cli, [*common, "--engine", "local"], env=_env(settings))
    assert local.exit_code == 0, local.output
    local_run, local_rows = _served(engine)
    env = {**_env(settings), "RECSYS_RAY_ADDRESS": ray_cluster.address}
    remote = CliRunner().invoke(cli, [*common, "--engine", "ray"], env=env)
    assert remote.exit_code == 0, remote.output
    ray_run, ray_rows = _served(engine)
    assert ray_run != local_run
    _same_lists(local_rows, ray_rows)
    with engine.connect() as conn:
        runs = conn.execute(
            sa.text(
                "SELECT id, status, counts, rule_counts FROM recommendation_runs "
                "WHERE id IN (:a, :b) ORDER BY id"
            ),
            {"a": local_run, "b": ray_run},
        ).all()
    assert [r.status for r in runs] == ["ready", "ready"]
    assert runs[0].counts == runs[1].counts and runs[0].rule_counts == runs[1].rule_counts
    # the rules were applied on the workers exactly as here: all of them fired
    fired = runs[1].rule_counts
    assert all(fired[key] > 0 for key in ("unavailable", "excluded", "boosted")), fired


class _SlowModel:
    """The trained model's scores, slowly, leaving a trace of each call: where and when.

    Pickled by value to the workers (this test module is not importable there)."""

    def __init__(self, inner, trace: Path, delay: float, fail: bool = False) -> None:
        self.inner = inner
        self.trace = trace
        self.delay = delay
        self.fail = fail
        self.slow_node: str | None = None
        """A node whose calls take ``slow_delay`` instead."""
        self.slow_delay = delay

    def score_users(self, users: np.ndarray) -> np.ndarray:
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "driver"
        first = int(users[0])
        with open(self.trace / f"{first}-{node}-{time.monotonic_ns()}.start", "w"):
            pass
        time.sleep(self.slow_delay if node == self.slow_node else self.delay)
        scores = self.inner.score_users(users)
        if self.fail:
            scores[:] = np.nan
        with open(self.trace / f"{first}-{node}-{time.monotonic_ns()}.end", "w"):
            pass
        return scores


def _slow(trained, tmp_path: Path, **kw):
    from dataclasses import replace

    import ray

    from recsys.scoring.score import load_model

    engine, settings, model_run = trained
    model = load_model(engine, settings, model_run)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    trace = tmp_path / "trace"
    trace.mkdir()
    inner = model.recommender.portable()
    return replace(model, recommender=_SlowModel(inner, trace, **kw)), trace


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_worker_node_killed_mid_run_is_retried_on_the_head(
    ray_cluster: LocalCluster, trained, tmp_path: Path
) -> None:
    """Ray reruns the lost blocks on the head (max_retries): the run completes and is served,
    with the local engine's lists. The worker node is killed while a block is running on it
    (the trace shows a start there and no end), and that block then ends on the head. Blocks
    on the worker node take a minute, so the one running there is still running when the kill
    lands, however slowly the kill comes on a busy machine; a thread watches the trace for it,
    whenever it starts."""
    import ray

    from recsys.scoring.score import ScoreOptions, score_and_write

    engine, _, _ = trained
    model, trace = _slow(trained, tmp_path, delay=1.0)
    options = ScoreOptions(k=K, batch_users=BATCH)
    local = score_and_write(engine, model, options, force=True)
    _, local_rows = _served(engine)
    for f in trace.iterdir():
        f.unlink()

    with block_runner(EngineOptions(engine="ray", ray_address=ray_cluster.address)) as runner:
        nodes = {n["NodeManagerPort"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
        worker = nodes[ray_cluster.worker_ports[0]]
        head = next(node for node in nodes.values() if node != worker)
        model.recommender.slow_node, model.recommender.slow_delay = worker, 60.0
        killed = []

        def on(node: str, suffix: str, before: int | None = None) -> set[str]:
            """Blocks (first user index) with a trace of ``suffix`` on ``node``."""
            return {
                f.name.split("-")[0]
                for f in trace.glob(f"*-{node}-*.{suffix}")
                if before is None or int(f.stem.split("-")[2]) < before
            }

        done = threading.Event()

        def kill_while_the_worker_scores() -> None:
            while not done.is_set():
                if on(worker, "start") - on(worker, "end"):  # a block is running there now
                    ray_cluster.kill_worker(0)  # returns once the node's processes are gone
                    killed.append(time.monotonic_ns())
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=kill_while_the_worker_scores, daemon=True)
        watcher.start()
        try:
            summary = score_and_write(engine, model, options, force=True, runner=runner)
        finally:
            done.set()
            watcher.join()
    assert killed and summary.published and summary.n_users == local.n_users
    # a block was running on the worker node when it died, and Ray ran it again on the head.
    # The time is taken after the node's processes are gone, so a block that ended there while
    # the kill was under way (its result may have been delivered) does not count as lost.
    kill = killed[0]
    lost = on(worker, "start", before=kill) - on(worker, "end", before=kill)
    rerun = on(head, "end") - on(head, "end", before=kill)
    assert lost and lost <= rerun, (lost, rerun)
    with engine.connect() as conn:
        status = conn.execute(
            sa.text("SELECT status FROM recommendation_runs WHERE id = :r"), {"r": summary.run_id}
        ).scalar()
    assert status == "ready"
    _same_lists(local_rows, _served(engine)[1])


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_block_failing_on_a_worker_fails_the_run_and_keeps_the_served_lists(
    ray_cluster: LocalCluster, trained, tmp_path: Path
) -> None:
    from recsys.errors import DataError
    from recsys.scoring.score import ScoreOptions, score_and_write

    engine, _, _ = trained
    before_run, before_rows = _served(engine)
    assert before_run is not None
    model, _ = _slow(trained, tmp_path, delay=0.0, fail=True)
    with block_runner(EngineOptions(engine="ray", ray_address=ray_cluster.address)) as runner:
        with pytest.raises(DataError, match="NaN"):
            score_and_write(engine, model, ScoreOptions(k=K, batch_users=BATCH), runner=runner)
    with engine.connect() as conn:
        status, error = conn.execute(
            sa.text("SELECT status, message FROM recommendation_runs ORDER BY id DESC LIMIT 1")
        ).one()
    assert status == "failed" and "NaN" in error
    assert _served(engine) == (before_run, before_rows)


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_nightly_run_scores_on_the_cluster(ray_cluster: LocalCluster, trained) -> None:
    """``recsys run --engine ray``: the pipeline's score step runs on the cluster (training
    stays here), and its published lists equal the local engine's on the same model."""
    engine, settings, _ = trained
    env = {**_env(settings), "RECSYS_ENGINE": "ray", "RECSYS_RAY_ADDRESS": ray_cluster.address}
    args = ["run", "--no-features", "--no-evaluate", "--no-similar", "--model", "popularity"]
    result = CliRunner().invoke(cli, [*args, "-k", str(K)], env=env)
    assert result.exit_code == 0, result.output
    ray_run, ray_rows = _served(engine)
    with engine.connect() as conn:
        model_run = conn.execute(
            sa.text("SELECT model_run_id FROM recommendation_runs WHERE id = :r"), {"r": ray_run}
        ).scalar()
        detail = conn.execute(
            sa.text(
                "SELECT detail FROM pipeline_steps WHERE step = 'score' ORDER BY id DESC LIMIT 1"
            )
        ).scalar()
    assert detail["engine"] == "ray" and detail["recommendation_run_id"] == ray_run
    local = CliRunner().invoke(
        cli,
        ["score", "--run", str(model_run), "-k", str(K), "--engine", "local"],
        env=_env(settings),
    )
    assert local.exit_code == 0, local.output
    local_run, local_rows = _served(engine)
    assert local_run != ray_run
    _same_lists(ray_rows, local_rows)
