"""The ranker's tower trained on a local 2-node Ray cluster with 1 and 2 workers, and here.

Prints seconds per epoch (the first epoch, which traces the step, left out) of each, the
ratio of 2 workers to 1, and the largest score difference of each training against the
1-worker one, all measured in the same run on the same synthetic data and seed.

Usage: python benchmarks/ray_train.py [--users N] [--products N] [--ratings N] [--epochs N]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np

from recsys.cluster.engine import EngineOptions
from recsys.cluster.local import LocalCluster
from recsys.cluster.train import training_on
from recsys.data.types import RatingData
from recsys.model.ranker import RankerRecommender

REPO_ROOT = Path(__file__).resolve().parents[1]


def synthetic(users: int, products: int, ratings: int, seed: int = 0) -> RatingData:
    """Random ratings with random 16-d product text."""
    rng = np.random.default_rng(seed)
    return RatingData(
        users=rng.integers(0, users, ratings).astype(np.int32),
        products=rng.integers(0, products, ratings).astype(np.int32),
        ratings=rng.integers(1, 6, ratings).astype(np.float32),
        timestamps=np.zeros(ratings, dtype=np.int64),
        user_ids=np.arange(users, dtype=np.int64),
        product_ids=np.arange(products, dtype=np.int64),
        text=rng.normal(size=(products, 16)).astype(np.float32),
        has_text=np.ones(products, dtype=bool),
    )


def fit(data: RatingData, epochs: int) -> tuple[RankerRecommender, float]:
    # sampled negatives (the lazy embedding updates), as on a large catalogue
    model = RankerRecommender(
        epochs=epochs, dim=32, rating_head=False, full_softmax_max=1000, sampled_negatives=500
    )
    started = time.perf_counter()
    model.fit(data, seed=1)
    return model, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--ratings", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = synthetic(args.users, args.products, args.ratings)
    probe = np.arange(min(200, args.users))
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    rows = {}
    with LocalCluster(workers=1, cpus=1, env={"PYTHONPATH": path}) as cluster:
        options = EngineOptions(engine="ray", ray_address=cluster.address)
        for workers in (1, 2):
            with training_on(options, "ranker", workers=workers) as runner:
                model, wall = fit(data, args.epochs)
            per_epoch = float(np.mean(runner.last["epoch_seconds"][1:]))
            rows[f"ray {workers}w"] = (per_epoch, wall, model.score_users(probe))
    model, wall = fit(data, args.epochs)
    rows["local"] = (float("nan"), wall, model.score_users(probe))
    reference = rows["ray 1w"][2]
    print(
        f"data: {args.users} users, {args.products} products, {args.ratings} ratings, "
        f"{args.epochs} epochs"
    )
    for name, (per_epoch, wall, scores) in rows.items():
        diff = float(np.max(np.abs(scores - reference)))
        print(
            f"{name:8s} s/epoch {per_epoch:7.3f}  fit wall {wall:7.1f} s  "
            f"max |score - 1 worker| {diff:.2e}"
        )
    print(f"2 workers / 1 worker, s/epoch: {rows['ray 2w'][0] / rows['ray 1w'][0]:.2f}")


if __name__ == "__main__":
    main()
