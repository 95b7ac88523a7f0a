"""Bad input: each malformed-line case with its exact outcome; files that cannot be loaded."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from recsys.cli import cli
from recsys.errors import InputError
from recsys.ingest.load import load_files


def _rows(engine: sa.Engine, sql: str) -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.text(sql)).all()]


GOOD = [f"P{i % 7},U{i},{1 + i % 5}.0,{1_300_000_000 + i}" for i in range(200)]

# (raw line bytes, expected reason) for the seed CSV format
CSV_BAD: list[tuple[bytes, str]] = [
    (b"P1,U1,5.0", "expected 4 comma-separated fields, got 3"),
    (b"P1,U1,five,1300000000", "rating is not a number: 'five'"),
    (b"P1,U1,6.0,1300000000", "rating 6 outside the scale 1-5 (step 1)"),
    (b"P1,U1,nan,1300000000", "rating is not a number: 'nan'"),
    (b"P1,U1,4.0,yesterday", "unparseable timestamp: 'yesterday'"),
    (b"P1,,4.0,1300000000", "missing user id"),
    (b",U1,4.0,1300000000", "missing product id"),
    (b"P1,U\x001,4.0,1300000000", "NUL byte in line"),
    (b"P1,U\xff\xfe1,4.0,1300000000", "invalid UTF-8 at byte 4"),
    (b"", "empty line"),
]


def _csv_with_bad_lines(tmp_path: Path) -> tuple[Path, dict[int, tuple[bytes, str]]]:
    lines = [line.encode() for line in GOOD]
    expected: dict[int, tuple[bytes, str]] = {}
    for k, (raw, _reason) in enumerate(CSV_BAD):
        position = 10 + 15 * k
        lines.insert(position, raw)
    for line_no, raw in enumerate(lines, 1):
        for bad, reason in CSV_BAD:
            if raw == bad:
                expected[line_no] = (raw, reason)
    path = tmp_path / "ratings.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, expected


def test_each_bad_csv_line_is_rejected_with_its_reason(tmp_path: Path, engine, settings) -> None:
    path, expected = _csv_with_bad_lines(tmp_path)
    (s,) = load_files(engine, settings, ratings=[path], fmt="ratings-csv", max_reject_rate=0.1)
    assert s.status == "loaded"
    assert (s.rows_read, s.rows_rejected, s.rows_loaded + s.rows_merged) == (210, 10, 200)
    stored = _rows(engine, "SELECT line_no, raw_line, reason FROM rejected_rows ORDER BY line_no")
    assert [(n, reason) for n, _, reason in stored] == [
        (n, r) for n, (_, r) in sorted(expected.items())
    ]
    raw_by_line = {n: raw for n, raw, _ in stored}
    nul_line = next(n for n, (_, r) in expected.items() if r == "NUL byte in line")
    utf_line = next(n for n, (_, r) in expected.items() if r.startswith("invalid UTF-8"))
    assert raw_by_line[nul_line] == "P1,U1,4.0,1300000000"  # NUL removed so PostgreSQL stores it
    assert raw_by_line[utf_line] == "P1,U\\xff\\xfe1,4.0,1300000000"  # bytes backslash-escaped
    assert [r.line_no for r in s.rejects] == sorted(expected)[:5]
    assert _rows(engine, "SELECT count(*) FROM ratings") == [(s.rows_loaded,)]


def test_bad_json_lines(tmp_path: Path, engine, settings) -> None:
    good = [
        json.dumps({"reviewerID": f"U{i}", "asin": "A", "overall": 5.0, "unixReviewTime": 1e9 + i})
        for i in range(50)
    ]
    bad = [
        ('{"reviewerID": "U", "asin": "A", "overall": 5.0', "broken JSON"),
        ('{"asin": "A", "overall": 5.0, "unixReviewTime": 1}', "missing user id (reviewerID)"),
        ('{"reviewerID": "U", "overall": 5.0, "unixReviewTime": 1}', "missing product id (asin)"),
        ('{"reviewerID": "U", "asin": "A", "overall": 0, "unixReviewTime": 1}', "rating 0 outside"),
        (
            '{"reviewerID": "U", "asin": "A", "overall": "x", "unixReviewTime": 1}',
            "rating is not a number",
        ),
        (
            '{"reviewerID": "U", "asin": "A", "overall": 5, "unixReviewTime": "June"}',
            "unparseable timestamp",
        ),
        (
            '{"reviewerID": "U\\u0000", "asin": "A", "overall": 5, "unixReviewTime": 1}',
            "NUL character",
        ),
        ("[1, 2]", "broken JSON: not an object"),
    ]
    path = tmp_path / "reviews.json.gz"
    path.write_bytes(gzip.compress(("\n".join(good + [b for b, _ in bad]) + "\n").encode()))
    (s,) = load_files(
        engine, settings, ratings=[path], fmt="amazon2018-reviews", max_reject_rate=0.5
    )
    reasons = _rows(engine, "SELECT line_no, reason FROM rejected_rows ORDER BY line_no")
    assert [n for n, _ in reasons] == list(range(51, 59))
    for (_, reason), (_, want) in zip(reasons, bad, strict=True):
        assert reason.startswith(want), (reason, want)
    assert (s.rows_read, s.rows_loaded, s.rows_rejected) == (58, 50, 8)


def test_over_max_reject_rate_rolls_back_and_records_failure(
    tmp_path: Path, engine, settings
) -> None:
    path, expected = _csv_with_bad_lines(tmp_path)  # 10 of 210 lines bad = 4.8% > 1% default
    (s,) = load_files(engine, settings, ratings=[path], fmt="ratings-csv")
    assert s.status == "failed"
    assert "10 of 210 lines rejected (4.8%)" in s.message and "rolled back" in s.message
    assert _rows(engine, "SELECT count(*) FROM ratings") == [(0,)]
    assert _rows(engine, "SELECT count(*) FROM users") == [(0,)]
    assert _rows(engine, "SELECT count(*) FROM products") == [(0,)]
    assert _rows(engine, "SELECT status, rows_read, rows_loaded, rows_rejected FROM loads") == [
        ("failed", 210, 0, 10)
    ]
    assert _rows(engine, "SELECT count(*) FROM rejected_rows") == [(10,)]


def test_cli_over_reject_rate_exits_non_zero_saying_why(tmp_path: Path, cli_env) -> None:
    path, _ = _csv_with_bad_lines(tmp_path)
    result = CliRunner().invoke(cli, ["load-db", "--ratings", str(path)], env=cli_env)
    assert result.exit_code != 0
    assert isinstance(result.exception, InputError)
    assert "ratings.csv: 10 of 210 lines rejected (4.8%)" in str(result.exception)
    ok = CliRunner().invoke(
        cli, ["load-db", "--ratings", str(path), "--max-reject-rate", "0.05"], env=cli_env
    )
    assert ok.exit_code == 0, ok.output
    assert "rejected ratings.csv:" in ok.output  # the first few are printed (stderr mixed in)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "missing.csv: no such file"),
        ("sub", "dir", "sub: not a regular file"),
        ("empty.csv", b"", "empty.csv: file is empty"),
        ("blank.csv", b"\n\n", "blank.csv: file is empty"),
        ("x.txt", b"hello world\nfoo\n", "x.txt: unknown format"),
        ("h.csv", b"userId,movieId,rating,timestamp\n", "h.csv: no data lines"),
        ("t.gz", gzip.compress(b"a,b,5,1\n" * 1000)[:40], "t.gz: cannot read"),
        (
            "m.json",
            b'{"asin": "A", "title": "t"}\n',
            "m.json: given as --ratings but it holds metadata",
        ),
    ],
)
def test_unloadable_file_is_one_line_exit_2(
    tmp_path: Path, cli_env, name: str, content: bytes | str | None, message: str
) -> None:
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(cli, ["load-db", "--ratings", str(path)], env=cli_env)
    assert isinstance(result.exception, InputError), result.output
    assert message in str(result.exception)
    assert "\n" not in str(result.exception)
    with sa.create_engine(cli_env["RECSYS_DATABASE_URL"]).connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM loads")).scalar_one() == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path, cli_env) -> None:
    path = tmp_path / "secret.csv"
    path.write_text("P,U,5,1\n")
    path.chmod(0)
    result = CliRunner().invoke(cli, ["load-db", "--ratings", str(path)], env=cli_env)
    assert "secret.csv: cannot read" in str(result.exception)


def test_unknown_forced_format(tmp_path: Path, cli_env) -> None:
    path = tmp_path / "r.csv"
    path.write_text("P,U,5,1\n")
    result = CliRunner().invoke(
        cli, ["load-db", "--ratings", str(path), "--format", "nope"], env=cli_env
    )
    assert "unknown format 'nope'" in str(result.exception)


def test_load_db_needs_a_file_and_embeddings_need_a_name(tmp_path: Path, cli_env) -> None:
    nothing = CliRunner().invoke(cli, ["load-db"], env=cli_env)
    assert nothing.exit_code == 2 and "give at least one --ratings" in nothing.output
    vectors = tmp_path / "v.csv"
    vectors.write_text("A,0.1,0.2\n")
    unnamed = CliRunner().invoke(cli, ["load-db", "--embeddings", str(vectors)], env=cli_env)
    assert unnamed.exit_code == 2 and "--embeddings needs --name" in unnamed.output
