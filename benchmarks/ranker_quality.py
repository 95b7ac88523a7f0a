"""Benchmark: the ranker's ranking quality per training variant, and fold-in for light users.

Usage (the dev datasets through ``benchmarks/quality.py``'s loader and cache)::

    NLTK_DATA=../shared/nltk_data .venv/bin/python benchmarks/ranker_quality.py \
        --cache /tmp/q --variant default --variant sampled:full_softmax_max=0

Each ``--variant NAME[:k=v,...]`` is a ``RankerRecommender`` with those parameters (ranking
head only), fitted on the ANCHORS rank split (seed 42) and measured by NDCG@10 / Recall@10 on
its test part; the first variant is the reference the others are printed against.

``--fold-in`` measures what folding in does for users with 1 to 10 ratings: it fits the
default ranker on the rank split's training part of the users with MORE than 10 training
ratings only (the nightly's filter keeps users with more than 10 ratings), then scores the
light users' (1-10 training ratings) held-out ratings two ways: their folded-in model lists
(user vector pooled from their training history) and the category-popularity fallback
(``recsys.scoring.score``'s fallback: the most rated products of the user's most rated
categories, then overall popularity); the protocol is the rank protocol restricted to those
users (relevant = held-out rating >= 4, rated training products excluded).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition(":")
    params: dict = {}
    for item in filter(None, spec.split(",")):
        key, value = item.split("=", 1)
        params[key] = float(value) if "." in value else int(value)
    return name, params


def rank_quality(data, params: dict, seed: int) -> tuple[dict, float]:
    from recsys.evaluation.metrics import ranking_metrics
    from recsys.evaluation.splits import rank_split
    from recsys.model.ranker import RankerRecommender

    split = rank_split(data)
    model = RankerRecommender(**{"rating_head": False, **params})
    started = time.perf_counter()
    model.fit(split.train, seed=seed)
    seconds = time.perf_counter() - started
    return ranking_metrics(model.score_users, split.train, split.test), seconds


def load_with_categories(name: str, cache: Path | None):
    """The dataset's RatingData (real load -> features -> read path) and each product index's
    category as the nightly fallback sees it (last category path element, or main_category)."""
    import tempfile

    import sqlalchemy as sa
    from common import scratch_database
    from quality_models import DATASETS, SHARED, _load_cache, _save_cache

    if cache is not None and (cache / f"{name}.npz").exists():
        with np.load(cache / f"{name}-categories.npz", allow_pickle=True) as z:
            return _load_cache(cache / f"{name}.npz"), z["categories"]
    from recsys.features import store
    from recsys.ingest.load import load_files
    from recsys.model.data import read_rating_data

    spec = DATASETS[name]
    work = Path(tempfile.mkdtemp(prefix=f"recsys-bench-foldin-{name}-"))
    with scratch_database(work) as (settings, engine):
        load_files(
            engine,
            settings,
            ratings=[SHARED / p for p in spec["ratings"]],
            metadata=[SHARED / p for p in spec.get("metadata", [])],
        )
        store.build_features(engine, settings, dim=100, create_hnsw=False, save_vectors=False)
        with engine.connect() as conn:
            data = read_rating_data(conn, min_ratings=0, feature_set_id="current")
            rows = dict(
                conn.execute(
                    sa.text(
                        "SELECT id, coalesce(categories[cardinality(categories)], main_category) "
                        "FROM products"
                    )
                ).all()
            )
    categories = np.array([rows.get(int(p)) for p in data.product_ids], dtype=object)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        _save_cache(cache / f"{name}.npz", data)
        np.savez(cache / f"{name}-categories.npz", categories=categories)
    return data, categories


def fold_in_quality(data, categories, seed: int, light_share: float = 0.2) -> dict:
    """Fold-in against the category-popularity fallback for light users (module docstring).

    A seeded ``light_share`` of the users become light users: their rank-split training part is
    cut to a random 1 to 10 ratings; the model trains on the other users only.
    """
    from recsys.evaluation.metrics import ranking_metrics
    from recsys.evaluation.splits import rank_split
    from recsys.model.ranker import RankerRecommender
    from recsys.scoring.score import _fallback_lists, _Popularity

    split = rank_split(data)
    train, test = split.train, split.test
    rng = np.random.default_rng(seed + 99)
    users = np.unique(train.users)
    light = np.zeros(data.n_users, dtype=bool)
    light[rng.choice(users, int(round(light_share * len(users))), replace=False)] = True
    keep = ~light[train.users]
    for user in np.flatnonzero(light):
        rows = np.flatnonzero(train.users == user)
        keep[rng.choice(rows, min(len(rows), int(rng.integers(1, 11))), replace=False)] = True
    train = train.subset(keep)
    heavy_train = train.subset(~light[train.users])
    light_test = test.subset(light[test.users])
    model = RankerRecommender(rating_head=False)
    started = time.perf_counter()
    model.fit(heavy_train, seed=seed)
    fit_seconds = time.perf_counter() - started
    known = np.zeros(data.n_products, dtype=bool)
    known[heavy_train.products] = True

    light_rows = light[train.users]
    hist_users, hist_products = train.users[light_rows], train.products[light_rows]

    def fold_in(user_index: np.ndarray) -> np.ndarray:
        out = np.full((len(user_index), data.n_products), -np.inf, dtype=np.float32)
        position = {int(u): i for i, u in enumerate(user_index)}
        mine = np.isin(hist_users, user_index) & known[hist_products]
        rows = np.array([position[int(u)] for u in hist_users[mine]], dtype=np.int64)
        has = np.zeros(len(user_index), dtype=bool)
        has[rows] = True
        if has.any():
            vectors = model.user_vectors_for(hist_products[mine], rows, len(user_index))
            scores = model.score_vectors(vectors)
            scores[:, ~known] = -np.inf  # only products the model knows
            out[has] = scores[has]
        if (~has).any():
            out[~has] = fallback(user_index[~has])
        return out

    counts = np.bincount(train.products, minlength=data.n_products)
    ids = np.lexsort((np.arange(data.n_products), -counts))
    ids = ids[counts[ids] > 0]
    rank_of = {int(p): i for i, p in enumerate(ids)}
    category_of = {int(p): c for p, c in enumerate(categories) if c is not None}
    grouped: dict[str, list[int]] = {}
    for p, c in category_of.items():
        if p in rank_of:
            grouped.setdefault(c, []).append(rank_of[p])
    popularity = _Popularity(
        ids.astype(np.int64),
        counts[ids].astype(np.int64),
        {c: np.sort(np.asarray(r)) for c, r in grouped.items()},
        category_of,
    )

    def fallback(user_index: np.ndarray) -> np.ndarray:
        mine = np.isin(hist_users, user_index)
        batch = _fallback_lists(
            user_index.astype(np.int64),
            hist_users[mine].astype(np.int64),
            hist_products[mine].astype(np.int64),
            popularity,
            10,
            True,
        )
        out = np.full((len(user_index), data.n_products), -np.inf, dtype=np.float32)
        row = {int(u): i for i, u in enumerate(user_index)}
        for u, rank, p in zip(batch.user_ids, batch.ranks, batch.product_ids, strict=True):
            out[row[int(u)], int(p)] = 100.0 - float(rank)
        return out

    n_light = int(len(np.unique(light_test.users[light_test.ratings >= 4])))
    with_model = np.isin(np.unique(hist_users), hist_users[known[hist_products]])
    return {
        "light_users_evaluated": n_light,
        "light_users_with_a_model_product": int(with_model.sum()),
        "light_users": int(light.sum()),
        "fold_in": ranking_metrics(fold_in, train, light_test),
        "fallback": ranking_metrics(fallback, train, light_test),
        "fit_seconds": fit_seconds,
    }


def main() -> None:
    from quality_models import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-100k,gift_cards")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fold-in", action="store_true")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in (args.variant or ["default"])]
    for name in args.datasets.split(","):
        if args.fold_in:
            data, categories = load_with_categories(name, args.cache)
            result = fold_in_quality(data, categories, args.seed)
            for label in ("fold_in", "fallback"):
                m = result[label]
                print(
                    f"{name:<10} light users {label:<9} NDCG@10 {m['ndcg@10']:.4f} "
                    f"Recall@10 {m['recall@10']:.4f} coverage@10 {m['coverage@10']:.4f}",
                    flush=True,
                )
            ratio = result["fold_in"]["ndcg@10"] / max(result["fallback"]["ndcg@10"], 1e-12)
            print(
                f"{name:<10} fold-in / fallback NDCG@10 = {ratio:.3f}; "
                f"{result['light_users']} light users, {result['light_users_with_a_model_product']}"
                f" with a model product, {result['light_users_evaluated']} evaluated; "
                f"fit {result['fit_seconds']:.0f} s",
                flush=True,
            )
            continue
        data = load_dataset(name, cache=args.cache)
        reference = None
        for label, params in variants:
            metrics, seconds = rank_quality(data, params, args.seed)
            ndcg = metrics["ndcg@10"]
            reference = ndcg if reference is None else reference
            print(
                f"{name:<10} {label:<24} NDCG@10 {ndcg:.4f} Recall@10 {metrics['recall@10']:.4f} "
                f"coverage@10 {metrics['coverage@10']:.4f} ratio {ndcg / reference:.3f} "
                f"fit {seconds:.0f} s  {params}",
                flush=True,
            )


if __name__ == "__main__":
    main()
