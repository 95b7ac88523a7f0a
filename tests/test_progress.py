"""Progress without a terminal: log lines with a rate and an ETA, at most every interval."""

from __future__ import annotations

import io
import logging

from recsys.progress import LogProgress, RichProgress, format_duration, progress_for_terminal


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_progress_writes_rate_and_eta_every_interval(caplog) -> None:
    clock = _Clock()
    progress = LogProgress(interval=30, clock=clock)
    with caplog.at_level(logging.INFO, logger="recsys.progress"):
        progress.start("scoring", 1000, "users")
        clock.now += 10
        progress.advance(100)  # 10 s after the start: no line yet
        clock.now += 20
        progress.advance(200, loss=0.25)  # 30 s: one line
        clock.now += 5
        progress.advance(100)  # 5 s after it: no line
        progress.finish()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "scoring: started (1,000 users)"
    assert lines[1] == (
        "scoring: 300/1,000 users (30.0%), 10 users/s, ETA 0:01:10, elapsed 0:00:30, loss=0.25"
    )
    assert lines[2].startswith("scoring: 400/1,000 users (40.0%)") and lines[2].endswith("(done)")
    assert len(lines) == 3


def test_log_progress_without_total_has_no_eta(caplog) -> None:
    clock = _Clock()
    progress = LogProgress(interval=0, clock=clock)
    with caplog.at_level(logging.INFO, logger="recsys.progress"):
        progress.start("load", None, "rows")
        clock.now += 2
        progress.update(50)
    assert caplog.records[-1].getMessage() == "load: 50 rows, 25 rows/s, ETA -, elapsed 0:00:02"


def test_terminal_choice() -> None:
    class _Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(progress_for_terminal(io.StringIO()), LogProgress)
    assert isinstance(progress_for_terminal(_Tty()), RichProgress)
    assert format_duration(3725) == "1:02:05"


def test_slow_work_shows_its_rate_not_zero() -> None:
    from recsys.progress import format_rate

    assert format_rate(1 / 67) == "0.0149"
    assert format_rate(2.5) == "2.5" and format_rate(25) == "25"
    assert format_rate(98_944.4) == "98,944"


def test_a_file_estimate_is_refined_as_rows_are_read(caplog) -> None:
    """The first rows of a file took fewer bytes each than the rest: the total follows the
    bytes read, so the last line says 100%, not more (the old fixed estimate said 267%)."""
    from recsys.ingest.stage import FileProgress

    clock = _Clock()
    sink = LogProgress(interval=30, clock=clock)
    progress = FileProgress(sink, "load meta.json.gz", size=10_000)
    with caplog.at_level(logging.INFO, logger="recsys.progress"):
        progress.update(200, 1_000)  # 5 bytes a row so far: about 2,000 rows
        clock.now += 30
        progress.update(600, 5_000)  # 8.3 bytes a row so far: 1,200
        clock.now += 30
        progress.update(750, 10_000)  # the whole file: 750 rows
        progress.finish()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "load meta.json.gz: started (2,000 rows)"
    assert lines[1].startswith("load meta.json.gz: 600/1,200 rows (50.0%)")
    assert lines[-1].startswith("load meta.json.gz: 750/750 rows (100.0%)")


def test_the_eta_follows_the_recent_rate_when_the_work_slows_down(caplog) -> None:
    """Fast items first, slow ones after: once the phase is older than the ETA window, the
    ETA comes from the last window's rate, not the phase's average."""
    from recsys.progress import ETA_WINDOW_S

    clock = _Clock()
    progress = LogProgress(interval=0, clock=clock)
    with caplog.at_level(logging.INFO, logger="recsys.progress"):
        progress.start("scoring", 10_000, "users")
        for _ in range(10):  # 100 users/s for 50 s
            clock.now += 5
            progress.advance(500)
        for _ in range(int(2 * ETA_WINDOW_S) // 10):  # then 1 user/s
            clock.now += 10
            progress.advance(10)
    line = caplog.records[-1].getMessage()
    left = 10_000 - 5_000 - int(2 * ETA_WINDOW_S)
    # the average rate (about 8.6 users/s) would say under 10 minutes; the recent one, 1 user/s
    assert f"ETA {format_duration(left)}" in line, line
