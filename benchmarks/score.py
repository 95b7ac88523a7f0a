"""Benchmark of nightly scoring and publishing (issue 5).

Prints, all measured in this run on this machine:

1. the machine's dense float32 matmul FLOP/s (numpy and TensorFlow, the larger is the reference);
2. the hybrid's fast scorer (``score_users``: per-user and per-product parts of the first
   layer, XLA blocks) in user x product pairs/s, next to ``model.predict`` on the same model,
   and as a fraction of the matmul reference (3 x hidden FLOPs per pair: add, multiply, add);
3. publishing: rows/s of ``RunWriter`` (COPY BINARY into ``recommendations``, with its primary
   key) next to a raw COPY of the same bytes into an unindexed temporary table;
4. ``--full``: all users x all products scored (mask, exact top-10, fallbacks) and published
   through ``score_and_write`` against a real PostgreSQL, timed end to end;
5. ``--rules-users N``: ``score_and_write`` of a history-pooled dot-product model with all
   rules and reasons off, then on (and on without reasons), the rate on / off in the same run;
   ``--reasons-users N``: the reasons alone, seconds per 100k users;
6. ``--e2e-ratings N``: the whole ``recsys run`` (load, features, train, evaluate-gate, score,
   publish) on an ``recsys sample`` of N ratings, in a subprocess.

The model is the notebook's hybrid shape (K=32, Dense 1024, 100-d text) fitted for one epoch on
synthetic ratings: the weights do not change the speed. Defaults are the issue's target
(100k users x 50k products); use smaller sizes on a busy machine.

    .venv/bin/python benchmarks/score.py --users 100000 --products 50000 --full
    .venv/bin/python benchmarks/score.py --skip-scorer --e2e-ratings 3300000
"""

from __future__ import annotations

import argparse
import atexit
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_flops(n: int = 2048) -> dict[str, float]:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    numpy_flops = 2 * n**3 / best_of(lambda: a @ b)
    ta, tb = tf.constant(a), tf.constant(b)
    tf.linalg.matmul(ta, tb).numpy()
    tf_flops = 2 * n**3 / best_of(lambda: tf.linalg.matmul(ta, tb).numpy())
    return {"numpy": numpy_flops, "tensorflow": tf_flops}


def synthetic_hybrid(n_users: int, n_products: int, hidden: int, dim: int = 100, seed: int = 0):
    from recsys.model import catalog
    from recsys.model.base import RatingData

    rng = np.random.default_rng(seed)
    n = max(2 * n_users, 50_000)
    data = RatingData(
        users=rng.integers(0, n_users, n).astype(np.int32),
        products=rng.integers(0, n_products, n).astype(np.int32),
        ratings=rng.integers(1, 6, n).astype(np.float32),
        timestamps=np.zeros(n, dtype=np.int64),
        user_ids=np.arange(1, n_users + 1, dtype=np.int64),
        product_ids=np.arange(1, n_products + 1, dtype=np.int64),
        text=rng.normal(0, 0.1, (n_products, dim)).astype(np.float32),
        has_text=np.ones(n_products, dtype=bool),
    )
    model = catalog.create("hybrid", epochs=1, hidden_units=hidden, batch_size=4096)
    t0 = time.perf_counter()
    model.fit(data, seed=seed)
    print(
        f"  (fitted a {n_users:,} x {n_products:,} hybrid, hidden {hidden}, one epoch on "
        f"{n:,} synthetic ratings in {time.perf_counter() - t0:.0f}s)"
    )
    return model, data


def scorer_speed(model, n_users: int, n_products: int, hidden: int, batch: int) -> dict:
    rng = np.random.default_rng(1)
    users = np.sort(rng.choice(n_users, batch, replace=False)).astype(np.int32)
    model.score_users(users[:8])  # precompute parts, compile
    model.score_users(users)  # compile the batch's block shapes
    fast_s = best_of(lambda: model.score_users(users), repeat=2)
    fast_pairs = batch * n_products / fast_s
    n_pred = 200_000
    pu = rng.integers(0, n_users, n_pred).astype(np.int32)
    pp = rng.integers(0, n_products, n_pred).astype(np.int32)
    model.predict(pu[:1000], pp[:1000])
    pred_s = best_of(lambda: model.predict(pu, pp), repeat=2)
    pred_pairs = n_pred / pred_s
    # agreement on sampled pairs
    sub_u = users[:50]
    fast = model.score_users(sub_u)
    cols = rng.integers(0, n_products, 200)
    direct = model.predict(np.repeat(sub_u, 200), np.tile(cols, 50)).reshape(50, 200)
    return {
        "fast_pairs_per_s": fast_pairs,
        "predict_pairs_per_s": pred_pairs,
        "max_abs_diff": float(np.abs(fast[:, cols] - direct).max()),
        "fast_flops": fast_pairs * 3 * hidden,
    }


