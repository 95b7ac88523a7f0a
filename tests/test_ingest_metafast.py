"""The fast metadata loader gives the same database as the general one, on every metadata format.

Each case is loaded with ``fast_path=False`` (the general path), the database dumped, emptied,
then loaded with ``fast_path=True`` and dumped again; the dumps (by external ids, so surrogate
ids do not matter; ``raw`` as PostgreSQL prints the stored ``jsonb``) must be equal, and so must
the summaries with their first rejected lines and every row of ``rejected_rows``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_ingest_fast import _file, _reset
from test_ingest_fast import _outcome as load_outcome

from recsys.config import Settings
from recsys.ingest import metafast
from recsys.ingest.detect import get_format

_DUMP = {
    "products": (
        "SELECT external_id, title, brand, description, feature_text, categories, main_category,"
        " raw::text FROM products ORDER BY 1"
    ),
    "ratings": (
        "SELECT u.external_id, p.external_id, r.rating FROM ratings r"
        " JOIN users u ON u.id = r.user_id JOIN products p ON p.id = r.product_id ORDER BY 1, 2"
    ),
    "loads": (
        "SELECT path, sha256, format, kind, status, rows_read, rows_loaded, rows_merged,"
        " rows_rejected, message FROM loads ORDER BY id"
    ),
    "rejected": (
        "SELECT l.path, r.line_no, r.raw_line, r.reason FROM rejected_rows r"
        " JOIN loads l ON l.id = r.load_id ORDER BY l.id, r.line_no"
    ),
}


def _dump(engine: sa.Engine) -> dict[str, list[tuple]]:
    with engine.connect() as c:
        return {k: [tuple(r) for r in c.execute(sa.text(q)).all()] for k, q in _DUMP.items()}


Batch = tuple[list[Path], str | None, float | None, str]
"""Files, forced format, max reject rate, and ``metadata`` or ``ratings``."""


def _outcome(engine, settings, batches: list[Batch], fast_path: bool):
    return load_outcome(engine, settings, batches, fast_path, dump=_dump)


@pytest.fixture
def direct_loads(monkeypatch) -> list[int]:
    """Counts the fast loads that went straight into an empty ``products`` table."""
    seen = [0]
    original = metafast._load_direct

    def spy(*args):
        seen[0] += 1
        return original(*args)

    monkeypatch.setattr(metafast, "_load_direct", spy)
    return seen


@pytest.fixture
def plain_lines(monkeypatch) -> list[int]:
    """Counts the lines the fast path staged itself (``[plain, not plain]``)."""
    seen = [0, 0]
    original = metafast.plain_line

    def spy(raw: bytes, fmt):
        staged = original(raw, fmt)
        seen[staged is None] += 1
        return staged

    monkeypatch.setattr(metafast, "plain_line", spy)
    return seen


def _same_both_ways(engine, settings, batches: list[Batch], seen: list[int] | None = None):
    general = _outcome(engine, settings, batches, fast_path=False)
    if seen is not None:
        assert seen == [0, 0]  # the general path never asks
    _reset(engine)
    quick = _outcome(engine, settings, batches, fast_path=True)
    assert quick[0] == general[0]
    for key in _DUMP:
        assert quick[1][key] == general[1][key], key
    return quick


def _j(record: object, **dumps) -> bytes:
    return json.dumps(record, **dumps).encode()


GOOD_2018 = [
    _j(
        {
            "category": ["Electronics", "Cables", f"Sub{i % 3}"],
            "tech1": "",
            "description": [f"<p>Cable number {i}.</p>", "Second\tparagraph"],
            "fit": "",
            "title": f"Acme Cable {i}",
            "also_buy": [f"B{i + 1:09d}"],
            "image": [],
            "brand": "Acme" if i % 4 else "",
            "feature": ["USB", f"{i} m"],
            "rank": "1,234 in Electronics (",
            "details": {"\n    Product Dimensions: \n    ": "3 x 2 inches"},
            "main_cat": "Electronics",
            "price": f"${i}.99",
            "asin": f"B{i:09d}",
        }
    )
    for i in range(60)
]

# Lines the fast path may stage itself or must leave to the general parser, valid or not: each
# must come out exactly as the general path has it.
EDGE_2018 = [
    b'{"asin": "E01", "title": "caf\\u00e9 \\ud83d\\ude00", "brand": "\\u00c9"}',  # escapes
    b'{"asin": "E02", "title": "nul \\u0000 inside"}',
    b'{"asin": "E03", "title": "lone \\ud800 surrogate"}',
    b'{"asin": "E04", "\\u0000key": 1}',
    b'{"asin": "E05", "price": NaN}',
    b'{"asin": "E06", "price": Infinity, "x": -Infinity}',
    b'{"asin": "E07", "price": 1e400}',
    b'{"asin": "E08", "price": 1.50, "weight": 1e2, "w2": 2.0, "w3": -0.0}',
    b'{"asin": "E09", "count": -0, "list": [-0, 0, 12345678901234567890123456789]}',
    b'{"asin": "E10", "big": ' + b"9" * 5000 + b"}",
    b'{"asin": "E11", "big": ' + b"9" * 4300 + b"}",
    b'{"asin": "E12", "title": "first", "title": "second", "brand": null, "brand": "B"}',
    b'{"asin": "E13", "deep": ' + b"[" * 300 + b"]" * 300 + b"}",
    b'{"asin": "E14", "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"asin": "E15", "deep": ' + b'{"a":' * 200 + b"1" + b"}" * 200 + b"}",
    b'{"asin": "E16", "deep": [[[[[[[[[[1]]]]]]]]]]}',
    b"[1, 2]",
    b'"just a string"',
    b"5",
    b"",
    b"   ",
    b"\t",
    b'{"asin": "E17", "title": "x"} trailing',
    b'{"asin": "E18", "title": "x"',
    b'{"asin": "E19", "title": "NUL \x00 byte"}',
    b'{"asin": "E20", "title": "bad \xff\xfe utf8"}',
    b'\xef\xbb\xbf{"asin": "E21"}',  # a BOM
    b'{"asin": "E22",\t"title":\t"tabs between tokens"}',
    b'{"asin": "E23", "title": "raw\ttab in a string"}',
    b'{"asin": "E24",\r"title": "a CR between tokens"}',
    b'{"asin": "E25", "title": "esc \\n \\t \\r \\" \\\\ \\/ \\b \\f"}',
    b'{"asin": "E26", "title": 42, "brand": true, "main_cat": {"a": [1, "x"]}}',
    b'{"asin": "E27", "title": ["a", null, "", 3, "b"], "description": [], "feature": [""]}',
    b'{"asin": "E28", "category": ["A", null, "", 3, ["x"]]}',
    b'{"asin": "E29", "category": "Electronics"}',
    b'{"asin": "E30", "category": []}',
    b'{"asin": 12345, "title": "numeric asin"}',
    b'{"asin": "  E31  ", "title": "spaces around the id"}',
    b'{"asin": "\\u2003E32\\u2003", "title": "unicode spaces around the id"}',
    b'{"asin": "\xe2\x80\x83E33", "title": "a raw unicode space before the id"}',
    b'{"asin": "", "title": "empty id"}',
    b'{"asin": null, "title": "null id"}',
    b'{"asin": ["E34"], "title": "list id"}',
    b'{"title": "no id"}',
    b'{"asin": "E35", "title": "", "brand": "", "description": "", "main_cat": ""}',
    b'{"asin": "E36"}',
    b"{}",
    b'{"asin": "E37", "title": "tab\\there", "brand": "back\\\\slash", "feature": ["a\\nb"]}',
    b'{"asin": "E38", "title": "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 raw UTF-8"}',
    b'{"asin": "E39", "category": ["quote \\" inside", "back\\\\slash", "ctl \\u0001"]}',
    b'{"asin": "E40", "nested": {"k": [true, false, null, {"z": "y"}]}, "e": {}}',
    b'  {"asin": "E41", "title": "leading and trailing spaces"}  ',
    b'{"asin": "E42", "title": "\\\\u0041 is not an escape"}',
    b'{"asin":"E43","title":"compact","feature":["a","b"]}',
    b'{"asin": "E01", "title": "E01 again: a repeat merges", "feature": ["more"]}',
    b"{'asin': 'E44', 'title': 'a Python literal'}",
]


def test_plain_lines_stage_what_the_format_parser_gives() -> None:
    """A plain line's row is the format parser's, its raw the line itself; others are left."""
    fmt = get_format("amazon2018-metadata")
    parse = fmt.parser_for(Path("x"))
    for raw in GOOD_2018:
        staged = metafast.plain_line(raw, fmt)
        assert staged is not None
        assert staged.row == parse(raw.decode())
        assert staged.raw == raw.replace(b"\\", b"\\\\")  # the line itself, as COPY text
    for raw in (EDGE_2018[2], EDGE_2018[4], EDGE_2018[7], EDGE_2018[9], EDGE_2018[13]):
        assert metafast.plain_line(raw, fmt) is None


def test_array_and_json_cells_read_back_as_the_values(conn) -> None:
    """The COPY cells the fast path writes for text, arrays and JSON lists are the values."""
    rng = random.Random(3)
    alphabet = ["a", "\\", '"', "\n", "\t", "\r", "{", "}", ",", " ", "NULL", "é", "\x01"]
    cases = [
        ["".join(rng.choice(alphabet) for _ in range(rng.randrange(6))) for _ in range(3)]
        for _ in range(200)
    ] + [["NULL"], [""], ["a,b"], ['"'], ["\\"]]
    conn.execute(sa.text("CREATE TEMP TABLE cells (t text, a text[], j text)"))
    body = "".join(
        f"{metafast._cell(v[0])}\t{metafast._cell(metafast._array(v))}\t"
        f"{metafast._cell(metafast._json_list(v))}\n"
        for v in cases
    )
    with conn.connection.driver_connection.cursor() as cur:
        with cur.copy("COPY cells (t, a, j) FROM STDIN") as copy:
            copy.write(body)
    got = conn.execute(sa.text("SELECT t, a, j::jsonb FROM cells")).all()
    assert [tuple(r) for r in got] == [(v[0], v, v) for v in cases]


@pytest.mark.parametrize("gz", [False, True])
def test_edge_lines_same_database(
    tmp_path: Path, engine, settings, plain_lines, direct_loads, gz
) -> None:
    lines = GOOD_2018[:30] + EDGE_2018 + GOOD_2018[30:]
    path = _file(tmp_path / "meta.json", lines, gz=gz)
    fmt = "amazon2018-metadata"
    batches: list[Batch] = [([path], fmt, 0.01, "metadata"), ([path], fmt, 1.0, "metadata")]
    results, dump = _same_both_ways(engine, settings, batches, plain_lines)
    assert plain_lines[0] >= 2 * len(GOOD_2018) and plain_lines[1] > 40
    assert results[0][0][0] == "failed" and results[1][0][0] == "loaded"
    assert results[1][0][3] == 1  # E01 merged
    assert direct_loads == [2]  # into an empty products table, repeats merged after
    assert dump["rejected"] and len(dump["products"]) > len(GOOD_2018)


def test_line_cap_crlf_and_reject_rate_same_database(tmp_path: Path, engine, settings) -> None:
    long_line = _j({"asin": "L1", "title": "x" * 5000})
    capped = _file(tmp_path / "capped.json", [*GOOD_2018[:20], long_line, *GOOD_2018[20:40]])
    crlf = _file(tmp_path / "crlf.json", GOOD_2018[:10] + [b'{"asin": "C1"}\r'], end=b"\r\n")
    bad = _file(tmp_path / "bad.json", GOOD_2018[:5] + EDGE_2018[:20])
    no_newline = tmp_path / "last.json"
    no_newline.write_bytes(b"\n".join(GOOD_2018[40:50]))
    small = Settings(database_url=settings.database_url, max_line_bytes=4096)
    results, dump = _same_both_ways(
        engine,
        small,
        [
            ([capped], None, 0.1, "metadata"),
            ([crlf, no_newline], None, 0.0, "metadata"),
            ([bad], "amazon2018-metadata", None, "metadata"),
            ([bad], "amazon2018-metadata", 1.0, "metadata"),
        ],
    )
    assert "longer than the 4,096-byte cap" in results[0][0][6][1]
    assert results[2][0][0] == "failed" and results[3][0][0] == "loaded"


def test_every_metadata_format_same_database(
    tmp_path: Path, engine, settings, direct_loads
) -> None:
    """Every metadata format, merged into products that ratings created, then reloaded."""
    ratings = _file(
        tmp_path / "ratings.csv",
        [b"B000000001,U1,5.0,1300000000", b"E36,U2,4.0,1300000001", b"1,U3,3.0,1300000002"],
    )
    m2018 = _file(tmp_path / "m18.json.gz", GOOD_2018[:20] + EDGE_2018[:12], gz=True)
    m2018_again = _file(
        tmp_path / "m18b.json",
        [
            _j({"asin": "B000000001", "title": "Renamed", "brand": "", "price": "$1"}),
            _j({"asin": "B000000002", "feature": [], "new": {"k": "v"}}),
        ],
    )
    m2023 = _file(
        tmp_path / "meta23.jsonl",
        [
            _j(
                {
                    "main_category": "All Beauty",
                    "title": "Brush",
                    "average_rating": 4.8,
                    "rating_number": 10,
                    "features": ["soft", "pink"],
                    "description": ["A brush"],
                    "store": "Brushco",
                    "categories": ["Beauty", "Tools"],
                    "parent_asin": "P1",
                }
            ),
            _j({"parent_asin": "", "asin": "P2", "title": "No parent", "categories": ["A"]}),
            _j({"parent_asin": "P3", "store": "S", "features": ["x"], "details": {"a": "b"}}),
            _j({"parent_asin": "P1", "title": "Brush, renamed", "store": None}),
            b'{"parent_asin": "P4", "price": NaN}',
            b'{"main_category": "x"}',
        ],
    )
    m2014 = _file(
        tmp_path / "meta14.json",
        [
            b"{'asin': 'A1', 'title': 'Guide', 'salesRank': {'Books': 12}, "
            b"'categories': [['Books', 'Fiction']], 'imUrl': 'http://x'}",
            b"{'asin': 'A2', 'categories': [['Electronics']], 'brand': 'Sony'}",
        ],
    )
    movies = _file(
        tmp_path / "movies.csv",
        [
            b"movieId,title,genres",
            b"1,Toy Story (1995),Animation|Children",
            b"3,X,(no genres listed)",
        ],
    )
    tags = _file(
        tmp_path / "tags.csv",
        [b"userId,movieId,tag,timestamp", b"2,1,pixar,1445714994", b"3,1,fun,1445714995"],
    )
    dat = _file(tmp_path / "movies.dat", [b"1::Toy Story (1995)::Animation|Children's"])
    uitem = _file(
        tmp_path / "u.item",
        [b"1|Toy Story (1995)|01-Jan-1995||http://x|" + b"|".join([b"0"] * 18 + [b"1"])],
    )
    batches: list[Batch] = [
        ([ratings], None, 0.0, "ratings"),
        ([m2018], None, 0.5, "metadata"),
        ([m2018_again], None, 0.0, "metadata"),
        ([m2023], None, 0.5, "metadata"),
        ([m2014, movies, tags, dat, uitem], None, 0.0, "metadata"),
        ([m2018, m2018_again, m2023], None, 0.5, "metadata"),  # a reload: the same database
    ]
    results, dump = _same_both_ways(engine, settings, batches)
    assert [len(r) for r in results] == [1, 1, 1, 1, 5, 3]
    assert all(s[0] == "loaded" for r in results for s in r), results
    assert direct_loads == [0]  # the ratings made products: every fast load staged
    by_id = {row[0]: row for row in dump["products"]}
    assert by_id["P1"][1] == "Brush, renamed" and by_id["B000000001"][1] == "Renamed"


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(12 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 7, 2**70, -(2**64)])
    if kind == 3:
        return rng.choice([0.5, 1.0, -2.25, 1e-7, 3.14159])
    if kind in (4, 5, 6):
        return rng.choice(["", "plain", "tab\tin", "new\nline", 'q"uote', "back\\slash", "é€😀"])
    if kind in (7, 8, 9):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["a", "b", "é", ""]): _random_value(rng, depth + 1) for _ in range(3)}


def test_random_records_same_database(tmp_path: Path, engine, settings) -> None:
    """Records with random values in every field, written in several JSON spellings."""
    rng = random.Random(7)
    fields = ["title", "brand", "description", "feature", "category", "main_cat", "extra"]
    spellings = [
        {},
        {"ensure_ascii": False},
        {"separators": (",", ":")},
        {"indent": None, "sort_keys": True},
    ]
    lines = []
    for i in range(400):
        record: dict[str, object] = {"asin": f"R{rng.randrange(300)}"}
        for name in rng.sample(fields, rng.randrange(len(fields))):
            record[name] = _random_value(rng)
        if rng.random() < 0.1:
            record["asin"] = _random_value(rng)
        lines.append(_j(record, **spellings[i % len(spellings)]))
    path = _file(tmp_path / "random.json", lines)
    results, dump = _same_both_ways(
        engine, settings, [([path], "amazon2018-metadata", 1.0, "metadata")]
    )
    assert results[0][0][0] == "loaded" and results[0][0][3] > 0 and len(dump["products"]) > 100
