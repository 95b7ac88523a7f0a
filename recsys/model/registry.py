"""The model registry: one ``model_runs`` row per training, artifacts under ``models_dir/<run>``.

Life of a run (``recsys.model.train.train_run`` drives it):

1. :func:`start_run` inserts the row as ``running`` with host and pid; the caller commits it.
2. The model is saved into a temporary folder ``models_dir/.tmp-<run>-<pid>`` together with the
   index maps (``user_ids.npy``, ``product_ids.npy``), ``run.json`` and the training curve, and
   a ``MANIFEST`` (sha256 of every file); :func:`publish_artifacts` renames the folder to
   ``models_dir/<run>`` (an atomic rename on one filesystem). The checksum is the sha256 of
   the manifest.
3. :func:`finish_run` marks the row ``succeeded`` with path and checksum, only after the rename.

A run killed at any point before 3 stays ``running``; :func:`mark_interrupted` (called by the
next training) marks ``running`` rows whose pid is dead on this host as ``failed`` /
``interrupted``. :func:`load_run` only ever loads ``succeeded`` runs, and verifies every file
against the manifest and the manifest against the stored checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from recsys.errors import DataError, RecsysError
from recsys.model.base import Recommender

MANIFEST = "MANIFEST"
RUN_FILE = "run.json"
MODEL_DIR = "model"
USER_IDS = "user_ids.npy"
PRODUCT_IDS = "product_ids.npy"
CURVE = "training_curve.png"


class ArtifactError(RecsysError):
    """A run's artifacts are missing or do not match their checksum."""


@dataclass(frozen=True)
class LoadedRun:
    """A trained model from the registry, ready to score."""

    run_id: int
    model_type: str
    recommender: Recommender
    user_ids: np.ndarray
    """int64 [n_users]: ``users.id`` of each user index of the model."""
    product_ids: np.ndarray
    """int64 [n_products]: ``products.id`` of each product index."""
    feature_set_id: int | None
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    rating_scale: tuple[float, float] = (1.0, 5.0)
    artifact_path: Path | None = None


# --- rows ------------------------------------------------------------------------------------


def start_run(conn: sa.Connection, model_type: str, params: dict[str, Any]) -> int:
    """Insert a ``running`` row for this process; returns its id (the caller commits)."""
    return int(
        conn.execute(
            sa.text(
                "INSERT INTO model_runs (model_type, params, status, host, pid) "
                "VALUES (:m, CAST(:p AS jsonb), 'running', :h, :pid) RETURNING id"
            ),
            {
                "m": model_type,
                "p": json.dumps(params),
                "h": socket.gethostname(),
                "pid": os.getpid(),
            },
        ).scalar_one()
    )


def record_data(
    conn: sa.Connection,
    run_id: int,
    *,
    n_users: int,
    n_products: int,
    n_ratings: int,
    feature_set_id: int | None,
) -> None:
    """Store the counts of the data the run trains on."""
    conn.execute(
        sa.text(
            "UPDATE model_runs SET n_users = :u, n_products = :p, n_ratings = :r, "
            "feature_set_id = :f WHERE id = :id"
        ),
        {"u": n_users, "p": n_products, "r": n_ratings, "f": feature_set_id, "id": run_id},
    )


def set_model(conn: sa.Connection, run_id: int, model_type: str, params: dict[str, Any]) -> None:
    """Record the model a selecting run (``--model auto``) chose, and its parameters."""
    conn.execute(
        sa.text("UPDATE model_runs SET model_type = :m, params = CAST(:p AS jsonb) WHERE id = :id"),
        {"m": model_type, "p": _json(params), "id": run_id},
    )


def finish_run(
    conn: sa.Connection,
    run_id: int,
    *,
    artifact_path: Path,
    checksum: str,
    metrics: dict[str, Any],
    history: dict[str, Any],
) -> None:
    """Mark the run succeeded (call only after :func:`publish_artifacts`)."""
    updated = conn.execute(
        sa.text(
            "UPDATE model_runs SET status = 'succeeded', finished_at = now(), artifact_path = :a, "
            "checksum = :c, metrics = CAST(:m AS jsonb), history = CAST(:h AS jsonb), "
            "failure_reason = NULL WHERE id = :id AND status = 'running'"
        ),
        {
            "a": str(artifact_path),
            "c": checksum,
            "m": _json(metrics),
            "h": _json(history),
            "id": run_id,
        },
    ).rowcount
    if updated != 1:
        raise RecsysError(f"model run {run_id} is no longer running (marked failed meanwhile?)")


def add_metrics(conn: sa.Connection, run_id: int, metrics: dict[str, Any]) -> None:
    """Add measurements to a succeeded run's metrics (keys given replace the stored ones)."""
    conn.execute(
        sa.text(
            "UPDATE model_runs SET metrics = coalesce(metrics, '{}'::jsonb) || CAST(:m AS jsonb) "
            "WHERE id = :id"
        ),
        {"m": _json(metrics), "id": run_id},
    )


