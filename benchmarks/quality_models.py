"""Benchmark: ranking and rating quality of every model on the ANCHORS.md protocols.

Usage (both dev datasets, every model; about 15-25 minutes on 2 shared cores)::

    NLTK_DATA=../shared/nltk_data .venv/bin/python benchmarks/quality_models.py --write

Data goes through the real recsys code path: the files are loaded with
``recsys.ingest.load.load_files`` into a throwaway embedded PostgreSQL, product text vectors are
built with ``recsys.features.store.build_features`` (Word2Vec trained on the catalogue text,
100-d, averaged: the notebook's), and ``recsys.model.data.read_rating_data(min_ratings=0)``
reads the RatingData (no min-ratings filter, as ANCHORS.md asks). ``--cache DIR`` keeps that
RatingData as an .npz so a rerun skips the database.

Every model is then trained and measured by ``recsys.evaluation.protocol`` on the same two
splits (rank: Recall/NDCG/coverage@10; seed: RMSE/MAE), and the cold-product table comes from
``recsys.evaluation.cold``. The reference measured in the same run is EASE (the best peer on
ml-100k in ANCHORS.md): the table prints each model's NDCG@10 as a ratio of EASE's.
``--write`` replaces the "Ranking quality" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, replace_section, scratch_database
from quality import DATASETS, SHARED, _f


def _save_cache(path: Path, data) -> None:
    np.savez(
        path,
        users=data.users,
        products=data.products,
        ratings=data.ratings,
        timestamps=data.timestamps,
        user_ids=data.user_ids,
        product_ids=data.product_ids,
        text=data.text,
        has_text=data.has_text,
        rating_scale=np.array(data.rating_scale),
        feature_set_id=np.array(data.feature_set_id or -1),
    )


def _load_cache(path: Path):
    from recsys.model.base import RatingData

    with np.load(path) as z:
        return RatingData(
            users=z["users"],
            products=z["products"],
            ratings=z["ratings"],
            timestamps=z["timestamps"],
            user_ids=z["user_ids"],
            product_ids=z["product_ids"],
            text=z["text"],
            has_text=z["has_text"],
            rating_scale=tuple(float(x) for x in z["rating_scale"]),
            feature_set_id=int(z["feature_set_id"]),
        )


def load_dataset(name: str, *, cache: Path | None = None, data_dir: Path = SHARED):
    """The dataset's RatingData through the real load -> features -> read path (cached)."""
    if cache is not None:
        cached = cache / f"{name}.npz"
        if cached.exists():
            return _load_cache(cached)
    from recsys.features import store
    from recsys.ingest.load import load_files
    from recsys.model.data import read_rating_data

    spec = DATASETS[name]
    work = Path(tempfile.mkdtemp(prefix=f"recsys-bench-quality-{name}-"))
    with scratch_database(work) as (settings, engine):
        tick = time.perf_counter()
        load_files(
            engine,
            settings,
            ratings=[data_dir / p for p in spec["ratings"]],
            metadata=[data_dir / p for p in spec.get("metadata", [])],
        )
        print(f"{name}: loaded in {time.perf_counter() - tick:.1f} s", flush=True)
        tick = time.perf_counter()
        store.build_features(engine, settings, dim=100, create_hnsw=False, save_vectors=False)
        print(f"{name}: features built in {time.perf_counter() - tick:.1f} s", flush=True)
        with engine.connect() as conn:
            data = read_rating_data(conn, min_ratings=0, feature_set_id="current")
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        _save_cache(cache / f"{name}.npz", data)
    return data


MAIN_MODELS = "popularity,bias,ease,als,lightfm,lightfm_text,hybrid,ranker"
LABELS = {
    "popularity": "Popularity",
    "bias": "Bias (user+item, ALS)",
    "ease": "EASE",
    "als": "implicit ALS",
    "lightfm": "LightFM WARP",
    "lightfm_text": "LightFM WARP +text",
    "hybrid": "Seed Hybrid (Keras, notebook training)",
    "deep": "Seed Deep (Keras)",
    "mf": "Seed MF (Keras)",
    "ranker": "**ranker** (this issue)",
}
LIGHTFM_TEXT_EPOCHS = 10
"""LightFM with 100-d dense text features costs ~20x plain LightFM per epoch on 2 cores, so the
benchmark fixes its epochs at 10 (what plain LightFM's train-internal tuning picked on both
datasets) instead of running its tuning grid."""


def factories(names: list[str]) -> dict:
    from recsys.model import catalog

    made = {}
    for name in names:
        params = {"epochs": LIGHTFM_TEXT_EPOCHS} if name == "lightfm_text" else {}
        made[name] = lambda n=name, p=params: catalog.create(n, **p)
    return made


