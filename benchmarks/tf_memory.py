"""Benchmark: TensorFlow's oneDNN CPU allocator against its default one, each in its own process.

Usage (the 1M-rating proxy; ``--users 165000 --products 55000 --ratings 3300000`` is the
notebook's filtered shape)::

    .venv/bin/python benchmarks/tf_memory.py --users 50000 --products 16000 \
        --ratings 1000000 --epochs 2 --rounds 2

``TF_ENABLE_ONEDNN_OPTS`` is read once, when TensorFlow loads, so each setting runs in a child
process of its own; the children alternate (on, off, on, off, ...) so both see the same machine
load. Each child builds ``benchmarks/ranker_train.py``'s ``sample_data``, then:

1. a TensorFlow phase that holds about ``--hold-mb`` of tensors at once and frees them: the
   memory the process keeps afterwards (RSS after ``gc`` and ``malloc_trim``, minus RSS before);
2. the nightly ranker (its defaults, no rating head) trained for ``--epochs`` fixed epochs: the
   fit's ratings per second, and the RSS the process keeps once the model is deleted.

The reference is oneDNN on (TensorFlow's default on x86). The ratio printed is the ranker's
ratings/s with oneDNN off over the reference's, from the same run.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


def _released() -> float:
    """RSS after the collector and ``malloc_trim`` (what the process can no longer give back)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return _rss_mib()


def child(args: argparse.Namespace) -> dict:
    from ranker_train import sample_data

    data = sample_data(args.users, args.products, args.ratings, args.min_ratings, args.seed)
    import tensorflow as tf

    before = _released()
    held = [tf.random.uniform((1024, 16384)) for _ in range(max(1, args.hold_mb // 64))]
    peak = _rss_mib()
    del held
    after_tensors = _released()

    from recsys.model.ranker import RankerRecommender

    model = RankerRecommender(epochs=args.epochs, rating_head=False)
    started = time.perf_counter()
    model.fit(data, seed=args.seed)
    seconds = time.perf_counter() - started
    fitted = _rss_mib()
    del model
    after_fit = _released()
    return {
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "ratings": len(data),
        "tensors_peak_mib": peak - before,
        "tensors_kept_mib": after_tensors - before,
        "fit_seconds": seconds,
        "ratings_per_s": len(data) * args.epochs / seconds,
        "fit_rss_mib": fitted,
        "fit_kept_mib": after_fit - before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--products", type=int, default=16_000)
    parser.add_argument("--ratings", type=int, default=1_000_000)
    parser.add_argument("--min-ratings", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--hold-mb", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    results: dict[str, list[dict]] = {"1": [], "0": []}
    for _ in range(args.rounds):
        for setting in ("1", "0"):
            env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting, "TF_CPP_MIN_LOG_LEVEL": "2"}
            out = subprocess.run(
                [sys.executable, __file__, "--child", *sys.argv[1:]],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            line = next(x for x in out.splitlines() if x.startswith("RESULT "))
            result = json.loads(line[len("RESULT ") :])
            results[setting].append(result)
            load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            print(
                f"oneDNN {'on ' if setting == '1' else 'off'}: {args.hold_mb} MiB of tensors "
                f"freed, kept {result['tensors_kept_mib']:,.0f} MiB; ranker "
                f"{result['ratings_per_s']:,.0f} ratings/s ({result['fit_seconds']:.1f} s), "
                f"kept {result['fit_kept_mib']:,.0f} MiB after the model is deleted "
                f"(load {load})",
                flush=True,
            )
    for a, b in zip(results["1"], results["0"], strict=True):
        print(f"round: ranker ratings/s off / on = {b['ratings_per_s'] / a['ratings_per_s']:.3f}")


if __name__ == "__main__":
    main()
