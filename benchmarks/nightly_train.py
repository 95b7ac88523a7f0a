"""Benchmark: the default nightly train step (``--model auto``) at a given size, against 10 min.

Usage (the notebook's filtered Electronics shape; about 2.8M ratings are kept)::

    .venv/bin/python benchmarks/nightly_train.py --size notebook
    .venv/bin/python benchmarks/nightly_train.py --users 50000 --products 16000 --ratings 1000000

The data is ``write_sample`` output read into a ``RatingData`` with the nightly's filter, as in
``benchmarks/ranker_train.py`` (planted product topics plus noise as the 100-d text vectors; the
database read is not part of what this times). It then fits ``auto`` with the catalogue's
defaults, time budget included, with progress lines every 30 s, and prints:

* the fit's wall seconds against the 10-minute target, and the training ratings per second;
* every candidate's contest fit seconds and internal NDCG@10, what was skipped and why, and how
  the served model was made (``refit``, ``extended`` or ``refit with tuned parameters``);
* the load average before and after (the machine is shared; compare figures of one run).

The reference in the same run is the budget itself: ``--budget`` overrides it (0: none).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TARGET_S = 600.0
SIZES = {"notebook": (165_000, 55_000, 3_300_000)}


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default=None)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--products", type=int, default=16_000)
    parser.add_argument("--ratings", type=int, default=1_000_000)
    parser.add_argument("--min-ratings", type=int, default=10)
    parser.add_argument("--budget", type=float, default=None, help="auto's time_budget_s")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.size:
        args.users, args.products, args.ratings = SIZES[args.size]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from ranker_train import sample_data

    from recsys.model import catalog
    from recsys.progress import LogProgress

    print(f"load average before: {_load()}", flush=True)
    t0 = time.perf_counter()
    data = sample_data(args.users, args.products, args.ratings, args.min_ratings, args.seed)
    prepared = time.perf_counter() - t0
    print(
        f"data: {len(data):,} ratings, {data.n_users:,} users, {data.n_products:,} products "
        f"after the filter (sample + filter {prepared:.1f} s, not part of the train step)",
        flush=True,
    )
    params = {} if args.budget is None else {"time_budget_s": args.budget or None}
    auto = catalog.create("auto", **params)
    started = time.perf_counter()
    auto.fit(data, seed=args.seed, progress=LogProgress(interval=30))
    seconds = time.perf_counter() - started
    selection = auto.selection
    served = getattr(auto.chosen, "params", {}) or {}
    print(f"load average after: {_load()}")
    print(
        f"train step (auto fit): {seconds:.1f} s against the {TARGET_S:.0f} s target "
        f"({'met' if seconds <= TARGET_S else 'MISSED'}; ratio {seconds / TARGET_S:.2f}), "
        f"{len(data) / seconds:,.0f} training ratings/s, budget {auto.params['time_budget_s']}, "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"
    )
    for c in selection["candidates"]:
        print(f"  candidate {c['model']}: NDCG@10 {c['ndcg@10']:.4f}, fit {c['fit_seconds']:.1f} s")
    for s in selection["skipped"]:
        print(f"  skipped {s['model']}: {s['reason']}")
    print(
        f"  chosen {selection['chosen']} ({selection.get('budget', {}).get('final', 'refit')}), "
        f"contest users {selection['contest_users']:,}; served params: "
        f"tuned_epochs={served.get('tuned_epochs')}, refit={served.get('refit')}"
    )


if __name__ == "__main__":
    main()
