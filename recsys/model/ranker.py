"""The ranking hybrid (``--model ranker``): a Keras two-tower model trained for top-10 lists,
with a rating head beside it.

Inputs are the hybrid's: user and product embeddings plus the product's text vector from the
feature store (see :mod:`recsys.model.rank_network` for the networks). Without any product
text (no feature set, or no product with a vector) it trains on ids alone: the text column is
zero and product-id dropout is off (``params["text_path"]`` False).

Ranking objective (why): the notebook's models regress observed ratings and so rank
high-average niche products first for everyone. Here the ranking head learns which products a
user rates, and likes, among all. Each step takes a batch of users; a random half of each
user's training products (``input_dropout``) is the INPUT (the history part of the user
vector) and the other half are the TARGETS (only those rated >= ``target_min_rating``, 4: a
list should hold what users like, not merely what they rated); every target ``t`` is scored
against the user's NEGATIVES, which are the products the user did NOT rate
(``valid`` in :func:`recsys.model.rank_trainer.make_batch`; never their own rated products)::

    loss(u, t) = -log( exp(s_t) / (exp(s_t) + sum_{j unrated} exp(s_j)) )
               = softplus(logsumexp_{j unrated} s_j - s_t)

i.e. a full softmax over the catalogue, for catalogues up to ``full_softmax_max`` products.
Above it the normaliser is ``sampled_negatives`` products drawn uniformly for the whole batch,
each user's rated ones excluded, with the per-user log-Q correction
``log(n_unrated / n_valid)``, and only the embedding rows a batch touches are updated (lazy
AdamW), so a step's cost follows the batch's ratings, not the catalogue. The training loop is
:class:`recsys.model.rank_trainer.RankerTrainer` (sparse histories, progress, per-batch stop).
Predicting held-out products from the others is what EASE's zero
diagonal does in closed form; the text projection and product-id dropout (``id_dropout``: a
product's id embedding and bias are zeroed for a random share of products per step) make the
text path carry signal for products that were never rated (:meth:`score_new_products`).
AdamW with decoupled weight decay.

Tuning on a train-internal split only: when ``epochs`` is None, ``fit`` holds out 20% of each
user's TRAINING ratings (``recsys.evaluation.tuning.internal_rank_split``), trains on the rest,
measures NDCG@10 on the held-out part every ``eval_every`` epochs (patience ``patience``
evaluations), then refits on the whole training part for the best number of epochs.

Time budget (``time_budget_s``; None, the default for the ranker alone, means none): the
epoch search may use up to ``SEARCH_SHARE`` of the budget when a rating head follows (all of
it otherwise). No epoch starts that would end past that point at the mean epoch time so far,
and an epoch still running there ends after its current batch; the search then keeps its best
evaluated epoch (logged). The refit on all training ratings
runs only when it fits in what is left (projected from the search's own epoch times, scaled by
the rating counts) and the search was not cut short; otherwise the search's best weights are
served, with user vectors pooled from ALL training ratings (the user vector depends only on
the history, so this is exact, as fold-in is). The rating head stops after the first epoch that
leaves less than another epoch's time before the budget ends, or within an epoch once the
budget has ended, with its best weights (it predicts ratings; the lists do not use it). Below the
budget training is deterministic per seed; a run the budget cuts short depends on the machine's
speed, and says so in its ``stopped_reason``, ``params["refit"]`` and the log.

Rating head (``predict``): ``mu + b_u + b_i + Dense(1)(relu(Dense(64)([e_u; e_i; text; u; v])))``
where ``u``/``v`` are the trained ranking tower's user and product vectors (frozen lookups,
``rating_tower``: the SVD++-style implicit feedback, which lowers the seed-split RMSE),
trained with MSE and Adam, early-stopped on 10% of the training ratings.

Scoring (``score_users``) is exact and fast: after fit the user vectors ``U = E + X H`` (X: the
normalised training history) and product vectors ``V = P + W T`` with biases ``b`` are
precomputed, so a batch is one matrix product ``U[users] @ V.T + b``; the test compares it with
direct evaluation of the Keras model. Deterministic per seed (numpy-drawn masks and batches,
``keras.utils.set_random_seed``, TensorFlow op determinism).
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import inspect
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys.errors import DataError, RecsysError
from recsys.model.base import META_FILE, FitHistory, RatingData
from recsys.progress import NO_PROGRESS, ProgressSink

if TYPE_CHECKING:
    from recsys.model.rank_trainer import TrainedTower

_log = logging.getLogger(__name__)

TOWER_RUNNER: contextvars.ContextVar[Callable[..., Any] | None] = contextvars.ContextVar(
    "ranker_tower_runner", default=None
)
"""Where the ranking tower trains: None is this process (:class:`RankerTrainer`); otherwise a
callable ``(model, train, epochs, seed, validation, *, label, deadline) -> TrainedTower``, e.g.
the Ray Train runner of :mod:`recsys.cluster.train`. Set it with :func:`tower_runner`."""


@contextlib.contextmanager
def tower_runner(runner: Callable[..., Any] | None) -> Iterator[None]:
    """Train every ranking tower fitted inside the block with ``runner`` (None: here)."""
    token = TOWER_RUNNER.set(runner)
    try:
        yield
    finally:
        TOWER_RUNNER.reset(token)


def history_matrix(data: RatingData):
    """Binary CSR user x product matrix of the training ratings."""
    from scipy import sparse

    matrix = sparse.csr_matrix(
        (np.ones(len(data), dtype=np.float32), (data.users, data.products)),
        shape=(data.n_users, data.n_products),
    )
    matrix.data[:] = 1.0
    return matrix


class RankerRecommender:
    """The ranking hybrid as a Recommender (see the module docstring).

    Args:
        dim: width of the user/product vectors (200).
        epochs: ranking epochs; None tunes them on a train-internal split (max ``max_epochs``).
        batch_users: users per ranking step (at least; see ``max_steps_per_epoch``).
        max_steps_per_epoch: the batch grows beyond ``batch_users`` so that an epoch has at most
            this many steps (0: never), which bounds an epoch's fixed per-step cost on large data.
        learning_rate, weight_decay: AdamW.
        input_dropout: share of a user's products moved from the input to the targets per step.
        id_dropout: share of products whose id embedding is dropped per step (text path).
        use_user_embedding: add the free per-user embedding to the user vector.
        full_softmax_max: above this many products, sampled negatives replace the full softmax.
        sampled_negatives: negatives per user per step in sampled mode.
        rating_head: also train the rating head (``predict``); False makes a pure ranker.
        rating_epochs, rating_batch: rating head training (the batch grows so that an epoch
            has at most ``rating_max_steps`` steps; 0: never).
        target_min_rating: only products the user rated at least this are TARGETS (the
            evaluation's relevance, rating >= 4); lower-rated ones still count as input and are
            never negatives. Ignored (all rated products are targets) when under 10% of the
            ratings reach it, e.g. implicit-feedback data. None: every rated product.
        eval_every, eval_every_steps, patience: the epoch search evaluates every ``eval_every``
            epochs, or every epoch that completes ``eval_every_steps`` steps when epochs are
            longer (large data); it stops after ``patience`` evaluations without gain.
        validation_users: the internal-validation NDCG@10 of the epoch search is measured on at
            most this many users (a seeded sample; 0: all), so an evaluation stays cheap.
        time_budget_s: wall seconds the whole fit may take (None or 0: no limit); see
            "Time budget" in the module docstring.
        epoch_folds: internal folds of the epoch search (1, the default: one search; 0: by
            data size, see :meth:`_search_epochs`); the epochs are the median of the folds'
            best epochs.
        embedding_dim: alias of ``dim`` (the name ``recsys train --embedding-dim`` passes).
    """

    name = "ranker"

    def __init__(
        self,
        *,
        dim: int = 200,
        epochs: int | None = None,
        max_epochs: int = 120,
        eval_every: int = 5,
        eval_every_steps: int = 200,
        patience: int = 3,
        batch_users: int = 64,
        max_steps_per_epoch: int = 200,
        learning_rate: float = 0.002,
        weight_decay: float = 0.01,
        input_dropout: float = 0.5,
        id_dropout: float = 0.1,
        use_user_embedding: bool = False,
        full_softmax_max: int = 5_000,
        sampled_negatives: int = 1000,
        rating_head: bool = True,
        rating_epochs: int = 30,
        rating_batch: int = 512,
        rating_max_steps: int = 1000,
        rating_dim: int = 32,
        weight_average: float = 0.99,
        target_min_rating: float | None = 4.0,
        rating_hidden: int = 64,
        rating_tower: bool = True,
        rating_l2: float = 1e-5,
        rating_learning_rate: float = 1e-3,
        validation_users: int = 3_000,
        time_budget_s: float | None = None,
        epoch_folds: int = 1,
        embedding_dim: int | None = None,
    ) -> None:
        dim = int(embedding_dim or dim)  # ``embedding_dim``: the shared CLI option's name
        self.params: dict[str, Any] = {
            "dim": int(dim),
            "epochs": None if epochs is None else int(epochs),
            "max_epochs": int(max_epochs),
            "eval_every": int(eval_every),
            "eval_every_steps": int(eval_every_steps),
            "patience": int(patience),
            "batch_users": int(batch_users),
            "max_steps_per_epoch": int(max_steps_per_epoch),
            "learning_rate": float(learning_rate),
            "weight_decay": float(weight_decay),
            "input_dropout": float(input_dropout),
            "id_dropout": float(id_dropout),
            "use_user_embedding": bool(use_user_embedding),
            "full_softmax_max": int(full_softmax_max),
            "sampled_negatives": int(sampled_negatives),
            "rating_head": bool(rating_head),
            "rating_epochs": int(rating_epochs),
            "rating_batch": int(rating_batch),
            "rating_max_steps": int(rating_max_steps),
            "rating_dim": int(rating_dim),
            "weight_average": float(weight_average),
            "target_min_rating": target_min_rating,
            "rating_hidden": int(rating_hidden),
            "rating_tower": bool(rating_tower),
            "rating_l2": float(rating_l2),
            "rating_learning_rate": float(rating_learning_rate),
            "validation_users": int(validation_users),
            "time_budget_s": float(time_budget_s) if time_budget_s else None,
            "epoch_folds": int(epoch_folds),
        }
        if self.params["dim"] < 1 or self.params["batch_users"] < 1:
            raise RecsysError("ranker dim and batch size must be at least 1")
        if (
            not 0.0 <= self.params["input_dropout"] < 1.0
            or not 0.0 <= self.params["id_dropout"] < 1.0
        ):
            raise RecsysError("ranker dropout shares must be in [0, 1)")
        self.predicts_ratings = self.params["rating_head"]
        self.tower = None
        self.rating_model = None
        self._capture: list[list[np.ndarray]] | None = None
        self._snapshots: dict[int, list[np.ndarray]] = {}
        self.mu = 0.0
        self.text: np.ndarray | None = None
        self.history = None
        self.user_vectors: np.ndarray | None = None
        self.product_vectors: np.ndarray | None = None
        self.product_bias: np.ndarray | None = None
        self.n_users = self.n_products = self.text_dim = 0

    # --- ranking head ---------------------------------------------------------------------

    def _take_shapes(self, train: RatingData) -> None:
        """Sizes and normalised text of ``train``; ``text_path`` off when no product has text
        (ids only: the zero text column contributes nothing)."""
        from recsys.model.rank_network import normalise_text

        if len(train) == 0:
            raise DataError("no training ratings")
        self.n_users, self.n_products = train.n_users, train.n_products
        self.text = normalise_text(train.text, train.n_products)
        self.text_dim = self.text.shape[1]
        self.params["text_path"] = bool(np.any(self.text))

    def _new_tower(
        self, n_users: int, n_products: int, text_dim: int, user_rows: int | None = None
    ):
        from recsys.model.rank_network import RankingTower

        return RankingTower(
            n_users,
            n_products,
            text_dim,
            dim=self.params["dim"],
            use_user_embedding=self.params["use_user_embedding"],
            user_rows=user_rows,
            name="ranking_tower",
        )

    def _train_tower(
        self,
        train: RatingData,
        epochs: int,
        seed: int,
        validation: RatingData | None = None,
        *,
        progress: ProgressSink = NO_PROGRESS,
        should_stop: Callable[[], bool] | None = None,
        label: str = "train ranker",
        deadline: float | None = None,
    ) -> TrainedTower:
        """Train a fresh tower on ``train``; with ``validation``, keep the best evaluated epoch.

        Returns the :class:`~recsys.model.rank_trainer.TrainedTower`; ``deadline``
        (``time.monotonic``) ends the epochs early (see :meth:`RankerTrainer.run`).
        """
        runner = TOWER_RUNNER.get()
        if runner is not None:
            return runner(self, train, epochs, seed, validation, label=label, deadline=deadline)
        from recsys.model.rank_trainer import RankerTrainer

        trainer = RankerTrainer(
            self, train, seed, progress=progress, should_stop=should_stop, label=label
        )
        try:
            return trainer.run(epochs, validation, deadline=deadline)
        finally:
            trainer.release()
            gc.collect()  # the compiled step's own reference cycles hold the optimizer state

    def _precompute(self, tower, history) -> None:
        """Exact precomputation: user vectors, product vectors and biases as numpy arrays."""
        from scipy import sparse

        counts = np.asarray(history.sum(axis=1)).ravel()
        normalised = (
            sparse.diags(1.0 / np.sqrt(np.maximum(counts, 1.0))).astype(np.float32) @ history
        )
        h = np.asarray(tower.history_embedding.embeddings.numpy(), dtype=np.float32)
        users = np.asarray(normalised @ h, dtype=np.float32)
        del h, normalised
        if tower.use_user_embedding:
            users += tower.user_embedding.embeddings.numpy()
        # float32 already: no second copy of every user's vector, the largest array here
        self.user_vectors = np.asarray(users, dtype=np.float32)
        self.product_vectors, self.product_bias = tower.catalogue_vectors(self.text)
        self.tower = tower
        self.history = history

    def evaluated(self, tower, weights: list[np.ndarray]) -> None:
        """The trainer evaluates ``tower`` with ``weights`` (in ``tower.get_weights()`` order):
        within :meth:`fit_curve`, keep a copy of them (one per evaluation of the curve)."""
        if self._capture is not None:
            self._capture.append([np.array(w) for w in weights])

    # --- rating head ----------------------------------------------------------------------

    def _train_rating_head(
        self,
        train: RatingData,
        seed: int,
        *,
        progress: ProgressSink = NO_PROGRESS,
        should_stop: Callable[[], bool] | None = None,
        deadline: float | None = None,
    ) -> None:
        import keras

        from recsys.model.keras_models import internal_validation, set_determinism
        from recsys.model.rank_network import build_rating_head

        set_determinism(seed + 1)
        self.mu = float(train.ratings.astype(np.float64).mean())
        model = build_rating_head(
            train.n_users,
            train.n_products,
            self.text.shape[1],
            dim=self.params["rating_dim"],
            hidden=self.params["rating_hidden"],
            l2=self.params["rating_l2"],
            tower_dim=self.params["dim"] if self.params["rating_tower"] else 0,
        )
        if self.params["rating_tower"]:
            # unit-scaled copies: the Dense layer sees each tower vector at a comparable scale
            def unit(m: np.ndarray) -> np.ndarray:
                return m / max(float(np.sqrt((m**2).sum(1).mean())), 1e-12)

            model.get_layer("r_tower_user").set_weights([unit(self.user_vectors)])
            model.get_layer("r_tower_product").set_weights([unit(self.product_vectors)])
        fit_part, val_part = internal_validation(train, 0.1, seed)

        def inputs(part: RatingData) -> dict[str, np.ndarray]:
            return {
                "user": part.users.astype(np.int32),
                "product": part.products.astype(np.int32),
                "text": self.text[part.products],
            }

        model.compile(
            optimizer=keras.optimizers.Adam(self.params["rating_learning_rate"]), loss="mse"
        )
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=2, restore_best_weights=True
        )
        batch = _batch_size(
            self.params["rating_batch"], len(fit_part), self.params["rating_max_steps"]
        )
        report = _RatingHeadProgress(progress, should_stop, len(fit_part), batch, deadline)
        model.fit(
            inputs(fit_part),
            fit_part.ratings - self.mu,
            validation_data=(inputs(val_part), val_part.ratings - self.mu),
            epochs=self.params["rating_epochs"],
            batch_size=batch,
            callbacks=[report, stop],
            verbose=0,
            shuffle=True,
        )
        self.rating_model = model

    # --- Recommender ----------------------------------------------------------------------

    def fit(
        self,
        train: RatingData,
        *,
        validation: RatingData | None = None,
        seed: int = 0,
        progress: ProgressSink = NO_PROGRESS,
        should_stop: Callable[[], bool] | None = None,
    ) -> FitHistory:
        """Train the ranking head (epochs tuned on a train-internal split) and the rating head.

        Args:
            train: the training ratings.
            validation: unused (the epochs are tuned on a split of ``train``).
            seed: seeds everything.
            progress: a :mod:`recsys.progress` sink (epoch, loss, ratings/s, validation NDCG).
            should_stop: polled after every batch; true raises ``TrainingInterrupted``.
        """
        started = time.perf_counter()
        self._take_shapes(train)
        if not self.params["text_path"]:
            _log.info("ranker: no product text; training on ids only")
        hooks = {"progress": progress, "should_stop": should_stop}
        budget = self.params.get("time_budget_s")
        clock_started = time.monotonic()
        deadline = clock_started + budget if budget else None
        # the epoch search may run up to the rating head's reserve; the head gets the rest
        search_deadline = (
            None
            if deadline is None
            else deadline - (1.0 - SEARCH_SHARE) * budget * self.params["rating_head"]
        )
        epochs = self.params["epochs"]
        searched = None
        evaluations: list[list[float]] = []
        if epochs is None:
            from recsys.evaluation.tuning import internal_rank_split

            fit_part, val_part = internal_rank_split(train)
            if self.params["epoch_folds"] != 1:
                epochs = self._search_epochs(train, seed, hooks)
                _log.info("ranker: best epoch per fold %s", self.params["epoch_search"])
            elif np.any(val_part.ratings >= 4):
                searched = self._train_tower(
                    fit_part,
                    self.params["max_epochs"],
                    seed,
                    val_part,
                    label="ranker epoch search",
                    deadline=search_deadline,
                    **hooks,
                )
                epochs = searched.epochs
                evaluations = [[int(e), float(v)] for e, v in searched.validation]
            else:
                epochs = self.params["max_epochs"] // 2
            self.params["tuned_epochs"] = int(epochs)
            _log.info("ranker: %d epochs chosen on the train-internal split", epochs)
        refit = True
        if searched is not None and search_deadline is not None:
            # the refit's projected time: the search's epochs, scaled to all training ratings
            projected = (
                sum(searched.epoch_seconds[: int(epochs)]) * len(train) / max(len(fit_part), 1)
            )
            refit = not searched.budget_stop and time.monotonic() + projected <= search_deadline
            if not refit:
                _log.info(
                    "ranker: time budget: no refit (about %.0f s); serving the epoch search's "
                    "epoch %d, user vectors pooled from all training ratings",
                    projected,
                    epochs,
                )
        self.params["refit"] = refit
        if refit:
            result = self._train_tower(
                train, int(epochs), seed, label="ranker", deadline=search_deadline, **hooks
            )
        else:
            result = searched
        losses = result.losses
        self._precompute(result.tower, history_matrix(train))
        if self.params["rating_head"]:
            self._train_rating_head(train, seed, deadline=deadline, **hooks)
        seconds = time.perf_counter() - started
        reason = (
            f"{epochs} epochs (tuned on a train-internal split)"
            if self.params["epochs"] is None
            else f"{epochs} epochs"
        )
        if searched is not None and searched.budget_stop:
            reason += "; the time budget ended the epoch search"
        if not refit:
            reason += "; the epoch search's weights are served (no refit within the budget)"
        return FitHistory(
            train_loss=losses,
            best_epoch=int(epochs),
            stopped_reason=reason,
            epoch_seconds=[seconds],
            val_ndcg=evaluations,
        )

    def extend(
        self,
        train: RatingData,
        *,
        seed: int = 0,
        rating_head: bool = True,
        deadline: float | None = None,
        progress: ProgressSink = NO_PROGRESS,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """Serve the trained tower for ``train``, a superset of the ratings it was fitted on.

        The user vectors are pooled from ``train``'s histories (exact: a user vector depends
        only on the history, as in fold-in); ``rating_head`` trains the rating head on
        ``train`` (stopping at ``deadline``, ``time.monotonic``, after its first epoch).

        Raises:
            RecsysError: the ranker is not trained, or ``train`` has another index space.
        """
        self._check()
        if (train.n_users, train.n_products) != (self.n_users, self.n_products):
            raise RecsysError("extend needs the same users and products the ranker was fitted on")
        self._precompute(self.tower, history_matrix(train))
        self.params["rating_head"] = bool(rating_head)
        self.predicts_ratings = bool(rating_head)
        self.params["extended"] = True
        if rating_head:
            self._train_rating_head(
                train, seed, deadline=deadline, progress=progress, should_stop=should_stop
            )

    def fit_curve(
        self,
        train: RatingData,
        validation: RatingData,
        *,
        seed: int = 0,
        patience: int | None = None,
        progress: ProgressSink = NO_PROGRESS,
        should_stop: Callable[[], bool] | None = None,
        label: str = "ranker epoch curve",
    ) -> FitHistory:
        """Train on ``train`` and measure NDCG@10 on ``validation`` every ``eval_every`` epochs.

        The search of :meth:`fit` with a stop after ``patience`` evaluations without gain
        (None: ``params["patience"]``), on every ``validation`` user (``validation_users`` is
        not applied), and no rating head. The weights of every evaluated epoch are kept, so
        :meth:`use_epoch` can serve any of them; the curve, ``[(epoch, ndcg)]``, is the
        history's ``val_ndcg`` and ``params["curve"]``. Holds the best evaluated epoch after.

        Raises:
            RecsysError: the tower trained elsewhere (a tower runner keeps no epoch weights).
        """
        started = time.perf_counter()
        self._take_shapes(train)
        self.params["rating_head"] = False
        self.predicts_ratings = False
        saved = {k: self.params[k] for k in ("patience", "validation_users")}
        if patience is not None:
            self.params["patience"] = int(patience)
        self.params["validation_users"] = 0
        self._capture = []
        try:
            result = self._train_tower(
                train,
                self.params["max_epochs"],
                seed,
                validation,
                progress=progress,
                should_stop=should_stop,
                label=label,
            )
            captured = self._capture
        finally:
            self._capture = None
            self.params.update(saved)
        evaluations = [(int(e), float(v)) for e, v in result.validation]
        if len(captured) != len(evaluations):
            raise RecsysError("the ranker's epoch weights were not kept (tower trained elsewhere)")
        self._snapshots = {e: w for (e, _), w in zip(evaluations, captured, strict=True)}
        self.params["curve"] = [[e, round(v, 6)] for e, v in evaluations]
        self.params["tuned_epochs"] = int(result.epochs)
        self._precompute(result.tower, history_matrix(train))
        return FitHistory(
            train_loss=result.losses,
            best_epoch=int(result.epochs),
            stopped_reason=f"epoch curve to epoch {len(result.losses)}",
            epoch_seconds=[time.perf_counter() - started],
            val_ndcg=[[e, v] for e, v in evaluations],
        )

    def use_epoch(self, epoch: int, train: RatingData) -> None:
        """Score with the weights :meth:`fit_curve` evaluated at ``epoch``, users from ``train``.

        Raises:
            RecsysError: ``epoch`` was not evaluated by the last :meth:`fit_curve`.
        """
        if int(epoch) not in self._snapshots:
            raise RecsysError(f"the ranker has no weights of epoch {epoch}")
        self._check()
        self.tower.set_weights(self._snapshots[int(epoch)])
        self._precompute(self.tower, history_matrix(train))
        self.params["epochs"] = int(epoch)

    def drop_snapshots(self) -> None:
        """Free the epoch weights :meth:`fit_curve` kept."""
        self._snapshots = {}

    @classmethod
    def bagged(
        cls,
        members: list[RankerRecommender],
        train: RatingData,
        *,
        seed: int = 0,
        rating_head: bool = False,
        progress: ProgressSink = NO_PROGRESS,
        should_stop: Callable[[], bool] | None = None,
    ) -> RankerRecommender:
        """One ranker whose scores are the mean of the ``members``' scores, users from ``train``.

        The towers are linear in their factors, so the mean of K towers of width d is one tower
        of width K d: the history (and user) embeddings side by side, the product embeddings
        and text projections side by side divided by K, the biases averaged. It is an ordinary
        ranker (``dim`` K d): it saves, loads, folds in, explains and scores by one matrix
        product. User vectors are pooled from ``train``'s histories (a superset of what the
        members were fitted on, in the same index space); ``rating_head`` trains the rating
        head on ``train``.

        Raises:
            RecsysError: no members, or members of other sizes or settings.
        """
        from recsys.model.rank_network import normalise_text

        if not members:
            raise RecsysError("a bagged ranker needs at least one member")
        first = members[0]

        def shape(m: RankerRecommender) -> tuple:
            return (
                m.n_users,
                m.n_products,
                m.text_dim,
                m.tower.use_user_embedding,
                m.tower.user_rows,
            )

        for m in members:
            m._check()
            if shape(m) != shape(first):
                raise RecsysError("bagged ranker members differ in size or settings")
        if (train.n_users, train.n_products) != (first.n_users, first.n_products):
            raise RecsysError("a bagged ranker needs the members' users and products")
        k = len(members)
        params = {key: value for key, value in first.params.items() if key != "curve"}
        params.update(dim=first.params["dim"] * k, rating_head=bool(rating_head), bagged=k)
        params["member_epochs"] = [int(m.params.get("epochs") or 0) for m in members]
        accepted = inspect.signature(cls.__init__).parameters
        model = cls(**{key: v for key, v in params.items() if key in accepted})
        model.params.update(params)
        model.n_users, model.n_products = first.n_users, first.n_products
        model.text = normalise_text(train.text, train.n_products)
        model.text_dim = model.text.shape[1]
        tower = model._new_tower(
            model.n_users, model.n_products, model.text_dim, first.tower.user_rows
        )
        towers = [m.tower for m in members]

        def side_by_side(layer: str, scale: float) -> np.ndarray:
            parts = [np.asarray(getattr(t, layer).get_weights()[0]) for t in towers]
            return (np.concatenate(parts, axis=1) * np.float32(scale)).astype(np.float32)

        def mean(layer: str) -> np.ndarray:
            parts = [np.asarray(getattr(t, layer).get_weights()[0]) for t in towers]
            return np.mean(parts, axis=0).astype(np.float32)

        tower.user_embedding.set_weights([side_by_side("user_embedding", 1.0)])
        tower.history_embedding.set_weights([side_by_side("history_embedding", 1.0)])
        tower.product_embedding.set_weights([side_by_side("product_embedding", 1.0 / k)])
        tower.text_projection.set_weights([side_by_side("text_projection", 1.0 / k)])
        tower.product_bias.set_weights([mean("product_bias")])
        tower.text_bias.set_weights([mean("text_bias")])
        model._precompute(tower, history_matrix(train))
        model.predicts_ratings = bool(rating_head)
        if rating_head:
            model._train_rating_head(train, seed, progress=progress, should_stop=should_stop)
        return model

    def _search_epochs(self, train: RatingData, seed: int, hooks: dict[str, Any]) -> int:
        """The epoch count: the median of the best epochs of searches on internal folds.

        Fold ``k`` holds out 20% of each user's ratings with seed ``4242 + k``
        (``recsys.evaluation.tuning.internal_rank_split``); each search trains up to
        ``max_epochs`` and keeps its best evaluated epoch (``patience``). The fold count is
        ``epoch_folds`` (default 1: the single search on the first fold), or with 0
        :func:`recsys.evaluation.tuning.fold_count` (up to 5 folds while folds x ratings stay
        within 250,000; one fold on larger data), for data where one search's best epoch is
        a noisy pick. The lower median is used.
        """
        from recsys.evaluation.tuning import INTERNAL_SEED, fold_count, internal_rank_split

        n_folds = self.params["epoch_folds"] or fold_count(len(train))
        bests: list[int] = []
        for k in range(n_folds):
            fit_part, val_part = internal_rank_split(train, seed=INTERNAL_SEED + k)
            if not np.any(val_part.ratings >= 4):
                continue
            label = "ranker epoch search" + (f" ({k + 1}/{n_folds})" if n_folds > 1 else "")
            searched = self._train_tower(
                fit_part, self.params["max_epochs"], seed, val_part, label=label, **hooks
            )
            bests.append(int(searched.epochs))
        self.params["epoch_search"] = bests
        if not bests:
            return self.params["max_epochs"] // 2
        return sorted(bests)[(len(bests) - 1) // 2]

    def _id_dropout(self) -> float:
        """Product-id dropout trains the text path; without text it only adds noise."""
        return self.params["id_dropout"] if self.params.get("text_path", True) else 0.0

    @property
    def folds_in(self) -> bool:
        """Whether users outside the training data can be scored from their history."""
        return self.user_vectors is not None and not self.params["use_user_embedding"]

    def user_vectors_for(self, items: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
        """User vectors pooled from histories of MODEL product indices (fold-in).

        The user vector depends only on the products the user rated (``x_u H / sqrt(|x_u|)``;
        the free user embedding is off by default), so a user the model never saw is scored
        exactly as a trained user with the same history: ``vectors @ V.T + b``.

        Args:
            items: model product index of each (row, product) history entry; duplicates within a
                row count once.
            rows: the row (0..n_rows-1) of each entry.
            n_rows: the number of users.

        Raises:
            RecsysError: the model uses a free per-user embedding (no fold-in possible).
        """
        from scipy import sparse

        self._check()
        if self.params["use_user_embedding"]:
            raise RecsysError("this ranker uses per-user embeddings; it cannot fold in users")
        x = sparse.csr_matrix(
            (np.ones(len(items), dtype=np.float32), (np.asarray(rows), np.asarray(items))),
            shape=(int(n_rows), self.n_products),
        )
        x.data[:] = 1.0  # a product rated twice counts once, as in training
        counts = np.asarray(x.sum(axis=1)).ravel()
        pooled = np.asarray(x @ self._history_table(), dtype=np.float32)
        pooled /= np.sqrt(np.maximum(counts, 1.0)).astype(np.float32)[:, None]
        return pooled

    def score_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """Exact scores of user vectors (from :meth:`user_vectors_for`) against every product."""
        self._check()
        return (vectors @ self.product_vectors.T + self.product_bias[None, :]).astype(np.float32)

    def _check(self) -> None:
        if self.user_vectors is None:
            raise RecsysError("the ranker is not trained")

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """Exact scores: ``U[users] @ V.T + b`` from the precomputed towers."""
        self._check()
        users = np.asarray(users, dtype=np.int64)
        return (
            self.user_vectors[users] @ self.product_vectors.T + self.product_bias[None, :]
        ).astype(np.float32)

    def score_factors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user vectors, product vectors, product bias): ``score_users(u) = U[u] @ V.T + b``."""
        self._check()
        return self.user_vectors, self.product_vectors, self.product_bias

    def history_contributions(
        self, user: int, products: np.ndarray, history: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each history product's exact share of the user's scores of ``products``.

        The user vector is ``sum_j H[j] / sqrt(n)`` over the user's n history products (plus
        the free user embedding when enabled, which no product is credited with), so history
        product j adds ``H[j] . V[i] / sqrt(n)`` to the score of product i. ``history`` (model
        product indices) replaces the user's training history: a folded-in user, whose vector
        :meth:`user_vectors_for` pools from it the same way.

        Returns:
            (history product indices int64 [h], contributions float32 [h, len(products)]).
        """
        self._check()
        table = self._history_table()
        if history is None:
            row = self.history[int(user)]
            history = np.asarray(row.indices, dtype=np.int64)
            data = np.asarray(row.data, dtype=np.float32)
        else:
            history = np.unique(np.asarray(history, dtype=np.int64))
            data = np.ones(len(history), dtype=np.float32)
        if not len(history):
            return history, np.zeros((0, len(products)), dtype=np.float32)
        weights = data[:, None] / np.sqrt(max(float(data.sum()), 1.0))
        products = np.asarray(products, dtype=np.int64)
        contributions = (table[history] * weights) @ self.product_vectors[products].T
        return history, contributions.astype(np.float32)

    def _history_table(self) -> np.ndarray:
        """The history embeddings ``H`` (float32 [n_products, d]), read once per tower."""
        cached = getattr(self, "_history_vectors", None)
        if cached is None or cached[0] is not self.tower:
            embeddings = self.tower.history_embedding.embeddings.numpy()
            cached = (self.tower, np.asarray(embeddings, dtype=np.float32))
            self._history_vectors = cached
        return cached[1]

    def contribution_factors(self) -> tuple[Any, np.ndarray, np.ndarray]:
        """What :meth:`history_contributions` computes from, for many users at once.

        Returns:
            (the training history, CSR [n_users, n_products] with a weight per rated product;
            ``H`` float32 [n_products, d]; ``V`` float32 [n_products, d]): with ``w`` the row's
            weights, history product j adds ``w_j / sqrt(max(sum(w), 1)) * H[j] . V[i]`` to the
            user's score of product i, exactly as :meth:`history_contributions` computes it.
        """
        self._check()
        return self.history, self._history_table(), self.product_vectors

    def portable(self) -> RankerRecommender:
        """A copy for other processes (a cluster's scoring workers): numpy arrays only.

        It keeps the user and product vectors, the biases, the training history and the
        history embeddings, so :meth:`score_users`, :meth:`score_factors`,
        :meth:`score_vectors`, :meth:`user_vectors_for` and :meth:`history_contributions` give
        exactly this model's values; it drops the Keras towers, so it cannot train, predict
        ratings or score new products by text.
        """
        import copy

        self._check()
        clone = copy.copy(self)
        clone._snapshots = {}
        embeddings = np.asarray(self.tower.history_embedding.embeddings.numpy(), dtype=np.float32)
        clone.tower = None
        clone.rating_model = None
        clone._history_vectors = (None, embeddings)  # matches ``clone.tower`` (None)
        return clone

    def direct_scores(self, users: np.ndarray) -> np.ndarray:
        """The Keras ranking tower evaluated directly on (users, history rows, text): for tests."""
        self._check()
        users = np.asarray(users, dtype=np.int64)
        rows = self.history[users].toarray().astype(np.float32)
        return self.tower.direct_scores(users.astype(np.int32), rows, self.text)

    def score_new_products(self, users: np.ndarray, text: np.ndarray) -> np.ndarray:
        """Products never rated in training, scored through the text path alone."""
        from recsys.model.rank_network import normalise_text

        self._check()
        if not self.params.get("text_path", True):
            raise RecsysError("this ranker was trained without product text (ids only)")
        rows = normalise_text(np.asarray(text, dtype=np.float32), len(text))
        vectors, bias = self.tower.text_only_vectors(rows)
        users = np.asarray(users, dtype=np.int64)
        return (
            self.user_vectors[users] @ np.asarray(vectors).T + np.asarray(bias)[None, :]
        ).astype(np.float32)

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        """The rating head's predictions (unclipped)."""
        self._check()
        if self.rating_model is None:
            raise NotImplementedError("this ranker was trained without its rating head")
        users = np.asarray(users, dtype=np.int32)
        products = np.asarray(products, dtype=np.int32)
        out = np.empty(len(users), dtype=np.float32)
        step = 65536
        for start in range(0, len(users), step):
            u, p = users[start : start + step], products[start : start + step]
            out[start : start + step] = np.asarray(
                self.rating_model({"user": u, "product": p, "text": self.text[p]}, training=False)
            )
        return out + np.float32(self.mu)

    def save(self, directory: Path) -> None:
        self._check()
        from scipy import sparse

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tower.save_weights(directory / "ranking.weights.h5")
        if self.rating_model is not None:
            self.rating_model.save(directory / "rating_head.keras")
        sparse.save_npz(directory / "history.npz", self.history.tocsr())
        np.save(directory / "text.npy", self.text)
        meta = {
            "model": self.name,
            "params": self.params,
            "mu": self.mu,
            "n_users": self.n_users,
            "n_products": self.n_products,
            "user_rows": self.tower.user_rows,
        }
        (directory / META_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path) -> RankerRecommender:
        import keras
        from scipy import sparse

        import recsys.model.network  # noqa: F401  (registers ProductText)
        import recsys.model.rank_network  # noqa: F401

        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        accepted = inspect.signature(cls.__init__).parameters
        model = cls(**{k: v for k, v in meta["params"].items() if k in accepted})
        model.params.update(meta["params"])
        model.mu = float(meta["mu"])
        model.n_users, model.n_products = int(meta["n_users"]), int(meta["n_products"])
        model.text = np.load(directory / "text.npy")
        model.text_dim = model.text.shape[1]
        # files written before the unused per-user table became one row hold a full table
        user_rows = int(meta.get("user_rows", model.n_users))
        tower = model._new_tower(model.n_users, model.n_products, model.text_dim, user_rows)
        tower.load_weights(directory / "ranking.weights.h5")
        if (directory / "rating_head.keras").exists():
            model.rating_model = keras.saving.load_model(directory / "rating_head.keras")
        model._precompute(tower, sparse.load_npz(directory / "history.npz").tocsr())
        return model


SEARCH_SHARE = 0.7
"""With a time budget and a rating head, the share of the budget the ranking head may use."""


def mean_curve(curves: list[list[tuple[int, float]]]) -> dict[int, float]:
    """The mean NDCG@10 per epoch over epoch curves, on the epochs that every curve evaluated."""
    if not curves:
        return {}
    common = set.intersection(*({int(e) for e, _ in c} for c in curves))
    values = [{int(e): float(v) for e, v in c} for c in curves]
    return {e: float(np.mean([c[e] for c in values])) for e in sorted(common)}


def curve_epoch(curves: list[list[tuple[int, float]]]) -> int | None:
    """The epoch count with the best mean NDCG@10 over the curves (ties: the earliest).

    Only the epochs that every curve evaluated count (a curve that stopped early stopped
    after ``patience`` evaluations without gain); None when there is none.
    """
    mean = mean_curve(curves)
    if not mean:
        return None
    best = max(mean.values())
    return min(e for e, v in mean.items() if v == best)


def _batch_size(smallest: int, n: int, max_steps: int) -> int:
    """``smallest``, or larger so that ``n`` items take at most ``max_steps`` batches."""
    if max_steps <= 0:
        return int(smallest)
    return int(max(smallest, -(-n // max_steps)))


class _RatingHeadProgress:
    """Keras callback: rating-head progress per batch and the stop check."""

    def __new__(cls, progress, should_stop, n_ratings: int, batch: int, deadline=None):
        import keras

        from recsys.errors import TrainingInterrupted

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch + 1
                self.started = time.monotonic()
                progress.start(f"ranker rating head epoch {self.epoch}", n_ratings, "ratings")

            def on_train_batch_end(self, step, logs=None):
                loss = (logs or {}).get("loss")
                fields = {"epoch": self.epoch}
                if loss is not None:
                    fields["loss"] = float(loss)
                progress.update(min((step + 1) * batch, n_ratings), **fields)
                if deadline is not None and time.monotonic() > deadline:
                    # EarlyStopping still restores its best weights when training ends
                    _log.info(
                        "ranker: time budget: rating head stopped in epoch %d, step %d",
                        self.epoch,
                        step + 1,
                    )
                    self.model.stop_training = True
                if should_stop is not None and should_stop():
                    _log.info("ranker: stop requested; stopping the rating head")
                    raise TrainingInterrupted(
                        f"training stopped on request in rating-head epoch {self.epoch}"
                    )

            def on_epoch_end(self, epoch, logs=None):
                progress.finish()
                took = time.monotonic() - self.started
                if deadline is not None and time.monotonic() + took > deadline:
                    # EarlyStopping still restores its best weights when training ends
                    _log.info("ranker: time budget: rating head stopped after epoch %d", self.epoch)
                    self.model.stop_training = True

        return Callback()
