"""Import product vectors computed elsewhere into a new feature set (``recsys load-db
--embeddings FILE --name NAME``).

Formats (chosen by the file's suffix):

* ``.csv`` (optionally ``.csv.gz``) with a header line. The first column is the product's
  external id (asin, movie id). The vector is either one column holding a list
  (``"[0.1, 0.2, ...]"``, or numbers separated by spaces or commas), or all the remaining
  columns, one number each.
* ``.parquet``: a ``product_id`` column (else the first column) and either a list column
  ``vector`` (else the second column, when it is a list) or the remaining numeric columns.
* ``.npy``: a float matrix [n, dim] (the notebook checkpointed its averaged vectors this way)
  with the product ids, one per line, in ``FILE.ids.txt`` beside it (``vectors.npy`` ->
  ``vectors.ids.txt``), or in the file given as ``ids``.

Like any load, bad rows are rejected and counted, never silently dropped: an unknown product
id, a vector whose dimension differs from the file's (the most common one), a value that is
not a finite number. A product id repeated in the file is merged (the later row wins). Rejected
rows go to ``rejected_rows`` under a ``loads`` row of kind ``embeddings``. When more than
``settings.max_reject_rate`` of the rows are rejected, no feature set is written and the load
is recorded as ``failed``. Otherwise the vectors become a new feature set (weighting
``precomputed``) with its HNSW index, made current in the same transaction.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.config import Settings
from recsys.db.copy import copy_rows
from recsys.errors import InputError

_log = logging.getLogger(__name__)

REASON_UNKNOWN = "unknown product id"
REASON_DIM = "wrong dimension"
REASON_VALUE = "not a finite number"
REASON_NO_ID = "empty product id"


@dataclass
class _Rows:
    """Parsed rows: (line number, external id, vector or None, raw text for rejects)."""

    line_no: list[int]
    ids: list[str]
    vectors: list[np.ndarray | None]
    raw: list[str]
    fmt: str


def _parse_list(cell: str) -> np.ndarray | None:
    text = cell.strip().strip("[]()")
    parts = text.replace(",", " ").split()
    try:
        return np.asarray([float(p) for p in parts], dtype=np.float64)
    except ValueError:
        return None


def _read_csv(path: Path) -> _Rows:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = _Rows([], [], [], [], "csv")
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header or len(header) < 2:
                raise InputError(f"{path}: expected a header with a product id and a vector")
            list_column = len(header) == 2
            for line_no, record in enumerate(reader, start=2):
                if not record:
                    continue
                raw = ",".join(record)[:10_000]
                ext = record[0].strip()
                if list_column or len(record) == 2:
                    vector = _parse_list(record[1]) if len(record) > 1 else None
                else:
                    vector = _parse_list(" ".join(record[1:]))
                rows.line_no.append(line_no)
                rows.ids.append(ext)
                rows.vectors.append(vector)
                rows.raw.append(raw)
    except (UnicodeDecodeError, csv.Error, OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable CSV file ({str(err).splitlines()[0]})") from err
    return rows


def _read_parquet(path: Path) -> _Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a broken file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: not a readable Parquet file ({reason})") from err
    names = table.column_names
    if len(names) < 2:
        raise InputError(f"{path}: expected a product id column and a vector")
    id_col = "product_id" if "product_id" in names else names[0]
    ids = [None if v is None else str(v) for v in table.column(id_col).to_pylist()]
    rest = [n for n in names if n != id_col]
    vec_col = "vector" if "vector" in rest else rest[0]
    rows = _Rows([], [], [], [], "parquet")
    if (
        pa.types.is_list(table.schema.field(vec_col).type)
        or pa.types.is_large_list(table.schema.field(vec_col).type)
        or pa.types.is_fixed_size_list(table.schema.field(vec_col).type)
    ):
        values = table.column(vec_col).to_pylist()
    else:
        columns = [table.column(n).to_pylist() for n in rest]
        values = [list(r) for r in zip(*columns, strict=True)]
    for i, (ext, value) in enumerate(zip(ids, values, strict=True)):
        try:
            vector = (
                None
                if value is None or any(v is None for v in value)
                else np.asarray(value, dtype=np.float64)
            )
        except (TypeError, ValueError):
            vector = None
        rows.line_no.append(i + 1)
        rows.ids.append((ext or "").strip())
        rows.vectors.append(vector)
        rows.raw.append(json.dumps({"product_id": ext, "vector": value}, default=str)[:10_000])
    return rows


def ids_path_for(path: Path) -> Path:
    """The default id list beside a .npy file: ``vectors.npy`` -> ``vectors.ids.txt``."""
    return path.with_suffix(".ids.txt")


def _read_npy(path: Path, ids: Path | None) -> _Rows:
    ids_file = ids or ids_path_for(path)
    if not ids_file.is_file():
        raise InputError(f"{path}: the product id list {ids_file} is missing (one id per line)")
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: not a readable .npy matrix ({reason})") from err
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise InputError(f"{path}: expected a 2-d numeric matrix, got shape {matrix.shape}")
    names = ids_file.read_text(encoding="utf-8").splitlines()
    if len(names) != matrix.shape[0]:
        raise InputError(f"{path}: {matrix.shape[0]} vectors but {len(names)} ids in {ids_file}")
    rows = _Rows([], [], [], [], "npy")
    for i, ext in enumerate(names):
        rows.line_no.append(i + 1)
        rows.ids.append(ext.strip())
        rows.vectors.append(np.asarray(matrix[i], dtype=np.float64))
        rows.raw.append(ext[:10_000])
    return rows


def read_embeddings(path: Path, ids: Path | None = None) -> _Rows:
    """Parse an embeddings file (see the module docstring).

    Raises:
        InputError: missing, unreadable or of unknown format.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"embeddings file not found: {path}")
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return _read_csv(path)
    if name.endswith(".parquet"):
        return _read_parquet(path)
    if name.endswith(".npy"):
        return _read_npy(path, ids)
    raise InputError(f"{path}: unknown embeddings format (use .csv, .parquet or .npy + ids)")


