"""The ranker's tower trained data-parallel on a Ray cluster (Ray Train's TensorFlow trainer).

Only the ranking tower of the ``ranker`` model trains on the cluster; everything else of the
fit (the text normalisation, the rating head, the exact precomputation) and every other model
runs in this process. What travels:

* **to every worker**, in ``train_loop_config``: the same pickled training ratings, product
  text, model parameters, seed and epochs. Every worker therefore builds the same rating
  matrix, the same user permutation and the same batches (same ``numpy`` generator, same
  seed), including the same sampled negatives and dropout masks;
* **per step**: each worker takes its contiguous share of the batch's users by rank
  (:func:`shard`), computes the gradient of the *sum* of its users' losses, and the workers add
  up the gradients, the loss sums and the user counts with one all-reduce of
  ``tf.distribute.MultiWorkerMirroredStrategy`` (inside ``strategy.run``; Keras ``model.fit``
  is not used, it fails under that strategy). Dividing by the batch's user count gives the
  one-process gradient. Embedding-table gradients keep their lazy semantics: a row counts as
  touched when any worker touched it, which is exactly the full batch's rows. Every worker
  then applies the same update to its own copy of the weights, so the copies stay equal;
* **back**, from the worker of rank 0 through a small Ray actor: the trained weights, the
  losses, the chosen epochs and the validation history. The driver loads them into a tower
  and the fit goes on as a local one, so the registered run has the same artifacts.

Agreement: N workers, one worker and the in-process ``RankerTrainer`` differ only in the
order the floats are added (a shard's partial sums, then the all-reduce), so they agree to
float32 rounding per step; Adam's normalised steps can grow such differences a little over
many steps, which the test bounds (scores within 1e-4 of the in-process trainer).

Failure: a worker that dies, or whose TensorFlow server cannot bind its port, fails the
training (Ray Train does not restart it); a collective that waits for a lost peer gives up
after ``collective_timeout_s``; and the driver waits at most ``task_timeout_s`` for the
whole training. Each is one :class:`~recsys.cluster.engine.ClusterError` line. The progress
sink and ``should_stop`` stay on the driver and are not polled during the cluster's training;
a time budget is honoured on the workers with a clock they agree on (the slowest worker's).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from recsys.cluster.engine import (
    ClusterError,
    EngineOptions,
    _one_line,
    connected,
    keep_connected_while,
)

_log = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT_S = 120.0
"""Longest wait of one all-reduce for the other workers (a lost peer fails, not hangs)."""

RAY_TRAIN_STORAGE = Path(tempfile.gettempdir()) / "recsys-ray-train"
"""Ray Train's ``storage_path`` on the driver. Each training's run folder there is removed when
the training ends (its weights come back in memory, nothing is checkpointed); best effort: Ray
Train's controller may still write its final state into it afterwards."""

CLUSTER_MODELS = ("ranker",)
"""Models whose training runs on the cluster with ``--engine ray``."""


def shard(batch: Any, rank: int, world: int) -> Any:
    """Worker ``rank``'s share of ``batch``: a contiguous block of its users (rows renumbered),
    with the batch's negatives and product-id dropout mask unchanged."""
    from dataclasses import replace

    bounds = np.linspace(0, len(batch.users), world + 1).round().astype(np.int64)
    lo, hi = int(bounds[rank]), int(bounds[rank + 1])
    inputs = (batch.input_rows >= lo) & (batch.input_rows < hi)
    targets = (batch.target_rows >= lo) & (batch.target_rows < hi)
    return replace(
        batch,
        users=batch.users[lo:hi],
        input_items=batch.input_items[inputs],
        input_rows=(batch.input_rows[inputs] - lo).astype(np.int32),
        target_items=batch.target_items[targets],
        target_rows=(batch.target_rows[targets] - lo).astype(np.int32),
        valid=batch.valid[lo:hi],
        correction=batch.correction[lo:hi],
    )


