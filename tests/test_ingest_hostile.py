"""Hostile loader inputs, each reproducing a probe: deeply nested JSON, a corrupt gzip, one
enormous line, a FIFO or a symlink loop in the inbox, ratings dated in the future, and field
values no format check foresaw. Each gives one line and exit 2 or a rejected line with its
number, never a traceback."""

from __future__ import annotations

import gzip
import json
import os
import random
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.cli import cli
from recsys.config import Settings
from recsys.errors import InputError, RecsysError
from recsys.ingest import reader
from recsys.ingest.detect import detect_format
from recsys.ingest.load import load_files, load_inbox
from recsys.ingest.reader import DEFAULT_MAX_LINE_BYTES, LineSource, LongLine

GOOD_CSV = [f"P{i % 7},U{i},{1 + i % 5}.0,{1_300_000_000 + i}" for i in range(200)]
GOOD_JSON = [
    json.dumps({"reviewerID": f"U{i}", "asin": f"A{i % 3}", "overall": 5.0, "unixReviewTime": 1e9})
    for i in range(30)
]


def _count(url: str, sql: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as c:
        return c.execute(sa.text(sql)).scalar_one()


def _load(args: list[str], cli_env: dict[str, str], **env: str):
    result = CliRunner().invoke(cli, ["load-db", *args], env={**cli_env, **env})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # what recsys.cli.main turns into "one line, exit 2"; anything else would be exit 3
        assert isinstance(result.exception, RecsysError), repr(result.exception)
        assert "\n" not in str(result.exception)
    return result


# --- deeply nested JSON --------------------------------------------------------------------


def _deep(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def test_deep_json_within_the_first_lines_is_a_rejected_line(tmp_path: Path, cli_env) -> None:
    path = tmp_path / "reviews.json"
    path.write_text("\n".join([*GOOD_JSON[:3], _deep(100_000), *GOOD_JSON[3:]]) + "\n")
    assert detect_format(path) == ("ratings", "amazon2018-reviews")  # no RecursionError
    result = _load([str(path), "--max-reject-rate", "0.1"], cli_env)
    assert result.exit_code == 0, result.output
    url = cli_env["RECSYS_DATABASE_URL"]
    assert _count(url, "SELECT line_no FROM rejected_rows") == 4
    assert _count(url, "SELECT reason FROM rejected_rows") == "unparseable line: RecursionError"


def test_a_file_of_only_deep_json_is_one_line_exit_2(tmp_path: Path, cli_env) -> None:
    path = tmp_path / "deep.json"
    path.write_text(_deep(100_000) + "\n")
    result = _load([str(path)], cli_env)
    assert isinstance(result.exception, InputError)
    assert "deep.json: unknown format" in str(result.exception)


def test_deep_python_literal_metadata_is_a_rejected_line(tmp_path: Path, engine, settings) -> None:
    good = [repr({"asin": f"A{i}", "title": "t", "salesRank": {"Toys": 1}}) for i in range(30)]
    path = tmp_path / "meta.txt"
    path.write_text("\n".join([*good[:2], "{'asin': " + "[" * 100_000, *good[2:]]) + "\n")
    assert detect_format(path) == ("metadata", "amazon2014-metadata")
    (s,) = load_files(engine, settings, metadata=[path], max_reject_rate=0.1)
    assert (s.rows_read, s.rows_rejected, [r.line_no for r in s.rejects]) == (31, 1, [3])
    assert s.rejects[0].reason.startswith("broken dict literal")


# --- corrupt gzip ----------------------------------------------------------------------------


def _corrupt_gzip(path: Path, lines: int, at: float) -> Path:
    rng = random.Random(0)  # varied content: many deflate blocks, none trivially repeated
    text = "".join(
        f"P{rng.randrange(10**6)},U{rng.randrange(10**6)},{rng.randint(1, 5)}.0,"
        f"{1_300_000_000 + rng.randrange(10**7)}\n"
        for _ in range(lines)
    )
    data = bytearray(gzip.compress(text.encode(), 6))
    middle = int(len(data) * at)
    for i in range(middle, middle + 64):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("at", [0.02, 0.5])  # inside detection's first lines / mid-load
def test_corrupt_gzip_is_one_line_exit_2_and_nothing_loaded(
    tmp_path: Path, cli_env, at: float
) -> None:
    good = tmp_path / "good.csv"
    good.write_text("\n".join(GOOD_CSV) + "\n")
    broken = _corrupt_gzip(tmp_path / "broken.csv.gz", 50_000, at)
    result = _load([str(good), str(broken)], cli_env)
    assert isinstance(result.exception, InputError), result.output
    assert "broken.csv.gz: cannot read: " in str(result.exception)
    url = cli_env["RECSYS_DATABASE_URL"]
    # the broken file left nothing: no load row, no ratings beyond the good file's
    assert _count(url, "SELECT count(*) FROM loads WHERE path LIKE '%broken%'") == 0
    assert _count(url, "SELECT count(*) FROM ratings") == _count(
        url, "SELECT coalesce(sum(rows_loaded), 0) FROM loads"
    )


# --- the line cap ----------------------------------------------------------------------------


def test_default_line_cap_is_the_settings_default() -> None:
    assert Settings().max_line_bytes == DEFAULT_MAX_LINE_BYTES == 1 << 20


def test_a_line_over_the_cap_is_rejected_with_its_number(tmp_path: Path, cli_env) -> None:
    path = tmp_path / "r.csv"
    lines = [*GOOD_CSV[:50], "P1,U1,5.0,13" + "0" * 500, *GOOD_CSV[50:]]
    path.write_text("\n".join(lines) + "\n")
    result = _load([str(path), "--max-reject-rate", "0.1"], cli_env, RECSYS_MAX_LINE_BYTES="100")
    assert result.exit_code == 0, result.output
    url = cli_env["RECSYS_DATABASE_URL"]
    assert _count(url, "SELECT line_no FROM rejected_rows") == 51
    assert _count(url, "SELECT reason FROM rejected_rows") == (
        "line of 512 bytes is longer than the 100-byte cap (RECSYS_MAX_LINE_BYTES)"
    )
    assert _count(url, "SELECT rows_read FROM loads") == 201


def test_only_over_long_first_lines_is_one_line_exit_2(tmp_path: Path, cli_env) -> None:
    path = tmp_path / "long.json"
    path.write_text(json.dumps({"asin": "A", "title": "x" * 300}) + "\n")
    result = _load([str(path)], cli_env, RECSYS_MAX_LINE_BYTES="100")
    assert isinstance(result.exception, InputError)
    assert "long.json: unknown format: its first lines are longer than the 100-byte" in str(
        result.exception
    )


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=80).map(lambda b: b.replace(b"\x00", b"\n")),
    cap=st.integers(1, 12),
    buffer=st.integers(2, 9),
    prefix=st.integers(1, 20),
    gz=st.booleans(),
)
def test_chunked_reading_gives_the_lines_of_split(
    tmp_path_factory, data: bytes, cap: int, buffer: int, prefix: int, gz: bool
) -> None:
    """Reading in chunks of any size gives exactly the lines ``bytes.split`` gives."""
    expected: list[tuple[int, object]] = []
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    for number, piece in enumerate(pieces, 1):
        complete = number < len(pieces) or data.endswith(b"\n")
        if len(piece) > cap:
            expected.append((number, ("long", piece[:prefix], len(piece))))
        else:
            expected.append((number, piece[:-1] if complete and piece.endswith(b"\r") else piece))
    path = tmp_path_factory.mktemp("chunks") / "f"
    path.write_bytes(gzip.compress(data) if gz else data)
    if not gz and (not data or data.startswith(reader.GZIP_MAGIC)):
        return  # refused before reading, or read as gzip (tested elsewhere)
    saved = reader._BUFFER, reader.LONG_LINE_PREFIX
    reader._BUFFER, reader.LONG_LINE_PREFIX = buffer, prefix
    try:
        with LineSource(path, max_line_bytes=cap) as source:
            got = [
                (n, ("long", bytes(line), line.length) if isinstance(line, LongLine) else line)
                for n, line in source
            ]
    finally:
        reader._BUFFER, reader.LONG_LINE_PREFIX = saved
    assert got == expected


