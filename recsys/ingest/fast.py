"""The fast path for delimited rating files: vectorised parsing, dedupe and id mapping in-process.

Used by :func:`recsys.ingest.load.load_file` for the formats in :data:`LAYOUTS` (the seed's
ratings CSV, MovieLens ``u.data`` and ``ratings.csv``). It gives the same database, the same
counts and the same rejected rows as the general path (:mod:`recsys.ingest.stage`), faster:

1. The file (plain or gzip, hashed on the way) is read in blocks of whole lines. In each block,
   numpy finds the lines and classifies them: a *plain* line (printable ASCII without quotes or
   backslashes, exactly three delimiters, non-empty ids, a rating written ``d``, ``d.0`` or
   ``d.5`` inside the format's scale, a timestamp of digits between 1973 and now) is parsed
   vectorised. Every other line goes through the general path's own per-line parser
   (:func:`recsys.ingest.stage.parse_line`), so it is accepted or rejected, with its line number
   and reason, exactly as there.
2. External ids are coded per block (:class:`_Codes`): each distinct id gets a code when it is
   first seen, found later by its 64-bit hash in a sorted table of the ids seen so far and
   checked against the id stored for that code (a hash collision sends the file to the general
   path). The file is held as codes, block by block (13 bytes a line, never concatenated).
3. In the file's transaction: users and products are locked, the ids of those already stored
   are read with one join, new ones get ids reserved from the identity sequence and are COPYed
   in. The lines are then split by ranges of user ids into parts of about a million lines; in
   each part the latest rating per (user, product) is picked with numpy (equal timestamps: the
   later line), and the parts go in, in order, by COPY BINARY, which is primary-key order. Into
   an empty ``ratings`` table they go straight in, with its primary key, product index and
   foreign keys built after the COPY (in the same transaction); otherwise they are staged and
   merged with the general path's ``ON CONFLICT`` rule (a stored rating is replaced by one as
   recent or more recent).

Nothing is written before the whole file has been read. Whatever the fast path does not
represent raises :class:`FastPathUnsupported` before that point, and the caller loads the file
with the general path instead: a line longer than :data:`MAX_LINE` bytes, a non-integer
timestamp or an unusual rating accepted by the format's parser, more than :data:`MAX_ROWS`
lines. A file that cannot be read (a corrupt or truncated gzip) is an :class:`InputError` with
one line, as on the general path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import io
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import sqlalchemy as sa

from recsys.db.copy import driver_connection
from recsys.errors import InputError
from recsys.ingest.merge import MERGE_CONFLICT, merge_ratings
from recsys.ingest.reader import GZIP_MAGIC, HashingReader, check_readable, read_error_reason
from recsys.ingest.rows import MAX_EPOCH_SECONDS, BadLine, Format, LoadLimits, RatingRow
from recsys.ingest.stage import FileProgress, is_header, parse_line
from recsys.ingest.summary import Counts, Rejects

_log = logging.getLogger(__name__)
T = TypeVar("T")

BLOCK_BYTES = 8 << 20
"""Decompressed bytes parsed at a time (whole lines)."""
MAX_LINE = 4096
"""A line longer than this sends the file to the general path (rating lines are ~40 bytes)."""
MAX_ROWS = 50_000_000
"""Files with more lines go to the general path, whose memory does not grow with the file."""
_MIN_PLAIN_EPOCH = 100_000_000
"""Timestamps before this (1973) are left to the format's parser to judge."""
_COPY_ROWS = 1_000_000
_PG_EPOCH = 946_684_800  # 2000-01-01 in unix seconds: the zero of PostgreSQL's timestamps


_RELEASE_BLOCKS = 8
"""The read hands freed memory back every this many blocks: the C heap keeps each block's
freed temporaries between the small arrays the file is held in, and would otherwise grow by
about as much as the held file itself over a long read."""


def release_memory() -> None:
    """Hand memory freed by pyarrow's pool and by the C heap back to the operating system.

    Both keep freed pages for reuse, which after large temporaries (the last blocks' tables,
    the id lookups, the sorted parts) would otherwise stay in the process until it ends.
    """
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


class FastPathUnsupported(Exception):
    """The file needs the general path; nothing has been written."""


@dataclass(frozen=True)
class Layout:
    """Where a delimited rating format keeps its four fields, and its rating scale."""

    delimiter: int
    product: int
    user: int
    rating: int
    timestamp: int
    low2: int
    """Lowest rating, in half stars."""
    high2: int
    """Highest rating, in half stars."""
    half: bool
    """Whether ``d.5`` ratings are on the scale."""


LAYOUTS: dict[str, Layout] = {
    "ratings-csv": Layout(ord(","), 0, 1, 2, 3, 2, 10, False),
    "movielens100k-ratings": Layout(ord("\t"), 1, 0, 2, 3, 2, 10, False),
    "movielens-ratings": Layout(ord(","), 1, 0, 2, 3, 1, 10, True),
}
"""Formats the fast path reads: each must parse every plain line as its format's parser does."""


def supports(fmt: Format) -> bool:
    """Whether the fast path reads files of this format."""
    return fmt.name in LAYOUTS


# --- reading ----------------------------------------------------------------------------------


