"""The notebook's Keras networks, built from a plain config: ``build_model(config)`` is pure.

* ``mf``: dot product of a user and a product embedding (K=10).
* ``deep``: user and product embeddings (K=32) concatenated, Dense(1024, relu), Dropout(0.2),
  Dense(1).
* ``hybrid``: ``deep`` with the product's text vector and a has-text flag concatenated before the
  Dense layer. The text table lives inside the model as a non-trainable lookup layer
  (:class:`ProductText`), so the model's inputs stay (user index, product index) and training
  never materialises a [ratings x dim] matrix; the table is saved with the model.

Layer names are fixed (``user_embedding``, ``product_embedding``, ``product_text``, ``hidden``,
``output``) because the fast scorer (``recsys.model.keras_models``) reads their weights.
The first Dense layer's kernel rows are ordered [user embedding; product embedding; text; flag].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

NETWORKS = ("mf", "deep", "hybrid")


@dataclass(frozen=True)
class NetworkConfig:
    """Shape of one network; defaults are the notebook's."""

    kind: str
    n_users: int
    n_products: int
    embedding_dim: int | None = None
    """K: 10 for mf, 32 for deep/hybrid when None."""
    hidden_units: int = 1024
    dropout: float = 0.2
    text_dim: int = 0
    """Width of the product text vectors (hybrid only)."""

    @property
    def k(self) -> int:
        if self.embedding_dim:
            return int(self.embedding_dim)
        return 10 if self.kind == "mf" else 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@keras.saving.register_keras_serializable(package="recsys")
class ProductText(keras.layers.Layer):
    """Looks up a product's text vector and has-text flag: a frozen [n_products, dim + 1] table.

    The last column is the flag (1.0 where the product has a text vector). The table is a
    non-trainable weight, so it is saved in the .keras file and can be replaced with
    :meth:`set_table` (e.g. to see that predictions depend on it).
    """

    def __init__(self, n_products: int, text_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_products = int(n_products)
        self.text_dim = int(text_dim)

    def build(self, input_shape: Any) -> None:
        self.table = self.add_weight(
            name="table",
            shape=(self.n_products, self.text_dim + 1),
            initializer="zeros",
            trainable=False,
        )

    def call(self, products: Any) -> Any:
        return ops.take(self.table, ops.cast(products, "int32"), axis=0)

    def set_table(self, text: np.ndarray, has_text: np.ndarray) -> None:
        table = np.concatenate(
            [np.asarray(text, dtype=np.float32), np.asarray(has_text, dtype=np.float32)[:, None]],
            axis=1,
        )
        self.table.assign(table)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"n_products": self.n_products, "text_dim": self.text_dim})
        return config


def build_model(config: NetworkConfig) -> keras.Model:
    """The network for ``config`` (uncompiled). Inputs ``user`` and ``product``: int32 [batch]."""
    if config.kind not in NETWORKS:
        raise ValueError(f"unknown network {config.kind!r} (one of {', '.join(NETWORKS)})")
    user = keras.Input(shape=(), dtype="int32", name="user")
    product = keras.Input(shape=(), dtype="int32", name="product")
    k = config.k
    user_vec = keras.layers.Embedding(config.n_users, k, name="user_embedding")(user)
    product_vec = keras.layers.Embedding(config.n_products, k, name="product_embedding")(product)
    if config.kind == "mf":
        rating = keras.layers.Dot(axes=1, name="output")([user_vec, product_vec])
        return keras.Model([user, product], rating, name="mf")
    parts = [user_vec, product_vec]
    if config.kind == "hybrid":
        if config.text_dim <= 0:
            raise ValueError("the hybrid network needs text_dim > 0")
        parts.append(ProductText(config.n_products, config.text_dim, name="product_text")(product))
    joined = keras.layers.Concatenate(name="joined")(parts)
    hidden = keras.layers.Dense(config.hidden_units, activation="relu", name="hidden")(joined)
    hidden = keras.layers.Dropout(config.dropout, name="dropout")(hidden)
    rating = keras.layers.Dense(1, name="output")(hidden)
    return keras.Model([user, product], rating, name=config.kind)
