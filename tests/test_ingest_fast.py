"""The fast rating loader gives the same database as the general one, on every rating format file.

Each case is loaded with ``fast_path=False`` (the general path), the database dumped, emptied,
then loaded with ``fast_path=True`` and dumped again; the dumps (by external ids, so surrogate
ids do not matter) must be equal, and so must the summaries and the rejected rows.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa
from test_ingest_bad_input import CSV_BAD
from test_ingest_bad_input import GOOD as GOOD_TEXT

from recsys.errors import InputError
from recsys.ingest import fast
from recsys.ingest.detect import get_format
from recsys.ingest.load import load_files

_DUMP = {
    "ratings": (
        "SELECT u.external_id, p.external_id, r.rating, extract(epoch FROM r.rated_at)::float8"
        " FROM ratings r JOIN users u ON u.id = r.user_id JOIN products p ON p.id = r.product_id"
        " ORDER BY 1, 2"
    ),
    "users": "SELECT external_id FROM users ORDER BY 1",
    "products": (
        "SELECT external_id, title, brand, description, feature_text, categories, main_category,"
        " raw::text FROM products ORDER BY 1"
    ),
    "loads": (
        "SELECT path, sha256, format, kind, status, rows_read, rows_loaded, rows_merged,"
        " rows_rejected, message FROM loads ORDER BY id"
    ),
    "rejected": (
        "SELECT l.path, r.line_no, r.raw_line, r.reason FROM rejected_rows r"
        " JOIN loads l ON l.id = r.load_id ORDER BY l.id, r.line_no"
    ),
    "constraints": (
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated"
        " FROM pg_constraint WHERE conrelid IN ('ratings'::regclass, 'users'::regclass)"
        " ORDER BY 1, 2"
    ),
    "indexes": (
        "SELECT tablename, indexname, indexdef FROM pg_indexes"
        " WHERE tablename IN ('ratings', 'users') ORDER BY 1, 2"
    ),
}


def _dump(engine: sa.Engine) -> dict[str, list[tuple]]:
    with engine.connect() as c:
        return {k: [tuple(r) for r in c.execute(sa.text(q)).all()] for k, q in _DUMP.items()}


def _reset(engine: sa.Engine) -> None:
    with engine.begin() as c:
        c.execute(
            sa.text(
                "TRUNCATE rejected_rows, loads, ratings, users, products RESTART IDENTITY CASCADE"
            )
        )


def _outcome(engine, settings, batches, fast_path: bool, dump=_dump):
    """Load each batch of (files, format, max_reject_rate[, "ratings" | "metadata"]) in turn;
    the summaries or the error of each, then ``dump`` of the database."""
    results = []
    for files, fmt, rate, *kind in batches:
        try:
            summaries = load_files(
                engine,
                settings,
                **{kind[0] if kind else "ratings": files},
                fmt=fmt,
                max_reject_rate=rate,
                fast_path=fast_path,
            )
        except InputError as err:
            results.append(("error", str(err)))
            continue
        results.append(
            [
                (s.status, s.rows_read, s.rows_loaded, s.rows_merged, s.rows_rejected, s.message)
                + tuple((r.line_no, r.reason, r.raw_line) for r in s.rejects)
                for s in summaries
            ]
        )
    return results, dump(engine)


def _same_both_ways(engine, settings, batches, caplog=None) -> tuple:
    general = _outcome(engine, settings, batches, fast_path=False)
    _reset(engine)
    if caplog is not None:
        caplog.clear()
        caplog.set_level(logging.INFO, logger="recsys.ingest")
    quick = _outcome(engine, settings, batches, fast_path=True)
    if caplog is not None:  # the fast path read every file itself
        assert "general loader" not in caplog.text
    assert quick[0] == general[0]
    for key in _DUMP:
        assert quick[1][key] == general[1][key], key
    return quick


def _file(path: Path, lines: list[bytes], *, gz: bool = False, end: bytes = b"\n") -> Path:
    data = end.join(lines) + end
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


NOW = int(time.time())
GOOD = [line.encode() for line in GOOD_TEXT]

# Rating lines the fast path parses itself and lines it must leave to the format's parser
# (valid or not): every one must come out exactly as the general path has it.
EDGE_CSV = [
    b"P1,U1,5.0,1300000000",
    b"P1,U1,3.0,1300000000",  # same pair, same time: the later line wins
    b"P2,U1,4,1300000001",
    b"P2,U1,2.0,1200000000",  # older: loses
    b" P3 , U2 ,4.0,1300000002",  # spaces: stripped by the parser
    b"P3,U2,05.00,1300000003",  # an unusual spelling the parser accepts
    b"P4,U\xc3\xa9,1.0,1300000004",  # non-ASCII id
    b'P"5,U3,2.0,1300000005',  # quote is plain text in this format
    b"P\\6,U3,2.0,1300000006",  # backslash
    b"P7,U\t4,2.0,1300000007",  # a tab inside an id
    b"P8,U5,4.5,1300000008",  # off the whole-star scale
    b"P8,U5,0,1300000008",
    b"P9,U6,3.0,0",  # 1970: valid
    b"P9,U7,3.0,99",
    b"P9,U8,3.0," + str(NOW + 86_400).encode(),  # tomorrow
    b"P9,U9,3.0,4102444800",  # 2100: out of range
    b"P9,U9,3.0,12345678901",
    b"P9,U9,3.0,-5",
    b"P10,U10,3.0,1300000010,extra",
    b"P10,,3.0,1300000010",
    b",U10,3.0,1300000010",
    b"P11,U11,,1300000011",
    b"P11,U11,3.0,",
    b"",
    b"   ",
    b"P12,U12,3.0,1300000012\r",  # a stray CR before the CRLF-stripped end
    b"P13,U\x0013,3.0,1300000013",
    b"P14,U\xff,3.0,1300000014",
    b"\xef\xbb\xbfP15,U15,3.0,1300000015",  # a BOM
    b"P16,U16,+3,1300000016",
    b"P17,U17,3.0,1.3e9",
    b"P18,U18,inf,1300000018",
]


def test_plain_lines_parse_as_the_formats_parser_does() -> None:
    """Random plain lines: the vectorised parse equals each fast format's own parser."""
    rng = np.random.default_rng(0)
    for name, layout in fast.LAYOUTS.items():
        parse = get_format(name).parser_for(Path("x"))
        sep = chr(layout.delimiter)
        lines, expected = [], []
        for _ in range(300):
            fields = ["", "", "", ""]
            user, product = f"U{rng.integers(0, 50)}", f"P{rng.integers(0, 50)}"
            if layout.half:
                half = int(rng.integers(1, 11))
            else:
                half = 2 * int(rng.integers(1, 6))
            if half % 2:
                spelled = f"{half // 2}.5"
            else:
                spelled = str(rng.choice([f"{half // 2}", f"{half // 2}.0"]))
            ts = int(rng.integers(100_000_000, NOW))
            fields[layout.user], fields[layout.product] = user, product
            fields[layout.rating], fields[layout.timestamp] = spelled, str(ts)
            line = sep.join(fields)
            lines.append(line.encode())
            expected.append(parse(line))
        block = fast._scan(b"\n".join(lines) + b"\n", name, NOW)
        assert block.plain.all(), name
        assert block.users.to_pylist() == [r.user for r in expected]
        assert block.products.to_pylist() == [r.product for r in expected]
        assert (block.half / 2).tolist() == [r.rating for r in expected]
        assert block.ts.tolist() == [r.timestamp for r in expected]


