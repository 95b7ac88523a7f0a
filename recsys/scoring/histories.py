"""Histories of many users as one compressed-row pair of arrays.

The scoring run keeps the histories of its folded-in users (millions of users at the
Electronics shape) in this form: two arrays instead of one small array per user, so they cost
8 bytes per rating and 8 per user, and a block of users' entries is one gather. It also
finds users whose histories are the same (:meth:`Histories.first_identical`), who can share one
scored list.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Histories"]


@dataclass(frozen=True)
class Histories:
    """Per user ``f`` (0..n-1), the values ``indices[indptr[f]:indptr[f + 1]]``.

    Within a user the values keep the order they were given in (see :meth:`grouped`).
    """

    indptr: np.ndarray
    """int64 [n + 1], non-decreasing, starting at 0."""
    indices: np.ndarray
    """int64 [indptr[-1]]: the values, user by user."""

    @classmethod
    def empty(cls) -> Histories:
        return cls(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @classmethod
    def from_list(cls, histories: list[np.ndarray]) -> Histories:
        """One history per list element, in list order."""
        lengths = np.fromiter(map(len, histories), np.int64, len(histories))
        indptr = np.zeros(len(histories) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        values = (
            np.concatenate(histories).astype(np.int64)
            if int(indptr[-1])
            else np.zeros(0, dtype=np.int64)
        )
        return cls(indptr, values)

    @classmethod
    def grouped(cls, owners: np.ndarray, values: np.ndarray, n: int) -> Histories:
        """The values of each owner (0..n-1), in their given order within an owner."""
        owners = np.asarray(owners, dtype=np.int64)
        order = np.argsort(owners, kind="stable")
        counts = np.bincount(owners, minlength=n)[:n] if len(owners) else np.zeros(n, np.int64)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, np.asarray(values, dtype=np.int64)[order])

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def __getitem__(self, f: int) -> np.ndarray:
        return self.indices[self.indptr[f] : self.indptr[f + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def entries(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, row) of the histories of ``users``, row ``i`` for ``users[i]``, each user's
        values in their stored order."""
        users = np.asarray(users, dtype=np.int64)
        starts, stops = self.indptr[users], self.indptr[users + 1]
        lengths = stops - starts
        rows = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
        if not len(rows):
            return np.zeros(0, dtype=np.int64), rows
        # position of each entry: its user's start plus its offset within the user
        first = np.cumsum(lengths) - lengths
        at = starts[rows] + (np.arange(len(rows), dtype=np.int64) - first[rows])
        return self.indices[at], rows

    def first_identical(self, max_length: int = 8) -> np.ndarray:
        """int64 [n]: for each user, the first user (lowest index) whose values are the same
        multiset; the user itself when none before it is, when its history is empty, or when
        it holds more than ``max_length`` values (such twins are rare and not looked for)."""
        n = len(self)
        first = np.arange(n, dtype=np.int64)
        lengths = self.lengths()
        for length in range(1, max_length + 1):
            users = np.flatnonzero(lengths == length)
            if len(users) < 2:
                continue
            values, _ = self.entries(users)
            rows = np.sort(values.reshape(len(users), length), axis=1)
            order = np.lexsort(rows.T[::-1])  # stable: equal rows keep their user order
            rows = rows[order]
            starts = np.ones(len(users), dtype=bool)
            starts[1:] = (rows[1:] != rows[:-1]).any(axis=1)
            group = np.cumsum(starts) - 1
            first[users[order]] = users[order[starts]][group]
        return first
