"""``recsys load-db`` file arguments: positional files sorted by content, several files after
one ``--ratings``/``--metadata`` (what a shell glob gives), and the old forms still working."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from recsys.cli import cli
from recsys.commands.ingest import _expand_file_lists
from recsys.errors import InputError


def _loads(cli_env: dict[str, str]) -> list[tuple[str, str, str, int]]:
    engine = sa.create_engine(cli_env["RECSYS_DATABASE_URL"], poolclass=sa.NullPool)
    with engine.connect() as c:
        rows = c.execute(
            sa.text("SELECT path, kind, format, rows_read FROM loads ORDER BY id")
        ).all()
    return [(Path(p).name, k, f, n) for p, k, f, n in rows]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Two rating files, two metadata files of different formats."""
    a = tmp_path / "a.csv"
    a.write_text("P1,U1,5.0,1300000000\nP2,U1,3.0,1300000001\n")
    b = tmp_path / "b.csv"
    b.write_text("P1,U2,4.0,1300000002\n")
    movies = tmp_path / "movies.csv"
    movies.write_text("movieId,title,genres\n1,Toy Story (1995),Animation\n")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"asin": "P1", "title": "A pen"}) + "\n")
    return {"a": a, "b": b, "movies": movies, "meta": meta}


def _invoke(args: list[str], cli_env: dict[str, str]):
    return CliRunner().invoke(cli, ["load-db", *args], env=cli_env)


def test_positional_files_are_sorted_by_content_metadata_first(files, cli_env) -> None:
    result = _invoke([str(files["a"]), str(files["meta"]), str(files["b"])], cli_env)
    assert result.exit_code == 0, result.output
    assert _loads(cli_env) == [
        ("meta.json", "metadata", "amazon2018-metadata", 1),
        ("a.csv", "ratings", "ratings-csv", 2),
        ("b.csv", "ratings", "ratings-csv", 1),
    ]


def test_several_files_after_one_flag(files, cli_env) -> None:
    result = _invoke(
        [
            "--metadata",
            str(files["movies"]),
            str(files["meta"]),
            "--ratings",
            str(files["a"]),
            str(files["b"]),
        ],
        cli_env,
    )
    assert result.exit_code == 0, result.output
    assert [(name, kind) for name, kind, _, _ in _loads(cli_env)] == [
        ("movies.csv", "metadata"),
        ("meta.json", "metadata"),
        ("a.csv", "ratings"),
        ("b.csv", "ratings"),
    ]


def test_a_flag_still_checks_the_kind_of_each_of_its_files(files, cli_env) -> None:
    result = _invoke(["--ratings", str(files["a"]), str(files["meta"])], cli_env)
    assert isinstance(result.exception, InputError)
    assert "meta.json: given as --ratings but it holds metadata" in str(result.exception)
    assert _loads(cli_env) == []  # every file is checked before any is loaded


def test_repeated_flags_equals_form_and_duplicates(files, cli_env) -> None:
    result = _invoke(
        [
            f"--ratings={files['a']}",
            str(files["b"]),
            "--ratings",
            str(files["a"]),  # the same file again (an explicit name and a glob, say)
            "--metadata",
            str(files["movies"]),
            "--max-reject-rate",
            "0.5",
            str(files["meta"]),  # after another option: positional, kind from content
        ],
        cli_env,
    )
    assert result.exit_code == 0, result.output
    assert [name for name, _, _, _ in _loads(cli_env)] == [
        "movies.csv",
        "meta.json",
        "a.csv",
        "b.csv",
    ]


def test_forced_format_applies_to_positional_files(files, cli_env) -> None:
    result = _invoke(["--format", "ratings-csv", str(files["a"]), str(files["b"])], cli_env)
    assert result.exit_code == 0, result.output
    assert [(n, f) for n, _, f, _ in _loads(cli_env)] == [
        ("a.csv", "ratings-csv"),
        ("b.csv", "ratings-csv"),
    ]


def test_a_missing_positional_file_is_one_line(tmp_path: Path, files, cli_env) -> None:
    result = _invoke([str(files["a"]), str(tmp_path / "nope.csv")], cli_env)
    assert isinstance(result.exception, InputError)
    assert str(result.exception).endswith("nope.csv: no such file")
    assert _loads(cli_env) == []


def test_expand_file_lists() -> None:
    assert _expand_file_lists(["--metadata", "m", "t", "--ratings", "a", "b"]) == [
        "--metadata",
        "m",
        "--metadata",
        "t",
        "--ratings",
        "a",
        "--ratings",
        "b",
    ]
    # other options end the list; their value is theirs; "--" ends all option parsing
    assert _expand_file_lists(["--ratings", "a", "--format", "x", "c", "--", "--ratings"]) == [
        "--ratings",
        "a",
        "--format",
        "x",
        "c",
        "--",
        "--ratings",
    ]
    assert _expand_file_lists(["p", "--ratings=a", "b"]) == ["p", "--ratings=a", "--ratings", "b"]