@pytest.mark.parametrize("gz", [False, True])
def test_edge_lines_same_database(tmp_path: Path, engine, settings, caplog, gz: bool) -> None:
    path = _file(tmp_path / "edge.csv", GOOD[:50] + EDGE_CSV + GOOD[50:60], gz=gz)
    _, dump = _same_both_ways(engine, settings, [([path], "ratings-csv", 1.0)], caplog)
    assert dump["ratings"] and dump["rejected"]


def test_bad_input_cases_same_database(tmp_path: Path, engine, settings, caplog) -> None:
    """Every malformed-line case of test_ingest_bad_input, under and over the reject rate."""
    lines = list(GOOD)
    for k, (raw, _reason) in enumerate(CSV_BAD):
        lines.insert(10 + 15 * k, raw)
    path = _file(tmp_path / "ratings.csv", lines)
    results, _ = _same_both_ways(
        engine, settings, [([path], "ratings-csv", 0.1), ([path], "ratings-csv", 0.1)], caplog
    )
    assert results[0][0][0] == "loaded" and results[0][0][4] == len(CSV_BAD)
    _reset(engine)
    results, dump = _same_both_ways(engine, settings, [([path], "ratings-csv", None)])
    assert results[0][0][0] == "failed" and dump["ratings"] == []