def _sharded_trainer_class() -> type:
    """:class:`ShardedRankerTrainer` (defined lazily: the base class imports nothing heavy, but
    keeps this module importable without TensorFlow)."""
    from recsys.model.rank_trainer import RankerTrainer, batch_tensors, sparse_loss_parts

    class ShardedRankerTrainer(RankerTrainer):
        """A :class:`RankerTrainer` whose steps add up the workers' shards of each batch."""

        def __init__(self, model, train, seed, *, strategy, rank, world, label) -> None:
            self.strategy, self.rank, self.world = strategy, rank, world
            self.started = time.monotonic()
            super().__init__(model, train, seed, label=label, clock=self.shared_clock)

        def shared_clock(self) -> float:
            """Seconds since the start on the slowest worker (the same value on all)."""
            import tensorflow as tf

            # the collectives only add up: each worker fills its own slot, the max is taken after
            own = np.zeros(self.world, dtype=np.float32)
            own[self.rank] = time.monotonic() - self.started
            value = self.strategy.run(
                lambda x: tf.distribute.get_replica_context().all_reduce("SUM", x),
                args=(tf.constant(own),),
            )
            return float(np.max(self.strategy.experimental_local_results(value)[0].numpy()))

        def _compile_step(self):
            import tensorflow as tf

            tower, variables, optimizer = self.tower, self.variables, self.optimizer
            text = tf.constant(self.model.text)
            strategy = self.strategy
            layout: list[int] = []

            def replica_step(*args):
                with tf.GradientTape() as tape:
                    total, n_users = sparse_loss_parts(tower, text, *args)
                grads = tape.gradient(total, variables)
                dense, sparse_at, masks = [], [], []  # sparse_at: the IndexedSlices gradients
                for i, (grad, var) in enumerate(zip(grads, variables, strict=True)):
                    rows = tf.shape(var)[0]
                    if grad is None:
                        dense.append(tf.zeros_like(var))
                    elif isinstance(grad, tf.IndexedSlices):
                        dense.append(tf.math.unsorted_segment_sum(grad.values, grad.indices, rows))
                        ones = tf.ones_like(grad.indices, dtype=tf.float32)
                        masks.append(tf.math.unsorted_segment_sum(ones, grad.indices, rows))
                        sparse_at.append(i)
                    else:
                        dense.append(tf.convert_to_tensor(grad))
                layout[:] = sparse_at  # at trace time; the same for every batch
                context = tf.distribute.get_replica_context()
                return context.all_reduce("SUM", [total, n_users, *dense, *masks])

            def apply(reduced, sparse_at):
                total, n_users = reduced[0], reduced[1]
                dense = reduced[2 : 2 + len(variables)]
                masks = reduced[2 + len(variables) :]
                scale = 1.0 / tf.maximum(n_users, 1.0)
                out = [g * scale for g in dense]
                for i, mask in zip(sparse_at, masks, strict=True):
                    touched = tf.where(mask > 0)[:, 0]
                    out[i] = tf.IndexedSlices(
                        tf.gather(out[i], touched), touched, tf.shape(out[i], out_type=tf.int64)
                    )
                optimizer.apply(out)
                return total * scale

            ints = tf.TensorSpec([None], tf.int32)
            floats = tf.TensorSpec([None], tf.float32)
            signature = [ints] * 6 + [tf.TensorSpec([None, None], tf.float32), floats, floats]

            @tf.function(input_signature=signature, autograph=False)
            def reduce_step(*args):
                return strategy.run(replica_step, args=args)

            @tf.function(autograph=False, reduce_retracing=True)
            def apply_step(reduced):
                return apply(reduced, layout)

            def step(*args):
                out = reduce_step(*args)
                local = tf.nest.map_structure(
                    lambda r: strategy.experimental_local_results(r)[0], out
                )
                return apply_step(list(local))

            return step

        def train_step(self, batch) -> float:
            part = shard(batch, self.rank, self.world)
            return float(self._step(*batch_tensors(part)))

    return ShardedRankerTrainer


def _train_loop(config: dict) -> None:
    """The Ray Train worker: one shard of every batch, weights back from rank 0."""
    import ray
    import ray.train
    import tensorflow as tf

    # the strategy first: its collectives must be configured before TensorFlow runs anything
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=config["collective_timeout_s"]
        )
    )
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    trainer = _sharded_trainer_class()(
        config["model"],
        config["train"],
        config["seed"],
        strategy=strategy,
        rank=rank,
        world=world,
        label=config["label"],
    )
    budget = config["budget_s"]
    started = time.perf_counter()
    result = trainer.run(config["epochs"], config["validation"], deadline=budget)
    if rank == 0:
        ray.get(
            config["mailbox"].put.remote(
                {
                    "weights": [v.numpy() for v in trainer.variables],
                    "losses": list(result.losses),
                    "epochs": int(result.epochs),
                    "validation": list(result.validation),
                    "epoch_seconds": tuple(result.epoch_seconds),
                    "budget_stop": bool(result.budget_stop),
                    "world": world,
                    "seconds": time.perf_counter() - started,
                }
            )
        )
    ray.train.report({"rank": rank})


class _Mailbox:
    """A Ray actor that holds rank 0's result until the driver takes it."""

    def __init__(self) -> None:
        self.value: Any = None

    def put(self, value: Any) -> None:
        self.value = value

    def get(self) -> Any:
        return self.value


