"""Feature store: build into real PostgreSQL, read back, incremental rebuilds, atomic switch."""

from __future__ import annotations

import gzip
import json
import threading

import numpy as np
import pytest
import sqlalchemy as sa

from recsys.errors import DataError, InputError
from recsys.features import store
from recsys.features.text import MAX_TEXT_CHARS


def _insert_products(engine_or_conn, rows: list[dict]) -> None:
    stmt = sa.text(
        "INSERT INTO products (external_id, title, brand, description, feature_text, categories, "
        "main_category, raw) VALUES (:external_id, :title, :brand, :description, :feature_text, "
        ":categories, :main_category, CAST(:raw AS jsonb))"
    )
    full = [
        {
            "title": None,
            "brand": None,
            "description": None,
            "feature_text": None,
            "categories": None,
            "main_category": None,
            "raw": None,
            **r,
        }
        for r in rows
    ]
    if isinstance(engine_or_conn, sa.Engine):
        with engine_or_conn.begin() as conn:
            conn.execute(stmt, full)
    else:
        engine_or_conn.execute(stmt, full)


def _gift_cards(shared_data) -> list[dict]:
    """The real Gift Cards metadata, parsed here the way the loader maps it."""
    path = shared_data / "amazon2018_gift_cards" / "meta_Gift_Cards.json.gz"
    rows: dict[str, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            desc = rec.get("description") or []
            rows[rec["asin"]] = {
                "external_id": rec["asin"],
                "title": rec.get("title") or None,
                "brand": rec.get("brand") or None,
                "description": "\n".join(desc) if isinstance(desc, list) else desc or None,
                "feature_text": "\n".join(rec.get("feature") or []) or None,
                "categories": rec.get("category") or None,
                "main_category": rec.get("main_cat") or None,
                "raw": json.dumps(rec),
            }
    return list(rows.values())


TOY = [
    {
        "external_id": "a",
        "title": "Red shoe",
        "brand": "Acme",
        "feature_text": "red leather running shoe",
        "categories": ["Shoes"],
    },
    {
        "external_id": "b",
        "title": "Blue shoe",
        "brand": "Acme",
        "feature_text": "blue leather running shoe",
        "categories": ["Shoes"],
    },
    {
        "external_id": "c",
        "title": "Coffee",
        "brand": "Bean",
        "description": "dark roast coffee beans",
        "categories": ["Coffee"],
    },
    {
        "external_id": "d",
        "title": "Tea",
        "brand": "Leaf",
        "description": "green tea leaves",
        "categories": ["Tea"],
    },
    {"external_id": "empty", "title": "Nothing"},
    {"external_id": "html", "title": "Only markup", "description": "<div><br/></div> 123 &amp;"},
    {"external_id": "unknown", "description": "zzzqqq"},
    {"external_id": "big", "description": "shoe " * (MAX_TEXT_CHARS // 5 + 100)},
]


def _write_w2v_text(path, words: dict[str, list[float]]) -> None:
    dim = len(next(iter(words.values())))
    lines = [f"{len(words)} {dim}"]
    lines += [w + " " + " ".join(f"{x:.6f}" for x in v) for w, v in words.items()]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def toy_vectors(tmp_path):
    path = tmp_path / "toy.txt"
    _write_w2v_text(
        path,
        {
            "red": [1, 0, 0, 0],
            "blue": [0, 1, 0, 0],
            "leather": [0, 0, 1, 0],
            "running": [0, 0, 0, 1],
            "shoe": [1, 1, 1, 1],
            "dark": [2, 0, 0, 0],
            "roast": [0, 2, 0, 0],
            "coffee": [0, 0, 2, 0],
            "beans": [0, 0, 0, 2],
            "green": [1, 0, 1, 0],
            "tea": [0, 1, 0, 1],
            "leaves": [1, 1, 0, 0],
        },
    )
    return path


def test_build_with_file_vectors_exact(engine, settings, toy_vectors):
    _insert_products(engine, TOY)
    summary = store.build_features(engine, settings, word_vectors=str(toy_vectors))
    assert summary.n_products == 8
    assert summary.n_embedded == 5  # a, b, c, d, big
    assert summary.skipped == {
        store.SKIP_NO_TEXT: 1,  # empty
        store.SKIP_NO_WORDS: 1,  # html: markup, a number and an entity only
        store.SKIP_NO_KNOWN_WORDS: 1,  # unknown
    }
    assert summary.n_capped == 1
    assert summary.dim == 4 and summary.indexed
    with engine.connect() as conn:
        info = store.current_feature_set(conn)
        assert info is not None and info.id == summary.feature_set_id and info.dim == 4
        assert info.n_embedded == 5 and info.n_skipped == 3
        ids, vectors = store.read_vectors(conn, info.id)
        ext = dict(conn.execute(sa.text("SELECT id, external_id FROM products")).all())
        notes = dict(
            conn.execute(
                sa.text(
                    "SELECT p.external_id, pf.notes FROM product_features pf JOIN products p "
                    "ON p.id = pf.product_id WHERE pf.notes IS NOT NULL"
                )
            ).all()
        )
    assert ids.dtype == np.int64 and vectors.dtype == np.float32 and vectors.shape == (5, 4)
    assert list(ids) == sorted(ids)
    by_ext = {ext[i]: v for i, v in zip(ids.tolist(), vectors, strict=True)}
    # mean of red, leather, running, shoe
    np.testing.assert_allclose(by_ext["a"], [0.5, 0.25, 0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(by_ext["c"], [0.5, 0.5, 0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(by_ext["big"], [1, 1, 1, 1], rtol=1e-6)
    assert notes == {"big": f"text capped at {MAX_TEXT_CHARS} characters"}


def test_similar_and_errors(engine, settings, toy_vectors):
    _insert_products(engine, TOY)
    store.build_features(engine, settings, word_vectors=str(toy_vectors))
    with engine.begin() as conn:
        info, rows = store.similar_products(conn, "a", k=3)
        # a=[.5,.25,.5,.5]; c and big point along [1,1,1,1]; b=[.25,.5,.5,.5]
        a, b, ones = np.array([0.5, 0.25, 0.5, 0.5]), np.array([0.25, 0.5, 0.5, 0.5]), np.ones(4)
        assert {r.external_id for r in rows[:2]} == {"c", "big"}
        assert rows[0].similarity == pytest.approx(a @ ones / np.sqrt(a @ a) / 2, abs=1e-5)
        assert rows[2].external_id == "b"
        assert rows[2].title == "Blue shoe" and rows[2].brand == "Acme"
        assert rows[2].similarity == pytest.approx(a @ b / (a @ a), abs=1e-5)
        assert info.id == store.current_feature_set(conn).id
        with pytest.raises(DataError, match="unknown product 'nope'"):
            store.similar_products(conn, "nope")
        with pytest.raises(DataError, match=r"has no text vector \(no text\)"):
            store.similar_products(conn, "empty")


def test_tfidf_weighting(engine, settings, toy_vectors):
    _insert_products(engine, TOY[:4])
    summary = store.build_features(
        engine, settings, word_vectors=str(toy_vectors), weighting="tfidf"
    )
    with engine.connect() as conn:
        ids, vectors = store.read_vectors(conn, summary.feature_set_id)
        ext = dict(conn.execute(sa.text("SELECT id, external_id FROM products")).all())
    by_ext = {ext[i]: v for i, v in zip(ids.tolist(), vectors, strict=True)}
    # a: red(df1) leather(df2) running(df2) shoe(df2) over N=4; idf = ln(5/(1+df)) + 1
    w_rare, w_common = np.log(5 / 2) + 1, np.log(5 / 3) + 1
    vecs = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=float)
    weights = np.array([w_rare, w_common, w_common, w_common])
    np.testing.assert_allclose(by_ext["a"], weights @ vecs / weights.sum(), rtol=1e-5)


def test_incremental_rebuild_touches_only_changed(engine, settings, toy_vectors):
    _insert_products(engine, TOY)
    first = store.build_features(engine, settings, word_vectors=str(toy_vectors))
    assert first.n_computed == 8 and first.n_reused == 0
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE products SET feature_text = 'green tea' WHERE external_id = 'a'")
        )
        # a change that cleans to the same tokens is not a change
        conn.execute(
            sa.text(
                "UPDATE products SET description = 'DARK <b>roast</b> coffee beans!' "
                "WHERE external_id = 'c'"
            )
        )
    second = store.build_features(engine, settings, word_vectors=str(toy_vectors))
    assert second.n_computed == 1 and second.n_reused == 7
    assert second.n_embedded == 5
    assert second.skipped == first.skipped
    with engine.connect() as conn:
        ids, vectors = store.read_vectors(conn, second.feature_set_id)
        ext = dict(conn.execute(sa.text("SELECT id, external_id FROM products")).all())
        assert store.current_feature_set(conn).id == second.feature_set_id
    by_ext = {ext[i]: v for i, v in zip(ids.tolist(), vectors, strict=True)}
    np.testing.assert_allclose(by_ext["a"], [0.5, 0.5, 0.5, 0.5], rtol=1e-6)
    # other word vectors: everything is recomputed
    other = toy_vectors.with_name("other.txt")
    other.write_text(toy_vectors.read_text().replace("shoe 1.0", "shoe 2.0"))
    third = store.build_features(engine, settings, word_vectors=str(other))
    assert third.n_computed == 8 and third.n_reused == 0


def test_switch_is_atomic(engine, settings, toy_vectors):
    _insert_products(engine, TOY[:4])
    first = store.build_features(engine, settings, word_vectors=str(toy_vectors))
    seen: dict[str, int | None] = {}

    def reader() -> None:
        with engine.connect() as other:
            info = store.current_feature_set(other)
            seen["during"] = info.id if info else None
            seen["vectors"] = len(store.read_vectors(other, info.id)[0])

    def hook(conn: sa.Connection, set_id: int) -> None:
        # the new set is written and (after this hook) made current, but not committed yet
        store.make_current(conn, set_id)
        assert store.current_feature_set(conn).id == set_id
        thread = threading.Thread(target=reader)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive()

    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE products SET feature_text = 'tea' WHERE external_id = 'a'"))
    second = store.build_features(engine, settings, word_vectors=str(toy_vectors), after_write=hook)
    assert seen == {"during": first.id if False else first.feature_set_id, "vectors": 4}
    with engine.connect() as conn:
        assert store.current_feature_set(conn).id == second.feature_set_id
        assert (
            conn.execute(sa.text("SELECT count(*) FROM feature_sets WHERE is_current")).scalar_one()
            == 1
        )


def test_failed_build_writes_nothing(engine, settings, toy_vectors):
    _insert_products(engine, TOY[:4])

    def boom(conn, set_id):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.build_features(engine, settings, word_vectors=str(toy_vectors), after_write=boom)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM feature_sets")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM product_features")).scalar_one() == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "word vectors file not found"),
        (b"hello world\nthis is not vectors\n", "not a word2vec file"),
        (b"3 4\nred 1 0 0 0\nblue 0 1\n", "truncated or malformed word2vec text file"),
        (b"3 4\n", "truncated word2vec file"),
        (b"2 4\nred \x00\x00\x80?\x00\x00\x00\x00", "truncated or malformed word2vec binary"),
    ],
    ids=["missing", "wrong-format", "truncated-text", "header-only", "truncated-binary"],
)
def test_bad_vectors_file_writes_nothing(engine, settings, tmp_path, content, message):
    _insert_products(engine, TOY[:4])
    path = tmp_path / "vectors.bin"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        store.build_features(engine, settings, word_vectors=str(path))
    assert "\n" not in str(err.value)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM feature_sets")).scalar_one() == 0


