"""Recommenders around the notebook's Keras networks: fit, predict, exact fast scoring, save/load.

Training is the notebook's: MSE loss, SGD with momentum (mf: 0.1/0.99; deep and hybrid:
0.1/0.9), batch 1024, up to 20 epochs, EarlyStopping(val_loss, patience 6,
restore_best_weights=True), plus TerminateOnNaN: a NaN/inf loss stops training and ``fit``
raises :class:`TrainingDiverged`. Fitting is deterministic per seed
(``keras.utils.set_random_seed`` + ``tf.config.experimental.enable_op_determinism``).
Without a validation set, ``fit`` holds out ``validation_share`` (10%) of the training ratings,
drawn with the seed, for early stopping (the notebook validated on its test split; we never
look at test data while fitting).

Fast exact scoring (``score_users``), what nightly scoring and the ranking evaluation use:

* mf: ``U[users] @ P.T``.
* deep/hybrid: the first Dense layer is linear in [user emb; product emb; text; flag], so
  ``A_u = U_u @ W_u + b1`` is computed once per user and ``B_i = P_i @ W_p + T_i @ W_t +
  f_i w_f`` once per product; the score is ``relu(A_u + B_i) @ w2 + b2`` (dropout is off at
  inference). That is evaluated over fixed-size blocks of users x products in one XLA-compiled
  ``tf.function`` (jit_compile=True), so the [users x products x hidden] tensor never exists
  beyond one block (``block_bytes``, 64 MiB by default) and the kernel compiles once.

Cold products (``score_new_products``, hybrid only): a product never rated in training has no
trained embedding; it is scored with the MEAN product embedding of the training products (the
expected embedding of a product, rather than a zero vector that the network never saw) plus its
text vector and flag 1.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import DataError, RecsysError
from recsys.model.base import META_FILE, FitHistory, RatingData

_log = logging.getLogger(__name__)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter: errors only

NOTEBOOK_DEFAULTS: dict[str, dict[str, Any]] = {
    "mf": {"embedding_dim": 10, "learning_rate": 0.1, "momentum": 0.99},
    "deep": {"embedding_dim": 32, "learning_rate": 0.1, "momentum": 0.9},
    "hybrid": {"embedding_dim": 32, "learning_rate": 0.1, "momentum": 0.9},
}
MODEL_FILE = "model.keras"


class TrainingDiverged(RecsysError):
    """The training loss became NaN or infinite."""


def set_determinism(seed: int) -> None:
    """Seed Python, numpy and TensorFlow and make TensorFlow ops deterministic."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - older TF
        pass


def internal_validation(data: RatingData, share: float, seed: int) -> tuple[RatingData, RatingData]:
    """Split ``share`` of the ratings off ``data`` (seeded) for early stopping."""
    rng = np.random.default_rng(seed + 7919)
    mask = np.zeros(len(data), dtype=bool)
    n_val = int(round(share * len(data)))
    if n_val:
        mask[rng.choice(len(data), n_val, replace=False)] = True
    return data.subset(~mask), data.subset(mask)