def import_embeddings(
    engine: Engine,
    settings: Settings,
    path: Path,
    name: str,
    *,
    ids: Path | None = None,
    make_current: bool = True,
    max_reject_rate: float | None = None,
):
    """Import precomputed product vectors into a new feature set named ``name``.

    Args:
        engine: the database.
        settings: recsys settings (``max_reject_rate`` default).
        path: .csv, .parquet or .npy file (see the module docstring).
        name: the new feature set's name (must be free).
        ids: the product id list for a .npy file (default ``FILE.ids.txt``).
        make_current: make the new set current in the same transaction.
        max_reject_rate: overrides ``settings.max_reject_rate``.

    Returns:
        A :class:`recsys.ingest.load.LoadSummary` of kind ``embeddings``.

    Raises:
        InputError: the file cannot be read at all, or the name is taken.
    """
    from recsys.features import store
    from recsys.ingest.api import LoadSummary, Rejected, file_sha256, record_load

    started = time.perf_counter()
    started_at = datetime.now(UTC)
    path = Path(path)
    rate = settings.max_reject_rate if max_reject_rate is None else max_reject_rate
    rows = read_embeddings(path, ids)
    sha256 = file_sha256(path)
    n_read = len(rows.ids)
    if n_read == 0:
        raise InputError(f"{path}: no vectors")
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT 1 FROM feature_sets WHERE name = :n"), {"n": name}).first():
            raise InputError(f"a feature set named {name!r} exists already")

    lengths = Counter(len(v) for v in rows.vectors if v is not None and len(v))
    dim = lengths.most_common(1)[0][0] if lengths else 0
    with engine.connect() as conn:
        known = _known_products(conn, {e for e in rows.ids if e})

    rejects: list[tuple[int, str, str]] = []
    chosen: dict[int, int] = {}  # product id -> row index (later rows win)
    for i, ext in enumerate(rows.ids):
        vector = rows.vectors[i]
        if not ext:
            reason = REASON_NO_ID
        elif vector is None or not np.isfinite(vector).all():
            reason = REASON_VALUE
        elif len(vector) != dim:
            reason = f"{REASON_DIM}: {len(vector)} values, the file's vectors have {dim}"
        elif ext not in known:
            reason = REASON_UNKNOWN
        else:
            chosen[known[ext]] = i
            continue
        rejects.append((rows.line_no[i], rows.raw[i], reason))
    n_loaded = len(chosen)
    n_merged = n_read - len(rejects) - n_loaded
    shown = tuple(Rejected(ln, reason, raw) for ln, raw, reason in rejects[:5])

    failed_message = None
    if n_loaded == 0:
        failed_message = f"no usable vectors ({len(rejects)} of {n_read} rows rejected)"
    elif len(rejects) > rate * n_read:
        failed_message = (
            f"{len(rejects)} of {n_read} rows rejected ({len(rejects) / n_read:.1%}), more than "
            f"--max-reject-rate {rate:.1%}: no feature set was written"
        )
    status = "failed" if failed_message else "loaded"

    def summary(load_id: int | None) -> LoadSummary:
        return LoadSummary(
            path=str(path),
            sha256=sha256,
            format=rows.fmt,
            kind="embeddings",
            rows_read=n_read,
            rows_loaded=n_loaded if status == "loaded" else 0,
            rows_merged=n_merged if status == "loaded" else 0,
            rows_rejected=len(rejects),
            status=status,
            message=failed_message,
            seconds=time.perf_counter() - started,
            rejects=shown,
            load_id=load_id,
        )

    with engine.begin() as conn:
        if status == "loaded":
            product_ids = np.fromiter(sorted(chosen), dtype=np.int64, count=n_loaded)
            vectors = np.stack([rows.vectors[chosen[p]] for p in product_ids.tolist()]).astype(
                np.float32
            )
            hashes = [hashlib.blake2b(v.tobytes(), digest_size=16).digest() for v in vectors]
            set_id = store.create_feature_set(
                conn,
                name=name,
                source=f"import:{path}",
                source_fingerprint=f"import:{sha256}",
                dim=dim,
                weighting="precomputed",
                cleaning_version=0,
                vocabulary_size=0,
                params={"path": str(path), "sha256": sha256, "format": rows.fmt},
            )
            store.write_vectors(conn, set_id, product_ids, vectors, hashes)
            store.finish_feature_set(conn, set_id)
            store.create_index(conn, set_id, dim)
            if make_current:
                store.make_current(conn, set_id)
        load_id = record_load(conn, summary(None), started_at, rejects)
    result = summary(load_id)
    _log.info(
        "%s: %s, %d rows, %d loaded, %d merged, %d rejected",
        path,
        result.status,
        n_read,
        result.rows_loaded,
        result.rows_merged,
        result.rows_rejected,
    )
    return result


def _known_products(conn: sa.Connection, external_ids: set[str]) -> dict[str, int]:
    """external id -> products.id for the ids that exist (one query through a temp table)."""
    conn.execute(sa.text("CREATE TEMP TABLE _import_ids (external_id text) ON COMMIT DROP"))
    copy_rows(conn, "_import_ids", ("external_id",), ((ext,) for ext in external_ids))
    found = conn.execute(
        sa.text("SELECT p.external_id, p.id FROM products p JOIN _import_ids i USING (external_id)")
    ).all()
    conn.rollback()
    return {ext: pid for ext, pid in found}


__all__ = ["import_embeddings", "ids_path_for", "read_embeddings"]