class NumpyMF:
    """Exact matrix-factorisation scorer (K=32, float32 matmul): measures the scoring and
    publishing machinery (masking, exact top-k, fallbacks, COPY, switch) when the model itself
    is cheap, i.e. what the nightly job costs beyond the model."""

    name = "mf-numpy"

    def __init__(self, n_users: int, n_products: int, k: int = 32, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.U = rng.normal(0, 0.3, (n_users, k)).astype(np.float32)
        self.V = rng.normal(0, 0.3, (n_products, k)).astype(np.float32)

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self.U[users] @ self.V.T

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        return np.sum(self.U[users] * self.V[products], axis=1)


def database_engine(home: Path):
    from recsys.config import load_settings
    from recsys.db import engine as db

    settings = load_settings(home=home)
    engine = db.create_engine(settings)
    if not settings.database_url:  # the embedded server started here stops when we exit
        atexit.register(db.stop_embedded, settings)
    db.ensure_schema(engine)
    return engine, settings


def publish_speed(engine, n_rows: int) -> dict:
    import sqlalchemy as sa

    from recsys.scoring.publish import (
        COPY_SQL,
        RunWriter,
        ScoreBatch,
        batch_to_copy_binary,
        begin_run,
    )

    rng = np.random.default_rng(2)
    users = n_rows // 10
    batch = ScoreBatch(
        np.repeat(np.arange(1, users + 1, dtype=np.int64), 10),
        np.tile(np.arange(1, 11, dtype=np.int16), users),
        rng.integers(1, 50_000, users * 10).astype(np.int64),
        rng.random(users * 10).astype(np.float32),
        np.zeros(users * 10, dtype=np.int8),
        np.zeros(users * 10, dtype=np.int32),  # "because you rated"
        rng.integers(1, 50_000, users * 10).astype(np.int64),
        ("because you rated",),
    )
    with engine.begin() as conn:
        run_id = begin_run(conn, k=10, model_run_id=None, model_type="bench")
    t0 = time.perf_counter()
    with engine.begin() as conn:
        writer = RunWriter(conn, run_id)
        writer.write(batch)
        writer.finish({"model": users})
    publish_s = time.perf_counter() - t0
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM recommendations WHERE run_id = :r"), {"r": run_id})
    # the same rows COPYed raw into the same table (encoded beforehand): PostgreSQL's own share
    data = batch_to_copy_binary(run_id, batch)
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        t0 = time.perf_counter()
        with raw.cursor() as cur, cur.copy(COPY_SQL) as copy:
            copy.write(data)
        same_table_s = time.perf_counter() - t0
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM recommendations WHERE run_id = :r"), {"r": run_id})
        conn.execute(sa.text("DELETE FROM recommendation_runs WHERE id = :r"), {"r": run_id})
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TEMP TABLE raw_copy (run_id bigint, user_id bigint, rank smallint, "
                "product_id bigint, score real, strategy text, reason text, "
                "because_product_id bigint) ON COMMIT DROP"
            )
        )
        raw = conn.connection.driver_connection
        t0 = time.perf_counter()
        data = batch_to_copy_binary(0, batch)
        with (
            raw.cursor() as cur,
            cur.copy(
                "COPY raw_copy (run_id, user_id, rank, product_id, score, strategy, reason, "
                "because_product_id) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.write(data)
        raw_s = time.perf_counter() - t0
    return {
        "rows": len(batch),
        "publish_rows_per_s": len(batch) / publish_s,
        "raw_copy_rows_per_s": len(batch) / raw_s,
        "same_table_rows_per_s": len(batch) / same_table_s,
    }


def full_run(engine, model, data, n_ratings: int, n_users: int | None = None) -> dict:
    """Users x all products through score_and_write (mask, top-10, publish) on PostgreSQL.

    ``n_users`` < the model's users: only that many exist in the database, so only they are
    scored (the others are skipped as deleted users are); the rate is per user scored.
    """
    import sqlalchemy as sa

    from recsys.scoring.score import ScoreOptions, ScoringModel, score_and_write

    n_users, n_products = n_users or data.n_users, data.n_products
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE users, products, ratings RESTART IDENTITY CASCADE"))
        conn.execute(
            sa.text(
                "INSERT INTO users (external_id) SELECT 'u' || g FROM generate_series(1, :n) g"
            ),
            {"n": n_users},
        )
        conn.execute(
            sa.text(
                "INSERT INTO products (external_id, title) SELECT 'p' || g, 'product ' || g "
                "FROM generate_series(1, :n) g"
            ),
            {"n": n_products},
        )
        conn.execute(
            sa.text(
                "INSERT INTO ratings (user_id, product_id, rating, rated_at) "
                "SELECT DISTINCT ON (u, p) u, p, 4, now() FROM ("
                "SELECT 1 + (random() * (:nu - 1))::bigint AS u, "
                "1 + (random() * (:np - 1))::bigint AS p "
                "FROM generate_series(1, :nr)) t"
            ),
            {"nu": n_users, "np": n_products, "nr": n_ratings},
        )
        conn.execute(sa.text("ANALYZE ratings"))
    scoring = ScoringModel(model, data.user_ids, data.product_ids, run_id=None, model_type="hybrid")
    t0 = time.perf_counter()
    summary = score_and_write(engine, scoring, ScoreOptions(k=10), publish=True)
    seconds = time.perf_counter() - t0
    with engine.connect() as conn:
        bad = conn.execute(
            sa.text(
                "SELECT count(*) FROM recommendations r JOIN ratings x "
                "ON x.user_id = r.user_id AND x.product_id = r.product_id"
            )
        ).scalar_one()
    return {
        "users": summary.n_users,
        "rows": summary.n_rows,
        "seconds": seconds,
        "rated_recommended": bad,
    }


def e2e(ratings: int, users: int, products: int, epochs: int, home: Path) -> dict:
    from recsys.ingest.sample import write_sample

    work = home / "e2e"
    inbox = work / "inbox"
    t0 = time.perf_counter()
    files = write_sample(work / "sample", users=users, products=products, ratings=ratings, seed=0)
    inbox.mkdir(parents=True, exist_ok=True)
    for path in (files.ratings_path, files.metadata_path):
        target = inbox / path.name
        if not target.exists():
            target.symlink_to(path)
    sample_s = time.perf_counter() - t0
    env = {**os.environ, "RECSYS_HOME": str(home / "e2e-home"), "RECSYS_DATABASE_URL": ""}
    t0 = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys",
            "run",
            "--inbox",
            str(inbox),
            "--epochs",
            str(epochs),
            "--no-evaluate",
            "--model",
            "hybrid",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    from recsys.config import Settings
    from recsys.db import engine as db

    db.stop_embedded(Settings(database_url=None, home=home / "e2e-home"))  # the run's server
    if result.returncode != 0:
        print(result.stderr[-3000:])
    steps = [
        line.strip()
        for line in result.stderr.splitlines()
        if " succeeded in " in line
        and line.strip().split()[0]
        in ("load", "features", "train", "measure", "verify", "score", "publish")
    ]
    return {"rc": result.returncode, "seconds": seconds, "sample_seconds": sample_s, "steps": steps}


class DotModel:
    """A dot-product model (``score = u . v + b``) with ``score_factors``, like the ranker."""

    name = "dot"
    scores_are_ratings = False

    def __init__(self, n_users: int, n_products: int, dim: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.U = rng.normal(0, 0.3, (n_users, dim)).astype(np.float32)
        self.V = rng.normal(0, 0.3, (n_products, dim)).astype(np.float32)
        self.b = rng.normal(0, 0.3, n_products).astype(np.float32)

    def score_factors(self):
        return self.U, self.V, self.b

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self.U[users] @ self.V.T + self.b


class HistoryDot:
    """A dot-product model whose user vector is pooled from the user's rated products, like the
    ranker's (``u = sum_j H[j] / sqrt(n)``), so every model row has an exact "because you
    rated" reason: it offers ``score_factors``, ``history_contributions`` and
    ``contribution_factors`` with the ranker's definitions."""

    name = "history-dot"
    scores_are_ratings = False

    def __init__(self, history, n_products: int, dim: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.history = history.tocsr()
        self.H = rng.normal(0, 0.3, (n_products, dim)).astype(np.float32)
        self.V = rng.normal(0, 0.3, (n_products, dim)).astype(np.float32)
        self.b = rng.normal(0, 0.3, n_products).astype(np.float32)
        counts = np.asarray(self.history.sum(axis=1)).ravel()
        pooled = np.asarray(self.history @ self.H, dtype=np.float32)
        self.U = pooled / np.sqrt(np.maximum(counts, 1.0)).astype(np.float32)[:, None]

    def score_factors(self):
        return self.U, self.V, self.b

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self.U[users] @ self.V.T + self.b

    def contribution_factors(self):
        return self.history, self.H, self.V

    def history_contributions(self, user: int, products: np.ndarray, history=None):
        row = self.history[int(user)]
        items, data = np.asarray(row.indices, dtype=np.int64), row.data.astype(np.float32)
        if history is not None:
            items = np.unique(np.asarray(history, dtype=np.int64))
            data = np.ones(len(items), dtype=np.float32)
        if not len(items):
            return items, np.zeros((0, len(products)), dtype=np.float32)
        weights = data[:, None] / np.sqrt(max(float(data.sum()), 1.0))
        return items, ((self.H[items] * weights) @ self.V[products].T).astype(np.float32)


def random_history(n_users: int, n_products: int, per_user: int, seed: int = 5):
    """A binary CSR user x product history with about ``per_user`` products per user."""
    from scipy import sparse

    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_users), per_user)
    cols = rng.integers(0, n_products, len(rows))
    history = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_users, n_products)
    )
    history.data[:] = 1.0
    return history