def test_binary_vectors_file_and_limit(engine, settings, tmp_path):
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=3)
    kv.add_vectors(["shoe", "red", "coffee"], np.eye(3, dtype=np.float32))
    path = tmp_path / "vectors.bin"
    kv.save_word2vec_format(str(path), binary=True)
    _insert_products(engine, TOY[:4])
    summary = store.build_features(engine, settings, word_vectors=str(path), limit=2)
    assert summary.vocabulary_size == 2  # shoe, red
    assert summary.n_embedded == 2  # a, b (c has only coffee, beyond the limit)
    assert summary.skipped == {store.SKIP_NO_KNOWN_WORDS: 2}


def test_no_products(engine, settings, toy_vectors):
    with pytest.raises(DataError, match="no products in the database"):
        store.build_features(engine, settings, word_vectors=str(toy_vectors))


@pytest.mark.slow
def test_gift_cards_end_to_end_trained(engine, settings, shared_data):
    rows = _gift_cards(shared_data)
    assert len(rows) > 1000
    assert any("<" in (r["description"] or "") for r in rows)  # real HTML in the text
    assert any(not r["feature_text"] for r in rows)  # missing features
    _insert_products(engine, rows)
    summary = store.build_features(engine, settings, dim=16, seed=7, epochs=2, name="gift")
    assert summary.n_products == len(rows)
    assert summary.n_embedded + summary.n_skipped == len(rows)
    assert summary.n_embedded > 0.95 * len(rows)
    assert set(summary.skipped) <= {
        store.SKIP_NO_TEXT,
        store.SKIP_NO_WORDS,
        store.SKIP_NO_KNOWN_WORDS,
    }
    assert (settings.home / "word_vectors" / "gift.bin").is_file()
    with engine.connect() as conn:
        ids, vectors = store.read_vectors(conn, summary.feature_set_id)
        html_left = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
    assert len(ids) == summary.n_embedded and vectors.shape == (summary.n_embedded, 16)
    assert np.isfinite(vectors).all() and html_left == len(rows)
    # same seed, one worker: the rebuild trains identical vectors and reuses every product
    again = store.build_features(engine, settings, dim=16, seed=7, epochs=2, name="gift2")
    assert again.n_reused == len(rows) and again.n_computed == 0
    with engine.connect() as conn:
        ids2, vectors2 = store.read_vectors(conn, again.feature_set_id)
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_array_equal(vectors, vectors2)
    # the saved trained vectors load back as a PATH source
    from_file = store.build_features(
        engine,
        settings,
        word_vectors=str(settings.home / "word_vectors" / "gift.bin"),
        name="gift3",
    )
    assert from_file.n_embedded == summary.n_embedded


