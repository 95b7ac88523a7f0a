"""Without a terminal, loading and the features build write progress lines with rate and ETA."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from test_features_store import TOY, _insert_products, toy_vectors  # noqa: F401 (fixture)

from recsys.features import store
from recsys.ingest.load import load_files
from recsys.progress import LogProgress

REPO = Path(__file__).resolve().parents[1]


def _ratings(path: Path, n: int) -> Path:
    path.write_text("".join(f"P{i % 97},U{i},4.0,{1_300_000_000 + i}\n" for i in range(n)))
    return path


def test_load_db_without_a_terminal_logs_rows_per_second(tmp_path: Path, cli_env) -> None:
    path = _ratings(tmp_path / "r.csv", 30_000)
    done = subprocess.run(
        [sys.executable, "-m", "recsys", "load-db", "--ratings", str(path)],
        env={**os.environ, **cli_env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "recsys.progress" in line]
    assert any("load r.csv: started" in line for line in lines), done.stderr
    assert any("rows/s" in line and "ETA" in line for line in lines), done.stderr


def test_both_load_paths_report_rows_with_an_eta(tmp_path: Path, engine, settings, caplog) -> None:
    caplog.set_level(logging.INFO, logger="recsys.progress")
    path = _ratings(tmp_path / "r.csv", 25_000)
    for fast_path in (True, False):
        caplog.clear()
        load_files(
            engine, settings, ratings=[path], progress=LogProgress(interval=0), fast_path=fast_path
        )
        text = caplog.text
        assert "load r.csv: started" in text and "rows/s, ETA" in text, (fast_path, text)


def test_features_build_reports_products_per_second(engine, settings, request, caplog) -> None:
    caplog.set_level(logging.INFO, logger="recsys.progress")
    toy = request.getfixturevalue("toy_vectors")
    _insert_products(engine, TOY)
    store.build_features(engine, settings, word_vectors=str(toy), progress=LogProgress(interval=0))
    assert "cleaning: " in caplog.text and "products/s" in caplog.text
    assert "embedding: " in caplog.text and "(done)" in caplog.text