class RayTowerRunner:
    """A :data:`recsys.model.ranker.TOWER_RUNNER`: the tower trained by ``workers`` Ray Train
    workers (1 CPU each) on the connected cluster."""

    def __init__(self, ray: Any, options: EngineOptions, workers: int | None = None) -> None:
        self.ray = ray
        self.options = options
        cpus = int(ray.cluster_resources().get("CPU", 0))
        self.workers = workers or max(1, cpus)
        if self.workers > cpus:  # Ray Train would wait for them forever
            raise ClusterError(
                f"the ranker's training needs {self.workers} workers with one CPU each and the "
                f"Ray cluster at {options.ray_address} has {cpus} CPUs"
            )
        self.last: dict[str, Any] | None = None
        """The last training's figures (``world``, ``seconds``, ``epoch_seconds``)."""

    def __call__(self, model, train, epochs, seed, validation=None, *, label, deadline=None):
        from recsys.model.rank_trainer import TrainedTower

        ray = self.ray
        portable = copy.copy(model)
        for name in ("tower", "rating_model", "history"):
            setattr(portable, name, None)
        for name in ("user_vectors", "product_vectors", "product_bias"):
            setattr(portable, name, None)
        mailbox = ray.remote(num_cpus=0)(_Mailbox).remote()
        config = {
            "model": portable,
            "train": train,
            "validation": validation,
            "seed": int(seed),
            "epochs": int(epochs),
            "label": label,
            "budget_s": None if deadline is None else max(0.0, deadline - time.monotonic()),
            "collective_timeout_s": COLLECTIVE_TIMEOUT_S,
            "mailbox": mailbox,
        }
        _log.info("ranker: training the tower on %d Ray workers", self.workers)
        self._fit(config)
        value = ray.get(mailbox.get.remote(), timeout=60)
        ray.kill(mailbox)
        if value is None:
            raise ClusterError("the ranker's training on the cluster returned no weights")
        self.last = {k: value[k] for k in ("world", "seconds", "epoch_seconds")}
        from recsys.model.keras_models import set_determinism

        set_determinism(seed)
        tower = model._new_tower(train.n_users, train.n_products, model.text.shape[1])
        variables = list(tower.trainable_variables)
        if len(variables) != len(value["weights"]):
            raise ClusterError("the weights from the cluster do not fit the ranker's tower")
        for variable, weight in zip(variables, value["weights"], strict=True):
            variable.assign(weight)
        return TrainedTower(
            tower,
            value["losses"],
            value["epochs"],
            [(int(e), float(v)) for e, v in value["validation"]],
            value["epoch_seconds"],
            value["budget_stop"],
        )

    def _fit(self, config: dict) -> None:
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.tensorflow import TensorflowTrainer

        name = f"recsys-ranker-{uuid.uuid4().hex[:8]}"
        trainer = TensorflowTrainer(
            _train_loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(
                num_workers=self.workers, use_gpu=False, resources_per_worker={"CPU": 1}
            ),
            run_config=RunConfig(
                name=name,
                storage_path=str(RAY_TRAIN_STORAGE),
                failure_config=FailureConfig(max_failures=0),
            ),
        )
        outcome: dict[str, Any] = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except BaseException as err:  # noqa: BLE001 - reported on the driver's thread
                outcome["error"] = err

        thread = threading.Thread(target=fit, name="recsys-ray-train", daemon=True)
        thread.start()
        thread.join(self.options.task_timeout_s)
        if not thread.is_alive():  # Ray Train's run folder: results came back in memory
            shutil.rmtree(RAY_TRAIN_STORAGE / name, ignore_errors=True)
        if thread.is_alive():
            keep_connected_while(thread)  # it still uses Ray: see connected()
            raise ClusterError(
                f"the ranker's training on the cluster did not finish within "
                f"{self.options.task_timeout_s:g} s (RECSYS_RAY_TASK_TIMEOUT_S; are there "
                f"{self.workers} workers with a free CPU?)"
            )
        if "error" in outcome:
            raise ClusterError(
                f"the ranker's training failed on the cluster: {_root_cause(outcome['error'])}"
            ) from None
        error = getattr(outcome.get("result"), "error", None)
        if error is not None:
            raise ClusterError(
                f"the ranker's training failed on the cluster: {_root_cause(error)}"
            ) from None


def _root_cause(err: BaseException) -> str:
    """The innermost exception's first line (Ray wraps the worker's error several times)."""
    seen = err
    failures = getattr(err, "worker_failures", None)
    if failures:  # Ray Train's WorkerGroupError: {rank: the worker's exception}
        rank, seen = sorted(failures.items())[0]
        _log.debug("ranker training: worker %s failed", rank, exc_info=seen)
    while True:
        inner = getattr(seen, "cause", None) or seen.__cause__
        if inner is None or inner is seen:
            break
        seen = inner
    return _one_line(seen)


@contextlib.contextmanager
def training_on(
    options: EngineOptions, model_name: str, workers: int | None = None
) -> Iterator[Any]:
    """Within the block, the ranker's tower trains on the cluster of ``options``.

    Yields the :class:`RayTowerRunner` (None with the local engine, or for a model other than
    the ranker, which trains in this process; that is said in one log line).
    """
    if options.engine != "ray":
        yield None
        return
    if model_name not in CLUSTER_MODELS:
        _log.warning(
            "--engine ray: model %s trains in this process (only the ranker trains on the "
            "cluster); scoring still runs on the cluster",
            model_name,
        )
        yield None
        return
    from recsys.model.ranker import tower_runner

    with connected(options) as ray:
        runner = RayTowerRunner(ray, options, workers)
        with tower_runner(runner):
            yield runner
