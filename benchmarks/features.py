"""Benchmark: feature store build on a `recsys sample` catalogue (clean + Word2Vec + embed + store).

Usage (full size, the Electronics metadata size; needs ~10+ minutes on 2 cores)::

    NLTK_DATA=../shared/nltk_data .venv/bin/python benchmarks/features.py --products 786000

It writes a sample catalogue with ``recsys.ingest.sample.write_sample``, loads its metadata with
the real loader into a throwaway embedded PostgreSQL (or ``RECSYS_DATABASE_URL``: then the
database must be empty of products), and times ``build_features`` phase by phase. In the same
run it measures a reference: the notebook's per-product Python loop (``for word in words: if
word in model: ...; np.mean``) on a subset, with the same word vectors, and prints the ratio of
the store's embedding rate to it. Peak RSS is the process's (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import close_scratch, open_scratch


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _notebook_loop(docs: list[list[str]], keyed_vectors) -> np.ndarray:
    """The seed notebook's average-Word2Vec loop, one product and one word at a time."""
    out = []
    for words in docs:
        vec = np.zeros(keyed_vectors.vector_size, dtype=np.float32)
        n = 0
        for word in words:
            if word in keyed_vectors.key_to_index:
                vec += keyed_vectors[word]
                n += 1
        out.append(vec / n if n else vec)
    return np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=786_000)
    parser.add_argument("--workers", type=int, default=1, help="Word2Vec threads (0: all)")
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--reference-subset", type=int, default=20_000)
    parser.add_argument("--no-index", action="store_true")
    parser.add_argument(
        "--sample",
        type=Path,
        default=None,
        help="Write the sample here, or reuse the one already there.",
    )
    args = parser.parse_args()

    import sqlalchemy as sa

    from recsys.features import store
    from recsys.features import vectors as wv
    from recsys.ingest.load import load_files
    from recsys.ingest.sample import write_sample

    work = Path(tempfile.mkdtemp(prefix="recsys-bench-features-"))
    sample_dir = args.sample or work / "sample"
    metadata_path = sample_dir / "meta.json.gz"
    if not metadata_path.is_file():
        tick = time.perf_counter()
        users = 1000
        files = write_sample(sample_dir, users=users, products=args.products, ratings=users, seed=0)
        metadata_path = files.metadata_path
        print(f"sample: {args.products:,} products written in {time.perf_counter() - tick:.1f} s")
    else:
        print(f"sample: reusing {metadata_path}")

    settings, engine, server = open_scratch(work)
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one():
            sys.exit("the benchmark database already holds products: use an empty one")

    tick = time.perf_counter()
    load_files(engine, settings, metadata=[metadata_path])
    load_s = time.perf_counter() - tick
    with engine.connect() as conn:
        n_loaded = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
    print(f"load-db metadata: {n_loaded:,} products in {load_s:.1f} s")

    tick = time.perf_counter()
    summary = store.build_features(
        engine,
        settings,
        dim=args.dim,
        epochs=args.epochs,
        workers=args.workers,
        create_hnsw=not args.no_index,
        save_vectors=False,
    )
    build_s = time.perf_counter() - tick

    # reference, same run: the notebook loop on a subset, with the same kind of word vectors
    with engine.connect() as conn:
        catalogue = store._read_catalogue(
            conn, with_title=False, progress=store.NO_PROGRESS, limit=args.reference_subset
        )
    docs = [t for t in catalogue.tokens if t]
    vectors = wv.train_word2vec(docs, dim=args.dim, epochs=1, workers=1)
    tick = time.perf_counter()
    reference = _notebook_loop(docs, vectors.keyed_vectors)
    loop_rate = len(docs) / (time.perf_counter() - tick)
    tick = time.perf_counter()
    fast = wv.embed(docs, vectors.keyed_vectors).vectors
    fast_rate = len(docs) / (time.perf_counter() - tick)
    np.testing.assert_allclose(fast, reference, rtol=1e-4, atol=1e-5)

    print()
    print(
        f"products              {summary.n_products:,} (embedded {summary.n_embedded:,}, "
        f"skipped {summary.n_skipped:,})"
    )
    print(
        f"vocabulary            {summary.vocabulary_size:,} words, token coverage "
        f"{summary.token_coverage:.1%}"
    )
    for phase, seconds in summary.phases.items():
        print(f"  {phase:<18}  {seconds:8.1f} s")
    rate = summary.n_products / build_s
    print(
        f"build total           {build_s:8.1f} s  = {rate:,.0f} products/s"
        f"  (Word2Vec workers={args.workers}, dim={args.dim}, epochs={args.epochs}, "
        f"HNSW={'yes' if summary.indexed else 'no'})"
    )
    print(f"peak RSS              {_peak_rss_mib():,.0f} MiB")
    print(
        f"embedding, same docs  sparse {fast_rate:,.0f} products/s vs notebook loop "
        f"{loop_rate:,.0f} products/s on {len(docs):,} products: "
        f"{fast_rate / loop_rate:.1f}x"
    )
    target = 300.0  # the Electronics issue: a features build of 786k products in 5 minutes
    print(
        f"target 786k in {target:.0f} s: projected {786_000 / rate:.0f} s at this rate"
        " (linear extrapolation when the run was smaller)"
    )
    close_scratch(engine, server)


if __name__ == "__main__":
    main()
