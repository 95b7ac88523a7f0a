"""Benchmark of the Ray scoring engine against the local engine, in the same run.

Scores the same users with the same block function three ways and prints users/s and the ratio
against the local engine:

1. ``local``: :func:`recsys.scoring.score.local_blocks` in this process;
2. ``ray 1 worker``: :class:`recsys.cluster.engine.RayBlocks` on a local cluster whose head
   offers no CPU and one worker node offers 1 CPU;
3. ``ray 2 workers``: the same with two worker nodes of 1 CPU each.

What is timed is the scoring of every block (dot-product scores, the exact top-k under the
rules' masks, the reasons off) and the rows' way back to the driver; the database reads and the
COPY, which the driver does in both engines, are not part of it. The model is a dot-product
model with random vectors (the vectors do not change the speed); every user has rated
``--rated`` random products. The cluster's start-up time is printed but not counted.

From the per-worker rate (1 worker; and 2 workers divided by 2) it prints the projected time
to score ``--project-users`` users against ``--project-products`` products on N machines,
assuming: the cost per user grows linearly with
the number of products (scores and the top-k scan are both linear in it); machines scale
linearly (blocks are independent); every core of a machine is one Ray worker as fast as one
worker here; the driver's reads and COPY keep up (they are not measured here).

    .venv/bin/python benchmarks/ray_score.py --users 20000 --products 20000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per engine: set before numpy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class _DotModel:
    """A dot-product model with random vectors: ``score = U[u] . V[p] + b[p]``."""

    def __init__(self, users: np.ndarray, products: np.ndarray, bias: np.ndarray) -> None:
        self.users, self.products, self.bias = users, products, bias

    def score_factors(self):
        return self.users, self.products, self.bias

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self.users[users] @ self.products.T + self.bias[None, :]


def build(n_users: int, n_products: int, dim: int, rated: int, k: int, seed: int = 0):
    """(part, blocks): the run's part as :func:`recsys.scoring.score._setup` builds it for a
    dot-product model without rules, and every block of users with their ratings."""
    from recsys.scoring.block import Columns, augment_products, users_per_block
    from recsys.scoring.fallback import Fallback
    from recsys.scoring.reads import ProductGroups
    from recsys.scoring.score import (
        _FIXED_REASONS,
        ScoreOptions,
        ScoringModel,
        ScoringPart,
        UserBlock,
        _Run,
    )

    rng = np.random.default_rng(seed)
    u = rng.normal(0, 0.1, (n_users, dim)).astype(np.float32)
    v = rng.normal(0, 0.1, (n_products, dim)).astype(np.float32)
    b = rng.normal(0, 0.1, n_products).astype(np.float32)
    user_ids = np.arange(1, n_users + 1, dtype=np.int64)
    product_ids = np.arange(1, n_products + 1, dtype=np.int64)
    model = ScoringModel(_DotModel(u, v, b), user_ids, product_ids, model_type="benchmark")
    none = np.full(n_products, -1, dtype=np.int64)
    groups = ProductGroups(product_ids, none, none, [])
    counts = rng.integers(1, 1000, n_products).astype(np.float64)
    fallback = Fallback.build(
        product_ids,
        counts,
        eligible=np.ones(n_products, dtype=bool),
        factor=np.ones(n_products),
        category=none,
        brand=none,
    )
    columns = Columns(
        keys=product_ids,
        blocked=np.zeros(n_products, dtype=bool),
        unavailable=np.zeros(n_products, dtype=bool),
        offset=np.zeros(n_products, dtype=np.float32),
        offset_folded=True,
    )
    run = _Run(
        columns,
        product_ids,
        n_products,
        None,
        fallback,
        groups,
        None,
        augment_products(v, b, columns.offset),
        u,
        reason_texts=_FIXED_REASONS,
    )
    options = ScoreOptions(k=k, rules=False, reasons=False)
    batch = users_per_block(n_products)
    blocks = []
    for start in range(0, n_users, batch):
        ids = user_ids[start : start + batch]
        r_users = np.repeat(ids, rated)
        r_products = rng.integers(1, n_products + 1, len(r_users)).astype(np.int64)
        empty = np.zeros(0, dtype=np.int64)
        blocks.append(
            UserBlock(
                ids, np.arange(start, start + len(ids)), (r_users, r_products), (empty, empty)
            )
        )
    return ScoringPart(model, run, options), blocks


def timed(runner, part, blocks) -> tuple[float, list]:
    started = time.perf_counter()
    results = list(runner(part, iter(blocks)))
    return time.perf_counter() - started, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--products", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rated", type=int, default=20)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--project-users", type=int, default=43_000_000)
    parser.add_argument("--project-products", type=int, default=100_000)
    parser.add_argument("--project-cores", type=int, default=16, help="cores per machine")
    args = parser.parse_args()

    from recsys.cluster.engine import EngineOptions, block_runner
    from recsys.cluster.local import LocalCluster
    from recsys.scoring.score import local_blocks

    part, blocks = build(args.users, args.products, args.dim, args.rated, args.k)
    print(
        f"{args.users} users x {args.products} products, dim {args.dim}, {len(blocks)} blocks; "
        f"{os.cpu_count()} CPUs on this machine; no GPU used"
    )
    local_s, reference = timed(local_blocks, part, blocks)
    local_rate = args.users / local_s
    print(f"local          {local_s:8.2f} s  {local_rate:10.0f} users/s  1.00 x")
    rates = {}
    for workers in (1, 2):
        env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
        t0 = time.perf_counter()
        cluster = LocalCluster(workers=workers, cpus=1, env=env, head_cpus=0)
        with cluster:
            started = time.perf_counter() - t0
            options = EngineOptions(engine="ray", ray_address=cluster.address)
            with block_runner(options) as runner:
                seconds, results = timed(runner, part, blocks)
        same = all(
            np.array_equal(a.batch.product_ids, b.batch.product_ids)
            and np.allclose(a.batch.scores, b.batch.scores, rtol=1e-6, atol=1e-6)
            for a, b in zip(reference, results, strict=True)
        )
        rate = args.users / seconds
        rates[workers] = rate
        print(
            f"ray {workers} worker{'s' if workers > 1 else ' '} {seconds:8.2f} s  {rate:10.0f} "
            f"users/s  {rate / local_rate:.2f} x   (cluster start {started:.0f} s; "
            f"same lists as local: {same})"
        )
    for label, per_worker in (("1 worker", rates[1]), ("2 workers, per worker", rates[2] / 2)):
        at_target = per_worker * args.products / args.project_products
        print(
            f"per-worker rate ({label}) {per_worker:.0f} users/s at {args.products} products "
            f"-> {at_target:.0f} users/s at {args.project_products} products"
        )
        for machines in (1, 10, 100):
            hours = args.project_users / (at_target * args.project_cores * machines) / 3600
            print(
                f"  projected: {args.project_users / 1e6:.0f}M users x {args.project_products} "
                f"products on {machines} x {args.project_cores}-core machines: {hours:.2f} h"
            )


if __name__ == "__main__":
    main()
