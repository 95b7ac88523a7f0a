"""Property: whatever file ``recsys load-db`` is given, it exits 0 or 2, never with a traceback,
and every successful load accounts for each line: read = loaded + merged + rejected.

Random bytes, random JSON lines (built from the keys the formats look for, with values of any
JSON type, huge integers and NaN included), random delimited text (the separators and headers
the formats use) and mostly valid files with random lines mixed in go through the real command
in-process (CliRunner), plain or gzip, with and without ``--format``, with the default line cap
or a 64-byte one, on one database shared by all examples.
"""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path

import click
import sqlalchemy as sa
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from recsys.cli import cli
from recsys.errors import RecsysError
from recsys.ingest.rows import FORMATS

KEYS = [
    "reviewerID",
    "asin",
    "overall",
    "unixReviewTime",
    "helpful",
    "user_id",
    "rating",
    "timestamp",
    "parent_asin",
    "title",
    "brand",
    "description",
    "feature",
    "features",
    "category",
    "categories",
    "main_cat",
    "main_category",
    "store",
    "salesRank",
    "imUrl",
    "related",
]

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.sampled_from([10**400, -1, 0, 5, 1_300_000_000, 4_070_908_800, 1_600_000_000_000]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
_json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
_json_line = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), _json_values, max_size=6).map(json.dumps),
    _json_values.map(json.dumps),
)
json_files = st.lists(_json_line, min_size=1, max_size=8).map(lambda lines: "\n".join(lines))

_field = st.one_of(
    st.text(alphabet="abcAB019.-:|,\t x\u00e9", max_size=10),
    st.integers(-5, 10).map(str),
    st.sampled_from(["1300000000", "4070908800", "4.5", "nan", "1e999", "", "(no genres listed)"]),
)
_headers = [fmt.header for fmt in FORMATS.values() if fmt.header is not None]


@st.composite
def delimited_files(draw) -> str:
    separator = draw(st.sampled_from([",", "\t", "::", "|"]))
    width = draw(st.integers(1, 6))
    rows = draw(st.lists(st.lists(_field, min_size=width, max_size=width), min_size=1, max_size=8))
    lines = [separator.join(row) for row in rows]
    if draw(st.booleans()):
        lines.insert(0, draw(st.sampled_from(_headers)))
    return "\n".join(lines)


_ids = st.integers(0, 3)  # few ids, so lines repeat user-product pairs and merge
_valid_csv = st.builds(
    "P{},U{},{}.0,{}".format, _ids, _ids, st.integers(1, 5), st.integers(10**9, 1_700_000_000)
)
_valid_review = st.builds(
    lambda u, p, r, t: json.dumps(
        {"reviewerID": f"U{u}", "asin": f"P{p}", "overall": r, "unixReviewTime": t}
    ),
    _ids,
    _ids,
    st.integers(1, 5),
    st.integers(10**9, 1_700_000_000),
)


@st.composite
def near_valid_files(draw) -> str:
    """Mostly valid lines of one format, some replaced by random ones (so loads succeed)."""
    valid = draw(st.sampled_from([_valid_csv, _valid_review]))
    noise = st.one_of(_json_line, st.text(max_size=30), st.just(""))
    lines = draw(st.lists(st.one_of(valid, valid, valid, noise), min_size=1, max_size=12))
    return "\n".join(lines)


contents = st.one_of(
    st.binary(max_size=300),
    json_files.map(str.encode),
    delimited_files().map(str.encode),
    near_valid_files().map(str.encode),
)
# weighted so that a good share of the examples load (and check the counts)
how = st.sampled_from(["positional", "positional", "--ratings", "--metadata"])
forced = st.one_of(st.none(), st.none(), st.sampled_from(sorted(FORMATS)))


def _new_loads(url: str, after: int) -> list[tuple]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as c:
        return [
            tuple(r)
            for r in c.execute(
                sa.text(
                    "SELECT status, rows_read, rows_loaded, rows_merged, rows_rejected FROM loads"
                    " WHERE id > :after"
                ),
                {"after": after},
            )
        ]


def _last_load_id(url: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as c:
        return c.execute(sa.text("SELECT coalesce(max(id), 0) FROM loads")).scalar_one()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    content=contents,
    gz=st.booleans(),
    how=how,
    fmt=forced,
    lenient=st.sampled_from([True, True, False]),
    small_cap=st.booleans(),
)
def test_load_db_exits_0_or_2_and_accounts_for_every_line(
    tmp_path: Path,
    cli_env,
    content: bytes,
    gz: bool,
    how: str,
    fmt: str | None,
    lenient: bool,
    small_cap: bool,
) -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.in"
    path.write_bytes(gzip.compress(content) if gz else content)
    args = ["load-db"] + ([str(path)] if how == "positional" else [how, str(path)])
    if fmt is not None:
        args += ["--format", fmt]
    if lenient:
        args += ["--max-reject-rate", "1"]
    url = cli_env["RECSYS_DATABASE_URL"]
    before = _last_load_id(url)

    env = {**cli_env, "RECSYS_MAX_LINE_BYTES": "64"} if small_cap else cli_env
    result = CliRunner().invoke(cli, args, env=env)

    assert "Traceback" not in result.output
    error = result.exception
    event("loaded" if error is None else f"refused: {type(error).__name__}")
    if error is None:
        assert result.exit_code == 0
        loads = _new_loads(url, before)
        assert len(loads) == 1
        status, read, loaded, merged, rejected = loads[0]
        assert status == "loaded"
        assert read == loaded + merged + rejected
    elif isinstance(error, SystemExit):  # click's usage errors exit 2 themselves
        assert result.exit_code == 2, result.output
    else:
        # recsys.cli.main prints str(error) as one line and exits with error.exit_code
        assert isinstance(error, RecsysError), f"{type(error).__name__}: {error}"
        assert error.exit_code == 2
        assert "\n" not in str(error)
        for status, read, loaded, merged, rejected in _new_loads(url, before):
            assert status == "failed" and loaded == merged == 0 and rejected <= read
    assert not isinstance(error, click.ClickException)