class _Blocks:
    """A file's decompressed bytes in blocks of whole lines, with the stored bytes hashed."""

    def __init__(self, path: Path, max_line: int = MAX_LINE) -> None:
        check_readable(path)
        self.path = path
        self.max_line = max_line
        self.size = path.stat().st_size
        self._hashing = HashingReader(open(path, "rb", buffering=0))  # noqa: SIM115
        buffered = io.BufferedReader(self._hashing, buffer_size=1 << 20)
        if buffered.peek(2)[:2] == GZIP_MAGIC:
            self._stream: io.BufferedIOBase = gzip.GzipFile(fileobj=buffered)  # type: ignore[assignment]
        else:
            self._stream = buffered

    def __enter__(self) -> _Blocks:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()

    @property
    def bytes_read(self) -> int:
        return self._hashing.position

    def sha256(self) -> str:
        while self._hashing.readinto(bytearray(1 << 20)):
            pass
        return self._hashing.sha256.hexdigest()

    def __iter__(self) -> Iterator[bytes]:
        carry = b""
        while True:
            try:
                chunk = self._stream.read(BLOCK_BYTES)
            except (OSError, EOFError, zlib.error) as err:  # corrupt or truncated gzip
                raise InputError(f"{self.path}: cannot read: {read_error_reason(err)}") from err
            if not chunk:
                if carry:
                    yield carry  # a last line without a newline
                return
            data = carry + chunk if carry else chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
            else:
                carry = data[cut + 1 :]
                yield data[: cut + 1]
            if len(carry) > self.max_line:
                raise FastPathUnsupported(f"a line longer than {self.max_line} bytes")


# --- vectorised parsing of one block ----------------------------------------------------------

_COLUMNS = ["f0", "f1", "f2", "f3"]