_PEAK_RSS = """
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "recsys", "load-db", *sys.argv[1:]],
                      capture_output=True, text=True)
sys.stderr.write(done.stderr)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def _peak_rss(path: Path, env: dict[str, str]) -> tuple[int, int]:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, "--ratings", str(path), "--max-reject-rate", "0.1"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    code, peak = done.stdout.split()
    return int(code), int(peak)


@pytest.mark.subprocess
def test_peak_memory_stays_under_the_cap_with_a_200_mb_line(tmp_path: Path, cli_env) -> None:
    """The probe: a small gzip holding one 200 MB line. The load's peak RSS stays within the
    line cap of the same load without that line (both measured here, in child processes)."""
    long_line = tmp_path / "long.csv.gz"
    with gzip.open(long_line, "wb", compresslevel=6) as out:
        out.write(("\n".join(GOOD_CSV[:25]) + "\n").encode())
        block = b"9" * (1 << 20)
        for _ in range(200):
            out.write(block)
        out.write(("\n" + "\n".join(GOOD_CSV[25:]) + "\n").encode())
    assert long_line.stat().st_size < 1 << 20
    baseline = tmp_path / "baseline.csv.gz"
    baseline.write_bytes(gzip.compress(("\n".join(GOOD_CSV) + "\n").encode()))

    code, base_peak = _peak_rss(baseline, cli_env)
    assert code == 0
    code, long_peak = _peak_rss(long_line, cli_env)
    assert code == 0
    url = cli_env["RECSYS_DATABASE_URL"]
    assert _count(url, "SELECT line_no FROM rejected_rows") == 26
    assert _count(url, "SELECT reason FROM rejected_rows") == (
        "line of 209,715,200 bytes is longer than the 1,048,576-byte cap (RECSYS_MAX_LINE_BYTES)"
    )
    # a fixed cost per line: at most the cap, plus the read buffers and allocator noise
    allowance = DEFAULT_MAX_LINE_BYTES + (16 << 20)
    assert long_peak - base_peak < allowance, (base_peak, long_peak)


# --- special files in the inbox and on the command line ---------------------------------------


def _inbox_with(tmp_path: Path, make) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "r.csv").write_text("\n".join(GOOD_CSV) + "\n")
    (inbox / "done").mkdir()  # a folder of processed files is skipped
    make(inbox)
    return inbox


def test_a_fifo_in_the_inbox_is_refused_by_name(tmp_path: Path, engine, settings) -> None:
    inbox = _inbox_with(tmp_path, lambda d: os.mkfifo(d / "pipe"))
    with pytest.raises(InputError, match=r"inbox/pipe: not a regular file \(a FIFO\)"):
        load_inbox(engine, settings, inbox)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM loads")).scalar_one() == 0


def test_a_fifo_on_the_command_line_does_not_block(tmp_path: Path, cli_env) -> None:
    os.mkfifo(tmp_path / "pipe")
    result = _load([str(tmp_path / "pipe")], cli_env)
    assert isinstance(result.exception, InputError)
    assert str(result.exception).endswith("pipe: not a regular file (a FIFO)")


def _loop(d: Path) -> None:
    (d / "a.csv").symlink_to(d / "b.csv")
    (d / "b.csv").symlink_to(d / "a.csv")


def test_a_symlink_loop_is_reported_as_a_loop(tmp_path: Path, engine, settings, cli_env) -> None:
    inbox = _inbox_with(tmp_path, _loop)
    with pytest.raises(InputError, match=r"inbox/a\.csv: symlink loop"):
        load_inbox(engine, settings, inbox)
    result = _load(["--ratings", str(inbox / "b.csv")], cli_env)
    assert isinstance(result.exception, InputError)
    assert "b.csv: symlink loop (too many levels of symbolic links)" in str(result.exception)
    assert "no such file" not in str(result.exception)


def test_a_broken_symlink_names_its_target(tmp_path: Path, cli_env) -> None:
    (tmp_path / "r.csv").symlink_to(tmp_path / "gone.csv")
    result = _load([str(tmp_path / "r.csv")], cli_env)
    assert "r.csv: broken symlink (to " in str(result.exception)


# --- timestamps in the future ------------------------------------------------------------------


def test_a_rating_from_2099_is_rejected_and_does_not_win_the_merge(tmp_path: Path, cli_env) -> None:
    year_2099 = 4_070_908_800  # 2099-01-01 00:00:00 UTC
    first = tmp_path / "first.csv"
    first.write_text("\n".join([*GOOD_CSV[:100], f"P1,U1,1.0,{year_2099}", *GOOD_CSV[100:]]))
    result = _load([str(first), "--max-reject-rate", "0.1"], cli_env)
    assert result.exit_code == 0, result.output
    url = cli_env["RECSYS_DATABASE_URL"]
    assert _count(url, "SELECT line_no FROM rejected_rows") == 101
    assert _count(url, "SELECT reason FROM rejected_rows") == (
        "timestamp 2099-01-01 00:00:00 UTC is in the future (more than 86400 s after the load "
        "started; RECSYS_FUTURE_SLACK_SECONDS)"
    )
    later = tmp_path / "later.csv"
    later.write_text("P1,U1,4.0,1600000000\n")
    assert _load([str(later)], cli_env).exit_code == 0
    rating = (
        "SELECT r.rating FROM ratings r JOIN users u ON u.id = r.user_id "
        "JOIN products p ON p.id = r.product_id WHERE u.external_id = 'U1' "
        "AND p.external_id = 'P1'"
    )
    assert _count(url, rating) == 4.0


def test_the_future_slack_is_a_setting(tmp_path: Path, cli_env) -> None:
    soon = int(time.time()) + 3600
    path = tmp_path / "r.csv"
    path.write_text("\n".join([*GOOD_CSV, f"P1,UFUTURE,2.0,{soon}"]) + "\n")
    strict = _load(
        [str(path), "--max-reject-rate", "0.1"], cli_env, RECSYS_FUTURE_SLACK_SECONDS="60"
    )
    assert strict.exit_code == 0, strict.output
    url = cli_env["RECSYS_DATABASE_URL"]
    assert _count(url, "SELECT line_no FROM rejected_rows") == 201
    lenient = tmp_path / "r2.csv"
    lenient.write_text(f"P1,UFUTURE,2.0,{soon}\n")
    assert _load([str(lenient)], cli_env).exit_code == 0  # within the default day
    assert (
        _count(
            url,
            "SELECT count(*) FROM ratings r JOIN users u ON u.id = r.user_id "
            "WHERE u.external_id = 'UFUTURE'",
        )
        == 1
    )


# --- values no format check foresaw ---------------------------------------------------------

_HUGE = "9" * 5000  # beyond Python's 4300-digit limit for int <-> str


@pytest.mark.parametrize(
    ("fmt", "line", "reason"),
    [
        (
            "amazon2018-reviews",
            f'{{"reviewerID": "U", "asin": "A", "overall": 5, "unixReviewTime": {_HUGE}}}',
            "broken JSON",
        ),
        (
            "amazon2023-reviews",
            '{"user_id": "U", "asin": "A", "rating": 1e999, "timestamp": 1}',
            "rating is not a number: 'inf'",
        ),
        (
            "amazon2023-reviews",
            '{"user_id": "U", "asin": "A", "rating": 5, "timestamp": ' + "1" * 400 + "}",
            "unparseable timestamp: '" + "1" * 40 + "'",
        ),
        ("amazon2018-metadata", '{"asin": "A", "price": NaN}', "NaN or Infinity in a field"),
        ("amazon2014-metadata", "{'asin': 'A', (1, 2): 'x'}", "a field cannot be stored as JSON"),
        ("amazon2014-metadata", "{'asin': 'A', 'k': {[1]: 2}}", "broken dict literal: TypeError"),
    ],
)
def test_odd_values_are_rejected_lines(
    tmp_path: Path, engine, settings, fmt: str, line: str, reason: str
) -> None:
    path = tmp_path / "f.txt"
    path.write_text(line + "\n")
    (s,) = (
        load_files(engine, settings, ratings=[path], fmt=fmt, max_reject_rate=1.0)
        if "reviews" in fmt
        else load_files(engine, settings, metadata=[path], fmt=fmt, max_reject_rate=1.0)
    )
    assert (s.status, s.rows_read, s.rows_rejected) == ("loaded", 1, 1)
    assert s.rejects[0].reason.startswith(reason), s.rejects[0].reason
