"""Reading an input file as numbered raw lines, plain or gzip, hashing the bytes on the way.

The sha256 is of the file as stored (compressed bytes for .gz), so it identifies the file in
the load log whatever its name. Lines are bytes: decoding and NUL checks are per line so one
bad line is rejected instead of breaking the file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

from recsys.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"
_BUFFER = 1 << 20


class HashingReader(io.RawIOBase):
    """A raw reader that feeds every byte read into sha256 and counts them."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = self._raw.readinto(buffer)
        if n:
            self.sha256.update(memoryview(buffer)[:n])
            self.position += n
        return n or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


def check_readable(path: Path) -> None:
    """One clear line for a missing, unreadable or empty file."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from err
    if not head:
        raise InputError(f"{path}: file is empty")


class LineSource:
    """Numbered raw lines of a file (1-based), with the stored bytes hashed and counted.

    Use as a context manager; iterate for ``(line_no, bytes_without_newline)``.
    """

    def __init__(self, path: Path) -> None:
        check_readable(path)
        self.path = path
        self.size = path.stat().st_size
        self._hashing = HashingReader(open(path, "rb", buffering=0))  # noqa: SIM115
        buffered = io.BufferedReader(self._hashing, buffer_size=_BUFFER)
        if buffered.peek(2)[:2] == GZIP_MAGIC:
            self._stream = io.BufferedReader(gzip.GzipFile(fileobj=buffered), buffer_size=_BUFFER)
        else:
            self._stream = buffered

    def __enter__(self) -> LineSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stream.close()

    @property
    def bytes_read(self) -> int:
        """Stored bytes consumed so far (for progress)."""
        return self._hashing.position

    def sha256(self) -> str:
        """The file's sha256; reads the rest of the stored bytes if the lines were not all read."""
        while self._hashing.readinto(bytearray(_BUFFER)):
            pass
        return self._hashing.sha256.hexdigest()

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        try:
            for line_no, line in enumerate(self._stream, 1):
                if line.endswith(b"\n"):
                    line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
                yield line_no, line
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            raise InputError(f"{self.path}: cannot read: {err}") from err


def file_sha256(path: Path) -> str:
    """sha256 of the stored bytes of ``path``."""
    check_readable(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_BUFFER):
            digest.update(chunk)
    return digest.hexdigest()


def head_lines(path: Path, limit: int = 20) -> list[bytes]:
    """The first non-blank lines (for format detection)."""
    lines: list[bytes] = []
    with LineSource(path) as source:
        for _, line in source:
            if line.strip():
                lines.append(line)
                if len(lines) >= limit:
                    break
    return lines