def _spellings(layout: Layout) -> tuple[pa.Array, np.ndarray]:
    """The plain spellings of every rating on the scale, and each one's value in half stars."""
    words: list[str] = []
    halves: list[int] = []
    for half in range(layout.low2, layout.high2 + 1):
        if half % 2 == 0:
            words += [str(half // 2), f"{half // 2}.0"]
            halves += [half, half]
        elif layout.half:
            words.append(f"{half // 2}.5")
            halves.append(half)
    return pa.array(words, type=pa.string()), np.array(halves, dtype=np.uint8)


_SPELLINGS = {name: _spellings(layout) for name, layout in LAYOUTS.items()}


@dataclass
class _Block:
    starts: np.ndarray
    ends: np.ndarray
    plain: np.ndarray
    """Per line: parsed here (True) or left to the format's parser."""
    users: pa.Array
    products: pa.Array
    half: np.ndarray
    ts: np.ndarray


def _scan(block: bytes, fmt_name: str, now: int, max_line: int = MAX_LINE) -> _Block:
    """Find the lines of ``block`` and parse the plain ones (see the module docstring)."""
    layout = LAYOUTS[fmt_name]
    buf = np.frombuffer(block, dtype=np.uint8)
    size = len(buf)
    # newlines and every byte a plain line cannot hold, in one pass
    odd = np.flatnonzero((buf < 0x21) | (buf > 0x7E) | (buf == 0x22) | (buf == 0x5C))
    odd_bytes = buf[odd]
    ends = odd[odd_bytes == 10]
    if not len(ends) or ends[-1] != size - 1:
        ends = np.append(ends, size)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    odd = odd[odd_bytes != 10]
    if len(odd):
        if layout.delimiter == 9:
            odd = odd[buf[odd] != 9]
        after = buf[np.minimum(odd + 1, size - 1)]
        odd = odd[~((buf[odd] == 13) & (odd + 1 < size) & (after == 10))]  # CR of a CRLF
    plain = np.ones(len(starts), dtype=bool)
    plain[np.searchsorted(ends, odd)] = False
    cr = (ends < size) & (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    ends = ends - cr  # "\r\n" ends a line like "\n"
    if int((ends - starts).max()) > max_line:
        raise FastPathUnsupported(f"a line longer than {max_line} bytes")
    delims = np.flatnonzero(buf == layout.delimiter)
    per_line = np.bincount(np.searchsorted(ends, delims), minlength=len(starts))
    plain &= per_line == 3
    first = np.zeros(len(starts), dtype=np.int64)
    np.cumsum(per_line[:-1], out=first[1:])
    lines = np.flatnonzero(plain)
    if len(lines):
        d1, d2, d3 = (delims[np.minimum(first[lines] + k, len(delims) - 1)] for k in range(3))
        full = (d1 > starts[lines]) & (d2 > d1 + 1) & (d3 > d2 + 1) & (ends[lines] > d3 + 1)
        plain[lines[~full]] = False
        lines = lines[full]
    empty = pa.array([], type=pa.string())
    if not len(lines):
        return _Block(
            starts, ends, plain, empty, empty, np.zeros(0, np.uint8), np.zeros(0, np.int64)
        )
    if len(lines) == len(starts):
        data = pa.py_buffer(block)
    else:  # only the plain lines go to the CSV parser
        next_starts = np.append(starts[1:], size)
        data = pa.py_buffer(buf[np.repeat(plain, next_starts - starts)].tobytes())
    table = pacsv.read_csv(
        data,
        read_options=pacsv.ReadOptions(column_names=_COLUMNS, block_size=2 * BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(
            delimiter=chr(layout.delimiter), quote_char=False, escape_char=False
        ),
        convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(_COLUMNS, pa.string())),
    )
    if table.num_rows != len(lines):
        raise FastPathUnsupported("the CSV parser saw other lines")
    spellings, halves = _SPELLINGS[fmt_name]
    column = table.column
    rating = pc.fill_null(pc.index_in(column(_COLUMNS[layout.rating]), value_set=spellings), -1)
    rating = rating.to_numpy()
    stamp = column(_COLUMNS[layout.timestamp])
    digits = pc.match_substring_regex(stamp, "^[0-9]{1,10}$")
    ts = pc.cast(pc.if_else(digits, stamp, "0"), pa.int64()).to_numpy()
    ok = (rating >= 0) & digits.to_numpy(zero_copy_only=False)
    ok &= (ts >= _MIN_PLAIN_EPOCH) & (ts < min(now, MAX_EPOCH_SECONDS))
    plain[lines[~ok]] = False
    keep = pa.array(ok)
    return _Block(
        starts=starts,
        ends=ends,
        plain=plain,
        users=column(_COLUMNS[layout.user]).combine_chunks().filter(keep),
        products=column(_COLUMNS[layout.product]).combine_chunks().filter(keep),
        half=halves[rating[ok]],
        ts=ts[ok],
    )


# --- the file as codes ------------------------------------------------------------------------


_HASH_MASKS = np.array([(1 << (8 * r)) - 1 for r in range(8)] + [2**64 - 1], dtype=np.uint64)
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xBF58476D1CE4E5B9)


def _string_parts(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The offsets (int64, ``len + 1``, from 0) and bytes of a string array without nulls."""
    n = len(strings)
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)[
        strings.offset : strings.offset + n + 1
    ].astype(np.int64)
    buffer = strings.buffers()[2]
    data = np.frombuffer(buffer, dtype=np.uint8) if buffer is not None else np.zeros(0, np.uint8)
    data = data[offsets[0] : offsets[-1]]
    return offsets - offsets[0], data


def hash64(strings: pa.Array) -> np.ndarray:
    """A 64-bit hash of each string (no nulls): its bytes read 8 at a time, mixed with its
    length. Equal strings hash equal; different strings almost never do (callers check)."""
    n = len(strings)
    if pa.types.is_large_string(strings.type):
        strings = strings.cast(pa.string())
    offsets, data = _string_parts(strings)
    start, length = offsets[:-1], np.diff(offsets)
    padded = np.concatenate([data, np.zeros(8, dtype=np.uint8)])
    windows = np.lib.stride_tricks.as_strided(padded, shape=(len(padded) - 7, 8), strides=(1, 1))
    h = length.astype(np.uint64) * _K2
    top = int(length.max()) if n else 0
    for k in range(0, top, 8):
        live = np.flatnonzero(length > k) if k else np.arange(n)
        word = windows[start[live] + k].copy().view("<u8").ravel()
        word &= _HASH_MASKS[np.minimum(length[live] - k, 8)]
        mixed = h[live] ^ word
        mixed *= _K1
        mixed ^= mixed >> np.uint64(31)
        h[live] = mixed
    h ^= h >> np.uint64(33)
    h *= _K2
    h ^= h >> np.uint64(29)
    return h


class _Strings:
    """A string array that grows at its end (its buffers grown in place, see :func:`_grown`)."""

    def __init__(self) -> None:
        self._data = np.zeros(1 << 16, dtype=np.uint8)
        self._offsets = np.zeros(1 << 12, dtype=np.int32)
        self.length = 0

    def extend(self, strings: pa.Array) -> None:
        """Append ``strings``. No :meth:`array` of this object may be alive (its buffers move)."""
        offsets, data = _string_parts(strings)
        used = int(self._offsets[self.length])
        if used + len(data) >= 2**31:
            raise FastPathUnsupported("more than 2 GB of distinct ids")
        self._data = _grown(self._data, used + len(data))
        self._offsets = _grown(self._offsets, self.length + len(offsets))
        self._data[used : used + len(data)] = data
        self._offsets[self.length + 1 : self.length + len(offsets)] = offsets[1:] + used
        self.length += len(offsets) - 1

    def trim(self) -> None:
        """Give back the room beyond the strings (before the last :meth:`array`)."""
        self._data.resize(max(1, int(self._offsets[self.length])), refcheck=False)
        self._offsets.resize(self.length + 1, refcheck=False)

    def array(self) -> pa.Array:
        """The strings so far (a view: valid while this object lives and does not grow)."""
        used = int(self._offsets[self.length])
        return pa.StringArray.from_buffers(
            self.length,
            pa.py_buffer(self._offsets[: self.length + 1]),
            pa.py_buffer(self._data[:used]),
        )


def _grown(array: np.ndarray, needed: int) -> np.ndarray:
    """``array`` with room for ``needed`` entries, resized in place by a quarter at least.

    ``ndarray.resize`` is ``realloc``, which moves a large buffer without copying it, so no
    second buffer is held while the first is copied (doubling into a new array would hold
    three times the data at each growth). It zero-fills the new room, so the room is kept to
    a quarter. No view of ``array`` may be alive: its memory may move.
    """
    if needed > len(array):
        array.resize(max(needed, len(array) + len(array) // 4, 1 << 12), refcheck=False)
    return array


_MOVE_ROWS = 1 << 20
"""Entries of a :class:`_SortedTable` moved at a time when new ones are inserted."""


class _SortedTable:
    """Sorted distinct uint64 keys, each with an int32 value, grown in place.

    An insertion moves the existing entries to their new places from the end, a chunk at a
    time, inside buffers grown in place (:func:`_grown`); ``np.insert`` would build a whole new
    table per insertion and hold the old one meanwhile. No view of :attr:`keys` or
    :attr:`values` may be alive across an insertion.
    """

    def __init__(self) -> None:
        self._keys = np.zeros(0, dtype=np.uint64)
        self._values = np.zeros(0, dtype=np.int32)
        self.n = 0

    @property
    def keys(self) -> np.ndarray:
        return self._keys[: self.n]

    @property
    def values(self) -> np.ndarray:
        return self._values[: self.n]

    def insert(self, at: np.ndarray, keys: np.ndarray, values: np.ndarray) -> None:
        """Insert sorted ``keys`` (none present) at ``at = searchsorted(self.keys, keys)``."""
        k, n = len(keys), self.n
        if not k:
            return
        self._keys = _grown(self._keys, n + k)
        self._values = _grown(self._values, n + k)
        placed = at + np.arange(k)  # the new keys' final positions, ascending
        top, moved_to, pending = n + k, n, k  # invariant: top - moved_to == pending
        while pending:  # windows of final positions, from the end: nothing unread is hit
            bottom = max(0, top - _MOVE_ROWS)
            first = int(np.searchsorted(placed[:pending], bottom))
            old = (top - bottom) - (pending - first)
            keep = np.ones(top - bottom, dtype=bool)
            keep[placed[first:pending] - bottom] = False
            self._keys[bottom:top][keep] = self._keys[moved_to - old : moved_to].copy()
            self._values[bottom:top][keep] = self._values[moved_to - old : moved_to].copy()
            self._keys[placed[first:pending]] = keys[first:pending]
            self._values[placed[first:pending]] = values[first:pending]
            top, moved_to, pending = bottom, moved_to - old, first
        self.n = n + k


class _Codes:
    """External ids as integer codes into one dictionary, built block by block (a block's new
    ids get the next codes, in the order of their hashes).

    The ids seen so far are kept as a sorted table of their 64-bit hashes with each one's code
    (:class:`_SortedTable`), so a block's ids are looked up with a binary search (no hash table
    rebuilt per block). Every id is compared with the dictionary's string for its code, so a
    hash collision cannot mix two ids: it sends the file to the general path.
    """

    def __init__(self) -> None:
        self._strings = _Strings()
        self._table = _SortedTable()
        self._codes: list[np.ndarray] = []

    @property
    def dictionary(self) -> pa.Array:
        return self._strings.array()

    def add(self, values: pa.Array) -> None:
        if values.null_count:
            raise FastPathUnsupported("a missing id")
        hashes = hash64(values)
        unique, inverse = np.unique(hashes, return_inverse=True)
        inverse = inverse.ravel()
        first = np.empty(len(unique), dtype=np.int64)
        first[inverse] = np.arange(len(values))  # a line of each hash (any one: checked below)
        representative = values.take(pa.array(first))
        if (
            len(values)
            and not pc.all(pc.equal(values, representative.take(pa.array(inverse)))).as_py()
        ):
            raise FastPathUnsupported("two ids with one hash")
        table = self._table.keys
        at = np.searchsorted(table, unique)
        found = at < len(table)
        found[found] = table[at[found]] == unique[found]
        del table  # a view: the table may move when it grows below
        codes = np.empty(len(unique), dtype=np.int32)
        codes[found] = self._table.values[at[found]]
        if found.any():
            known = self._strings.array().take(pa.array(codes[found]))
            if not pc.all(pc.equal(representative.filter(pa.array(found)), known)).as_py():
                raise FastPathUnsupported("two ids with one hash")
        new = np.flatnonzero(~found)
        if len(new):
            if self._strings.length + len(new) >= 2**31:
                raise FastPathUnsupported("too many distinct ids")
            codes[new] = self._strings.length + np.arange(len(new), dtype=np.int32)
            self._strings.extend(representative.take(pa.array(new)))
            self._table.insert(at[new], unique[new], codes[new])
        self._codes.append(codes[inverse])

    def finish(self) -> list[np.ndarray]:
        """The codes of each block added, in order (no more ids may be added)."""
        self._table = _SortedTable()
        self._strings.trim()
        codes, self._codes = self._codes, []
        return codes


@dataclass
class Lines:
    """The valid lines of one block of a file, in order."""

    user_codes: np.ndarray
    """Index into :attr:`ParsedRatings.users` (int32)."""
    product_codes: np.ndarray
    half: np.ndarray
    """Ratings in half stars (uint8)."""
    ts: np.ndarray
    """Unix seconds (uint32)."""


@dataclass
class ParsedRatings:
    """A rating file read by the fast path: ids as codes, the valid lines block by block.

    The blocks are kept apart (never concatenated), so that the file is held once, at about
    13 bytes a line, and the write works through it in pieces.
    """

    users: pa.Array
    """Distinct external user ids; the blocks' ``user_codes`` index it."""
    products: pa.Array
    blocks: list[Lines]
    sha256: str


def _slow_rows(
    block: bytes,
    scan: _Block,
    lines: np.ndarray,
    base: int,
    fmt: Format,
    parse,
    rejects: Rejects,
    limits: LoadLimits,
) -> list[tuple[int, RatingRow]]:
    rows: list[tuple[int, RatingRow]] = []
    for i in lines.tolist():
        line_no = base + i + 1
        raw = block[int(scan.starts[i]) : int(scan.ends[i])]
        try:
            row = parse_line(raw, parse, fmt.encoding, limits)
        except BadLine as err:
            rejects.add(line_no, raw, str(err))
            continue
        if row.timestamp != int(row.timestamp) or row.rating * 2 != int(row.rating * 2):
            raise FastPathUnsupported(f"line {line_no}: a value the fast path does not store")
        rows.append((line_no, row))  # type: ignore[arg-type]
    return rows


def read_ratings(
    path: Path,
    fmt: Format,
    counts: Counts,
    rejects: Rejects,
    progress: FileProgress,
    limits: LoadLimits | None = None,
) -> ParsedRatings:
    """Read a rating file of a :data:`LAYOUTS` format (see the module docstring).

    Raises:
        FastPathUnsupported: the file needs the general path.
    """
    parse = fmt.parser_for(path)
    limits = LoadLimits() if limits is None else limits
    now = int(min(time.time(), limits.latest_timestamp))
    users, products = _Codes(), _Codes()
    halves: list[np.ndarray] = []
    stamps: list[np.ndarray] = []
    base = 0
    # a line the general path would reject as over the cap goes there, with its reason
    max_line = min(MAX_LINE, limits.max_line_bytes)
    with _Blocks(path, max_line) as blocks:
        for block in blocks:
            scan = _scan(block, fmt.name, now, max_line)
            n_lines = len(scan.starts)
            other = ~scan.plain
            if base == 0 and fmt.header is not None:
                if is_header(1, block[: int(scan.ends[0])], fmt):
                    other[0] = False
                    counts.read -= 1
            counts.read += n_lines
            slow = _slow_rows(block, scan, np.flatnonzero(other), base, fmt, parse, rejects, limits)
            block_users, block_products = scan.users, scan.products
            half, ts = scan.half, scan.ts
            if slow:
                fast_lines = np.flatnonzero(scan.plain)
                order = np.argsort(
                    np.concatenate([fast_lines, [n - base - 1 for n, _ in slow]]), kind="stable"
                )
                block_users = pa.concat_arrays(
                    [block_users, pa.array([r.user for _, r in slow], type=pa.string())]
                ).take(pa.array(order))
                block_products = pa.concat_arrays(
                    [block_products, pa.array([r.product for _, r in slow], type=pa.string())]
                ).take(pa.array(order))
                half = np.concatenate(
                    [half, np.array([round(r.rating * 2) for _, r in slow], dtype=np.uint8)]
                )[order]
                ts = np.concatenate(
                    [ts, np.array([int(r.timestamp) for _, r in slow], dtype=np.int64)]
                )[order]
            users.add(block_users)
            products.add(block_products)
            halves.append(half)
            stamps.append(ts.astype(np.uint32))  # < MAX_EPOCH_SECONDS < 2**32
            base += n_lines
            if len(halves) % _RELEASE_BLOCKS == 0:
                release_memory()
            if base > MAX_ROWS:
                raise FastPathUnsupported(f"more than {MAX_ROWS:,} lines")
            progress.update(counts.read, blocks.bytes_read)
        sha256 = blocks.sha256()
    lines = [
        Lines(user_codes=u, product_codes=p, half=h, ts=t)
        for u, p, h, t in zip(users.finish(), products.finish(), halves, stamps, strict=True)
    ]
    release_memory()
    return ParsedRatings(
        users=users.dictionary, products=products.dictionary, blocks=lines, sha256=sha256
    )


# --- writing ----------------------------------------------------------------------------------


def _csv_chunks(
    ids: np.ndarray, external: pa.Array, index: np.ndarray | None = None
) -> Iterator[bytes]:
    """``id,external_id`` lines as COPY CSV (pyarrow quotes every string).

    Without ``index``, ``ids[i]`` goes with ``external[i]``; with it, line i is
    ``ids[index[i]]`` with ``external[index[i]]`` (gathered a chunk at a time).
    """
    options = pacsv.WriteOptions(include_header=False)
    n = len(ids) if index is None else len(index)
    for start in range(0, n, _COPY_ROWS):
        if index is None:
            names = external.slice(start, _COPY_ROWS)
            chunk = ids[start : start + _COPY_ROWS]
        else:
            at = index[start : start + _COPY_ROWS]
            names = external.take(pa.array(at))
            chunk = ids[at]
        table = pa.table({"id": pa.array(chunk), "external_id": names})
        sink = io.BytesIO()
        pacsv.write_csv(table, sink, options)
        yield sink.getvalue()


def _copy_in(conn: sa.Connection, statement: str, chunks: Iterator[bytes | memoryview]) -> None:
    with driver_connection(conn).cursor() as cur:
        with cur.copy(statement) as copy:
            for chunk in chunks:
                copy.write(chunk)


def _copy_out(conn: sa.Connection, statement: str) -> bytes:
    out = io.BytesIO()
    with driver_connection(conn).cursor() as cur:
        with cur.copy(statement) as copy:
            for data in copy:
                out.write(data)
    return out.getvalue()


_SORT_CHUNK = 1 << 16
"""Strings sorted by their words at a time (bounds the words and the byte matrix)."""


def _common_prefix(offsets: np.ndarray, data: np.ndarray, lengths: np.ndarray) -> int:
    """The number of leading bytes every string shares."""
    starts = offsets[:-1]
    first = data[starts[0] : starts[0] + int(lengths.min())]
    for at, byte in enumerate(first.tolist()):
        if not (data[starts + at] == byte).all():
            return at
    return len(first)


def _words(
    offsets: np.ndarray, data: np.ndarray, lengths: np.ndarray, index: np.ndarray, skip: int
) -> np.ndarray:
    """The bytes of ``strings[index]`` from byte ``skip`` on, zero-padded to a multiple of 8
    and read as big-endian uint64 words: uint64 [words, len(index)]."""
    size = lengths[index] - skip
    width = max(8, -(-int(size.max()) // 8) * 8)
    m = len(index)
    rows = np.repeat(np.arange(m, dtype=np.int32), size)
    within = np.arange(len(rows), dtype=np.int32)
    within -= np.repeat(np.cumsum(size, dtype=np.int32) - size, size)
    source = np.repeat(offsets[index] + skip, size)
    source += within
    matrix = np.zeros((m, width), dtype=np.uint8)
    matrix[rows, within] = data[source]
    return matrix.view(">u8").astype(np.uint64).T


_KEY_ROWS = 1 << 20
"""Strings bucketed at a time (bounds the bucketing's temporaries)."""


def _bucket_order(
    offsets: np.ndarray, data: np.ndarray, lengths: np.ndarray, at: int
) -> tuple[np.ndarray, np.ndarray]:
    """A stable order of the strings by their two bytes from byte ``at`` (missing bytes are 0),
    int32, and the end of each non-empty bucket in it, without any whole-array int64 index."""
    n = len(lengths)
    key = np.zeros(n, dtype=np.uint16)
    for start in range(0, n, _KEY_ROWS):
        stop = min(n, start + _KEY_ROWS)
        size, first = lengths[start:stop], offsets[start:stop]
        for byte, shift in ((0, 8), (1, 0)):
            has = size > at + byte
            position = np.where(has, first + (at + byte), 0)
            key[start:stop] |= np.where(has, data[position], 0).astype(np.uint16) << shift
    counts = np.bincount(key, minlength=1 << 16)
    ends = np.cumsum(counts)
    filled = ends - counts  # per key: where its next string goes
    order = np.empty(n, dtype=np.int32)
    for start in range(0, n, _KEY_ROWS):
        piece = key[start : start + _KEY_ROWS]
        local = np.argsort(piece, kind="stable")
        keys = piece[local]
        rank = np.arange(len(keys)) - np.searchsorted(keys, keys, side="left")
        order[filled[keys] + rank] = local + start
        filled += np.bincount(piece, minlength=1 << 16)
    return order, ends[np.flatnonzero(counts)]


def byte_order(strings: pa.Array) -> np.ndarray:
    """The permutation that sorts ``strings`` (no nulls) by their UTF-8 bytes, as int32 indices.

    The strings are bucketed by the two bytes after the prefix they all share (a stable
    argsort of one uint16 key; a string that ends there counts its missing bytes as 0), then
    sorted a few buckets at a time: each string zero-padded to a multiple of 8 bytes and read
    as big-endian 64-bit words, sorted by its words, the first the most significant
    (``np.lexsort``). That is byte order for strings without NUL bytes (the loader rejects
    those), the order of ``pyarrow.compute.sort_indices`` for distinct strings, without
    comparing strings. Memory: the key, the order and one batch's words, instead of every
    string's words at once.
    """
    n = len(strings)
    if n < 2:
        return np.arange(n, dtype=np.int32)
    if pa.types.is_large_string(strings.type) or n >= 2**31:
        return pc.sort_indices(strings).to_numpy()
    lengths = pc.binary_length(strings).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)[
        strings.offset : strings.offset + n + 1
    ]
    buffer = strings.buffers()[2]
    data = np.frombuffer(buffer, dtype=np.uint8) if buffer is not None else np.zeros(1, np.uint8)
    prefix = _common_prefix(offsets, data, lengths)
    order, ends = _bucket_order(offsets, data, lengths, prefix)
    start = 0
    while start < n:
        # whole buckets, about _SORT_CHUNK strings (one bucket when it alone is larger)
        last = max(
            np.searchsorted(ends, start + _SORT_CHUNK, side="right") - 1,
            np.searchsorted(ends, start, side="right"),
        )
        stop = int(ends[last])
        index = order[start:stop]
        if stop - start > 1:
            words = _words(offsets, data, lengths, index, prefix)
            order[start:stop] = index[np.lexsort(words[::-1])]
        start = stop
    return order


def _map_ids(
    conn: sa.Connection, table: str, external: pa.Array, *, rebuild_keys: bool = False
) -> tuple[np.ndarray, Callable[[], None]]:
    """Database ids for the external ids of ``table`` (users | products), reserving new ones.

    The stored ids are looked up and the new ones reserved from the identity sequence at once;
    the new rows are written by the returned function, so that PostgreSQL can insert them while
    this process goes on without the connection (see :func:`write_ratings`).

    Args:
        conn: the file's transaction, with ``table`` locked.
        table: ``users`` or ``products`` (one of our two constants, never user input).
        external: the file's distinct external ids.
        rebuild_keys: ``table`` is empty and no constraint refers to it, so its keys and indexes
            may be dropped before the COPY and rebuilt after it (one sort each instead of one
            index insertion per row).

    Returns:
        The id of each external id, and the function that writes the new rows.
    """
    n = len(external)
    ids = np.full(n, -1, dtype=np.int64)
    started = time.perf_counter()
    if n and not rebuild_keys:
        _lookup_ids(conn, table, external, ids)
    new = np.flatnonzero(ids < 0)
    if not len(new):
        return ids, lambda: None
    # ids in external-id order: the primary key and the unique index both fill at their
    # right edge (byte order is the index order under the C and C.UTF-8 collations)
    if len(new) == n:
        new = byte_order(external)
    else:
        new = new[byte_order(external.take(pa.array(new)))]
    new = new.astype(np.int32, copy=False)  # n < 2**31 (read_ratings); held until written
    sequence = conn.execute(
        sa.text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table}
    ).scalar_one()
    first = conn.execute(
        sa.text(f"SELECT greatest(nextval(:s), (SELECT coalesce(max(id), 0) + 1 FROM {table}))"),
        {"s": sequence},
    ).scalar_one()
    conn.execute(sa.text("SELECT setval(:s, :v)"), {"s": sequence, "v": first + len(new) - 1})
    ids[new] = first + np.arange(len(new), dtype=np.int64)
    drop, restore = _constraint_ddl(conn, table) if rebuild_keys else ([], [])

    def write() -> None:
        nonlocal external
        for ddl in drop:
            conn.execute(sa.text(ddl))
        if rebuild_keys:  # a new, empty file for the table in this transaction: frozen rows
            conn.execute(sa.text(f"TRUNCATE {table}"))
        _copy_in(
            conn,
            f"COPY {table} (id, external_id) FROM STDIN "
            f"(FORMAT csv{', FREEZE' if rebuild_keys else ''})",
            _csv_chunks(ids, external, new),
        )
        external = pa.array([], type=pa.string())  # the caller may free the dictionary now
        for ddl in restore:
            conn.execute(sa.text(ddl))
        _log.debug(
            "%s: %d known, %d new%s in %.1fs",
            table,
            n - len(new),
            len(new),
            ", keys rebuilt" if rebuild_keys else "",
            time.perf_counter() - started,
        )

    return ids, write


def _lookup_ids(conn: sa.Connection, table: str, external: pa.Array, ids: np.ndarray) -> None:
    """Fill ``ids[i]`` with the stored id of ``external[i]`` where ``table`` has it."""
    if not conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {table})")).scalar_one():
        return
    stage = f"stage_{table}_ids"
    conn.execute(
        sa.text(f"CREATE TEMP TABLE {stage} (code bigint, external_id text) ON COMMIT DROP")
    )
    _copy_in(
        conn,
        f"COPY {stage} (code, external_id) FROM STDIN (FORMAT csv)",
        _csv_chunks(np.arange(len(external), dtype=np.int64), external),
    )
    conn.execute(sa.text(f"ANALYZE {stage}"))
    found = _copy_out(
        conn,
        f"COPY (SELECT s.code, t.id FROM {stage} s JOIN {table} t USING (external_id)) "
        "TO STDOUT (FORMAT csv)",
    )
    if found:
        pairs = pacsv.read_csv(
            io.BytesIO(found),
            read_options=pacsv.ReadOptions(column_names=["code", "id"]),
            convert_options=pacsv.ConvertOptions(
                column_types={"code": pa.int64(), "id": pa.int64()}
            ),
        )
        ids[pairs["code"].to_numpy()] = pairs["id"].to_numpy()


_RATING_TUPLE = np.dtype(
    [
        ("fields", ">i2"),
        ("len_user", ">i4"),
        ("user_id", ">i8"),
        ("len_product", ">i4"),
        ("product_id", ">i8"),
        ("len_rating", ">i4"),
        ("rating", ">f4"),
        ("len_rated_at", ">i4"),
        ("rated_at", ">i8"),
    ]
)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"


_PART_ROWS = 500_000
"""Lines deduplicated and written at a time: the lines of a range of users."""
_AHEAD_PARTS = 8
"""Deduplicated parts (13 bytes a row) the worker thread may hold ready for the COPY."""
_SAMPLE_EVERY = 16
"""Every this many lines' user sets the user ranges."""


def _user_ranges(parsed: ParsedRatings, user_ids: np.ndarray) -> list[np.ndarray]:
    """Per block, each line's part: the index of its user's id range.

    The ranges split the ids in order, so that the parts in turn hold the lines of ever larger
    user ids, about :data:`_PART_ROWS` lines each (from a sample of the lines; the lines of one
    user are never split).
    """
    sample = np.concatenate(
        [user_ids[block.user_codes[::_SAMPLE_EVERY]] for block in parsed.blocks]
        or [np.zeros(0, np.int64)]
    )
    sample.sort()
    step = max(1, _PART_ROWS // _SAMPLE_EVERY)
    bounds = np.unique(sample[step::step])
    del sample
    dtype = np.uint8 if len(bounds) < 2**8 else np.uint16 if len(bounds) < 2**16 else np.uint32
    of_user = np.empty(len(user_ids), dtype=dtype)
    for start in range(0, len(user_ids), _KEY_ROWS):  # no whole-array int64 temporary
        stop = start + _KEY_ROWS
        of_user[start:stop] = np.searchsorted(bounds, user_ids[start:stop], side="right")
    return [of_user[block.user_codes] for block in parsed.blocks]


def _deduped(
    parsed: ParsedRatings, user_ids: np.ndarray, product_ids: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The latest line per (user, product), equal timestamps the later line, in key order.

    Yields, part by part (:func:`_user_ranges`), the winning lines as ``(keys, half, ts)``:
    ``keys = user_id * span + product_id`` sorted, with each one's rating and timestamp.
    """
    span = int(product_ids.max()) + 1 if len(product_ids) else 1
    top = int(user_ids.max()) if len(user_ids) else 0
    if top * span + span >= 2**63:
        raise FastPathUnsupported("ids too large for one sort key")
    parts = _user_ranges(parsed, user_ids)
    n_parts = max((int(part.max()) + 1 for part in parts if len(part)), default=0)
    for p in range(n_parts):
        keys_, halves, stamps = [], [], []
        for block, part in zip(parsed.blocks, parts, strict=True):
            at = np.flatnonzero(part == p)
            key = user_ids[block.user_codes[at]]
            key *= span
            key += product_ids[block.product_codes[at]]
            keys_.append(key)
            halves.append(block.half[at])
            stamps.append(block.ts[at])
        # gathered in line order: a position here orders lines as the file does
        keys, half, ts = np.concatenate(keys_), np.concatenate(halves), np.concatenate(stamps)
        del keys_, halves, stamps
        order = np.argsort(keys)
        keys = keys[order]
        keep = np.ones(len(keys), dtype=bool)
        same = np.flatnonzero(keys[1:] == keys[:-1])
        if len(same):
            repeated = np.zeros(len(keys), dtype=bool)
            repeated[same] = True
            repeated[same + 1] = True
            positions = np.flatnonzero(repeated)
            del repeated
            lines = order[positions]
            by = np.lexsort((lines, ts[lines], keys[positions]))
            sorted_keys = keys[positions][by]
            losers = positions[by][:-1][sorted_keys[:-1] == sorted_keys[1:]]
            keep[losers] = False
        winners = order[keep]
        yield keys[keep], half[winners], ts[winners]


def _rating_copy(
    parts: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], span: int, written: list[int]
) -> Iterator[bytes | memoryview]:
    """The deduplicated parts (:func:`_deduped`) as COPY BINARY data, in order; appends the count
    of each part's rows to ``written``."""
    yield _COPY_HEADER
    for keys, half, ts in parts:
        tuples = np.empty(len(keys), dtype=_RATING_TUPLE)
        tuples["fields"] = 4
        tuples["len_user"] = tuples["len_product"] = tuples["len_rated_at"] = 8
        tuples["len_rating"] = 4
        tuples["user_id"] = keys // span
        tuples["product_id"] = keys % span
        tuples["rating"] = half.astype(np.float32) / 2
        tuples["rated_at"] = (ts.astype(np.int64) - _PG_EPOCH) * 1_000_000
        written.append(len(tuples))
        del keys, half, ts
        yield memoryview(tuples.view(np.uint8))
    yield _COPY_TRAILER


class _Ahead(Generic[T]):
    """The items of an iterator, each made on a worker thread while the caller uses the one
    before (at most ``depth`` made ahead), from the moment this is created."""

    def __init__(self, items: Iterator[T], depth: int) -> None:
        self._items = items
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="recsys-ratings")
        self._pending = deque(self._pool.submit(self._next) for _ in range(depth))

    def _next(self) -> T | None:
        return next(self._items, None)

    def __iter__(self) -> Iterator[T]:
        while self._pending:
            item = self._pending.popleft().result()
            if item is None:
                return
            self._pending.append(self._pool.submit(self._next))
            yield item

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)
        self._pending.clear()


def _constraint_ddl(conn: sa.Connection, table: str) -> tuple[list[str], list[str]]:
    """DDL that drops the primary key, unique constraints, foreign keys and other indexes of
    ``table`` (one of our constants), and DDL that restores them with their names and
    definitions: the primary key first, then unique constraints, indexes, foreign keys."""
    drop: list[str] = []
    restore: list[str] = []
    constraints = conn.execute(
        sa.text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = CAST(:t AS regclass) AND contype IN ('p', 'u', 'f') "
            "ORDER BY contype DESC, conname"
        ),
        {"t": table},
    ).all()
    for name, definition in constraints:
        drop.append(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        restore.append(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    indexes = conn.execute(
        sa.text(
            "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = CAST(:t AS regclass) AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid) ORDER BY i.relname"
        ),
        {"t": table},
    ).all()
    for name, definition in indexes:
        drop.append(f'DROP INDEX "{name}"')
        restore.append(definition)
    primary = [r for r in restore if " PRIMARY KEY " in r]
    unique = [r for r in restore if " UNIQUE " in r and not r.startswith("CREATE")]
    creates = [r for r in restore if r.startswith("CREATE")]
    foreign = [r for r in restore if " FOREIGN KEY " in r]
    return drop, primary + unique + creates + foreign


def _referenced(conn: sa.Connection, table: str) -> bool:
    """Whether a foreign key of any table refers to ``table``."""
    return conn.execute(
        sa.text(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE confrelid = CAST(:t AS regclass))"
        ),
        {"t": table},
    ).scalar_one()


def _is_empty(conn: sa.Connection, table: str) -> bool:
    return not conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {table})")).scalar_one()


