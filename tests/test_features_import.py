"""Precomputed embeddings import: CSV, Parquet, .npy + ids; rejects counted and recorded."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from recsys.errors import InputError
from recsys.features import store
from recsys.features.importer import import_embeddings


@pytest.fixture
def products(engine):
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO products (external_id, title) VALUES (:e, :t)"),
            [{"e": f"p{i}", "t": f"Product {i}"} for i in range(1, 5)],
        )
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT external_id, id FROM products")).all())


def _vectors(engine, set_id, products):
    with engine.connect() as conn:
        ids, vectors = store.read_vectors(conn, set_id)
    by_id = {v: k for k, v in products.items()}
    return {by_id[i]: list(map(float, v)) for i, v in zip(ids.tolist(), vectors, strict=True)}


def test_csv_list_column_with_rejects(engine, settings, products, tmp_path):
    path = tmp_path / "emb.csv"
    path.write_text(
        "product_id,vector\n"
        'p1,"[1, 0, 0]"\n'
        "p2,0 1 0\n"
        'p3,"[0, 0]"\n'  # wrong dimension
        'ghost,"[1, 1, 1]"\n'  # unknown product
        "p4,1 nan 0\n"  # not finite
        'p1,"[0.5, 0.5, 0]"\n'  # repeated: the later row wins
    )
    summary = import_embeddings(engine, settings, path, "ext", max_reject_rate=0.9)
    assert (summary.kind, summary.format, summary.status) == ("embeddings", "csv", "loaded")
    assert (summary.rows_read, summary.rows_loaded, summary.rows_merged, summary.rows_rejected) == (
        6,
        2,
        1,
        3,
    )
    with engine.connect() as conn:
        info = store.current_feature_set(conn)
        rejected = conn.execute(
            sa.text(
                "SELECT r.line_no, r.reason FROM rejected_rows r JOIN loads l ON l.id = r.load_id "
                "WHERE l.kind = 'embeddings' ORDER BY r.line_no"
            )
        ).all()
    assert info.name == "ext" and info.dim == 3 and info.weighting == "precomputed"
    assert [tuple(r) for r in rejected] == [
        (4, "wrong dimension: 2 values, the file's vectors have 3"),
        (5, "unknown product id"),
        (6, "not a finite number"),
    ]
    assert _vectors(engine, info.id, products) == {"p1": [0.5, 0.5, 0.0], "p2": [0.0, 1.0, 0.0]}


def test_csv_columns_too_many_rejects_fails(engine, settings, products, tmp_path):
    path = tmp_path / "emb.csv"
    path.write_text("id,x,y\np1,1,2\nnope,3,4\n")
    summary = import_embeddings(engine, settings, path, "bad")  # default rate 1%
    assert summary.status == "failed" and summary.rows_rejected == 1
    assert "more than --max-reject-rate" in summary.message
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM feature_sets")).scalar_one() == 0
        assert (
            conn.execute(sa.text("SELECT status FROM loads WHERE kind = 'embeddings'")).scalar_one()
            == "failed"
        )


def test_parquet_list_column(engine, settings, products, tmp_path):
    path = tmp_path / "emb.parquet"
    pq.write_table(pa.table({"product_id": ["p1", "p3"], "vector": [[1.0, 2.0], [3.0, 4.0]]}), path)
    summary = import_embeddings(engine, settings, path, "pq")
    assert summary.status == "loaded" and summary.rows_loaded == 2
    with engine.connect() as conn:
        info = store.get_feature_set(conn, "pq")
    assert _vectors(engine, info.id, products) == {"p1": [1.0, 2.0], "p3": [3.0, 4.0]}
    with engine.begin() as conn:
        _, rows = store.similar_products(conn, "p1", k=1)
    assert [r.external_id for r in rows] == ["p3"]


def test_npy_with_ids_file(engine, settings, products, tmp_path):
    path = tmp_path / "vectors.npy"
    np.save(path, np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32))
    (tmp_path / "vectors.ids.txt").write_text("p2\np4\np1\n")
    summary = import_embeddings(engine, settings, path, "npy")
    assert summary.status == "loaded" and summary.format == "npy" and summary.rows_loaded == 3
    with engine.connect() as conn:
        info = store.current_feature_set(conn)
    assert info.name == "npy"
    assert _vectors(engine, info.id, products) == {
        "p1": [1.0, 1.0],
        "p2": [1.0, 0.0],
        "p4": [0.0, 1.0],
    }


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "embeddings file not found"),
        ({"vectors.npy": b"not numpy"}, "not a readable .npy matrix"),
        ({"emb.txt": b"p1 1 2"}, "unknown embeddings format"),
        ({"emb.parquet": b"PAR1 broken"}, "not a readable Parquet file"),
    ],
    ids=["missing", "bad-npy", "unknown-format", "bad-parquet"],
)
def test_unreadable_files(engine, settings, products, tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        (tmp_path / "vectors.ids.txt").write_text("p1\n")
    path = tmp_path / (next(iter(files)) if files else "missing.csv")
    with pytest.raises(InputError, match=message) as err:
        import_embeddings(engine, settings, path, "x")
    assert "\n" not in str(err.value)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM feature_sets")).scalar_one() == 0


def test_npy_ids_missing_or_mismatched(engine, settings, products, tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(InputError, match=r"product id list .*v\.ids\.txt is missing"):
        import_embeddings(engine, settings, path, "x")
    (tmp_path / "v.ids.txt").write_text("p1\n")
    with pytest.raises(InputError, match="2 vectors but 1 ids"):
        import_embeddings(engine, settings, path, "x")


def test_name_taken(engine, settings, products, tmp_path):
    path = tmp_path / "emb.csv"
    path.write_text('product_id,vector\np1,"[1, 0]"\n')
    import_embeddings(engine, settings, path, "same")
    with pytest.raises(InputError, match="a feature set named 'same' exists already"):
        import_embeddings(engine, settings, path, "same")


def test_load_db_embeddings_command(engine, products, cli_env, tmp_path):
    from click.testing import CliRunner

    from recsys.cli import cli

    path = tmp_path / "emb.csv"
    path.write_text('product_id,vector\np1,"[1, 0]"\np2,"[0, 1]"\n')
    result = CliRunner().invoke(
        cli, ["load-db", "--embeddings", str(path), "--name", "cli"], env=cli_env
    )
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        info = store.current_feature_set(conn)
    assert info.name == "cli" and info.n_embedded == 2
