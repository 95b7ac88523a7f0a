"""Reading an input file as numbered raw lines, plain or gzip, hashing the bytes on the way.

The sha256 is of the file as stored (compressed bytes for .gz), so it identifies the file in
the load log whatever its name. Lines are bytes: decoding and NUL checks are per line so one
bad line is rejected instead of breaking the file.

Memory per line is bounded: the file is read in fixed-size chunks and split on ``\n``; a line
longer than ``max_line_bytes`` (the ``RECSYS_MAX_LINE_BYTES`` setting) is never assembled. Its
first :data:`LONG_LINE_PREFIX` bytes are kept, the rest is counted and skipped, and it comes out
as a :class:`LongLine` so the loader rejects it with its line number.

A file that cannot be read to the end (truncated or corrupt gzip, I/O error) raises
:class:`~recsys.errors.InputError` with one line, whichever line it breaks at.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path

from recsys.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"
_BUFFER = 1 << 20

DEFAULT_MAX_LINE_BYTES = 1 << 20
"""Default cap on one line's length in bytes (newline excluded); longer lines are rejected."""

LONG_LINE_PREFIX = 100_000
"""How many leading bytes of an over-long line are kept (for the rejected row)."""

_READ_ERRORS = (OSError, EOFError, gzip.BadGzipFile, zlib.error)
"""What reading a damaged file raises: I/O errors, truncated or corrupt gzip streams."""


class LongLine(bytes):
    """The first bytes of a line longer than the cap; ``length`` is the whole line's length."""

    length: int

    def __new__(cls, prefix: bytes, length: int) -> LongLine:
        line = super().__new__(cls, prefix)
        line.length = length
        return line


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


def file_problem(path: Path) -> str | None:
    """Why ``path`` is not a regular file to read, in a few words; None when it is one.

    Follows symlinks, telling a symlink loop and a dangling symlink apart from a missing file,
    and names FIFOs, sockets and devices (opening a FIFO would block until a writer comes).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symlink loop (too many levels of symbolic links)"
        if err.errno == errno.ENOENT and os.path.islink(path):
            return f"broken symlink (to {os.readlink(path)})"
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return "no such file"
        return f"cannot read: {err.strerror or err}"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "not a regular file (a directory)"
    if stat.S_ISFIFO(mode):
        return "not a regular file (a FIFO)"
    if stat.S_ISSOCK(mode):
        return "not a regular file (a socket)"
    return "not a regular file (a device)"


def check_readable(path: Path) -> None:
    """One clear line for a missing, unreadable or empty file (or a FIFO, a symlink loop...)."""
    problem = file_problem(path)
    if problem is not None:
        raise InputError(f"{path}: {problem}")
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from err
    if not head:
        raise InputError(f"{path}: file is empty")


class LineSource:
    """Numbered raw lines of a file (1-based), with the stored bytes hashed and counted.

    Use as a context manager; iterate for ``(line_no, bytes_without_newline)``. A line longer
    than ``max_line_bytes`` comes as a :class:`LongLine` holding only its first bytes.
    """

    def __init__(self, path: Path, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        check_readable(path)
        if max_line_bytes < 1:
            raise InputError(f"the line cap must be at least 1 byte, got {max_line_bytes}")
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.size = path.stat().st_size
        self._hashing = HashingReader(open(path, "rb", buffering=0))  # noqa: SIM115
        buffered = io.BufferedReader(self._hashing, buffer_size=_BUFFER)
        self._buffered = buffered
        self._stream: io.BufferedIOBase
        if buffered.peek(2)[:2] == GZIP_MAGIC:
            self._stream = gzip.GzipFile(fileobj=buffered)
        else:
            self._stream = buffered

    def __enter__(self) -> LineSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stream.close()
        self._buffered.close()  # GzipFile does not close the file it reads from

    @property
    def bytes_read(self) -> int:
        """Stored bytes consumed so far (for progress)."""
        return self._hashing.position

    def sha256(self) -> str:
        """The file's sha256; reads the rest of the stored bytes if the lines were not all read."""
        while self._hashing.readinto(bytearray(_BUFFER)):
            pass
        return self._hashing.sha256.hexdigest()

    def _chunks(self) -> Iterator[bytes]:
        read = self._stream.read
        while True:
            try:
                chunk = read(_BUFFER)
            except _READ_ERRORS as err:
                raise InputError(f"{self.path}: cannot read: {read_error_reason(err)}") from err
            if not chunk:
                return
            yield chunk

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        cap = self.max_line_bytes
        line_no = 0
        pending = bytearray()  # the start of the current line (at most ``cap`` bytes)
        long_prefix: bytes | None = None  # set while inside an over-long line
        long_length = 0
        for chunk in self._chunks():
            parts = chunk.split(b"\n")
            tail = parts.pop()  # the unfinished line after the chunk's last newline
            if parts:
                start = 0
                if long_prefix is not None:  # this chunk ends the over-long line
                    line_no += 1
                    prefix = _extend(long_prefix, parts[0])
                    yield line_no, LongLine(prefix, long_length + len(parts[0]))
                    long_prefix = None
                    long_length = 0
                    start = 1
                elif pending:
                    pending += parts[0]
                    parts[0] = bytes(pending)
                    pending.clear()
                for part in parts[start:]:
                    line_no += 1
                    if len(part) > cap:
                        yield line_no, LongLine(part[:LONG_LINE_PREFIX], len(part))
                    elif part.endswith(b"\r"):
                        yield line_no, part[:-1]
                    else:
                        yield line_no, part
            if long_prefix is not None:
                long_prefix = _extend(long_prefix, tail)
                long_length += len(tail)
            else:
                pending += tail
                if len(pending) > cap:
                    long_prefix = bytes(pending[:LONG_LINE_PREFIX])
                    long_length = len(pending)
                    pending.clear()
        if long_prefix is not None:
            yield line_no + 1, LongLine(long_prefix, long_length)
        elif pending:
            yield line_no + 1, bytes(pending)


def file_sha256(path: Path) -> str:
    """sha256 of the stored bytes of ``path``."""
    check_readable(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_BUFFER):
            digest.update(chunk)
    return digest.hexdigest()


def _extend(prefix: bytes, more: bytes) -> bytes:
    """``prefix + more`` up to :data:`LONG_LINE_PREFIX` bytes."""
    room = LONG_LINE_PREFIX - len(prefix)
    return prefix + more[:room] if room > 0 else prefix


def read_error_reason(err: BaseException) -> str:
    """The one-line reason a file could not be read (a damaged gzip stream named as such)."""
    if isinstance(err, zlib.error):
        return f"corrupt gzip data ({err})"
    if isinstance(err, EOFError):
        return f"truncated gzip file ({err})"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def head_lines(
    path: Path, limit: int = 20, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> list[bytes]:
    """The first non-blank lines (for format detection); over-long ones as :class:`LongLine`."""
    lines: list[bytes] = []
    with LineSource(path, max_line_bytes=max_line_bytes) as source:
        for _, line in source:
            if line.strip():
                lines.append(line)
                if len(lines) >= limit:
                    break
    return lines