def withdraw_run(conn: sa.Connection, run_id: int, reason: str) -> None:
    """Mark a succeeded run failed (a later step of its training failed); it is not loaded.

    The caller deletes its artifacts; path and checksum are cleared with the status.
    """
    conn.execute(
        sa.text(
            "UPDATE model_runs SET status = 'failed', failure_reason = :r, artifact_path = NULL, "
            "checksum = NULL WHERE id = :id AND status = 'succeeded'"
        ),
        {"r": reason.splitlines()[0][:1000] if reason else "failed", "id": run_id},
    )


def fail_run(conn: sa.Connection, run_id: int, reason: str) -> None:
    """Mark a running run failed with a one-line reason."""
    conn.execute(
        sa.text(
            "UPDATE model_runs SET status = 'failed', finished_at = now(), failure_reason = :r "
            "WHERE id = :id AND status = 'running'"
        ),
        {"r": reason.splitlines()[0][:1000] if reason else "failed", "id": run_id},
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_interrupted(conn: sa.Connection) -> list[int]:
    """Mark ``running`` rows of dead trainers on this host as failed/interrupted; their ids."""
    rows = conn.execute(
        sa.text("SELECT id, pid FROM model_runs WHERE status = 'running' AND host = :h"),
        {"h": socket.gethostname()},
    ).all()
    dead = [int(r.id) for r in rows if r.pid is None or not _pid_alive(int(r.pid))]
    if dead:
        conn.execute(
            sa.text(
                "UPDATE model_runs SET status = 'failed', finished_at = now(), "
                "failure_reason = 'interrupted: the training process died' "
                "WHERE id = ANY(:ids) AND status = 'running'"
            ),
            {"ids": dead},
        )
    return dead


def _json(value: Any) -> str:
    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        return str(obj)

    # NaN is not JSON: store it as null
    return json.dumps(_nan_to_none(value), default=default)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    return value


def list_runs(conn: sa.Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The newest runs first, as dicts of the row."""
    rows = (
        conn.execute(sa.text("SELECT * FROM model_runs ORDER BY id DESC LIMIT :n"), {"n": limit})
        .mappings()
        .all()
    )
    return [dict(r) for r in rows]


def get_run(conn: sa.Connection, run_id: int) -> dict[str, Any]:
    """One run's row as a dict; RecsysError if there is none."""
    row = (
        conn.execute(sa.text("SELECT * FROM model_runs WHERE id = :i"), {"i": run_id})
        .mappings()
        .first()
    )
    if row is None:
        raise RecsysError(f"no model run {run_id} (see `recsys runs list`)")
    return dict(row)


# --- artifacts ---------------------------------------------------------------------------------


def staging_dir(models_dir: Path, run_id: int) -> Path:
    """A fresh temporary folder for a run's artifacts."""
    path = Path(models_dir) / f".tmp-{run_id}-{os.getpid()}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_artifacts(
    staging: Path,
    recommender: Recommender,
    user_ids: np.ndarray,
    product_ids: np.ndarray,
    run_info: dict[str, Any],
) -> None:
    """Save the model and index maps into ``staging`` (not yet visible as a run)."""
    recommender.save(staging / MODEL_DIR)
    np.save(staging / USER_IDS, np.asarray(user_ids, dtype=np.int64))
    np.save(staging / PRODUCT_IDS, np.asarray(product_ids, dtype=np.int64))
    (staging / RUN_FILE).write_text(_json(run_info))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_lines(directory: Path) -> list[str]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    return [f"{_file_sha256(p)}  {p.relative_to(directory).as_posix()}" for p in files]


def publish_artifacts(staging: Path, models_dir: Path, run_id: int) -> tuple[Path, str]:
    """Write the manifest, fsync, and rename ``staging`` to ``models_dir/<run_id>``.

    Returns:
        (final path, checksum = sha256 of the manifest).
    """
    manifest = "\n".join(_manifest_lines(staging)) + "\n"
    (staging / MANIFEST).write_text(manifest)
    for path in staging.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    final = Path(models_dir) / str(run_id)
    if final.exists():  # leftovers of an interrupted run with the same id cannot be trusted
        shutil.rmtree(final)
    os.replace(staging, final)
    return final, hashlib.sha256(manifest.encode()).hexdigest()


def verify_artifacts(directory: Path, checksum: str) -> None:
    """Check the manifest against ``checksum`` and every file against the manifest."""
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise ArtifactError(f"model artifacts in {directory} are missing (no {MANIFEST})")
    manifest = manifest_path.read_text()
    if hashlib.sha256(manifest.encode()).hexdigest() != checksum:
        raise ArtifactError(f"model artifacts in {directory} do not match the registry checksum")
    if manifest.strip().splitlines() != _manifest_lines(directory):
        raise ArtifactError(
            f"model artifacts in {directory} were changed or damaged after training"
        )


def _artifact_dir(settings: Any, run: dict[str, Any]) -> Path:
    if run.get("artifacts_pruned_at") is not None:
        raise ArtifactError(
            f"the artifacts of model run {run['id']} were pruned (RECSYS_KEEP_RUNS keeps the "
            "newest models and those of the recommendation runs kept for rollback)"
        )
    recorded = Path(run["artifact_path"])
    if recorded.exists():
        return recorded
    # RECSYS_HOME moved: the run's folder under the current models_dir
    return Path(settings.models_dir) / recorded.name


def load_run(conn: sa.Connection, settings: Any, run_id: int | None = None) -> LoadedRun:
    """Load a succeeded run (``None``: the latest succeeded run), verifying its checksum.

    Raises:
        DataError: there is no succeeded run (train one with ``recsys train``).
        RecsysError: the run does not exist or did not succeed.
        ArtifactError: its files are missing or damaged.
    """
    if run_id is None:
        found = conn.execute(
            sa.text("SELECT id FROM model_runs WHERE status = 'succeeded' ORDER BY id DESC LIMIT 1")
        ).scalar()
        if found is None:
            raise DataError("no trained model yet; train one with `recsys train`")
        run_id = int(found)
    run = get_run(conn, run_id)
    if run["status"] != "succeeded":
        reason = f": {run['failure_reason']}" if run.get("failure_reason") else ""
        raise RecsysError(f"model run {run_id} is {run['status']}{reason}; it cannot be used")
    directory = _artifact_dir(settings, run)
    verify_artifacts(directory, run["checksum"])
    from recsys.model import catalog

    recommender = catalog.load(directory / MODEL_DIR)
    info = json.loads((directory / RUN_FILE).read_text())
    return LoadedRun(
        run_id=int(run_id),
        model_type=run["model_type"],
        recommender=recommender,
        user_ids=np.load(directory / USER_IDS),
        product_ids=np.load(directory / PRODUCT_IDS),
        feature_set_id=run["feature_set_id"],
        params=dict(run["params"] or {}),
        metrics=dict(run["metrics"] or {}),
        rating_scale=tuple(info.get("rating_scale", (1.0, 5.0))),
        artifact_path=directory,
    )


# --- pruning ---------------------------------------------------------------------------------


def needed_model_runs(conn: sa.Connection, keep: int) -> set[int]:
    """Model runs whose artifacts must stay: the newest ``keep`` succeeded ones (the current
    model among them) and every model a kept (ready, scoring or served) recommendation run
    was scored with, so a rollback can still explain and rescore what it serves."""
    keep = max(1, int(keep))
    rows = conn.execute(
        sa.text(
            """
            (SELECT id FROM model_runs WHERE status = 'succeeded' ORDER BY id DESC LIMIT :keep)
            UNION
            SELECT model_run_id FROM recommendation_runs
            WHERE model_run_id IS NOT NULL AND status IN ('ready', 'scoring')
            UNION
            SELECT r.model_run_id FROM recommendation_runs r
            JOIN published_recommendations p ON p.run_id = r.id
            WHERE r.model_run_id IS NOT NULL
            """
        ),
        {"keep": keep},
    ).scalars()
    return {int(r) for r in rows}


def prune_artifacts(engine: sa.Engine, models_dir: Path, keep: int) -> list[int]:
    """Delete the artifact folders no kept run needs; returns the model run ids pruned.

    The registry row stays (its metrics and history remain visible) with
    ``artifacts_pruned_at`` set, so :func:`load_run` says the run was pruned. Rows are marked
    in one transaction first and folders deleted after it commits; a crash in between leaves
    folders that the next prune deletes. Folders of failed runs (a trainer killed after the
    rename) and staging folders of runs no longer running go too. Folders that no row of this
    database names are left alone (another database may share ``RECSYS_HOME``). Call it while
    holding the nightly lock, so no scoring run picks a model while it is being pruned.
    """
    models_dir = Path(models_dir)
    with engine.begin() as conn:
        needed = needed_model_runs(conn, keep)
        pruned = [
            int(r)
            for r in conn.execute(
                sa.text(
                    "UPDATE model_runs SET artifacts_pruned_at = now() "
                    "WHERE status = 'succeeded' AND artifacts_pruned_at IS NULL "
                    "AND NOT (id = ANY(:needed)) RETURNING id"
                ),
                {"needed": sorted(needed)},
            ).scalars()
        ]
        rows = conn.execute(sa.text("SELECT id, status, artifacts_pruned_at FROM model_runs")).all()
    if not models_dir.is_dir():
        return sorted(pruned)
    status = {int(r.id): (r.status, r.artifacts_pruned_at) for r in rows}
    for folder in models_dir.iterdir():
        if not folder.is_dir() or folder.is_symlink():
            continue
        name = folder.name
        run_id = name.split("-")[1] if name.startswith(".tmp-") and name.count("-") >= 2 else name
        if not run_id.isdigit() or int(run_id) not in status:
            continue
        run_status, pruned_at = status[int(run_id)]
        if int(run_id) in needed or run_status == "running":
            continue
        if name == run_id and run_status == "succeeded" and pruned_at is None:
            continue  # a run's folder the registry still serves
        shutil.rmtree(folder, ignore_errors=True)
    return sorted(pruned)