def test_line_endings_and_headers_same_database(tmp_path: Path, engine, settings, caplog) -> None:
    crlf = _file(tmp_path / "crlf.csv", GOOD[:30], end=b"\r\n")
    no_newline = tmp_path / "last.csv"
    no_newline.write_bytes(b"\n".join(GOOD[30:60]))
    udata = _file(
        tmp_path / "u.data",
        [b"1\t10\t3\t881250949", b"2\t10\t5\t881250950", b"2\t10\t4\t881250950", b"3\t11\t6\t1"],
    )
    latest = _file(
        tmp_path / "ratings.csv",
        [
            b"userId,movieId,rating,timestamp",
            b"1,1,4.0,964982703",
            b"1,3,0.5,964981247",
            b"2,1,3.5,964982224",
            b'2,"7",3.5,964982224',
            b"2,8,0.0,964982224",
            b"2,9,5.5,964982224",
        ],
    )
    header_only_twice = _file(
        tmp_path / "twice.csv",
        [
            b"userId,movieId,rating,timestamp",
            b"userId,movieId,rating,timestamp",
            b"5,5,5,964982703",
        ],
    )
    _same_both_ways(
        engine,
        settings,
        [
            ([crlf, no_newline], "ratings-csv", 0.0),
            ([udata], "movielens100k-ratings", 1.0),
            ([latest], None, 1.0),
            ([header_only_twice], "movielens-ratings", 1.0),
        ],
        caplog,
    )


def test_merge_into_existing_and_reload_same_database(
    tmp_path: Path, engine, settings, caplog
) -> None:
    rng = np.random.default_rng(1)
    first = [
        f"P{p},U{u},{s}.0,{t}".encode()
        for p, u, s, t in zip(
            rng.integers(0, 40, 3000),
            rng.integers(0, 300, 3000),
            rng.integers(1, 6, 3000),
            rng.integers(1_300_000_000, 1_300_000_100, 3000),
            strict=True,
        )
    ]
    second = [
        f"P{p},U{u},{s}.0,{t}".encode()
        for p, u, s, t in zip(
            rng.integers(20, 60, 3000),
            rng.integers(200, 500, 3000),
            rng.integers(1, 6, 3000),
            rng.integers(1_300_000_000, 1_300_000_100, 3000),
            strict=True,
        )
    ]
    a = _file(tmp_path / "a.csv", first)
    b = _file(tmp_path / "b.csv", second)
    results, dump = _same_both_ways(
        engine,
        settings,
        [([a], "ratings-csv", 0.0), ([b], "ratings-csv", 0.0), ([a, b], "ratings-csv", 0.0)],
        caplog,
    )
    assert len(dump["loads"]) == 4 and results[0][0][3] > 0  # duplicates inside the file merged


