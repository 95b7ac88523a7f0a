"""The binary COPY encoder and decoder against a real PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from recsys.db.copy import (
    COPY_HEADER,
    COPY_TRAILER,
    binary_body,
    copy_bigint_arrays,
    driver_connection,
    encode_binary,
    header_length,
)

_TUPLE = np.dtype(
    [
        ("nfields", ">i2"),
        ("l_id", ">i4"),
        ("id", ">i8"),
        ("l_value", ">i4"),
        ("value", ">f4"),
    ]
)


def _tuples(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    rows = np.zeros(len(ids), dtype=_TUPLE)
    rows["nfields"] = 2
    rows["l_id"], rows["id"] = 8, ids
    rows["l_value"], rows["value"] = 4, values
    return rows


def test_encoded_tuples_round_trip_through_postgres(conn: sa.Connection) -> None:
    conn.execute(sa.text("CREATE TEMP TABLE copy_probe (id bigint, value real)"))
    ids = np.array([3, -1, 2**40], dtype=np.int64)
    values = np.array([0.5, -2.25, 1536.125], dtype=np.float32)  # exact in float32
    # two parts: a stream may be built from several groups of tuples
    stream = encode_binary([_tuples(ids[:1], values[:1]), _tuples(ids[1:], values[1:]).tobytes()])
    assert stream.startswith(COPY_HEADER) and stream.endswith(COPY_TRAILER)
    raw = driver_connection(conn)
    with raw.cursor() as cur, cur.copy("COPY copy_probe FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(stream)
    stored = conn.execute(sa.text("SELECT id, value FROM copy_probe ORDER BY id")).all()
    assert stored == sorted(zip(ids.tolist(), values.tolist(), strict=True))

    out = bytearray()
    query = "COPY (SELECT id, value FROM copy_probe ORDER BY id) TO STDOUT (FORMAT BINARY)"
    with raw.cursor() as cur, cur.copy(query) as copy:
        for chunk in copy:
            out += chunk
    rows = np.frombuffer(binary_body(out), dtype=_TUPLE)
    order = np.argsort(ids)
    np.testing.assert_array_equal(rows["id"], ids[order])
    np.testing.assert_array_equal(rows["value"], values[order])


def test_header_and_body_are_checked() -> None:
    assert header_length(COPY_HEADER) == len(COPY_HEADER)
    with_extension = COPY_HEADER[:-4] + (3).to_bytes(4, "big") + b"abc"
    assert header_length(with_extension) == len(COPY_HEADER) + 3
    assert len(binary_body(encode_binary([]))) == 0
    with pytest.raises(ValueError, match="not a COPY BINARY stream"):
        header_length(b"id\tvalue\n1\t2\n" * 3)
    with pytest.raises(ValueError, match="trailer"):
        binary_body(COPY_HEADER + b"\x00\x01")


def test_bigint_arrays_of_one_row_come_back_as_int64(conn: sa.Connection) -> None:
    values = [2**40 + 3, -7, 0, 5]
    users, products, empty = copy_bigint_arrays(
        conn,
        "SELECT array_agg(v), array_agg(-v ORDER BY v), NULL::bigint[] "
        "FROM unnest(%(v)s::bigint[]) v",
        {"v": values},
    )
    assert users.dtype == np.int64 and sorted(users.tolist()) == sorted(values)
    assert products.tolist() == [-v for v in sorted(values)] and empty.tolist() == []
    none, also = copy_bigint_arrays(
        conn, "SELECT array_agg(v), '{}'::bigint[] FROM unnest(%(v)s::bigint[]) v", {"v": []}
    )
    assert none.tolist() == [] and also.tolist() == []
    with pytest.raises(ValueError, match="bigint"):
        copy_bigint_arrays(conn, "SELECT ARRAY[1, NULL]::bigint[]")
    with pytest.raises(ValueError, match="bigint"):
        copy_bigint_arrays(conn, "SELECT ARRAY[1, 2]::int[]")
    with pytest.raises(ValueError, match="one row"):
        copy_bigint_arrays(conn, "SELECT ARRAY[v]::bigint[] FROM generate_series(1, 2) v")
