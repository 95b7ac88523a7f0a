"""Errors that the CLI turns into one clear line and exit code 2.

Anything raised as a :class:`RecsysError` is a known, user-facing problem (bad file, no
database, too few ratings); its message must be one line and must never contain a password.
Anything else is unexpected: the CLI logs its traceback and exits 3.
"""

from __future__ import annotations


class RecsysError(Exception):
    """A known problem that the user can act on; `str(err)` is the one line shown."""

    exit_code = 2


class Interrupted(RecsysError):
    """A step was asked to stop (SIGTERM/SIGINT) and stopped cleanly, leaving nothing half-done.

    Every stop of that kind (scoring, training, the pipeline between steps) subclasses this, so
    callers recognise an interruption with ``isinstance`` rather than by name.
    """


class DatabaseUnavailable(RecsysError):
    """The database cannot be reached or started."""


class InputError(RecsysError):
    """An input file is missing, unreadable, empty, of unknown format or too broken to load."""


class DataError(RecsysError):
    """The data in the database cannot support the requested step (e.g. too few ratings)."""


class LockBusy(RecsysError):
    """Another process holds the lock for this step."""


class TrainingInterrupted(Interrupted):
    """Training was asked to stop (SIGTERM/SIGINT through ``should_stop``) and stopped."""