def _late_ids_file(path: Path, seed: int, first_user: int) -> Path:
    """Lines whose users and products keep appearing for the first time until the end, one
    heavy user, few timestamps (many ties) and a bad line every 97."""
    rng = np.random.default_rng(seed)
    lines = []
    for k in range(4000):
        user = 7 if k % 5 == 0 else first_user + int(rng.integers(0, k // 10 + 1))
        product = int(rng.integers(0, k // 40 + 1))
        stamp = 1_300_000_000 + int(rng.integers(0, 4))
        lines.append(f"P{product},U{user},{rng.integers(1, 6)}.0,{stamp}".encode())
    for k in range(0, len(lines), 97):
        lines.insert(k, b"P1,U1,bad,1300000000")
    return _file(path, lines)


def test_many_blocks_and_parts_same_database(
    tmp_path: Path, engine, settings, caplog, monkeypatch
) -> None:
    """Tiny blocks and the dedupe in many user ranges: ids first seen in late blocks, pairs
    repeated across blocks, a user with more lines than a range holds; loaded first, then
    merged into stored ratings, then reloaded."""
    monkeypatch.setattr(fast, "BLOCK_BYTES", 512)
    monkeypatch.setattr(fast, "_PART_ROWS", 200)
    monkeypatch.setattr(fast, "_SAMPLE_EVERY", 4)
    parts: list[int] = []
    user_ranges = fast._user_ranges

    def counted(parsed, user_ids):
        ranges = user_ranges(parsed, user_ids)
        parts.append(max(int(r.max()) for r in ranges if len(r)) + 1)
        return ranges

    monkeypatch.setattr(fast, "_user_ranges", counted)
    a = _late_ids_file(tmp_path / "a.csv", 3, 0)
    b = _late_ids_file(tmp_path / "b.csv", 4, 150)
    results, dump = _same_both_ways(
        engine,
        settings,
        [([a], "ratings-csv", 1.0), ([b], "ratings-csv", 1.0), ([a], "ratings-csv", 1.0)],
        caplog,
    )
    assert len(parts) == 3 and min(parts) >= 5, parts
    assert results[0][0][3] > 0 and results[0][0][4] > 0  # merged duplicates, rejected lines
    assert len(dump["ratings"]) > 1000


@pytest.mark.parametrize("collide", ["inside", "across"])
def test_hash_collisions_go_to_the_general_path(
    tmp_path: Path, engine, settings, caplog, monkeypatch, collide: str
) -> None:
    """Ids whose hashes collide, inside one block or across blocks, are never mixed up: the
    file is loaded by the general path, with the same database."""
    monkeypatch.setattr(fast, "BLOCK_BYTES", 512)

    def colliding(strings):
        if collide == "inside":  # every id of a block has one hash
            return np.zeros(len(strings), dtype=np.uint64)
        # unique inside each block (its rank there), shared by different ids of other blocks
        _, rank = np.unique(np.array(strings.to_pylist(), dtype=object), return_inverse=True)
        return rank.ravel().astype(np.uint64)

    monkeypatch.setattr(fast, "hash64", colliding)
    path = _late_ids_file(tmp_path / "a.csv", 5, 0)
    caplog.set_level(logging.INFO, logger="recsys.ingest")
    _same_both_ways(engine, settings, [([path], "ratings-csv", 1.0)])
    assert "general loader (two ids with one hash)" in caplog.text


def test_hash64_equal_strings_equal_hashes() -> None:
    rng = np.random.default_rng(6)
    words = ["", "a", "ab", "abcdefgh", "abcdefghi", "é", "x" * 100, "x" * 99 + "y"]
    words += [f"A{n:012d}" for n in rng.integers(0, 10**12, 2000)]
    strings = pa.array(words)
    hashes = fast.hash64(strings)
    assert len(set(hashes.tolist())) == len(set(words))
    again = fast.hash64(pa.array(["zz", *words[::-1]]).slice(1))  # an offset into its buffers
    assert again.tolist() == hashes[::-1].tolist()


def test_fast_path_falls_back_on_what_it_does_not_store(tmp_path: Path, engine, settings) -> None:
    """A float timestamp, a huge line, a line longer than a block: the general path decides."""
    floats = _file(tmp_path / "floats.csv", [b"P99,U99,4.0,1300000000.5", *GOOD])
    huge = _file(tmp_path / "huge.csv", [b"P1,U1,4.0," + b"9" * 10_000, *GOOD])
    long_line = b"P,U," + b"4" * (fast.BLOCK_BYTES + 100) + b",1300000000"
    block = _file(tmp_path / "block.csv", [*GOOD, long_line])
    results, dump = _same_both_ways(
        engine,
        settings,
        [
            ([floats], "ratings-csv", 1.0),
            ([huge], "ratings-csv", 1.0),
            ([block], "ratings-csv", 1.0),
        ],
    )
    assert 1300000000.5 in [r[3] for r in dump["ratings"]]


def test_truncated_gzip_same_error(tmp_path: Path, engine, settings) -> None:
    data = gzip.compress(b"\n".join(GOOD * 50) + b"\n")
    truncated = tmp_path / "t.csv.gz"
    truncated.write_bytes(data[: len(data) // 2])
    results, dump = _same_both_ways(engine, settings, [([truncated], "ratings-csv", 1.0)])
    assert results[0][0] == "error" and "t.csv.gz: cannot read" in results[0][1]
    assert dump["ratings"] == [] and dump["loads"] == []


def test_corrupt_gzip_is_one_clear_error_on_the_fast_path(tmp_path: Path, engine, settings) -> None:
    data = gzip.compress(b"\n".join(GOOD * 50) + b"\n")
    corrupt = tmp_path / "c.csv.gz"
    corrupt.write_bytes(data[:200] + bytes(b ^ 0x5A for b in data[200:400]) + data[400:])
    results, dump = _outcome(engine, settings, [([corrupt], "ratings-csv", 1.0)], fast_path=True)
    assert results[0][0] == "error"
    assert "c.csv.gz: cannot read" in results[0][1] and "\n" not in results[0][1]
    assert dump["ratings"] == [] and dump["loads"] == []


def test_json_reviews_take_the_general_path(tmp_path: Path, engine, settings) -> None:
    line = {"reviewerID": "U1", "asin": "A1", "overall": 4.0, "unixReviewTime": 1393545600}
    path = _file(tmp_path / "r.json", [json.dumps(line).encode()])
    assert not fast.supports(get_format("amazon2018-reviews"))
    _same_both_ways(engine, settings, [([path], None, 0.0)])


def test_unique_metadata_merge_same_database(tmp_path: Path, engine, settings, monkeypatch) -> None:
    """Metadata files whose products each appear once take the ungrouped merge: same rows
    (on the general path, whose merges these are)."""
    from recsys.ingest import load, merge

    first = {
        "asin": "B1",
        "title": "Cable",
        "feature": ["USB", "1 m"],
        "category": ["Electronics", "Cables"],
        "brand": "",
        "main_cat": "Electronics",
    }
    second = {"asin": "B2", "title": "Plug", "image": ["i2"], "category": []}
    update = {"asin": "B1", "brand": "Acme", "description": ["Long"], "price": "$3"}
    m2018 = _file(tmp_path / "m.json", [json.dumps(first).encode(), json.dumps(second).encode()])
    again = _file(tmp_path / "again.json", [json.dumps(update).encode()])
    m2014 = _file(
        tmp_path / "meta14.json",
        [
            b"{'asin': 'A1', 'title': 'Guide', 'salesRank': {'Books': 12}, "
            b"'categories': [['Books', 'Fiction']], 'imUrl': 'http://x'}",
        ],
    )
    m2023 = _file(
        tmp_path / "meta23.jsonl",
        [
            json.dumps(
                {"parent_asin": "C1", "title": "Brush", "store": "Co", "features": ["soft"]}
            ).encode()
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
    tags = _file(tmp_path / "tags.csv", [b"userId,movieId,tag,timestamp", b"2,1,pixar,1445714994"])
    files = [m2018, again, m2014, m2023, movies, tags, m2018]

    def dumped() -> dict:
        for path in files:
            load_files(engine, settings, metadata=[path], fast_path=False)
        return _dump(engine)

    unique = dumped()
    _reset(engine)
    monkeypatch.setattr(
        load,
        "merge_staged_products",
        lambda conn, agg: merge.merge_staged_products(conn, agg, allow_unique=False),
    )
    grouped = dumped()
    assert unique == grouped
    assert len(unique["products"]) == 6 and len(unique["loads"]) == len(files)