def test_prune_keeps_current_and_referenced_sets(engine, settings, toy_vectors):
    _insert_products(engine, TOY[:4])
    with engine.begin() as conn:
        # another area's table pointing at feature sets without a foreign key (as model runs do)
        conn.execute(sa.text("CREATE TABLE bench_refs (feature_set_id bigint)"))
    ids = []
    for i in range(4):
        summary = store.build_features(
            engine, settings, word_vectors=str(toy_vectors), name=f"s{i}", keep=0
        )
        ids.append(summary.feature_set_id)
        if i == 0:
            with engine.begin() as conn:
                conn.execute(
                    sa.text("INSERT INTO bench_refs VALUES (:i)"), {"i": summary.feature_set_id}
                )
    with engine.begin() as conn:
        deleted = store.prune_feature_sets(conn, keep=2)
    assert deleted == [ids[1]]
    with engine.connect() as conn:
        left = [i.id for i in store.list_feature_sets(conn)]
        rows = conn.execute(
            sa.text("SELECT count(*) FROM product_features WHERE feature_set_id = :i"),
            {"i": ids[1]},
        ).scalar_one()
    assert left == [ids[3], ids[2], ids[0]] and rows == 0


def test_one_build_at_a_time(engine, settings, toy_vectors):
    from recsys.db.locks import advisory_lock
    from recsys.errors import LockBusy

    _insert_products(engine, TOY[:4])
    with advisory_lock(engine, store.FEATURES_LOCK, what="recsys features build"):
        with pytest.raises(LockBusy, match="recsys features build"):
            store.build_features(engine, settings, word_vectors=str(toy_vectors))
    assert store.build_features(engine, settings, word_vectors=str(toy_vectors)).n_embedded == 4


