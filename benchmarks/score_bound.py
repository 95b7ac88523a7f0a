"""Benchmark: exact lists by bound-ordered prefixes against scoring every product (not a test).

    .venv/bin/python benchmarks/score_bound.py --model-dir W/home/models/1
    .venv/bin/python benchmarks/score_bound.py --synthetic --products 50000

``--model-dir``: a trained dot-product model's run folder (``model/`` inside), e.g. the one
``benchmarks/electronics.py --size notebook --workdir W`` leaves in ``W/home/models/1``;
``--synthetic``: random Gaussian factors and biases (no structure in the norms: the case where
the bound leaves out least). ``--folded`` (with ``--model-dir``, a ranker): instead of trained
users, users folded in from 2, 3 or 5 products of random trained users' histories (weights
0.6, 0.3, 0.1; a shop's users outside the training filter), with those products as rated.

In the same run, on the same users (20 random rated products masked per user, or the folded
users' own; two blocks at a time, each with a one-thread BLAS, as the local runner scores;
blocks of ``users_per_block`` users for every product, of ``bound.BLOCK_USERS`` for prefixes,
as the nightly run sizes them):

1. numpy's 2048^2 float32 matmul, the machine's reference;
2. ``dot_scores`` + ``score_block`` over every product;
3. ``score_by_bound`` (``recsys.scoring.bound``).

Prints users/s of both, their ratio, the share of user x product pairs the bound path scored,
and both as "full-equivalent" FLOP/s (2 (d + 1) FLOP for every user x product pair, scored or
not) against the matmul reference. Checks that both paths give the same lists, up to float32
rounding: a matmul of another shape can round a score differently, so two products whose
scores lie within a few ulps may swap ranks; every list must then hold, rank by rank, the same
scores (recomputed in float64) within 1e-6 of the score scale.
"""

from __future__ import annotations

import argparse
import functools
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def numpy_matmul_flops(n: int = 2048) -> float:
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


@functools.cache
def _model(model_dir: Path):
    """The model in ``model_dir/model``, loaded once."""
    from recsys.model import catalog

    return catalog.load(model_dir / "model")


