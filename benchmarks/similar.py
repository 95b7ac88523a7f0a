"""Benchmark: the similar step's co-rating lists, sparse blocks against dense blocks, and its
text lists, upper-triangle tiles against whole rows (not a test).

    .venv/bin/python benchmarks/similar.py --size notebook
    .venv/bin/python benchmarks/similar.py --size full [--no-write]
    .venv/bin/python benchmarks/similar.py --kind text --size full [--no-write]

Rating pairs shaped like ``benchmarks/electronics.py``'s sizes, drawn here with numpy (no
database): users' rating counts from a log-normal activity (the sample's sigma), products by
a Zipf(0.9) popularity, without the sample's topics, so co-ratings are spread more evenly than
in the sample (more distinct pairs per product: the harder case for the sparse path).

In the same run, on the same products:

1. the reference, dense blocks: each block of products' co-rating counts as a dense
   ``block x catalogue`` array, cut with ``recsys.data.topk.top_k`` (what the similar step did
   before), on the first ``--reference-s`` seconds' worth of products;
2. ``recsys.scoring.similar.co_rating_lists`` (sparse blocks) on every product.

Prints products/s of both and their ratio, checks that both give the same lists on the
products the reference did, and writes the figures to ``benchmarks/RESULTS.md``.

``--kind text``: 100-dimension vectors for the shape's products, drawn around 200 centres like
averaged word vectors of a few topics, every 50th product unavailable. The reference is the
whole-row path (a block of products against the catalogue per matmul, what ``text_lists``
does for small catalogues and did before the tiles) for ``--reference-s`` seconds; then
``text_lists`` on every product; same lists required on the reference's products. The
matmul speed of one 2048 x 2048 tile is printed beside them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {
    "notebook": {"users": 165_000, "products": 55_000, "ratings": 3_300_000, "sigma": 1.0},
    "full": {"users": 9_840_000, "products": 786_000, "ratings": 20_994_353, "sigma": 1.6},
}
MARKER = "## Similar products by co-rating: sparse blocks against dense blocks"
TEXT_MARKER = "## Similar products by text: upper-triangle tiles against whole rows"


def pairs(shape: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unique (user, product) pairs, about ``shape['ratings']`` of them."""
    rng = np.random.default_rng(seed)
    users, products = shape["users"], shape["products"]
    activity = rng.lognormal(0.0, shape["sigma"], users)
    counts = 1 + rng.multinomial(shape["ratings"] - users, activity / activity.sum())
    counts = np.minimum(counts, products // 2)
    popularity = rng.permutation(1.0 / np.arange(1, products + 1) ** 0.9)
    cdf = np.cumsum(popularity) / popularity.sum()
    u = np.repeat(np.arange(users, dtype=np.int64), counts)
    p = np.minimum(np.searchsorted(cdf, rng.random(len(u))), products - 1).astype(np.int64)
    key = np.unique(u * products + p)
    return key // products, key % products


def dense_lists(product_ids, rating_users, rating_products, allowed, k, stop_after_s):
    """The reference: dense co-rating blocks, masked and cut with top_k by the similar step's
    own block loop (the one the text lists use), until ``stop_after_s``."""
    from recsys.scoring.similar import _lists, rater_matrices

    x, xt, norms = rater_matrices(product_ids, rating_users, rating_products)
    n = len(product_ids)

    def similarity(a: int, b: int) -> np.ndarray:
        co = np.asarray((xt[a:b] @ x).todense(), dtype=np.float32)
        scores = co / np.maximum(norms[a:b, None] * norms[None, :], 1e-12)
        scores[co <= 0] = -np.inf
        return scores

    block = max(64, min(2048, (16 << 20) // (4 * max(1, n))))
    started = time.perf_counter()
    for result in _lists(similarity, n, product_ids, allowed, k, block):
        yield result
        if time.perf_counter() - started > stop_after_s:
            return


def text_vectors(products: int, seed: int = 0) -> np.ndarray:
    """float32 [products, 100] around 200 random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, 100)).astype(np.float32)
    noise = rng.standard_normal((products, 100), dtype=np.float32)
    return centres[rng.integers(0, 200, products)] * np.float32(0.7) + noise


def text_main(args: argparse.Namespace) -> None:
    from recsys.scoring.similar import TILE, K, _lists, text_lists

    n = SIZES[args.size]["products"]
    vectors = text_vectors(n)
    product_ids = np.arange(n, dtype=np.int64) * 3 + 1
    allowed = np.ones(n, dtype=bool)
    allowed[::50] = False
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    rows, cols = np.ascontiguousarray(unit[:TILE]), np.ascontiguousarray(unit[TILE : 2 * TILE])
    rows @ cols.T  # warm-up; two operands, as the tiles off the diagonal (A @ A.T is syrk)
    t0 = time.perf_counter()
    for _ in range(5):
        rows @ cols.T
    gflops = 5 * 2 * TILE * TILE * unit.shape[1] / (time.perf_counter() - t0) / 1e9
    print(f"{n:,} products, dim {unit.shape[1]}; one {TILE}^2 tile matmul: {gflops:.0f} GFLOP/s")

    block = max(64, min(2048, (16 << 20) // (4 * max(1, n))))
    t0 = time.perf_counter()
    reference = []
    for result in _lists(lambda a, b: unit[a:b] @ unit.T, n, product_ids, allowed, K, block):
        reference.append(result)
        if time.perf_counter() - t0 > args.reference_s:
            break
    whole_s = time.perf_counter() - t0
    done = reference[-1][4]
    whole_rate = rate_line("whole rows", done, whole_s)

    t0 = time.perf_counter()
    kept = []
    for rows, ranks, cols, values, _done, _pairs in text_lists(product_ids, vectors, allowed, K):
        mine = rows < done
        kept.append((rows[mine], ranks[mine], cols[mine], values[mine]))
    tiled_s = time.perf_counter() - t0
    tiled_rate = rate_line("tiles", n, tiled_s)
    print(f"{tiled_rate / whole_rate:.2f}x whole rows")
    expected = [np.concatenate([b[i] for b in reference]) for i in range(4)]
    got = [np.concatenate([b[i] for b in kept]) for i in range(4)]
    order = np.lexsort((got[1], got[0]))
    same = all(np.array_equal(g[order], e) for g, e in zip(got, expected, strict=True))
    report(
        args,
        same,
        done,
        TEXT_MARKER,
        f"`benchmarks/similar.py --kind text --size {args.size}`, {{when}}: {n:,} products, "
        f"dim {unit.shape[1]}, every 50th unavailable, k = {K}; one {TILE}^2 tile matmul "
        f"{gflops:.0f} GFLOP/s in the same run.",
        [
            (f"whole rows, {block} per matmul (reference)", done, whole_s),
            ("upper-triangle tiles", n, tiled_s),
        ],
    )


def rate_line(path: str, products: int, seconds: float) -> float:
    """Print a path's products, seconds and products/s; return the rate."""
    rate = products / seconds
    print(f"{path}: {products:,} products in {seconds:.1f} s, {rate:,.0f} products/s")
    return rate


def report(args, same: bool, done: int, marker: str, intro: str, rows: list) -> None:
    """Print whether the lists matched (exit if not) and write the section for ``--size``:
    ``intro`` (``{when}`` filled in), then the table of (path, products, seconds), reference
    first, and the ratio of the last path's rate to the reference's."""
    print(f"same lists on the first {done:,} products: {same}")
    if not same:
        raise SystemExit("the lists differ from the reference's")
    if args.no_write:
        return
    from benchmarks.common import replace_section

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    table = "".join(
        f"| {path} | {products:,} | {seconds:.1f} | {products / seconds:,.0f} |\n"
        for path, products, seconds in rows
    )
    ratio = (rows[-1][1] / rows[-1][2]) / (rows[0][1] / rows[0][2])
    heading = f"{marker} (`--size {args.size}`)"
    text = (
        f"{heading}\n\n{intro.format(when=when)}\n\n"
        f"| path | products | seconds | products/s |\n|---|---|---|---|\n{table}\n"
        f"Ratio {ratio:.2f}x; same lists on the reference's products.\n"
    )
    replace_section(text, heading)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="notebook")
    parser.add_argument("--kind", choices=["co_rating", "text"], default="co_rating")
    parser.add_argument("--reference-s", type=float, default=60.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.kind == "text":
        text_main(args)
        return

    from recsys.scoring.similar import K, co_rating_lists

    t0 = time.perf_counter()
    users, products = pairs(SIZES[args.size])
    product_ids = np.unique(products)
    allowed = np.ones(len(product_ids), dtype=bool)
    allowed[::50] = False  # a few unavailable products, as in a shop
    print(
        f"{len(users):,} pairs, {len(np.unique(users)):,} users, {len(product_ids):,} products "
        f"({time.perf_counter() - t0:.0f} s)"
    )

    t0 = time.perf_counter()
    reference = list(dense_lists(product_ids, users, products, allowed, K, args.reference_s))
    dense_s = time.perf_counter() - t0
    done = reference[-1][4]
    dense_rate = rate_line("dense blocks", done, dense_s)

    t0 = time.perf_counter()
    sparse_blocks = []
    rows_done = 0
    for block in co_rating_lists(product_ids, users, products, allowed, K):
        if rows_done < done:  # kept to compare with the reference's products
            sparse_blocks.append(block)
        rows_done = block[4]
    sparse_s = time.perf_counter() - t0
    sparse_rate = rate_line("sparse blocks", len(product_ids), sparse_s)
    print(f"{sparse_rate / dense_rate:.1f}x the dense blocks")

    def cut(blocks, n):
        parts = [np.concatenate([b[i] for b in blocks]) for i in range(4)]
        keep = parts[0] < n
        return [p[keep] for p in parts]

    same = all(
        np.array_equal(a, b)
        for a, b in zip(cut(reference, done), cut(sparse_blocks, done), strict=True)
    )
    report(
        args,
        same,
        done,
        MARKER,
        f"`benchmarks/similar.py --size {args.size}`, {{when}}: "
        f"{len(users):,} pairs, {len(product_ids):,} products, k = {K}.",
        [
            ("dense blocks (reference)", done, dense_s),
            ("sparse blocks", len(product_ids), sparse_s),
        ],
    )


if __name__ == "__main__":
    main()