class _EpochLog:
    """Keras callback factory: one progress line per epoch with train and validation loss."""

    @staticmethod
    def make(name: str, n_ratings: int, epochs: int, sink: list[float]):
        import keras

        class EpochLog(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self._start = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                logs = logs or {}
                seconds = time.perf_counter() - self._start
                sink.append(seconds)
                _log.info(
                    "%s epoch %d/%d: loss %.4f, val_loss %s (%.1f s, %.0f ratings/s)",
                    name,
                    epoch + 1,
                    epochs,
                    float(logs.get("loss", float("nan"))),
                    f"{logs['val_loss']:.4f}" if "val_loss" in logs else "-",
                    seconds,
                    n_ratings / max(seconds, 1e-9),
                )

        return EpochLog()


class KerasRecommender:
    """One of the notebook's networks (``mf``, ``deep``, ``hybrid``) as a Recommender.

    Args:
        kind: mf | deep | hybrid.
        epochs: maximum epochs (20).
        batch_size: 1024.
        learning_rate: SGD learning rate (0.1).
        momentum: SGD momentum (0.99 for mf, 0.9 otherwise).
        embedding_dim: K (10 for mf, 32 otherwise).
        hidden_units: width of the Dense layer (1024); tests use fewer.
        dropout: 0.2.
        patience: early-stopping patience (6).
        validation_share: share held out for early stopping when ``fit`` gets no validation.
        block_bytes: memory budget of one scoring block.
    """

    def __init__(
        self,
        kind: str = "hybrid",
        *,
        epochs: int = 20,
        batch_size: int = 1024,
        learning_rate: float | None = None,
        momentum: float | None = None,
        embedding_dim: int | None = None,
        hidden_units: int = 1024,
        dropout: float = 0.2,
        patience: int = 6,
        validation_share: float = 0.1,
        block_bytes: int = 64 << 20,
    ) -> None:
        if kind not in NOTEBOOK_DEFAULTS:
            raise RecsysError(f"unknown Keras model {kind!r} (mf, deep or hybrid)")
        defaults = NOTEBOOK_DEFAULTS[kind]
        self.name = kind
        self.params: dict[str, Any] = {
            "epochs": int(epochs),
            "batch_size": int(batch_size),
            "learning_rate": float(
                learning_rate if learning_rate is not None else defaults["learning_rate"]
            ),
            "momentum": float(momentum if momentum is not None else defaults["momentum"]),
            "embedding_dim": int(embedding_dim or defaults["embedding_dim"]),
            "hidden_units": int(hidden_units),
            "dropout": float(dropout),
            "patience": int(patience),
            "validation_share": float(validation_share),
        }
        if self.params["epochs"] < 1 or self.params["batch_size"] < 1:
            raise RecsysError("epochs and batch size must be at least 1")
        if self.params["embedding_dim"] < 1 or self.params["hidden_units"] < 1:
            raise RecsysError("embedding dim and hidden units must be at least 1")
        self.block_bytes = int(block_bytes)
        self.model = None
        self.network_config: dict[str, Any] | None = None
        self._parts: dict[str, np.ndarray] | None = None
        self._kernel = None

    # --- training --------------------------------------------------------------------------

    def _network(self, data: RatingData):
        from recsys.model.network import NetworkConfig, build_model

        text_dim = 0
        if self.name == "hybrid":
            if data.text is None or data.has_text is None or data.text.shape[1] == 0:
                raise DataError(
                    "the hybrid model needs product text vectors and there is no current feature "
                    "set; build one with `recsys features build` (or train --model deep)"
                )
            text_dim = int(data.text.shape[1])
        config = NetworkConfig(
            kind=self.name,
            n_users=data.n_users,
            n_products=data.n_products,
            embedding_dim=self.params["embedding_dim"],
            hidden_units=self.params["hidden_units"],
            dropout=self.params["dropout"],
            text_dim=text_dim,
        )
        model = build_model(config)
        if self.name == "hybrid":
            model.get_layer("product_text").set_table(data.text, data.has_text)
        return model, config

    def fit(
        self, train: RatingData, *, validation: RatingData | None = None, seed: int = 0
    ) -> FitHistory:
        """Train the network; deterministic per seed. Raises TrainingDiverged on NaN loss."""
        import keras

        if len(train) == 0:
            raise DataError("no training ratings")
        set_determinism(seed)
        if validation is None and self.params["validation_share"] > 0 and len(train) >= 20:
            train, validation = internal_validation(train, self.params["validation_share"], seed)
        model, config = self._network(train)
        model.compile(
            optimizer=keras.optimizers.SGD(
                learning_rate=self.params["learning_rate"], momentum=self.params["momentum"]
            ),
            loss="mse",
        )
        epoch_seconds: list[float] = []
        callbacks = [
            keras.callbacks.TerminateOnNaN(),
            _EpochLog.make(self.name, len(train), self.params["epochs"], epoch_seconds),
        ]
        has_val = validation is not None and len(validation) > 0
        stopper = None
        if has_val:
            stopper = keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=self.params["patience"], restore_best_weights=True
            )
            callbacks.append(stopper)
        fit_args: dict[str, Any] = {}
        if has_val:
            fit_args["validation_data"] = (
                self._inputs(validation.users, validation.products),
                validation.ratings,
            )
        history = model.fit(
            self._inputs(train.users, train.products),
            train.ratings,
            batch_size=self.params["batch_size"],
            epochs=self.params["epochs"],
            shuffle=True,
            verbose=0,
            callbacks=callbacks,
            **fit_args,
        )
        train_loss = [float(x) for x in history.history.get("loss", [])]
        val_loss = [float(x) for x in history.history.get("val_loss", [])]
        bad = [i for i, x in enumerate(train_loss + val_loss) if not np.isfinite(x)]
        if bad or not train_loss:
            epoch = next(
                (i + 1 for i, x in enumerate(train_loss) if not np.isfinite(x)), len(train_loss)
            )
            raise TrainingDiverged(
                f"{self.name} training loss became NaN/inf in epoch {epoch}; training stopped "
                f"(learning rate {self.params['learning_rate']} too high for this data?)"
            )
        best_epoch = int(np.argmin(val_loss)) + 1 if val_loss else len(train_loss)
        stopped = (
            "early stopping" if stopper is not None and stopper.stopped_epoch > 0 else "max epochs"
        )
        self.model = model
        self.network_config = config.to_dict()
        self._reset_cache()
        return FitHistory(train_loss, val_loss, best_epoch, stopped, epoch_seconds=epoch_seconds)

    @staticmethod
    def _inputs(users: np.ndarray, products: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "user": np.asarray(users, dtype=np.int32),
            "product": np.asarray(products, dtype=np.int32),
        }

    # --- prediction ------------------------------------------------------------------------

    def _require_model(self):
        if self.model is None:
            raise RecsysError(f"the {self.name} model is not trained")
        return self.model

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        """Predicted ratings through the Keras model itself (unclipped, float32)."""
        model = self._require_model()
        if len(users) == 0:
            return np.zeros(0, dtype=np.float32)
        out = model.predict(self._inputs(users, products), batch_size=8192, verbose=0)
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def set_text(self, text: np.ndarray, has_text: np.ndarray) -> None:
        """Replace the hybrid's product text table (same shape); the fast scorer follows."""
        if self.name != "hybrid":
            raise RecsysError("only the hybrid model has product text")
        self._require_model().get_layer("product_text").set_table(text, has_text)
        self._reset_cache()

    def _reset_cache(self) -> None:
        self._parts = None

    def _precompute(self) -> dict[str, np.ndarray]:
        """Per-user and per-product parts of the first layer (see the module docstring)."""
        if self._parts is not None:
            return self._parts
        model = self._require_model()
        user_emb = model.get_layer("user_embedding").get_weights()[0].astype(np.float32)
        product_emb = model.get_layer("product_embedding").get_weights()[0].astype(np.float32)
        if self.name == "mf":
            self._parts = {"A": user_emb, "B": product_emb}
            return self._parts
        kernel, bias = (w.astype(np.float32) for w in model.get_layer("hidden").get_weights())
        w2, b2 = (w.astype(np.float32) for w in model.get_layer("output").get_weights())
        k = user_emb.shape[1]
        user_part = user_emb @ kernel[:k] + bias
        product_part = product_emb @ kernel[k : 2 * k]
        text_kernel = None
        if self.name == "hybrid":
            table = model.get_layer("product_text").get_weights()[0].astype(np.float32)
            text_kernel = kernel[2 * k :]
            product_part = product_part + table @ text_kernel
        self._parts = {
            "A": user_part.astype(np.float32),
            "B": product_part.astype(np.float32),
            "w2": w2.reshape(-1),
            "b2": np.float32(b2.reshape(-1)[0]),
            "product_kernel": kernel[k : 2 * k],
            "mean_product": product_emb.mean(axis=0),
        }
        if text_kernel is not None:
            self._parts["text_kernel"] = text_kernel
        return self._parts

    def _block_kernel(self):
        if self._kernel is None:
            import tensorflow as tf

            @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
            def block(a, b, w2, b2):
                hidden = tf.nn.relu(a[:, None, :] + b[None, :, :])
                return tf.tensordot(hidden, w2, axes=[[2], [0]]) + b2

            self._kernel = block
        return self._kernel

    def _score_parts(self, user_part: np.ndarray, product_part: np.ndarray) -> np.ndarray:
        """relu(A_u + B_i) @ w2 + b2 for all pairs, in fixed-size XLA blocks."""
        parts = self._precompute()
        n_users, hidden = user_part.shape
        n_products = product_part.shape[0]
        out = np.empty((n_users, n_products), dtype=np.float32)
        if n_users == 0 or n_products == 0:
            return out
        block = self._block_kernel()
        budget = max(1, self.block_bytes // (4 * hidden))  # user x product pairs per block
        # square-ish blocks (64 users x 256 products at the default budget and 1024 units)
        # reuse each loaded row of B across many users, which scores more pairs per second
        # than long thin blocks (8 x 2048)
        block_products = int(min(n_products, max(64, budget // 64)))
        block_users = int(max(1, min(n_users, budget // block_products)))
        w2 = parts["w2"]
        b2 = parts["b2"]
        for u0 in range(0, n_users, block_users):
            a = user_part[u0 : u0 + block_users]
            n_a = len(a)
            if n_a < block_users:  # pad to the compiled shape
                a = np.concatenate([a, np.zeros((block_users - n_a, hidden), np.float32)])
            for p0 in range(0, n_products, block_products):
                b = product_part[p0 : p0 + block_products]
                n_b = len(b)
                if n_b < block_products:
                    b = np.concatenate([b, np.zeros((block_products - n_b, hidden), np.float32)])
                scores = block(a, b, w2, b2).numpy()
                out[u0 : u0 + n_a, p0 : p0 + n_b] = scores[:n_a, :n_b]
        return out

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """Exact scores [len(users), n_products] (equal to ``predict`` up to float32 rounding)."""
        parts = self._precompute()
        users = np.asarray(users, dtype=np.int64)
        if self.name == "mf":
            return (parts["A"][users] @ parts["B"].T).astype(np.float32)
        return self._score_parts(parts["A"][users], parts["B"])

    def score_new_products(self, users: np.ndarray, text: np.ndarray) -> np.ndarray:
        """Hybrid only: scores of products never rated in training, through their text vector.

        The product embedding is the mean trained product embedding; the flag is 1.
        """
        if self.name != "hybrid":
            raise RecsysError(f"the {self.name} model cannot score new products (no text input)")
        parts = self._precompute()
        text = np.asarray(text, dtype=np.float32)
        text_kernel = parts["text_kernel"]
        if text.ndim != 2 or text.shape[1] != text_kernel.shape[0] - 1:
            raise RecsysError(
                f"new product vectors have dimension {text.shape[-1]}, the model expects "
                f"{text_kernel.shape[0] - 1} (a different feature set?)"
            )
        base = parts["mean_product"] @ parts["product_kernel"] + text_kernel[-1]
        product_part = (text @ text_kernel[:-1] + base).astype(np.float32)
        users = np.asarray(users, dtype=np.int64)
        return self._score_parts(parts["A"][users], product_part)

    # --- persistence -----------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """``model.keras`` and ``recommender.json`` (name, params, network config)."""
        model = self._require_model()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model.save(directory / MODEL_FILE)
        meta = {"model": self.name, "params": self.params, "network": self.network_config}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: Path) -> KerasRecommender:
        import keras

        import recsys.model.network  # noqa: F401  (registers the custom layer)

        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        recommender = cls(meta["model"], **meta["params"])
        recommender.model = keras.saving.load_model(directory / MODEL_FILE, compile=False)
        recommender.network_config = meta.get("network")
        return recommender


def clone_params(recommender: KerasRecommender, **changes: Any) -> KerasRecommender:
    """A fresh, untrained recommender with the same parameters (and ``changes``)."""
    params = {**recommender.params, **changes}
    return KerasRecommender(recommender.name, **params)


__all__ = ["NOTEBOOK_DEFAULTS", "KerasRecommender", "TrainingDiverged", "clone_params"]
