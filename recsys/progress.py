"""Progress of long work, with a rate and an ETA, on a terminal or in the log.

Every step that can run for minutes reports through a :class:`Progress`:

* on a terminal (stderr is a TTY) it is a rich progress bar with the rate, the ETA and any extra
  fields the step passes (an epoch's loss, the internal-validation NDCG);
* without one (the scheduler, a log file, CI) it writes one INFO line on the ``recsys.progress``
  logger at most every ``interval`` seconds (30 by default) and when a phase ends, so a working run
  is never silent for long and a hung one can be told apart.

The steps themselves take any object with ``start``/``advance``/``update``/``finish``; library code
defaults to :data:`NO_PROGRESS`, and the CLI passes :func:`progress_for_terminal`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

_log = logging.getLogger("recsys.progress")

LOG_INTERVAL_S = 30.0
"""Without a terminal, the longest gap between two progress lines."""
ETA_WINDOW_S = 300.0
"""The ETA uses the rate of about the last this many seconds once a phase is older than that
(before, the phase's average): a step whose later items are slower (the nightly scores folded-in
users last) would otherwise be promised too early an end."""


class ProgressSink(Protocol):
    """What long work reports to."""

    def start(self, phase: str, total: int | None, unit: str = "items") -> None: ...

    def advance(self, n: int = 1, **fields: Any) -> None: ...

    def update(self, completed: int, **fields: Any) -> None: ...

    def finish(self) -> None: ...


def set_total(sink: ProgressSink, total: int) -> None:
    """Correct the running phase's total (an estimate the work has refined) on a sink with a
    ``set_total`` method (the sinks here); any other sink keeps its first total."""
    method = getattr(sink, "set_total", None)
    if method is not None and total > 0:
        method(total)


class _NoProgress:
    """Reports nothing (library defaults and tests)."""

    def start(self, phase: str, total: int | None, unit: str = "items") -> None:
        pass

    def advance(self, n: int = 1, **fields: Any) -> None:
        pass

    def update(self, completed: int, **fields: Any) -> None:
        pass

    def finish(self) -> None:
        pass


NO_PROGRESS: ProgressSink = _NoProgress()


def format_rate(rate: float) -> str:
    """A rate for a progress line: whole numbers from 100 up (``98,944``), else three
    significant digits, so that slow work (one fit a minute: ``0.0149``) does not read 0."""
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` for an ETA or an elapsed time."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _format_field(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


class _Phase:
    """Counters of one phase, shared by both renderings."""

    def __init__(self, phase: str, total: int | None, unit: str, clock: Callable[[], float]):
        self.phase = phase
        self.total = total if total and total > 0 else None
        self.unit = unit
        self.completed = 0
        self.fields: dict[str, Any] = {}
        self._clock = clock
        self.started = clock()
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        """(time, completed): the newest at or before ``now - ETA_WINDOW_S``, and all after."""

    def elapsed(self) -> float:
        return max(self._clock() - self.started, 1e-9)

    def rate(self) -> float:
        """The phase's average rate."""
        return self.completed / self.elapsed()

    def set_completed(self, completed: int) -> None:
        self.completed = completed
        now = self._clock()
        if now - self._samples[-1][0] >= 1.0:  # at most one sample a second
            self._samples.append((now, completed))
        while len(self._samples) > 1 and self._samples[1][0] <= now - ETA_WINDOW_S:
            self._samples.popleft()

    def recent_rate(self) -> float:
        """The rate since the newest sample at least :data:`ETA_WINDOW_S` old (the start while
        the phase is younger)."""
        then, done = self._samples[0]
        return (self.completed - done) / max(self._clock() - then, 1e-9)

    def eta(self) -> float | None:
        rate = self.recent_rate()
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.completed, 0) / rate

    def line(self) -> str:
        """One progress line: ``phase: done/total unit (pct), rate unit/s, ETA h:mm:ss, fields``."""
        parts = [f"{self.phase}: {self.completed:,}"]
        if self.total is not None:
            parts[0] += f"/{self.total:,} {self.unit} ({100 * self.completed / self.total:.1f}%)"
        else:
            parts[0] += f" {self.unit}"
        parts.append(f"{format_rate(self.rate())} {self.unit}/s")
        eta = self.eta()
        parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA -")
        parts.append(f"elapsed {format_duration(self.elapsed())}")
        parts.extend(f"{k}={_format_field(v)}" for k, v in self.fields.items())
        return ", ".join(parts)