def reasons_speed(n_users: int, n_products: int, dim: int, per_user: int, k: int = 10) -> dict:
    """Seconds per 100k users of the "because you rated" reasons of k-row lists, block by block
    (``ContributionReasons.top``), and of the one-user definition (``top_contributors``) on a
    tenth of the users for scale; and of the text reasons (``most_similar_block``, d=100)."""
    from recsys.scoring import reasons
    from recsys.scoring.block import users_per_block

    history = random_history(n_users, n_products, per_user)
    model = HistoryDot(history, n_products, dim)
    rng = np.random.default_rng(6)
    lists = rng.integers(0, n_products, (n_users, k))
    block = users_per_block(n_products)
    explainer = reasons.ContributionReasons(model)
    rows = np.repeat(np.arange(block), k)
    t0 = time.perf_counter()
    for start in range(0, n_users, block):
        users = np.arange(start, min(n_users, start + block))
        explainer.top(users, rows[: len(users) * k], lists[users].ravel())
    block_s = time.perf_counter() - t0
    few = max(1, n_users // 10)
    t0 = time.perf_counter()
    for u in range(few):
        reasons.top_contributors(model, u, lists[u])
    one_s = time.perf_counter() - t0
    text = reasons.TextReasons(
        np.arange(1, n_products + 1), rng.normal(size=(n_products, 100)).astype(np.float32)
    )
    t0 = time.perf_counter()
    for start in range(0, n_users, block):
        users = np.arange(start, min(n_users, start + block))
        sub = history[users]
        rated_rows = np.repeat(np.arange(len(users)), np.diff(sub.indptr))
        text.most_similar_block(
            len(users),
            rated_rows,
            sub.indices + 1,
            rows[: len(users) * k],
            lists[users].ravel() + 1,
        )
    text_s = time.perf_counter() - t0
    per = 100_000 / n_users
    return {
        "block_per_100k": block_s * per,
        "one_user_per_100k": one_s * 100_000 / few,
        "text_per_100k": text_s * per,
    }


def kernel_columns(n_products: int, rules: bool, seed: int = 3):
    """The column side of a run: product ids; with ``rules``, 5% unavailable, 1% boosted,
    caps of 3 per category (200 categories) and 3 per brand (2,000 brands)."""
    from recsys.scoring.block import Columns, GroupCap

    rng = np.random.default_rng(seed)
    keys = np.arange(1, n_products + 1, dtype=np.int64)
    none = np.zeros(n_products, dtype=bool)
    if not rules:
        return Columns(keys, none, none.copy())
    offset = np.where(rng.random(n_products) < 0.01, np.log(2.0), 0.0).astype(np.float32)
    caps = (
        GroupCap("category_cap", rng.integers(0, 200, n_products), 3),
        GroupCap("brand_cap", rng.integers(0, 2000, n_products), 3),
    )
    return Columns(
        keys, none, rng.random(n_products) < 0.05, offset=offset, caps=caps, offset_folded=True
    )


def kernel_speed(
    n_users: int, n_products: int, dim: int, rules: bool, k: int = 10, threads: int = 1
) -> dict:
    """The local loop's kernel: dot_scores + score_block on every block of users.

    ``threads`` 1: one block at a time, the BLAS threaded; more: that many blocks at a time,
    each with a one-thread BLAS, as the local runner scores a dot-product model
    (``recsys.blas.ordered_in_threads``). Every block masks 20 rated products per
    user; with ``rules`` also 2 exclusions per user. FLOP/s counts the matmul's 2 x (dim + 1)
    FLOP per user x product pair.
    """
    import threading

    from recsys.blas import ordered_in_threads
    from recsys.scoring.block import augment_products, dot_scores, score_block, users_per_block

    model = DotModel(n_users, n_products, dim)
    columns = kernel_columns(n_products, rules)
    products = augment_products(model.V, model.b, columns.offset)
    block = users_per_block(n_products)
    rng = np.random.default_rng(4)
    starts = list(range(0, n_users, block))
    masks = {}
    for start in starts:
        n = min(n_users, start + block) - start
        masks[start] = (
            (np.repeat(np.arange(n), 20), rng.integers(0, n_products, n * 20)),
            (np.repeat(np.arange(n), 2), rng.integers(0, n_products, n * 2)),
        )
    local = threading.local()

    def one(start: int) -> int:
        if not hasattr(local, "buffer"):
            local.buffer = np.empty(block * n_products, dtype=np.float32)
        users = np.arange(start, min(n_users, start + block))
        scores = dot_scores(model.U[users], products, out=local.buffer)
        rated, excluded = masks[start]
        result = score_block(scores, columns, k, rated=rated, excluded=excluded if rules else None)
        return len(result.rows)

    def run() -> int:
        if threads > 1:
            return sum(ordered_in_threads(one, iter(starts), threads))
        return sum(one(start) for start in starts)

    run()  # warm up
    t0 = time.perf_counter()
    rows = run()
    seconds = time.perf_counter() - t0
    pairs = n_users * n_products
    return {
        "seconds": seconds,
        "users_per_s": n_users / seconds,
        "flops": pairs * 2 * (dim + 1) / seconds,
        "rows": rows,
        "block": block,
    }


def whole_row_speed(n_users: int, n_products: int, dim: int, k: int = 10) -> dict:
    """The same matmul with a top-k that partitions whole rows (np.argpartition), for scale."""
    model = DotModel(n_users, n_products, dim)
    block = 512

    def run() -> None:
        for start in range(0, n_users, block):
            scores = model.U[start : start + block] @ model.V.T + model.b
            np.argpartition(-scores, k - 1, axis=1)[:, :k]

    run()
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
    return {"flops": n_users * n_products * 2 * (dim + 1) / seconds}


def rules_full_run(
    engine, n_users: int, n_products: int, dim: int, n_ratings: int, repeat: int = 2
) -> dict:
    """score_and_write of a history-pooled dot-product model (:class:`HistoryDot`) on
    PostgreSQL: all rules and reasons off; all rules (5% unavailable, 2 exclusions per user,
    1% boosted, caps 3 per category and 3 per brand) and reasons on; the same without reasons.
    Each mode runs ``repeat`` times, alternating; the best time of each counts."""
    import sqlalchemy as sa

    from recsys.scoring.score import ScoreOptions, ScoringModel, score_and_write

    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "TRUNCATE users, products, ratings, user_exclusions, product_boosts "
                "RESTART IDENTITY CASCADE"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO users (external_id) SELECT 'u' || g FROM generate_series(1, :n) g"
            ),
            {"n": n_users},
        )
        conn.execute(
            sa.text(
                "INSERT INTO products (external_id, title, brand, categories, available) "
                "SELECT 'p' || g, 'product ' || g, 'brand ' || (g % 2000), "
                "ARRAY['Shop', 'cat ' || (g % 200)], random() > 0.05 "
                "FROM generate_series(1, :n) g"
            ),
            {"n": n_products},
        )
        conn.execute(
            sa.text(
                "INSERT INTO ratings (user_id, product_id, rating, rated_at) "
                "SELECT DISTINCT ON (u, p) u, p, 4, now() FROM ("
                "SELECT 1 + (random() * (:nu - 1))::bigint AS u, "
                "1 + (random() * (:np - 1))::bigint AS p "
                "FROM generate_series(1, :nr)) t"
            ),
            {"nu": n_users, "np": n_products, "nr": n_ratings},
        )
        conn.execute(
            sa.text(
                "INSERT INTO user_exclusions (user_external_id, asin) "
                "SELECT 'u' || (1 + (random() * (:nu - 1))::bigint), "
                "'p' || (1 + (random() * (:np - 1))::bigint) FROM generate_series(1, :n)"
            ),
            {"nu": n_users, "np": n_products, "n": 2 * n_users},
        )
        conn.execute(
            sa.text(
                "INSERT INTO product_boosts (asin, factor) SELECT 'p' || g, 2.0 "
                "FROM generate_series(1, :n, 100) g"
            ),
            {"n": n_products},
        )
        conn.execute(sa.text("ANALYZE"))
    with engine.connect() as conn:
        pairs = conn.execute(sa.text("SELECT user_id, product_id FROM ratings")).all()
    from scipy import sparse

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    history = sparse.csr_matrix(
        (np.ones(len(pairs), dtype=np.float32), (pairs[:, 0] - 1, pairs[:, 1] - 1)),
        shape=(n_users, n_products),
    )
    history.data[:] = 1.0
    model = HistoryDot(history, n_products, dim)
    scoring = ScoringModel(
        model,
        np.arange(1, n_users + 1, dtype=np.int64),
        np.arange(1, n_products + 1, dtype=np.int64),
        model_type="history-dot",
    )
    modes = (
        ("off", ScoreOptions(k=10, rules=False, reasons=False)),
        ("on", ScoreOptions(k=10, max_per_category=3, max_per_brand=3)),
        ("on_no_reasons", ScoreOptions(k=10, max_per_category=3, max_per_brand=3, reasons=False)),
    )
    out = {name: {"all_seconds": [], "all_cpu": []} for name, _ in modes}
    for _ in range(repeat):  # alternate the modes so that drift in the machine's load is shared
        for name, options in modes:
            t0, c0 = time.perf_counter(), time.process_time()
            summary = score_and_write(engine, scoring, options, publish=False)
            out[name]["all_seconds"].append(time.perf_counter() - t0)
            out[name]["all_cpu"].append(time.process_time() - c0)
            out[name]["users"] = summary.n_users
            out[name]["rule_counts"] = summary.rule_counts
    for name in out:
        out[name]["seconds"] = min(out[name]["all_seconds"])
        out[name]["cpu"] = min(out[name]["all_cpu"])
    with engine.connect() as conn:
        out["unexplained_rows"] = conn.execute(
            sa.text(
                "SELECT count(*) FROM recommendations WHERE run_id = (SELECT max(run_id) FROM "
                "recommendations WHERE reason IS NOT NULL) AND strategy = 'model' "
                "AND because_product_id IS NULL"
            )
        ).scalar_one()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--products", type=int, default=50_000)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=512, help="users per timed score_users call")
    parser.add_argument(
        "--publish-rows",
        type=int,
        default=1_000_000,
        help="rows of the publish measurement (0: skip)",
    )
    parser.add_argument("--full", action="store_true", help="score and publish all users")
    parser.add_argument("--full-ratings", type=int, default=3_300_000)
    parser.add_argument(
        "--full-model",
        choices=["hybrid", "mf"],
        default="hybrid",
        help="model for --full: the hybrid, or an exact numpy MF (machinery cost)",
    )
    parser.add_argument(
        "--full-users",
        type=int,
        default=None,
        help="score only this many of the users (the rest is extrapolated)",
    )
    parser.add_argument("--e2e-ratings", type=int, default=0)
    parser.add_argument("--e2e-users", type=int, default=100_000)
    parser.add_argument("--e2e-products", type=int, default=50_000)
    parser.add_argument("--e2e-epochs", type=int, default=1)
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--skip-scorer", action="store_true")
    parser.add_argument(
        "--kernel-users", type=int, default=20_000, help="users through the scoring kernel"
    )
    parser.add_argument("--kernel-products", type=int, default=50_000)
    parser.add_argument("--kernel-dim", type=int, default=200, help="the ranker's vector width")
    parser.add_argument("--skip-kernel", action="store_true")
    parser.add_argument(
        "--rules-users",
        type=int,
        default=0,
        help="score_and_write with all rules off, then on, for this many users (0: skip)",
    )
    parser.add_argument("--rules-products", type=int, default=20_000)
    parser.add_argument(
        "--rules-repeat", type=int, default=2, help="runs of each rules mode (best counts)"
    )
    parser.add_argument(
        "--reasons-users",
        type=int,
        default=0,
        help="time the reasons alone for this many users (0: skip)",
    )
    parser.add_argument("--skip-hybrid", action="store_true", help="skip the hybrid scorer")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    print(f"machine: {os.cpu_count()} CPUs; home {home}")

    if not args.skip_kernel:
        flops = matmul_flops()
        reference = flops["numpy"]
        print(
            f"dense float32 matmul (2048^2): numpy {flops['numpy'] / 1e9:.1f} GFLOP/s, "
            f"tensorflow {flops['tensorflow'] / 1e9:.1f} GFLOP/s; reference: numpy"
        )
        shape = (args.kernel_users, args.kernel_products, args.kernel_dim)
        from recsys.blas import local_cores

        cores = local_cores()
        for threads in sorted({1, cores}):
            off = kernel_speed(*shape, rules=False, threads=threads)
            on = kernel_speed(*shape, rules=True, threads=threads)
            how = "one block at a time" if threads == 1 else f"{threads} blocks at a time"
            print(
                f"scoring kernel (dot_scores + score_block, {shape[0]:,} users x {shape[1]:,} "
                f"products, d={shape[2]}, blocks of {off['block']} users, {how}): rules off "
                f"{off['flops'] / 1e9:.1f} GFLOP/s = {off['flops'] / reference:.2f} of numpy's "
                f"matmul, {off['flops'] / flops['tensorflow']:.2f} of TensorFlow's "
                f"({off['users_per_s']:,.0f} users/s); all rules on "
                f"{on['flops'] / 1e9:.1f} GFLOP/s = {on['flops'] / reference:.2f} of numpy's "
                f"({on['users_per_s']:,.0f} users/s); rules on / off "
                f"{on['users_per_s'] / off['users_per_s']:.2f}"
            )
        whole = whole_row_speed(*shape)
        after = matmul_flops()["numpy"]
        print(
            f"  for scale: whole-row argpartition top-k {whole['flops'] / 1e9:.1f} GFLOP/s = "
            f"{whole['flops'] / reference:.2f} of matmul; matmul measured again after the "
            f"kernel: {after / 1e9:.1f} GFLOP/s"
        )
    if not args.skip_scorer and not args.skip_hybrid:
        flops = matmul_flops()
        reference = max(flops.values())
        print(
            f"dense float32 matmul: numpy {flops['numpy'] / 1e9:.1f} GFLOP/s, "
            f"tensorflow {flops['tensorflow'] / 1e9:.1f} GFLOP/s"
        )
        model, data = synthetic_hybrid(args.users, args.products, args.hidden)
        speed = scorer_speed(model, args.users, args.products, args.hidden, args.batch)
        print(
            f"fast scorer: {speed['fast_pairs_per_s'] / 1e6:.1f} M pairs/s; model.predict: "
            f"{speed['predict_pairs_per_s'] / 1e6:.3f} M pairs/s; ratio "
            f"{speed['fast_pairs_per_s'] / speed['predict_pairs_per_s']:.0f}x "
            f"(max |fast - predict| {speed['max_abs_diff']:.2e})"
        )
        print(
            f"fast scorer at 3 x {args.hidden} FLOP/pair: {speed['fast_flops'] / 1e9:.1f} "
            f"GFLOP/s = {speed['fast_flops'] / reference:.2f} of this machine's matmul"
        )
        all_pairs = args.users * args.products
        print(
            f"projected scoring of {args.users:,} x {args.products:,} = {all_pairs / 1e9:.1f}G "
            f"pairs: {all_pairs / speed['fast_pairs_per_s'] / 60:.1f} min (model time only)"
        )

    engine, _ = database_engine(home)
    if args.publish_rows:
        pub = publish_speed(engine, args.publish_rows)
        print(
            f"publish: {pub['publish_rows_per_s'] / 1e6:.2f} M rows/s into recommendations vs "
            f"raw COPY {pub['raw_copy_rows_per_s'] / 1e6:.2f} M rows/s into an unindexed temp "
            f"table (ratio {pub['publish_rows_per_s'] / pub['raw_copy_rows_per_s']:.2f}; "
            f"{pub['rows']:,} rows); raw COPY of the same rows into recommendations itself "
            f"{pub['same_table_rows_per_s'] / 1e6:.2f} M rows/s (ratio "
            f"{pub['publish_rows_per_s'] / pub['same_table_rows_per_s']:.2f})"
        )

    if args.rules_users:
        res = rules_full_run(
            engine,
            args.rules_users,
            args.rules_products,
            args.kernel_dim,
            20 * args.rules_users,
            repeat=args.rules_repeat,
        )
        off, on, bare = res["off"], res["on"], res["on_no_reasons"]
        print(
            f"score_and_write, {args.rules_users:,} users x {args.rules_products:,} products "
            f"(d={args.kernel_dim}, 20 ratings/user, best of {args.rules_repeat}): rules and "
            f"reasons off {off['seconds']:.2f}s; all rules (5% unavailable, 2 exclusions/user, "
            f"1% boosted, caps 3/category 3/brand) and reasons on {on['seconds']:.2f}s; rate "
            f"on / off {off['seconds'] / on['seconds']:.2f}; all rules, no reasons "
            f"{bare['seconds']:.2f}s (rate / off {off['seconds'] / bare['seconds']:.2f})"
        )
        print(
            "  every time (s): "
            + "; ".join(
                f"{name} " + ", ".join(f"{t:.2f}" for t in res[name]["all_seconds"])
                for name in ("off", "on", "on_no_reasons")
            )
        )
        print(
            f"  CPU seconds of this process (PostgreSQL's own work not included): off "
            f"{off['cpu']:.2f}, on {on['cpu']:.2f}, on without reasons {bare['cpu']:.2f}; "
            f"on / off {off['cpu'] / on['cpu']:.2f}"
        )
        print(
            f"  rule counts {on['rule_counts']}; model rows without a reason: "
            f"{res['unexplained_rows']}; reasons' share of the run: "
            f"{(on['seconds'] - bare['seconds']) * 100_000 / args.rules_users:.1f}s per 100k users"
        )
    if args.reasons_users:
        rs = reasons_speed(args.reasons_users, args.rules_products, args.kernel_dim, 20)
        print(
            f"reasons of 10-row lists ({args.reasons_users:,} users, {args.rules_products:,} "
            f"products, d={args.kernel_dim}, 20 rated/user): because-you-rated block by block "
            f"{rs['block_per_100k']:.2f}s per 100k users; one user at a time (the definition, "
            f"on a tenth of the users) {rs['one_user_per_100k']:.2f}s per 100k users (ratio "
            f"{rs['one_user_per_100k'] / rs['block_per_100k']:.1f}x); text similarity (d=100) "
            f"block by block {rs['text_per_100k']:.2f}s per 100k users"
        )
    if args.full and args.full_model == "mf":
        from recsys.model.base import RatingData

        ids_u = np.arange(1, args.users + 1, dtype=np.int64)
        ids_p = np.arange(1, args.products + 1, dtype=np.int64)
        empty = np.zeros(0, dtype=np.int32)
        data = RatingData(
            empty, empty, empty.astype(np.float32), empty.astype(np.int64), ids_u, ids_p
        )
        model = NumpyMF(args.users, args.products)
    if args.full and (args.full_model == "mf" or not args.skip_scorer):
        print(f"full run with the {args.full_model} model:")
        full = full_run(engine, model, data, args.full_ratings, args.full_users)
        print(
            f"full: {full['users']:,} users x {args.products:,} products scored (exact top-10, "
            f"rated masked) and published ({full['rows']:,} rows) in {full['seconds']:.0f}s "
            f"= {full['seconds'] / 60:.1f} min; rated-and-recommended rows: "
            f"{full['rated_recommended']}"
        )
        if full["users"] < args.users:
            print(
                f"  extrapolated to {args.users:,} users at the same rate: "
                f"{full['seconds'] * args.users / full['users'] / 60:.1f} min"
            )
    if args.e2e_ratings:
        res = e2e(args.e2e_ratings, args.e2e_users, args.e2e_products, args.e2e_epochs, home)
        print(
            f"recsys run on a sample of {args.e2e_ratings:,} ratings ({args.e2e_users:,} users, "
            f"{args.e2e_products:,} products, {args.e2e_epochs} epoch(s), no evaluation): "
            f"rc {res['rc']}, {res['seconds']:.0f}s (sample written in "
            f"{res['sample_seconds']:.0f}s)"
        )
        for step in res["steps"]:
            print(f"  {step}")
    engine.dispose()


if __name__ == "__main__":
    main()
