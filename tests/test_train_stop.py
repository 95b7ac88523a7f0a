"""SIGTERM during training: the nightly's stop request (the scheduler's handler sets it) ends
the ranker's training within a batch, is logged at INFO as a stop, never as an ERROR failure,
and the pipeline run ends interrupted with nothing published."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
import sqlalchemy as sa

from recsys.config import Settings
from recsys.errors import TrainingInterrupted

pytestmark = pytest.mark.slow


class _SignalAfter:
    """A progress sink that sends this process SIGTERM at the 3rd training batch and counts
    the batches that still ran after it."""

    def __init__(self) -> None:
        self.batches = 0
        self.after_signal = 0
        self.sent = False

    def start(self, phase, total, unit="items") -> None:
        pass

    def advance(self, n=1, **fields) -> None:
        self.batches += 1
        if self.sent:
            self.after_signal += 1
        elif self.batches == 3:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

    def update(self, completed, **fields) -> None:
        pass

    def finish(self) -> None:
        pass


def test_sigterm_stops_training_within_a_batch_and_logs_info(
    engine: sa.Engine, settings: Settings, tmp_path: Path, caplog
) -> None:
    from recsys import scheduler
    from recsys.features.store import build_features
    from recsys.ingest.load import load_files
    from recsys.ingest.sample import write_sample
    from recsys.pipeline import PipelineOptions, run

    files = write_sample(tmp_path / "sample", users=60, products=30, ratings=800, seed=2)
    load_files(engine, settings, ratings=[files.ratings_path], metadata=[files.metadata_path])
    build_features(engine, settings, dim=8, epochs=1, min_count=1)
    # the scheduler's own handling: SIGTERM sets STOP, the pipeline polls STOP.is_set
    scheduler.STOP.clear()
    previous = signal.signal(signal.SIGTERM, lambda *_: scheduler.STOP.set())
    sink = _SignalAfter()
    try:
        with caplog.at_level(logging.INFO), pytest.raises(TrainingInterrupted):
            run(
                engine,
                settings,
                PipelineOptions(
                    model="ranker",
                    epochs=200,
                    embedding_dim=8,
                    min_ratings=0,
                    evaluate=False,
                    build_features=False,
                ),
                should_stop=scheduler.STOP.is_set,
                progress=sink,
            )
    finally:
        signal.signal(signal.SIGTERM, previous)
        scheduler.STOP.clear()
    assert sink.sent and sink.after_signal == 0  # no batch ran after the request
    assert sink.batches == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    stopping = [r for r in caplog.records if "stop requested" in r.getMessage()]
    assert stopping and stopping[0].levelno == logging.INFO
    with engine.connect() as conn:
        status, message = conn.execute(
            sa.text("SELECT status, message FROM pipeline_runs ORDER BY id DESC LIMIT 1")
        ).one()
        step = conn.execute(
            sa.text("SELECT status FROM pipeline_steps WHERE step = 'train'")
        ).scalar_one()
        model_run = conn.execute(
            sa.text("SELECT status, failure_reason FROM model_runs ORDER BY id DESC LIMIT 1")
        ).one()
        served = conn.execute(sa.text("SELECT run_id FROM published_recommendations")).scalar()
    assert status == "interrupted" and step == "interrupted"
    assert "stopped on request" in message
    assert model_run[0] == "failed" and "stopped on request" in model_run[1]
    assert served is None