class LogProgress:
    """Progress as log lines, at most every ``interval`` seconds, and one when a phase ends."""

    def __init__(
        self,
        interval: float = LOG_INTERVAL_S,
        logger: logging.Logger = _log,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.logger = logger
        self._clock = clock
        self._phase: _Phase | None = None
        self._last = 0.0

    def start(self, phase: str, total: int | None, unit: str = "items") -> None:
        self._close_phase()
        self._phase = _Phase(phase, total, unit, self._clock)
        self._last = self._phase.started
        self.logger.info("%s: started (%s)", phase, f"{total:,} {unit}" if total else unit)

    def advance(self, n: int = 1, **fields: Any) -> None:
        if self._phase is not None:
            self.update(self._phase.completed + n, **fields)

    def update(self, completed: int, **fields: Any) -> None:
        phase = self._phase
        if phase is None:
            return
        phase.set_completed(completed)
        phase.fields.update(fields)
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self.logger.info("%s", phase.line())

    def set_total(self, total: int) -> None:
        if self._phase is not None:
            self._phase.total = total

    def _close_phase(self) -> None:
        if self._phase is not None:
            self.logger.info("%s (done)", self._phase.line())
            self._phase = None

    def finish(self) -> None:
        self._close_phase()


class RichProgress:
    """A rich progress bar on stderr per phase: bar, count, rate, ETA and the step's fields."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[extra]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self._phase: _Phase | None = None
        self._task = None
        self._started = False

    def start(self, phase: str, total: int | None, unit: str = "items") -> None:
        if not self._started:
            self._bar.start()
            self._started = True
        self._close_phase()
        self._phase = _Phase(phase, total, unit, time.monotonic)
        self._task = self._bar.add_task(phase, total=total, count="", rate="", extra="")

    def advance(self, n: int = 1, **fields: Any) -> None:
        if self._phase is not None:
            self.update(self._phase.completed + n, **fields)

    def update(self, completed: int, **fields: Any) -> None:
        phase = self._phase
        if phase is None:
            return
        phase.set_completed(completed)
        phase.fields.update(fields)
        count = f"{completed:,}" + (f"/{phase.total:,}" if phase.total else "")
        self._bar.update(
            self._task,
            completed=completed,
            count=f"{count} {phase.unit}",
            rate=f"{format_rate(phase.rate())} {phase.unit}/s",
            extra=" ".join(f"{k}={_format_field(v)}" for k, v in phase.fields.items()),
        )

    def set_total(self, total: int) -> None:
        if self._phase is not None and self._task is not None:
            self._phase.total = total
            self._bar.update(self._task, total=total)

    def _close_phase(self) -> None:
        if self._phase is not None and self._task is not None:
            total = self._phase.total or self._phase.completed
            self._bar.update(self._task, total=total, completed=self._phase.completed)
        self._phase = None

    def finish(self) -> None:
        self._close_phase()
        if self._started:
            self._bar.stop()
            self._started = False


def progress_for_terminal(stream=None) -> ProgressSink:
    """A rich bar when ``stream`` (stderr by default) is a terminal, log lines otherwise."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return RichProgress()
    return LogProgress()


def counts_to(sink: ProgressSink, phase: str, unit: str = "items") -> Callable[[int, int], None]:
    """A ``(done, total)`` callback (as the scoring loop reports) that feeds ``sink``.

    The first call starts ``phase`` with that total; the caller calls ``sink.finish()``.
    """
    started = False

    def report(done: int, total: int) -> None:
        nonlocal started
        if not started:
            sink.start(phase, total, unit)
            started = True
        sink.update(done)

    return report


def console(*, stderr: bool = False, highlight: bool = True, wide: bool = False) -> Any:
    """A rich console for the CLI's tables and lines.

    Args:
        stderr: write to stderr instead of stdout.
        highlight: let rich colour numbers and strings it recognises.
        wide: when stdout is not a terminal (a log, a pipe), 200 columns, so that titles and
            reasons are not cut.
    """
    from rich.console import Console

    if wide and not sys.stdout.isatty():
        return Console(stderr=stderr, highlight=highlight, width=200)
    return Console(stderr=stderr, highlight=highlight)