LOAD_SETTINGS = (
    "SET LOCAL maintenance_work_mem = '1GB'",
    "SET LOCAL work_mem = '256MB'",
)
"""Settings of the file's transaction: memory for rebuilding the ratings keys (sorts) and for
validating the rebuilt foreign keys and joining the ids (hash joins in memory, not in batches
on disk). ``LOCAL``: they end with the transaction."""


def write_ratings(conn: sa.Connection, parsed: ParsedRatings) -> int:
    """Merge a fast-read rating file into the database (in the caller's transaction).

    ``users``, ``products`` and ``ratings`` are locked (in that order) against other writers for
    the rest of the transaction. When ``ratings`` is empty, its keys, index and foreign keys are
    dropped first and rebuilt after its COPY; when ``users`` is empty too (a first load), so are
    the keys of ``users``. Rebuilding takes an exclusive lock, so readers of these tables (the
    ``current_recommendations`` view joins ``users``) wait for the load's commit in that case.
    The ratings are deduplicated part by part (the lines of a range of users at a time) on a
    worker thread, which starts while PostgreSQL writes the new users and products and keeps up
    to :data:`_AHEAD_PARTS` parts ready for the COPY; the connection is used by this thread only.

    Returns:
        The number of distinct (user, product) ratings in the file.
    """
    started = time.perf_counter()
    for setting in LOAD_SETTINGS:
        conn.execute(sa.text(setting))
    conn.execute(sa.text("LOCK TABLE users, products, ratings IN SHARE ROW EXCLUSIVE MODE"))
    empty = _is_empty(conn, "ratings")
    restore: list[str] = []
    freeze = False
    if empty:
        drop, restore = _constraint_ddl(conn, "ratings")
        for ddl in drop:
            conn.execute(sa.text(ddl))
        freeze = not _referenced(conn, "ratings")
        if freeze:  # a new, empty file for the table in this transaction: COPY may freeze rows
            conn.execute(sa.text("TRUNCATE ratings"))
    rebuild_users = empty and _is_empty(conn, "users") and not _referenced(conn, "users")
    user_ids, write_users = _map_ids(conn, "users", parsed.users, rebuild_keys=rebuild_users)
    product_ids, write_products = _map_ids(conn, "products", parsed.products)
    parsed.users = parsed.products = pa.array([], type=pa.string())  # the writers hold them
    _log.debug("ids mapped: %.1fs", time.perf_counter() - started)
    written: list[int] = []
    span = int(product_ids.max()) + 1 if len(product_ids) else 1
    parts = _Ahead(_deduped(parsed, user_ids, product_ids), _AHEAD_PARTS)
    try:
        chunks = _rating_copy(parts, span, written)
        write_users()
        write_products()
        del write_users, write_products  # and with them the dictionaries
        release_memory()
        _log.debug("users and products written: %.1fs", time.perf_counter() - started)
        if empty:
            _copy_in(
                conn,
                "COPY ratings (user_id, product_id, rating, rated_at) FROM STDIN "
                f"(FORMAT binary{', FREEZE' if freeze else ''})",
                chunks,
            )
        else:
            conn.execute(
                sa.text(
                    "CREATE TEMP TABLE stage_fast_ratings (user_id bigint, product_id bigint, "
                    "rating real, rated_at timestamptz) ON COMMIT DROP"
                )
            )
            _copy_in(
                conn,
                "COPY stage_fast_ratings (user_id, product_id, rating, rated_at) FROM STDIN "
                "(FORMAT binary)",
                chunks,
            )
    finally:
        parts.close()
    distinct = sum(written)
    parsed.blocks = []
    del user_ids, product_ids
    release_memory()
    _log.debug("ratings copied: %.1fs", time.perf_counter() - started)
    if empty:
        for ddl in restore:
            if " FOREIGN KEY " in ddl:
                # validated by a merge of the two key indexes (index-only: the rows are
                # frozen) instead of a hash of the referenced table
                conn.execute(sa.text("SET LOCAL enable_hashjoin = off"))
            conn.execute(sa.text(ddl))
        conn.execute(sa.text("SET LOCAL enable_hashjoin TO DEFAULT"))
    else:
        merge_ratings(
            conn,
            sa.text(
                "INSERT INTO ratings (user_id, product_id, rating, rated_at) "
                "SELECT user_id, product_id, rating, rated_at FROM stage_fast_ratings "
                "ORDER BY 1, 2 " + MERGE_CONFLICT
            ),
            distinct,
        )
    _log.debug("ratings merged: %.1fs", time.perf_counter() - started)
    return distinct