def test_hnsw_memory_estimate():
    assert store.hnsw_memory_mb(786_000, 100) == 1334  # 786k x (400 + 1024) B x 1.25
    assert store.hnsw_memory_mb(10, 4) == 64
    assert store.hnsw_memory_mb(50_000_000, 300) == 4096


def test_similar_query_can_use_the_sets_hnsw_index(engine, settings, toy_vectors):
    _insert_products(engine, TOY)
    summary = store.build_features(engine, settings, word_vectors=str(toy_vectors))
    with engine.begin() as conn:
        info = store.current_feature_set(conn)
        pg = conn.connection.driver_connection
        with pg.cursor() as cur:
            cur.execute("SET LOCAL enable_seqscan = off")  # tiny table: force the choice
            cur.execute(
                b"EXPLAIN " + store.similar_sql(info).as_bytes(pg),
                {"v": "[1,0,0,0]", "p": 0, "k": 3},
            )
            plan = "\n".join(r[0] for r in cur.fetchall())
    assert store.index_name(summary.feature_set_id) in plan


def test_migration_downgrade_and_upgrade(engine, settings, toy_vectors):
    from recsys.db import engine as db

    _insert_products(engine, TOY[:2])
    store.build_features(engine, settings, word_vectors=str(toy_vectors))
    db.downgrade(engine, "0001")
    with engine.connect() as conn:
        tables = set(
            conn.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            ).scalars()
        )
        assert db.current_revision(conn) == "0001"
    assert not {"feature_sets", "product_features"} & tables and "products" in tables
    db.migrate(engine)
    summary = store.build_features(engine, settings, word_vectors=str(toy_vectors))
    assert summary.n_embedded == 2


def test_index_build_workers_fit_this_machines_cores(engine, monkeypatch):
    from recsys.features import records

    with engine.begin() as conn:
        configured = int(conn.execute(sa.text("SHOW max_parallel_maintenance_workers")).scalar())
        # the test server runs here (Unix socket): at most cores - 1, never above its setting
        for cores, expected in ((1, 0), (2, min(configured, 1)), (64, configured)):
            monkeypatch.setattr(records, "local_cores", lambda c=cores: c)  # imported there
            assert records.build_workers(conn) == expected
