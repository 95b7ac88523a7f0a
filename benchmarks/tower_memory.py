"""Benchmark: the ranking tower's whole-catalogue computations, all at once against in chunks.

Usage (the full Electronics shape's model catalogue and the nightly ranker's width)::

    .venv/bin/python benchmarks/tower_memory.py --products 706515 --dim 200 --text-dim 100

Two computations cover every product: the product vectors and biases that a trained or loaded
ranker keeps for scoring (``RankerRecommender._precompute``), and the verify step's direct
scores of 32 sampled users. Each runs two ways, each way in a child process of its own:

* ``whole``, the reference: the Keras layers on the whole catalogue at once
  (``RankingTower.product_vectors``, and the tower's ``call``);
* ``chunked``: the same layers on ``--chunk`` products at a time
  (``RankingTower.catalogue_vectors`` and ``RankingTower.direct_scores``).

The children alternate (whole, chunked, whole, ...) so both see the same machine load. For
each computation a child reports its seconds and its peak RSS above the RSS before it (sampled
every 5 ms), after building a tower of random weights and random text rows. The ratios printed
are chunked over whole, from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


class _Peak:
    """Peak RSS (MiB) over a ``with`` block, above the RSS when it began."""

    def __enter__(self) -> _Peak:
        self.before = _rss_mib()
        self.peak = self.before
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.started = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())
        self.above = self.peak - self.before


def child(args: argparse.Namespace) -> dict:
    import keras
    import numpy as np

    import recsys  # noqa: F401  (the process settings that `import recsys` makes)
    from recsys.model.rank_network import RankingTower

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    tower = RankingTower(args.users, args.products, args.text_dim, args.dim, True)
    text = rng.standard_normal((args.products, args.text_dim), dtype=np.float32)
    users = np.sort(rng.choice(args.users, 32, replace=False)).astype(np.int32)
    rows = (rng.random((32, args.products)) < 20 / args.products).astype(np.float32)
    out: dict = {"way": args.way}
    with _Peak() as vectors_peak:
        if args.way == "whole":
            vectors, bias = tower.product_vectors(text)
            vectors, bias = np.asarray(vectors), np.asarray(bias)
        else:
            vectors, bias = tower.catalogue_vectors(text, chunk=args.chunk)
    out["vectors"] = {"seconds": vectors_peak.seconds, "peak_above_mib": vectors_peak.above}
    del vectors, bias
    with _Peak() as scores_peak:
        if args.way == "whole":
            scores = np.asarray(tower((users, rows, text)))
        else:
            scores = tower.direct_scores(users, rows, text, chunk=args.chunk)
    out["direct_scores"] = {"seconds": scores_peak.seconds, "peak_above_mib": scores_peak.above}
    out["checksum"] = float(np.abs(scores).sum())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=706_515)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=200)
    parser.add_argument("--text-dim", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=None, help="default: the tower's own")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--way", choices=["whole", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.chunk is None:
        from recsys.model.rank_network import CATALOGUE_CHUNK

        args.chunk = CATALOGUE_CHUNK
    if args.way:
        print(json.dumps(child(args)))
        return 0
    print(
        f"{args.products:,} products, dim {args.dim}, text dim {args.text_dim}, "
        f"chunk {args.chunk:,}, 32 users for the direct scores"
    )
    results: dict[str, list[dict]] = {"whole": [], "chunked": []}
    passed = list(sys.argv[1:])
    for round_ in range(args.rounds):
        for way in ("whole", "chunked"):
            done = subprocess.run(
                [sys.executable, __file__, *passed, "--way", way, "--chunk", str(args.chunk)],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            results[way].append(row)
            print(
                f"round {round_ + 1} {way:>7}: vectors {row['vectors']['seconds']:.2f} s, "
                f"+{row['vectors']['peak_above_mib']:,.0f} MiB; direct scores "
                f"{row['direct_scores']['seconds']:.2f} s, "
                f"+{row['direct_scores']['peak_above_mib']:,.0f} MiB"
            )
    for part in ("vectors", "direct_scores"):
        for key, label in (("peak_above_mib", "peak above"), ("seconds", "seconds")):
            ratios = [
                c[part][key] / max(w[part][key], 1e-9)
                for w, c in zip(results["whole"], results["chunked"], strict=True)
            ]
            print(f"{part} {label}: chunked / whole = " + ", ".join(f"{r:.3f}" for r in ratios))
    sums = {way: rows[0]["checksum"] for way, rows in results.items()}
    print(f"sum of |direct scores|: whole {sums['whole']:.6g}, chunked {sums['chunked']:.6g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
