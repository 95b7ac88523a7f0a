"""Benchmark: the ranker's row step and validation against the reference ones, in one process.

Usage (the 1M-rating proxy; ``--users 165000 --products 55000 --ratings 3300000`` is the
notebook's filtered shape)::

    .venv/bin/python benchmarks/ranker_step.py --users 50000 --products 16000 \
        --ratings 1000000 --epochs 3

The data is ``benchmarks/ranker_train.py``'s ``sample_data`` (the nightly's filter), split as
the epoch search splits it (``internal_rank_split``). Two trainers with the same seed and the
nightly's defaults train on the fitting part: one with the row step (the default in sampled
mode), one with the reference step (``row_step=False``). Their steps alternate, one each in
turn, so both see the same machine load; each epoch prints both trainers' ratings/s and the
ratio. After each epoch each trainer's validation is timed: the trainer's own
(``RankerTrainer.validate``) against the reference (the model precomputed with the averaged
weights for every user, then ``validation_ndcg`` on the numpy scores), with both NDCG@10
figures. The load average is printed with every figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def reference_validation(trainer, validation) -> float:
    """The validation NDCG@10 as it was computed before ``TowerScores``: every user
    precomputed, then ``validation_ndcg`` on the model's numpy scores."""
    from recsys.evaluation.tuning import validation_ndcg

    raw = trainer.use_weights(trainer.optimizer.averages())
    trainer.model._precompute(trainer.tower, trainer.ratings_binary())
    trainer.use_weights(raw)
    return validation_ndcg(trainer.model, trainer.train, trainer._validation_sample(validation))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--products", type=int, default=16_000)
    parser.add_argument("--ratings", type=int, default=1_000_000)
    parser.add_argument("--min-ratings", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from ranker_train import sample_data

    from recsys.evaluation.tuning import internal_rank_split
    from recsys.model.rank_network import normalise_text
    from recsys.model.rank_trainer import RankerTrainer
    from recsys.model.ranker import RankerRecommender

    data = sample_data(args.users, args.products, args.ratings, args.min_ratings, args.seed)
    fit_part, validation = internal_rank_split(data)
    print(
        f"data: {len(data):,} ratings, {data.n_users:,} users, {data.n_products:,} products "
        f"after the filter; fitting part {len(fit_part):,} ratings; load {_load()}",
        flush=True,
    )

    def trainer(row_step: bool) -> RankerTrainer:
        model = RankerRecommender()
        model.text = normalise_text(data.text, data.n_products)
        model.params["text_path"] = True
        return RankerTrainer(model, fit_part, args.seed, row_step=row_step)

    trainers = {"reference": trainer(False), "row": trainer(True)}
    if not trainers["row"].row_step:
        print("the catalogue is in full-softmax mode: no row step to compare")
        return
    print(f"steps per epoch: {trainers['row'].steps_per_epoch()}", flush=True)

    def steps(t: RankerTrainer):
        for users in t.batches():
            yield t.train_step(t.make_batch(users))

    for epoch in range(1, args.epochs + 1):
        running = {name: steps(t) for name, t in trainers.items()}
        seconds = dict.fromkeys(trainers, 0.0)
        losses: dict[str, list[float]] = {name: [] for name in trainers}
        before = _load()
        while running:
            for name in list(running):  # one step of each trainer in turn
                started = time.perf_counter()
                try:
                    losses[name].append(next(running[name]))
                except StopIteration:
                    del running[name]
                seconds[name] += time.perf_counter() - started
        rates = {name: trainers[name].ratings.nnz / seconds[name] for name in trainers}
        for name in trainers:
            print(
                f"epoch {epoch} {name:<9} step: {seconds[name]:6.1f} s, {rates[name]:9,.0f} "
                f"ratings/s, mean loss {sum(losses[name]) / len(losses[name]):.4f}",
                flush=True,
            )
        print(
            f"epoch {epoch} row/reference ratings/s: {rates['row'] / rates['reference']:.2f} "
            f"(load {before} -> {_load()})",
            flush=True,
        )
        row = trainers["row"]
        started = time.perf_counter()
        old_ndcg = reference_validation(row, validation)
        old = time.perf_counter() - started
        started = time.perf_counter()
        new_ndcg = row.validate(validation)
        new = time.perf_counter() - started
        print(
            f"epoch {epoch} validation: reference {old:.1f} s (NDCG@10 {old_ndcg:.4f}), "
            f"trainer's {new:.1f} s (NDCG@10 {new_ndcg:.4f}), ratio {old / new:.2f} "
            f"(load {_load()})",
            flush=True,
        )


if __name__ == "__main__":
    main()