def run_dataset(
    name: str, data, models: list[str], *, seed: int, cold: bool, seeds: list[int] = ()
) -> dict:
    from recsys.evaluation.cold import measure_cold
    from recsys.evaluation.protocol import evaluate_model, make_splits

    splits = make_splits(data)
    results = {}
    for model, factory in factories(models).items():
        started = time.perf_counter()
        result = evaluate_model(factory, splits, seed=seed)
        results[model] = result
        r = result.rank
        rmse = f"RMSE {result.seed['rmse']:.4f}" if result.seed else "RMSE -"
        print(
            f"{name:<10} {model:<13} NDCG@10 {r['ndcg@10']:.4f} Recall@10 {r['recall@10']:.4f} "
            f"coverage@10 {r['coverage@10']:.4f} {rmse} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    seeds_results = []
    for extra_seed in seeds:
        if extra_seed == seed and "ranker" in results:
            seeds_results.append(results["ranker"])
            continue
        seeds_results.append(
            evaluate_model(factories(["ranker"])["ranker"], splits, seed=extra_seed)
        )
    cold_results = []
    if cold:
        cold_results = measure_cold(
            data, {k: v for k, v in factories(["ranker", "lightfm_text"]).items()}, seed=seed
        )
        for c in cold_results:
            print(
                f"{name:<10} cold {c.model:<13} Recall@10 {c.recall:.4f} ({c.n_cold_products} cold "
                f"products, {c.n_users} users, {c.seconds:.0f} s)",
                flush=True,
            )
    return {"data": data, "results": results, "cold": cold_results, "seeds": seeds_results}


def markdown(runs: dict, *, seed: int, seconds: float) -> str:
    names = list(runs)
    lines = [
        "## Ranking quality (benchmarks/quality.py, engineer E)",
        "",
        f"Measured by `benchmarks/quality.py` on this 2-core CPU machine (shared), seed {seed}, in "
        f"{seconds / 60:.0f} min. Protocol of ../shared/ANCHORS.md (no min-ratings filter); data "
        "loaded by the real loader, text vectors built by the real feature store (Word2Vec on "
        "the catalogue text, 100-d, averaged), read by `read_rating_data(min_ratings=0)`. Every "
        "model on the same splits in the same run; hyper-parameters of EASE / ALS / LightFM / "
        "ranker tuned on a train-internal split only (LightFM +text: 10 epochs fixed, see "
        "quality.py). One seed, so differences of ~0.005 are within noise.",
        "",
    ]
    header = "| method |" + "".join(
        f" {n} NDCG@10 | {n} Recall@10 | {n} coverage@10 |" for n in names
    )
    header += "".join(f" {n} RMSE |" for n in names)
    lines += [header, "|---|" + "---:|" * (4 * len(names))]
    models = list(next(iter(runs.values()))["results"])
    for model in models:
        row = f"| {LABELS.get(model, model)} |"
        for n in names:
            r = runs[n]["results"][model].rank
            row += f" {_f(r['ndcg@10'])} | {_f(r['recall@10'])} | {_f(r['coverage@10'])} |"
        for n in names:
            s = runs[n]["results"][model].seed
            row += f" {_f(s['rmse']) if s else '-'} |"
        lines.append(row)
    lines.append("")
    for n in names:
        res = runs[n]["results"]
        if "ease" in res and "ranker" in res:
            ratio = res["ranker"].rank["ndcg@10"] / max(res["ease"].rank["ndcg@10"], 1e-12)
            lines.append(f"- {n}: ranker NDCG@10 / EASE NDCG@10 (same run) = **{ratio:.3f}**")
    for n in names:
        evals = runs[n].get("seeds") or []
        if len(evals) > 1:
            parts = []
            for key in ("ndcg@10", "recall@10", "coverage@10"):
                values = np.array([e.rank[key] for e in evals])
                parts.append(f"{key} {values.mean():.3f} ± {values.std():.3f}")
            rmse = np.array([e.seed["rmse"] for e in evals if e.seed])
            if len(rmse):
                parts.append(f"RMSE {rmse.mean():.3f} ± {rmse.std():.3f}")
            lines.append(
                f"- {n}: ranker over {len(evals)} training seeds (same splits): " + ", ".join(parts)
            )
    lines.append("")
    if any(runs[n]["cold"] for n in names):
        lines += [
            "Cold products (every rating of 10% of the products held out; Recall@10 among "
            "cold products for users who rated one >= 4; random = exact expectation):",
            "",
            "| dataset | cold products | users | ranker (text path) | LightFM +text | random |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for n in names:
            cold = {c.model: c for c in runs[n]["cold"]}
            if not cold:
                continue
            any_c = next(iter(cold.values()))
            lines.append(
                f"| {n} | {any_c.n_cold_products} | {any_c.n_users} | "
                f"{_f(cold['ranker'].recall)} | {_f(cold['lightfm_text'].recall)} | "
                f"{_f(cold['random'].recall)} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path = ROOT / "benchmarks" / "RESULTS.md") -> None:
    """Replace (or append) the "## Ranking quality" section of RESULTS.md."""
    replace_section(text, "## Ranking quality", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-100k,gift_cards")
    parser.add_argument("--models", default=MAIN_MODELS)
    parser.add_argument("--cache", type=Path, default=None, help="Keep/reuse the RatingData here.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cold", action="store_true")
    parser.add_argument(
        "--ranker-seeds",
        default="0,1,2",
        help="Training seeds for the ranker's mean ± std line ('' to skip).",
    )
    parser.add_argument("--only-data", action="store_true")
    parser.add_argument("--write", action="store_true", help="Write the section of RESULTS.md.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    runs = {}
    for name in args.datasets.split(","):
        data = load_dataset(name, cache=args.cache)
        print(
            f"{name}: {len(data)} ratings, {data.n_users} users, {data.n_products} products, "
            f"{int(data.has_text.sum()) if data.has_text is not None else 0} with text",
            flush=True,
        )
        if args.only_data:
            continue
        seeds = [int(x) for x in args.ranker_seeds.split(",") if x.strip()]
        runs[name] = run_dataset(
            name, data, args.models.split(","), seed=args.seed, cold=not args.no_cold, seeds=seeds
        )
    if runs:
        text = markdown(runs, seed=args.seed, seconds=time.perf_counter() - started)
        print(text)
        if args.write:
            write_section(text)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
