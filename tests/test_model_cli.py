"""recsys train / evaluate / runs through CliRunner and one real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from test_model_data import load_ml100k

from recsys.cli import main

pytestmark = pytest.mark.slow


def _call(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """``recsys ARGS`` through main(): errors become one line and an exit code, as in a shell."""
    runner = CliRunner()

    @click.command()
    def entry() -> None:
        main(args)

    result = runner.invoke(entry, [], env={"COLUMNS": "160", **env})
    return result.exit_code, result.output


@pytest.fixture
def loaded(engine: sa.Engine, shared_data: Path) -> None:
    with engine.begin() as conn:
        load_ml100k(conn, shared_data, max_users=120)


def test_train_runs_list_show(loaded, engine: sa.Engine, cli_env) -> None:
    code, out = _call(["train", "--model", "bias", "--min-ratings", "5"], cli_env)
    assert code == 0, out
    assert "model run 1: bias trained on" in out and "seed split RMSE" in out and "NDCG@10" in out
    code, out = _call(["runs", "list"], cli_env)
    assert code == 0 and "succeeded" in out and "bias" in out
    code, out = _call(["runs", "show", "1"], cli_env)
    assert code == 0 and "status: succeeded" in out and '"min_ratings": 5' in out
    with engine.begin() as conn:  # a NaN metric is stored as JSON null
        conn.execute(
            sa.text("UPDATE model_runs SET metrics = jsonb_set(metrics, '{seed,rmse}', 'null')")
        )
    code, out = _call(["runs", "show", "1"], cli_env)
    assert code == 0 and "seed split RMSE - MAE" in out
    code, out = _call(["runs", "list"], cli_env)
    assert code == 0 and "succeeded" in out
    code, out = _call(["runs", "show", "7"], cli_env)
    assert code == 2 and "no model run 7" in out


def test_bad_input_is_one_line_exit_2(loaded, cli_env) -> None:
    code, out = _call(["train", "--model", "mf", "--min-ratings", "400", "--no-evaluate"], cli_env)
    assert code == 2
    assert out.strip().count("\n") == 0 and "no ratings left" in out and "--min-ratings" in out
    code, out = _call(["train", "--model", "hybrid"], cli_env)  # there is no feature set
    assert code == 2 and "recsys features build" in out and "Traceback" not in out
    code, out = _call(["train", "--model", "nope"], cli_env)
    assert code == 2 and "unknown model 'nope'" in out
    code, out = _call(["evaluate", "--models", "bias,nope"], cli_env)
    assert code == 2 and "unknown model(s) nope" in out


def test_evaluate_prints_a_table(loaded, cli_env, tmp_path) -> None:
    target = tmp_path / "eval.json"
    code, out = _call(
        ["evaluate", "--models", "popularity,bias", "--min-ratings", "0", "--json", str(target)],
        cli_env,
    )
    assert code == 0, out
    assert "popularity" in out and "bias" in out and "NDCG@10" in out
    import json

    payload = json.loads(target.read_text())
    assert set(payload) == {"popularity", "bias"} and payload["popularity"]["seed"] is None


@pytest.mark.subprocess
def test_train_in_a_real_subprocess(loaded, cli_env) -> None:
    env = {**os.environ, **cli_env}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys",
            "train",
            "--model",
            "mf",
            "--epochs",
            "2",
            "--no-evaluate",
            "--min-ratings",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "mf epoch 1/2: loss" in run.stderr and "val_loss" in run.stderr
    assert "model run 1: mf trained on" in run.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "recsys", "runs", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0 and "succeeded" in listed.stdout
