"""Benchmark: the ranker's training time on a ``recsys sample`` set (and the filter it trains on).

Usage (the notebook's filtered Electronics shape; 3.3M ratings written, about 2.8M kept)::

    .venv/bin/python benchmarks/ranker_train.py --users 165000 --products 55000 \
        --ratings 3300000

The sample is written by ``write_sample`` and read straight into a ``RatingData`` with the
nightly's filter (users and products with more than ``--min-ratings`` ratings, applied once
as ``read_rating_data`` does); the text vectors are the sample's planted product topics plus
noise, 100-d (the database and the feature store are not what this measures). It then times
``RankerRecommender.fit`` with the nightly's defaults: ``--epochs N`` fixes the epochs,
otherwise the fit includes its own epoch choice on the train-internal split. Progress lines
(every 30 s) give each epoch's ratings/s and the internal-validation NDCG. There is no reference
in the same process: the before/after comparison is this script run at an older commit (see
benchmarks/RESULTS.md, "Ranker training at scale").
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def filtered(users: np.ndarray, products: np.ndarray, min_ratings: int) -> np.ndarray:
    """Rows kept by the nightly's filter: users and products with more than ``min_ratings``."""
    u_count = np.bincount(users)
    p_count = np.bincount(products)
    return (u_count[users] > min_ratings) & (p_count[products] > min_ratings)


def sample_data(users: int, products: int, ratings: int, min_ratings: int, seed: int = 0):
    """A filtered RatingData from ``write_sample`` output (see the module docstring)."""
    import pandas as pd

    from recsys.ingest.sample import load_truth, write_sample
    from recsys.model.base import RatingData

    out = Path(tempfile.mkdtemp(prefix="recsys-bench-ranker-"))
    files = write_sample(out, users=users, products=products, ratings=ratings, seed=seed)
    frame = pd.read_csv(
        files.ratings_path, header=None, names=["item", "user", "rating", "timestamp"]
    )
    frame = frame.drop_duplicates(["item", "user"], keep="last")
    item_codes, item_names = pd.factorize(frame["item"])
    user_codes, _ = pd.factorize(frame["user"])
    keep = filtered(user_codes, item_codes, min_ratings)
    frame = frame[keep]
    item_codes, item_index = pd.factorize(item_codes[keep])
    user_codes, user_index = pd.factorize(user_codes[keep])
    truth = load_truth(files.truth_path)
    rng = np.random.default_rng(seed)
    position = {str(pid): i for i, pid in enumerate(truth["product_ids"])}
    rows = np.array([position[str(item_names[c])] for c in item_index], dtype=np.int64)
    factors = np.asarray(truth["product_factors"], dtype=np.float32)[rows]
    base = np.zeros((len(item_index), 100), dtype=np.float32)
    width = min(100, factors.shape[1])
    base[:, :width] = factors[:, :width]
    text = base + 0.5 * rng.standard_normal(base.shape).astype(np.float32)
    return RatingData(
        users=user_codes.astype(np.int32),
        products=item_codes.astype(np.int32),
        ratings=frame["rating"].to_numpy(np.float32),
        timestamps=frame["timestamp"].to_numpy(np.int64),
        user_ids=np.arange(len(user_index), dtype=np.int64),
        product_ids=np.arange(len(item_index), dtype=np.int64),
        text=text,
        has_text=np.ones(len(item_index), dtype=bool),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=165_000)
    parser.add_argument("--products", type=int, default=55_000)
    parser.add_argument("--ratings", type=int, default=3_300_000)
    parser.add_argument("--min-ratings", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=None, help="fixed epochs (default: tuned)")
    parser.add_argument("--no-rating-head", action="store_true")
    parser.add_argument("--param", action="append", default=[], help="ranker param k=v")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    t0 = time.perf_counter()
    data = sample_data(args.users, args.products, args.ratings, args.min_ratings, args.seed)
    print(
        f"data: {len(data):,} ratings, {data.n_users:,} users, {data.n_products:,} products "
        f"after the filter ({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    from recsys.model.ranker import RankerRecommender
    from recsys.progress import LogProgress

    params: dict = {"epochs": args.epochs, "rating_head": not args.no_rating_head}
    for item in args.param:
        key, value = item.split("=", 1)
        params[key] = type(RankerRecommender().params.get(key, 0.0))(value) if value else None
    model = RankerRecommender(**params)
    t1 = time.perf_counter()
    kwargs = {}
    if "progress" in RankerRecommender.fit.__code__.co_varnames:
        kwargs["progress"] = LogProgress(interval=30)
    history = model.fit(data, seed=args.seed, **kwargs)
    seconds = time.perf_counter() - t1
    print(
        f"fit: {seconds:.1f} s, epochs {history.best_epoch} ({history.stopped_reason}), "
        f"{len(history.train_loss)} final-fit epochs, peak RSS {_peak_rss_mib():,.0f} MiB, "
        f"params {params}",
        flush=True,
    )


if __name__ == "__main__":
    main()
