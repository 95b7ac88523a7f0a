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
(:func:`negative_mask`; never their own rated products)::

    loss(u, t) = -log( exp(s_t) / (exp(s_t) + sum_{j unrated} exp(s_j)) )
               = softplus(logsumexp_{j unrated} s_j - s_t)

i.e. a full softmax over the catalogue (exact and cheap up to ~50k products). Beyond
``full_softmax_max`` products the negatives are ``sampled_negatives`` products drawn uniformly
among the unrated ones (:func:`sample_negatives`) with the log-Q correction
``log(n_unrated / n_sampled)``. (Known limit: a step still builds dense ``[batch_users,
n_products]`` history/target rows and target logits, so with hundreds of thousands of products
lower ``batch_users``; the sampled path is tested on a small sample, not benchmarked at scale.)
Predicting held-out products from the others is what EASE's zero
diagonal does in closed form; the text projection and product-id dropout (``id_dropout``: a
product's id embedding and bias are zeroed for a random share of products per step) make the
text path carry signal for products that were never rated (:meth:`score_new_products`).
AdamW with decoupled weight decay.

Tuning on a train-internal split only: when ``epochs`` is None, ``fit`` holds out 20% of each
user's TRAINING ratings (``recsys.evaluation.tuning.internal_rank_split``), trains on the rest,
measures NDCG@10 on the held-out part every ``eval_every`` epochs (patience ``patience``
evaluations), then refits on the whole training part for the best number of epochs.

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

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import DataError, RecsysError
from recsys.model.base import META_FILE, FitHistory, RatingData

_log = logging.getLogger(__name__)


def history_matrix(data: RatingData):
    """Binary CSR user x product matrix of the training ratings."""
    from scipy import sparse

    matrix = sparse.csr_matrix(
        (np.ones(len(data), dtype=np.float32), (data.users, data.products)),
        shape=(data.n_users, data.n_products),
    )
    matrix.data[:] = 1.0
    return matrix


def negative_mask(history_rows: np.ndarray) -> np.ndarray:
    """The negatives of a batch in the full-softmax objective: 1 where the user did NOT rate."""
    return (np.asarray(history_rows) <= 0).astype(np.float32)


def sample_negatives(rng: np.random.Generator, history, users: np.ndarray, n: int) -> np.ndarray:
    """``[len(users), n]`` products drawn uniformly among each user's UNRATED products.

    Draws with replacement from the whole catalogue and redraws the draws that hit a rated
    product, so a user's own products never appear (users who rated everything get -1).
    """
    n_products = history.shape[1]
    out = rng.integers(0, n_products, size=(len(users), n))
    for row, user in enumerate(np.asarray(users)):
        rated = history.indices[history.indptr[user] : history.indptr[user + 1]]
        if len(rated) >= n_products:
            out[row] = -1
            continue
        bad = np.isin(out[row], rated)
        while bad.any():
            out[row, bad] = rng.integers(0, n_products, size=int(bad.sum()))
            bad = np.isin(out[row], rated)
    return out


def _target_loss(negative_lse, logits, targets):
    import tensorflow as tf

    per_target = tf.nn.softplus(negative_lse[:, None] - logits) * targets
    n_targets = tf.reduce_sum(targets, axis=1)
    per_user = tf.reduce_sum(per_target, axis=1) / tf.maximum(n_targets, 1.0)
    has = tf.cast(n_targets > 0, tf.float32)
    return tf.reduce_sum(per_user * has) / tf.maximum(tf.reduce_sum(has), 1.0)


def ranking_loss(logits, targets, negatives):
    """The full-softmax ranking loss of a batch (mean over users with at least one target).

    Args:
        logits: ``[batch, n_products]`` scores.
        targets: 1 where a product is a target (a held-out rated product of the user).
        negatives: 1 where a product is a negative: :func:`negative_mask` (unrated only). A
            product with 0 here never enters the normaliser, so a user's own rated products
            get no push-down.
    """
    import tensorflow as tf

    masked = tf.where(negatives > 0, logits, tf.fill(tf.shape(logits), -1e9))
    return _target_loss(tf.reduce_logsumexp(masked, axis=1), logits, targets)


class RankerRecommender:
    """The ranking hybrid as a Recommender (see the module docstring).

    Args:
        dim: width of the user/product vectors (200).
        epochs: ranking epochs; None tunes them on a train-internal split (max ``max_epochs``).
        batch_users: users per ranking step.
        learning_rate, weight_decay: AdamW.
        input_dropout: share of a user's products moved from the input to the targets per step.
        id_dropout: share of products whose id embedding is dropped per step (text path).
        use_user_embedding: add the free per-user embedding to the user vector.
        full_softmax_max: above this many products, sampled negatives replace the full softmax.
        sampled_negatives: negatives per user per step in sampled mode.
        rating_head: also train the rating head (``predict``); False makes a pure ranker.
        rating_epochs, rating_batch: rating head training.
        target_min_rating: only products the user rated at least this are TARGETS (the
            evaluation's relevance, rating >= 4); lower-rated ones still count as input and are
            never negatives. Ignored (all rated products are targets) when under 10% of the
            ratings reach it, e.g. implicit-feedback data. None: every rated product.
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
        patience: int = 3,
        batch_users: int = 64,
        learning_rate: float = 0.002,
        weight_decay: float = 0.01,
        input_dropout: float = 0.5,
        id_dropout: float = 0.1,
        use_user_embedding: bool = False,
        full_softmax_max: int = 50_000,
        sampled_negatives: int = 1000,
        rating_head: bool = True,
        rating_epochs: int = 30,
        rating_batch: int = 512,
        rating_dim: int = 32,
        weight_average: float = 0.99,
        target_min_rating: float | None = 4.0,
        rating_hidden: int = 64,
        rating_tower: bool = True,
        rating_l2: float = 1e-5,
        rating_learning_rate: float = 1e-3,
        embedding_dim: int | None = None,
    ) -> None:
        dim = int(embedding_dim or dim)  # ``embedding_dim``: the shared CLI option's name
        self.params: dict[str, Any] = {
            "dim": int(dim),
            "epochs": None if epochs is None else int(epochs),
            "max_epochs": int(max_epochs),
            "eval_every": int(eval_every),
            "patience": int(patience),
            "batch_users": int(batch_users),
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
            "rating_dim": int(rating_dim),
            "weight_average": float(weight_average),
            "target_min_rating": target_min_rating,
            "rating_hidden": int(rating_hidden),
            "rating_tower": bool(rating_tower),
            "rating_l2": float(rating_l2),
            "rating_learning_rate": float(rating_learning_rate),
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
        self.mu = 0.0
        self.text: np.ndarray | None = None
        self.history = None
        self.user_vectors: np.ndarray | None = None
        self.product_vectors: np.ndarray | None = None
        self.product_bias: np.ndarray | None = None
        self.n_users = self.n_products = self.text_dim = 0

    # --- ranking head ---------------------------------------------------------------------

    def _new_tower(self, n_users: int, n_products: int, text_dim: int):
        from recsys.model.rank_network import RankingTower

        return RankingTower(
            n_users,
            n_products,
            text_dim,
            dim=self.params["dim"],
            use_user_embedding=self.params["use_user_embedding"],
            name="ranking_tower",
        )

    def _train_tower(
        self, train: RatingData, epochs: int, seed: int, validation: RatingData | None = None
    ) -> tuple[Any, list[float], int]:
        """Train a fresh tower on ``train``; with ``validation``, keep the best evaluated epoch."""
        import keras
        import tensorflow as tf

        from recsys.model.keras_models import set_determinism

        set_determinism(seed)
        rng = np.random.default_rng(seed)
        history = history_matrix(train)
        liked = None
        threshold = self.params["target_min_rating"]
        if threshold is not None and np.mean(train.ratings >= threshold) >= 0.1:
            liked = history_matrix(train.subset(train.ratings >= threshold))
        elif threshold is not None:
            _log.info(
                "ranker: under 10%% of ratings are >= %g; every rated product is a target",
                threshold,
            )
        tower = self._new_tower(train.n_users, train.n_products, self.text.shape[1])
        optimizer = keras.optimizers.AdamW(
            learning_rate=self.params["learning_rate"], weight_decay=self.params["weight_decay"]
        )
        text = tf.constant(self.text)
        full = train.n_products <= self.params["full_softmax_max"]
        n_sampled = self.params["sampled_negatives"]
        log_q = tf.constant(0.0)
        # an exponential moving average of the weights is what scores (Polyak averaging): the
        # ranking loss overfits within tens of epochs and the average is a cheap ensemble
        ema = float(self.params["weight_average"])
        averages = [tf.Variable(v, trainable=False) for v in tower.trainable_variables]

        @tf.function(reduce_retracing=True)
        def step(users, history_in, targets, negatives_or_ids, log_correction, id_keep):
            with tf.GradientTape() as tape:
                user = tower.user_vectors(users, history_in)
                product, bias = tower.product_vectors(text, id_keep)
                logits = tf.matmul(user, product, transpose_b=True) + bias[None, :]
                if full:
                    loss = ranking_loss(logits, targets, negatives_or_ids)
                else:
                    ids = tf.maximum(negatives_or_ids, 0)
                    neg = tf.einsum("bd,bnd->bn", user, tf.gather(product, ids)) + tf.gather(
                        bias, ids
                    )
                    negative_lse = tf.reduce_logsumexp(neg, axis=1) + log_correction
                    loss = _target_loss(negative_lse, logits, targets)
            grads = tape.gradient(loss, tower.trainable_variables)
            optimizer.apply_gradients(zip(grads, tower.trainable_variables, strict=True))
            for average, variable in zip(averages, tower.trainable_variables, strict=True):
                average.assign(ema * average + (1.0 - ema) * variable)
            return loss

        def use_averages() -> list[np.ndarray]:
            """Swap the weight averages in (returns the raw weights to swap back)."""
            raw = [v.numpy() for v in tower.trainable_variables]
            for average, variable in zip(averages, tower.trainable_variables, strict=True):
                variable.assign(average)
            return raw

        def restore(raw: list[np.ndarray]) -> None:
            for value, variable in zip(raw, tower.trainable_variables, strict=True):
                variable.assign(value)

        active = np.flatnonzero(np.diff(history.indptr) > 0)
        batch = self.params["batch_users"]
        losses: list[float] = []
        best = (-1.0, 0, None)
        evaluations_without_gain = 0
        for epoch in range(1, epochs + 1):
            order = rng.permutation(active)
            total = 0.0
            for start in range(0, len(order), batch):
                users = np.sort(order[start : start + batch])
                rows = history[users].toarray()
                keep = (rng.random(rows.shape) >= self.params["input_dropout"]).astype(np.float32)
                history_in = rows * keep
                targets = rows - history_in
                if liked is not None:
                    targets = targets * liked[users].toarray()
                id_keep = (rng.random(train.n_products) >= self._id_dropout()).astype(np.float32)
                if full:
                    negatives = negative_mask(rows)
                    correction = log_q
                else:
                    negatives = sample_negatives(rng, history, users, n_sampled).astype(np.int32)
                    n_unrated = train.n_products - rows.sum(axis=1).mean()
                    correction = tf.constant(float(np.log(max(n_unrated, 1.0) / n_sampled)))
                total += float(
                    step(
                        users.astype(np.int32), history_in, targets, negatives, correction, id_keep
                    )
                )
            losses.append(total / max(1, -(-len(order) // batch)))
            if validation is not None and epoch % self.params["eval_every"] == 0:
                raw = use_averages()
                self._precompute(tower, history)
                restore(raw)
                from recsys.evaluation.tuning import validation_ndcg

                score = validation_ndcg(self, train, validation)
                _log.info(
                    "ranker epoch %d: loss %.4f, internal validation NDCG@10 %.4f",
                    epoch,
                    losses[-1],
                    score,
                )
                if score > best[0] + 1e-4:
                    best = (score, epoch, [a.numpy() for a in averages])
                    evaluations_without_gain = 0
                else:
                    evaluations_without_gain += 1
                    if evaluations_without_gain >= self.params["patience"]:
                        break
        if validation is not None and best[2] is not None:
            restore(best[2])
            return tower, losses, best[1]
        use_averages()
        return tower, losses, epochs

    def _precompute(self, tower, history) -> None:
        """Exact precomputation: user vectors, product vectors and biases as numpy arrays."""
        from scipy import sparse

        counts = np.asarray(history.sum(axis=1)).ravel()
        normalised = (
            sparse.diags(1.0 / np.sqrt(np.maximum(counts, 1.0))).astype(np.float32) @ history
        )
        h = np.asarray(tower.history_embedding.embeddings.numpy(), dtype=np.float32)
        users = np.asarray(normalised @ h, dtype=np.float32)
        if tower.use_user_embedding:
            users = users + tower.user_embedding.embeddings.numpy()
        product, bias = tower.product_vectors(self.text)
        self.user_vectors = users.astype(np.float32)
        self.product_vectors = np.asarray(product, dtype=np.float32)
        self.product_bias = np.asarray(bias, dtype=np.float32)
        self.tower = tower
        self.history = history

    # --- rating head ----------------------------------------------------------------------

    def _train_rating_head(self, train: RatingData, seed: int) -> None:
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
        model.fit(
            inputs(fit_part),
            fit_part.ratings - self.mu,
            validation_data=(inputs(val_part), val_part.ratings - self.mu),
            epochs=self.params["rating_epochs"],
            batch_size=self.params["rating_batch"],
            callbacks=[stop],
            verbose=0,
            shuffle=True,
        )
        self.rating_model = model

    # --- Recommender ----------------------------------------------------------------------

    def fit(
        self, train: RatingData, *, validation: RatingData | None = None, seed: int = 0
    ) -> FitHistory:
        """Train the ranking head (epochs tuned on a train-internal split) and the rating head."""
        from recsys.model.rank_network import normalise_text

        if len(train) == 0:
            raise DataError("no training ratings")
        started = time.perf_counter()
        self.n_users, self.n_products = train.n_users, train.n_products
        self.text = normalise_text(train.text, train.n_products)
        self.text_dim = self.text.shape[1]
        # no product text at all: ids only (the zero text column contributes nothing)
        self.params["text_path"] = bool(np.any(self.text))
        if not self.params["text_path"]:
            _log.info("ranker: no product text; training on ids only")
        epochs = self.params["epochs"]
        if epochs is None:
            from recsys.evaluation.tuning import internal_rank_split

            fit_part, val_part = internal_rank_split(train)
            if np.any(val_part.ratings >= 4):
                _, _, epochs = self._train_tower(
                    fit_part, self.params["max_epochs"], seed, val_part
                )
            else:
                epochs = self.params["max_epochs"] // 2
            self.params["tuned_epochs"] = int(epochs)
            _log.info("ranker: %d epochs chosen on the train-internal split", epochs)
        tower, losses, _ = self._train_tower(train, int(epochs), seed)
        self._precompute(tower, history_matrix(train))
        if self.params["rating_head"]:
            self._train_rating_head(train, seed)
        seconds = time.perf_counter() - started
        return FitHistory(
            train_loss=losses,
            best_epoch=int(epochs),
            stopped_reason=f"{epochs} epochs (tuned on a train-internal split)"
            if self.params["epochs"] is None
            else f"{epochs} epochs",
            epoch_seconds=[seconds],
        )

    def _id_dropout(self) -> float:
        """Product-id dropout trains the text path; without text it only adds noise."""
        return self.params["id_dropout"] if self.params.get("text_path", True) else 0.0

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
        self, user: int, products: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each history product's exact share of the user's scores of ``products``.

        The user vector is ``sum_j H[j] / sqrt(n)`` over the user's n history products (plus
        the free user embedding when enabled, which no product is credited with), so history
        product j adds ``H[j] . V[i] / sqrt(n)`` to the score of product i.

        Returns:
            (history product indices int64 [h], contributions float32 [h, len(products)]).
        """
        self._check()
        cached = getattr(self, "_history_vectors", None)
        if cached is None or cached[0] is not self.tower:
            embeddings = self.tower.history_embedding.embeddings.numpy()
            cached = (self.tower, np.asarray(embeddings, dtype=np.float32))
            self._history_vectors = cached
        row = self.history[int(user)]
        history = np.asarray(row.indices, dtype=np.int64)
        if not len(history):
            return history, np.zeros((0, len(products)), dtype=np.float32)
        data = np.asarray(row.data, dtype=np.float32)
        weights = data[:, None] / np.sqrt(max(float(data.sum()), 1.0))
        products = np.asarray(products, dtype=np.int64)
        contributions = (cached[1][history] * weights) @ self.product_vectors[products].T
        return history, contributions.astype(np.float32)

    def direct_scores(self, users: np.ndarray) -> np.ndarray:
        """The Keras ranking tower evaluated directly on (users, history rows, text): for tests."""
        self._check()
        users = np.asarray(users, dtype=np.int64)
        rows = self.history[users].toarray()
        return np.asarray(self.tower((users.astype(np.int32), rows, self.text)), dtype=np.float32)

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
        }
        (directory / META_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path) -> RankerRecommender:
        import inspect

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
        tower = model._new_tower(model.n_users, model.n_products, model.text_dim)
        tower.load_weights(directory / "ranking.weights.h5")
        if (directory / "rating_head.keras").exists():
            model.rating_model = keras.saving.load_model(directory / "rating_head.keras")
        model._precompute(tower, sparse.load_npz(directory / "history.npz").tocsr())
        return model
