"""Benchmark: the quality of what the default nightly run publishes, on every dev dataset.

Usage (every dataset in ../shared/data; about 10-20 minutes on 2 shared cores)::

    NLTK_DATA=../shared/nltk_data .venv/bin/python benchmarks/quality.py --write

Per dataset, in a throwaway embedded PostgreSQL:

1. the files are loaded with the real loader (``recsys.ingest.load.load_files``);
2. the ANCHORS.md rank split (``recsys.evaluation.splits.rank_split``: 20% of each user's
   ratings, ``default_rng(42)``) is cut from the loaded ratings and the TEST ratings are
   deleted from the database, so the nightly run never sees them;
3. ``recsys.pipeline.run`` runs with the default options (features, ``--model auto``,
   adaptive training filter, score, publish), except that the protocol evaluation inside
   training is skipped (it does not change what is published);
4. the published lists are read back with SQL from the ``current_recommendations`` view and
   scored against the test ratings: Recall@10, NDCG@10 (binary gains, relevant = rating >= 4)
   and coverage@10 (distinct listed products / training products), as ANCHORS.md defines them.

The references measured in the same run, on the same split and data: EASE (lambda tuned on a
train-internal split), implicit ALS (grid tuned the same way) and popularity, through
``recsys.evaluation.protocol``. The table also gives the best peer of ANCHORS.md and auto's
choice with every candidate's internal NDCG@10. ``--write`` replaces the "Any shop: the
default nightly run" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import close_scratch, open_scratch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECSYS_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATASETS = {
    "ml-100k": {
        "ratings": ["movielens_ml-100k/u.data"],
        "metadata": ["movielens_ml-100k/u.item"],
    },
    "gift_cards": {
        "ratings": ["amazon2018_gift_cards/Gift_Cards_5.json.gz"],
        "metadata": ["amazon2018_gift_cards/meta_Gift_Cards.json.gz"],
    },
    "all_beauty": {"ratings": ["amazon2018_all_beauty_5core/All_Beauty_5.json.gz"]},
    "appliances": {"ratings": ["amazon2018_appliances_5core/Appliances_5.json.gz"]},
}
ANCHORS = {
    # best peer NDCG@10 / Recall@10 (method) and EASE's coverage@10 where ANCHORS.md gives it
    "ml-100k": (0.358, "EASE", 0.369, "EASE", 0.160),
    "gift_cards": (0.271, "implicit ALS", 0.475, "implicit ALS", None),
    "all_beauty": (0.947, "implicit ALS", 0.972, "implicit ALS", None),
    "appliances": (0.200, "EASE", 0.378, "Popularity", None),
}
SECTION = "## Any shop: the default nightly run (benchmarks/quality.py)"
PEERS = ("ease", "als", "popularity")


def list_metrics(
    lists: dict[int, list[int]], test_users, test_products, test_ratings, n_training: int, k=10
) -> dict[str, float]:
    """Recall@k, NDCG@k, coverage@k of published lists (user index -> product indices)."""
    relevant: dict[int, set[int]] = {}
    triples = zip(test_users.tolist(), test_products.tolist(), test_ratings.tolist(), strict=True)
    for u, p, r in triples:
        if r >= 4:
            relevant.setdefault(u, set()).add(p)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall = ndcg = 0.0
    listed: set[int] = set()
    per_user: dict[int, list[float]] = {}
    for u, rel in relevant.items():
        items = lists.get(u, [])[:k]
        hits = np.array([p in rel for p in items], dtype=bool)
        ideal = min(k, len(rel))
        user_recall = float(hits.sum() / ideal)
        user_ndcg = float((hits * discounts[: len(hits)]).sum()) / float(discounts[:ideal].sum())
        recall += user_recall
        ndcg += user_ndcg
        per_user[int(u)] = [round(user_recall, 6), round(user_ndcg, 6)]
        listed.update(items)
    n = max(1, len(relevant))
    return {
        "recall@10": recall / n,
        "ndcg@10": ndcg / n,
        "coverage@10": len(listed) / max(1, n_training),
        "n_eval_users": len(relevant),
        "per_user": per_user,
    }


def run_dataset(name: str, data_dir: Path, *, peers: bool) -> dict:
    """Load, split, run the nightly pipeline, read the lists back; the dataset's figures."""
    import sqlalchemy as sa

    from recsys import pipeline
    from recsys.evaluation.protocol import Splits, evaluate_model
    from recsys.evaluation.splits import rank_split
    from recsys.ingest.load import load_files
    from recsys.model import catalog
    from recsys.model.data import read_rating_data

    spec = DATASETS[name]
    work = Path(tempfile.mkdtemp(prefix=f"recsys-bench-quality-{name}-"))
    settings, engine, server = open_scratch(work)
    out: dict = {"dataset": name}
    try:
        load_files(
            engine,
            settings,
            ratings=[data_dir / p for p in spec["ratings"]],
            metadata=[data_dir / p for p in spec.get("metadata", [])],
        )
        with engine.connect() as conn:
            data = read_rating_data(conn, min_ratings=0, feature_set_id=None)
        split = rank_split(data)
        test = split.test
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "DELETE FROM ratings r USING (SELECT unnest(CAST(:u AS bigint[])) AS u, "
                    "unnest(CAST(:p AS bigint[])) AS p) t WHERE r.user_id = t.u "
                    "AND r.product_id = t.p"
                ),
                {
                    "u": data.user_ids[test.users].tolist(),
                    "p": data.product_ids[test.products].tolist(),
                },
            )
        started = time.perf_counter()
        result = pipeline.run(
            engine,
            settings,
            replace(pipeline.PipelineOptions(), evaluate=False),
            trigger="benchmark",
        )
        out["nightly_seconds"] = time.perf_counter() - started
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT u.id, p.id, c.rank FROM current_recommendations c "
                    "JOIN users u ON u.external_id = c.user_external_id "
                    "JOIN products p ON p.external_id = c.asin ORDER BY u.id, c.rank"
                )
            ).all()
            run = conn.execute(
                sa.text("SELECT model_type, metrics FROM model_runs WHERE id = :r"),
                {"r": result.model_run_id},
            ).one()
            features = conn.execute(
                sa.text(
                    "SELECT detail FROM pipeline_steps WHERE pipeline_run_id = :r "
                    "AND step = 'features'"
                ),
                {"r": result.run_id},
            ).scalar()
        user_index = {int(u): i for i, u in enumerate(data.user_ids)}
        product_index = {int(p): i for i, p in enumerate(data.product_ids)}
        lists: dict[int, list[int]] = {}
        for uid, pid, _rank in rows:
            lists.setdefault(user_index[int(uid)], []).append(product_index[int(pid)])
        n_training = int(np.unique(split.train.products).size)
        out["nightly"] = list_metrics(lists, test.users, test.products, test.ratings, n_training)
        out["users_listed"] = len(lists)
        out["users_full_list"] = sum(len(v) == 10 for v in lists.values())
        out["users"] = int(np.unique(split.train.users).size)
        out["served"] = run.model_type
        out["auto"] = (run.metrics or {}).get("auto")
        out["internal"] = (run.metrics or {}).get("internal")
        out["features"] = features
        out["ratings"] = len(data)
        out["products"] = data.n_products
        if peers:
            splits = Splits(seed=split, rank=split)
            out["peers"] = {}
            for peer in PEERS:
                if not catalog.spec(peer).available():
                    continue
                evaluation = evaluate_model(lambda n=peer: catalog.create(n), splits, seed=0)
                out["peers"][peer] = evaluation.rank
    finally:
        close_scratch(engine, server)
    return out


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(results: list[dict], seconds: float) -> str:
    lines = [
        SECTION,
        "",
        "Measured by `benchmarks/quality.py` on the shared 2-core CPU machine"
        + (f" ({seconds / 60:.0f} min)" if seconds else "")
        + ": per dataset the ANCHORS.md rank split is cut from the loaded ratings,"
        " the test ratings are deleted from the database, the default `recsys run` "
        "pipeline (features, `--model auto`, adaptive filter, score, publish; only the protocol "
        "evaluation inside training skipped) runs, and its published lists are read back with "
        "SQL from `current_recommendations`. EASE / implicit ALS / popularity are measured in "
        "the same run on the same split (hyper-parameters tuned on a train-internal split). "
        "Seed 0; one run.",
        "",
        "| dataset | ratings | products | text | served (auto) | NDCG@10 | Recall@10 | "
        "coverage@10 | EASE NDCG / Recall / cov. (same run) | ALS NDCG / Recall (same run) | "
        "popularity NDCG / Recall | anchors best peer NDCG / Recall | NDCG vs best (same run) |",
        "|---|---:|---:|---|---|---:|---:|---:|---|---|---|---|---:|",
    ]
    for r in results:
        n = r["nightly"]
        peers = r.get("peers") or {}
        ease, als, pop = peers.get("ease"), peers.get("als"), peers.get("popularity")
        a = ANCHORS.get(r["dataset"])
        best_same = max([p["ndcg@10"] for p in (ease, als) if p] or [float("nan")])
        text = "no" if (r.get("features") or {}).get("skipped") else "yes"
        lines.append(
            f"| {r['dataset']} | {r['ratings']:,} | {r['products']:,} | {text} | {r['served']} | "
            f"{_f(n['ndcg@10'])} | {_f(n['recall@10'])} | {_f(n['coverage@10'])} | "
            + (
                f"{_f(ease['ndcg@10'])} / {_f(ease['recall@10'])} / {_f(ease['coverage@10'])}"
                if ease
                else "-"
            )
            + " | "
            + (f"{_f(als['ndcg@10'])} / {_f(als['recall@10'])}" if als else "-")
            + " | "
            + (f"{_f(pop['ndcg@10'])} / {_f(pop['recall@10'])}" if pop else "-")
            + " | "
            + (f"{a[0]:.3f} ({a[1]}) / {a[2]:.3f} ({a[3]})" if a else "-")
            + f" | {n['ndcg@10'] / best_same:.3f} |"
        )
    lines += ["", "auto's internal contest (NDCG@10 on the train-internal split, fit seconds):", ""]
    for r in results:
        auto = r.get("auto") or {}
        parts = [
            f"{c['model']} {c['ndcg@10']:.3f} ({c['fit_seconds']:.0f} s"
            + (f", weight {c['weight']:g}" if c.get("weight") is not None else "")
            + ")"
            for c in auto.get("candidates", [])
        ]
        skipped = [f"{s['model']}: {s['reason']}" for s in auto.get("skipped", [])]
        folds = f" over {auto['folds']} internal folds" if auto.get("folds") else ""
        lines.append(
            f"- {r['dataset']}: chose **{auto.get('chosen')}**{folds}; "
            + ", ".join(parts)
            + (f"; skipped {'; '.join(skipped)}" if skipped else "")
            + f"; every user got a list: {r['users_listed']} of {r['users']} "
            f"({r['users_full_list']} full); nightly run {r['nightly_seconds']:.0f} s"
        )
    lines.append("")
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path = ROOT / "benchmarks" / "RESULTS.md") -> None:
    """Replace (or append) this benchmark's section of RESULTS.md."""
    current = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if SECTION in current:
        head, rest = current.split(SECTION, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1 :] if nxt >= 0 else ""
        current = head + text + ("\n" + tail if tail else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--no-peers", action="store_true", help="Skip the same-run references.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    parser.add_argument("--write", action="store_true", help="Write the section of RESULTS.md.")
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="*",
        default=[],
        help="Render the table from results saved with --json (several runs combined, in order).",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    started = time.perf_counter()
    results = []
    if args.from_json:
        for path in args.from_json:
            results.extend(json.loads(path.read_text()))
        timed = all("bench_seconds" in r for r in results)
        text = markdown(results, sum(r["bench_seconds"] for r in results) if timed else 0.0)
        print(text)
        if args.write:
            write_section(text)
        return
    for name in args.datasets.split(","):
        tick = time.perf_counter()
        r = run_dataset(name, args.data_dir, peers=not args.no_peers)
        r["bench_seconds"] = time.perf_counter() - tick
        n = r["nightly"]
        print(
            f"{name}: served {r['served']} NDCG@10 {n['ndcg@10']:.4f} Recall@10 "
            f"{n['recall@10']:.4f} coverage@10 {n['coverage@10']:.4f} "
            + " ".join(
                f"{p} {m['ndcg@10']:.4f}/{m['recall@10']:.4f}/{m['coverage@10']:.4f}"
                for p, m in (r.get("peers") or {}).items()
            ),
            flush=True,
        )
        results.append(r)
    text = markdown(results, time.perf_counter() - started)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if args.write:
        write_section(text)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
