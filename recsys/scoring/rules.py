"""Rules written in bulk: ``recsys load-db --availability FILE``, and checks of the rule tables.

The rules live in PostgreSQL so that a shop's own systems write them with plain SQL
(README "Rules"). This module loads a CSV of ``asin,available`` into ``products.available``
all or nothing: a line that cannot be read, or an asin that is not in ``products``, rejects
the whole file with its line number and changes nothing.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.errors import InputError

_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}
_MAX_SHOWN = 5


@dataclass(frozen=True)
class AvailabilitySummary:
    path: str
    rows: int
    """Data lines read (a repeated asin counts each time; its last line wins)."""
    products: int
    """Distinct products named."""
    unavailable: int
    """Of those, how many are now unavailable."""
    changed: int
    """Products whose availability changed."""


def read_availability(path: Path) -> list[tuple[str, bool, int]]:
    """(asin, available, line number) of every data line; a header ``asin,available`` is skipped.

    Raises:
        InputError: the file is missing or unreadable, or a line is not ``asin,true|false``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise InputError(f"availability file {path} does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"availability file {path} cannot be read: {err}") from err
    rows: list[tuple[str, bool, int]] = []
    for line_no, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not fields or all(not f.strip() for f in fields):
            continue
        if line_no == 1 and [f.strip().lower() for f in fields] == ["asin", "available"]:
            continue
        if len(fields) != 2:
            raise InputError(
                f"{path.name}:{line_no}: expected 2 fields asin,available, got {len(fields)}"
            )
        asin, value = fields[0].strip(), fields[1].strip().lower()
        if not asin:
            raise InputError(f"{path.name}:{line_no}: empty asin")
        if value in _TRUE:
            rows.append((asin, True, line_no))
        elif value in _FALSE:
            rows.append((asin, False, line_no))
        else:
            raise InputError(
                f"{path.name}:{line_no}: available must be true or false, got {fields[1]!r}"
            )
    if not rows:
        raise InputError(f"availability file {path} has no data lines (asin,available)")
    return rows


def load_availability(engine: Engine, path: Path) -> AvailabilitySummary:
    """Set ``products.available`` from the file, in one transaction.

    Raises:
        InputError: a bad line, or asins not in ``products`` (the first few are named with
            their line numbers); nothing is changed.
    """
    rows = read_availability(path)
    last: dict[str, tuple[bool, int]] = {}
    for asin, available, line_no in rows:
        last[asin] = (available, line_no)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TEMP TABLE availability_in (asin text PRIMARY KEY, available boolean, "
                "line_no integer) ON COMMIT DROP"
            )
        )
        raw = conn.connection.driver_connection
        with (
            raw.cursor() as cur,
            cur.copy("COPY availability_in (asin, available, line_no) FROM STDIN") as copy,
        ):
            for asin, (available, line_no) in last.items():
                copy.write_row((asin, available, line_no))
        unknown = conn.execute(
            sa.text(
                "SELECT a.asin, a.line_no, count(*) OVER () FROM availability_in a "
                "WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.external_id = a.asin) "
                "ORDER BY a.line_no LIMIT :n"
            ),
            {"n": _MAX_SHOWN},
        ).all()
        if unknown:
            shown = ", ".join(f"line {line}: {asin!r}" for asin, line, _ in unknown)
            raise InputError(
                f"{Path(path).name}: {unknown[0][2]} asins are not in products ({shown}); "
                "nothing was changed"
            )
        changed = conn.execute(
            sa.text(
                "UPDATE products p SET available = a.available FROM availability_in a "
                "WHERE p.external_id = a.asin AND p.available IS DISTINCT FROM a.available"
            )
        ).rowcount
    return AvailabilitySummary(
        path=str(path),
        rows=len(rows),
        products=len(last),
        unavailable=sum(1 for available, _ in last.values() if not available),
        changed=int(changed or 0),
    )