def factors(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if args.model_dir is not None:
        users, products, bias = _model(args.model_dir).score_factors()
        return (np.asarray(a, dtype=np.float32) for a in (users, products, bias))
    rng = np.random.default_rng(0)
    users = rng.normal(size=(args.users, args.dim)).astype(np.float32)
    products = rng.normal(size=(args.products, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    bias = rng.normal(size=args.products).astype(np.float32)
    return users, products, bias


def folded_users(model_dir: Path, pick: np.ndarray, rng: np.random.Generator):
    """(vectors, (rows, products)): one folded-in user per picked trained user (see above)."""
    recommender = _model(model_dir)
    history = recommender.history.tocsr()
    rows, items = [], []
    for row, user in enumerate(pick.tolist()):
        own = history.indices[history.indptr[user] : history.indptr[user + 1]]
        size = min(len(own), int(rng.choice([2, 3, 5], p=[0.6, 0.3, 0.1])))
        items.append(np.sort(rng.choice(own, size, replace=False)))
        rows.append(np.full(size, row))
    rows_a, items_a = np.concatenate(rows), np.concatenate(items).astype(np.int64)
    vectors = recommender.user_vectors_for(items_a, rows_a, len(pick))
    return np.asarray(vectors, dtype=np.float32), (rows_a, items_a)


def rounding_swaps(whole, pruned, users, vectors, bias) -> int:
    """How many (user, rank) entries differ between the two paths' lists; exits unless each
    differs only by products whose float64 scores are within rounding of each other."""
    (rows_a, ranks_a, cols_a), (rows_b, ranks_b, cols_b) = whole, pruned
    if not (np.array_equal(rows_a, rows_b) and np.array_equal(ranks_a, ranks_b)):
        sys.exit("the lists differ: not the same rows and ranks")
    bad = np.flatnonzero(cols_a != cols_b)
    u = users[rows_a[bad]].astype(np.float64)

    def exact(cols: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", u, vectors[cols[bad]].astype(np.float64)) + bias[cols[bad]]

    scale = np.linalg.norm(u, axis=1) * np.linalg.norm(vectors, axis=1).max() + np.abs(bias).max()
    gap = np.abs(exact(cols_a) - exact(cols_b))
    if (gap > 1e-6 * scale).any():
        sys.exit(f"the lists differ: a score gap of {gap.max():.3g} at a differing rank")
    return len(bad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path)
    source.add_argument("--synthetic", action="store_true")
    parser.add_argument("--users", type=int, default=20_000, help="users scored (a sample)")
    parser.add_argument("--products", type=int, default=50_000, help="--synthetic only")
    parser.add_argument("--dim", type=int, default=200, help="--synthetic only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--folded", action="store_true", help="fold-in users (see above)")
    args = parser.parse_args()
    if args.folded and args.model_dir is None:
        parser.error("--folded needs --model-dir (a ranker's history)")

    from recsys.blas import ordered_in_threads
    from recsys.scoring import bound
    from recsys.scoring.block import (
        Columns,
        augment_products,
        dot_scores,
        score_block,
        users_per_block,
    )

    all_users, vectors, bias = factors(args)
    rng = np.random.default_rng(1)
    pick = np.sort(rng.choice(len(all_users), min(args.users, len(all_users)), replace=False))
    users = all_users[pick]
    n_users, (n_products, dim) = len(users), vectors.shape
    if args.folded:
        users, rated_of = folded_users(args.model_dir, pick, rng)
    else:
        rated_of = (
            np.repeat(np.arange(n_users), 20),
            rng.integers(0, n_products, n_users * 20),
        )  # 20 per user
    none = np.zeros(n_products, dtype=bool)
    columns = Columns(np.arange(1, n_products + 1, dtype=np.int64), none, none.copy())
    products = augment_products(vectors, bias)
    t0 = time.perf_counter()
    plan = bound.plan(products, columns, all_users)
    plan_s = time.perf_counter() - t0
    if plan is None:
        sys.exit(f"{n_products} products: too few for prefixes (at least {bound.MIN_PRODUCTS})")
    block = users_per_block(n_products)
    row_starts = np.searchsorted(rated_of[0], np.arange(n_users + 1))

    def rated(start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(row_starts[start], row_starts[min(n_users, start + size)])
        return rated_of[0][rows] - start, rated_of[1][rows]

    local = threading.local()

    def whole(start: int):
        if not hasattr(local, "buffer"):
            local.buffer = np.empty(block * n_products, dtype=np.float32)
        rows = users[start : start + block]
        scores = dot_scores(rows, products, out=local.buffer)
        result = score_block(scores, columns, args.k, rated=rated(start, len(rows)))
        return result.rows + start, result.ranks, result.cols

    def pruned(start: int):
        if not hasattr(local, "buffer"):
            local.buffer = np.empty(block * n_products, dtype=np.float32)
        rows = users[start : start + bound.BLOCK_USERS]
        result = bound.score_by_bound(
            rows, plan, args.k, rated=rated(start, len(rows)), buffer=local.buffer
        )
        return result.rows + start, result.ranks, result.cols, [result.pairs_scored]

    def timed(task, size: int) -> tuple[float, list]:
        starts = list(range(0, n_users, size))
        list(ordered_in_threads(task, iter(starts[:2]), args.threads))  # warm up
        t0 = time.perf_counter()
        out = list(ordered_in_threads(task, iter(starts), args.threads))
        return time.perf_counter() - t0, [np.concatenate(a) for a in zip(*out, strict=True)]

    reference = numpy_matmul_flops()
    whole_s, whole_lists = timed(whole, block)
    pruned_s, pruned_lists = timed(pruned, bound.BLOCK_USERS)
    scored = int(pruned_lists.pop().sum())  # pairs the timed run scored
    same = all(np.array_equal(a, b) for a, b in zip(whole_lists, pruned_lists, strict=True))
    swapped = 0 if same else rounding_swaps(whole_lists, pruned_lists, users, vectors, bias)
    pairs = n_users * n_products
    flop = pairs * 2 * (dim + 1)
    source = args.model_dir if args.model_dir is not None else "synthetic Gaussian factors"
    kind = "folded-in users" if args.folded else "users"
    print(f"model: {source}; {n_users:,} {kind} (of {len(all_users):,}) x {n_products:,} products")
    print(
        f"plan (bound order): {plan_s:.2f} s; levels {plan.levels}; blocks of {block} users "
        f"(every product) and {bound.BLOCK_USERS} (bound prefixes)"
    )
    print(f"numpy 2048^2 matmul: {reference / 1e9:.1f} GFLOP/s")
    print(
        f"every product: {whole_s:.2f} s, {n_users / whole_s:,.0f} users/s, "
        f"{flop / whole_s / 1e9:.1f} GFLOP/s = {flop / whole_s / reference:.2f} of matmul"
    )
    print(
        f"bound prefixes: {pruned_s:.2f} s, {n_users / pruned_s:,.0f} users/s, "
        f"{flop / pruned_s / 1e9:.1f} full-equivalent GFLOP/s = "
        f"{flop / pruned_s / reference:.2f} of matmul; pairs scored "
        f"{scored / pairs:.3f} of all"
    )
    lists = "yes" if same else f"yes up to float32 rounding ({swapped} ranks hold a tied product)"
    print(f"ratio bound / every product: {whole_s / pruned_s:.2f}x; same lists: {lists}")


if __name__ == "__main__":
    main()
