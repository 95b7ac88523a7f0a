"""The ranking hybrid's Keras networks (pure builders, no training here).

Two heads on the same inputs (user index, product index, the product's text vector):

* :class:`RankingTower` (ranking head), a two-tower model whose score is a dot product::

      user vector     u = E[user] + (x_u / |x_u|^0.5) @ H        (SVD++-style: the user's
                                                                  own embedding plus the
                                                                  products they rated)
      product vector  v = P[product] + W text[product]           (id embedding + text projection)
      score           s(u, i) = u . v_i + b_i

  ``x_u`` is the user's binary row of training ratings. Because ``H`` maps rated products to the
  user side, the model captures item-item structure the way EASE does, while ``W text`` lets a
  product that was never rated be scored from its text alone (:meth:`product_vectors` with the
  id part dropped).
* :func:`build_rating_head`, the rating head: ``mu + b_u + b_i + Dense(1)(relu(Dense(h)([e_u;
  e_i; text])))``, the notebook hybrid's Dense head on the same three inputs, with its own
  embeddings so the ranking and the rating objectives do not pull one set of embeddings two ways.

Everything is registered for Keras serialisation with ``get_config``.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

CATALOGUE_CHUNK = 65536
"""Products per step where the tower computes the whole catalogue's vectors or scores."""


@keras.saving.register_keras_serializable(package="recsys")
class RankingTower(keras.Model):
    """Ranking head: ``score = (E[u] + x_u H) . (P[i] + W t_i) + b_i``.

    Args:
        n_users, n_products, text_dim: sizes.
        dim: embedding width.
        use_user_embedding: include the free per-user embedding E (else the user vector is the
            history part only, which also serves users whose embedding never trained).
        user_rows: rows of E (None: ``n_users`` with ``use_user_embedding``, else 1: an unused
            table is kept as one row, not one per user; weights saved with a full unused table
            load with ``user_rows=n_users``).
    """

    def __init__(
        self,
        n_users: int,
        n_products: int,
        text_dim: int,
        dim: int = 64,
        use_user_embedding: bool = True,
        user_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.n_users = int(n_users)
        self.n_products = int(n_products)
        self.text_dim = int(text_dim)
        self.dim = int(dim)
        self.use_user_embedding = bool(use_user_embedding)
        if user_rows is None:
            user_rows = self.n_users if self.use_user_embedding else 1
        self.user_rows = int(user_rows)
        if self.use_user_embedding and self.user_rows != self.n_users:
            raise ValueError("a tower with the per-user embedding needs one row per user")
        init = keras.initializers.RandomNormal(stddev=0.05)
        self.user_embedding = keras.layers.Embedding(
            self.user_rows, self.dim, embeddings_initializer=init, name="user_embedding"
        )
        self.history_embedding = keras.layers.Embedding(
            self.n_products, self.dim, embeddings_initializer=init, name="history_embedding"
        )
        self.product_embedding = keras.layers.Embedding(
            self.n_products, self.dim, embeddings_initializer=init, name="product_embedding"
        )
        self.text_projection = keras.layers.Dense(self.dim, use_bias=False, name="text_projection")
        self.product_bias = keras.layers.Embedding(
            self.n_products, 1, embeddings_initializer="zeros", name="product_bias"
        )
        self.text_bias = keras.layers.Dense(1, use_bias=False, name="text_bias")
        self.user_embedding.build((None,))
        self.user_embedding.trainable = self.use_user_embedding
        self.history_embedding.build((None,))
        self.product_embedding.build((None,))
        self.product_bias.build((None,))
        self.text_projection.build((None, max(1, self.text_dim)))
        self.text_bias.build((None, max(1, self.text_dim)))
        self.built = True  # every weight exists now: save_weights/load_weights work unfitted

    def user_vectors(self, users: Any, history: Any) -> Any:
        """``[batch, dim]`` from user indices and their (dense, binary) history rows."""
        count = ops.sum(history, axis=1, keepdims=True)
        pooled = ops.matmul(history, self.history_embedding.embeddings) / ops.sqrt(
            ops.maximum(count, 1.0)
        )
        if self.use_user_embedding:
            pooled = pooled + self.user_embedding(users)
        return pooled

    def pooled_user_vectors(self, users: Any, items: Any, rows: Any, n_rows: Any) -> Any:
        """``[n_rows, dim]`` from sparse histories: the same vectors as :meth:`user_vectors`.

        Args:
            users: ``[n_rows]`` user indices (for the free user embedding).
            items: flat product indices of every (row, product) history entry.
            rows: the batch row of each entry (``0 <= rows < n_rows``).
            n_rows: the number of rows.

        The pooling is a ``segment_sum`` of the rated products' history embeddings, so the
        cost grows with the number of ratings in the batch, not with the catalogue.
        """
        import tensorflow as tf

        gathered = tf.gather(self.history_embedding.embeddings, items)
        pooled = tf.math.unsorted_segment_sum(gathered, rows, n_rows)
        count = tf.math.unsorted_segment_sum(tf.ones_like(rows, dtype=pooled.dtype), rows, n_rows)
        pooled = pooled / tf.sqrt(tf.maximum(count, 1.0))[:, None]
        if self.use_user_embedding:
            pooled = pooled + self.user_embedding(users)
        return pooled

    def gathered_product_vectors(self, items: Any, text: Any, id_keep: Any | None = None) -> Any:
        """Vectors and biases of the products ``items`` only (``text``: their text rows)."""
        import tensorflow as tf

        ids = tf.gather(self.product_embedding.embeddings, items)
        bias = tf.gather(self.product_bias.embeddings, items)[:, 0]
        if id_keep is not None:
            ids = ids * id_keep[:, None]
            bias = bias * id_keep
        return ids + self.text_projection(text), bias + self.text_bias(text)[:, 0]

    def product_vectors(
        self, text: Any, id_keep: Any | None = None, weight: Any | None = None
    ) -> Any:
        """``([n_products, dim], [n_products])`` for the catalogue; ``id_keep`` (0/1 per product)
        drops the id embedding and id bias (product-id dropout). ``weight`` (a function from
        each of this tower's variables to the value to use instead, e.g. an average of it):
        the same computation on those values, the tower's own weights left as they are."""
        if weight is None:
            ids = self.product_embedding.embeddings
            bias = self.product_bias.embeddings[:, 0]
            projected = self.text_projection(text)
            text_bias = self.text_bias(text)
        else:  # Dense without bias or activation: the layer's own matmul
            ids = weight(self.product_embedding.embeddings)
            bias = weight(self.product_bias.embeddings)[:, 0]
            projected = ops.matmul(text, weight(self.text_projection.kernel))
            text_bias = ops.matmul(text, weight(self.text_bias.kernel))
        if id_keep is not None:
            ids = ids * id_keep[:, None]
            bias = bias * id_keep
        vectors = ids + projected
        return vectors, bias + text_bias[:, 0]

    def _catalogue_chunks(self, text: np.ndarray, chunk: int) -> Any:
        """``(start, stop, vectors, biases)`` of products ``start:stop``, ``chunk`` at a time,
        through :meth:`gathered_product_vectors` (the same layers as :meth:`product_vectors`)."""
        import tensorflow as tf

        for start in range(0, self.n_products, chunk):
            stop = min(self.n_products, start + chunk)
            items = tf.range(start, stop, dtype=tf.int32)
            yield (start, stop, *self.gathered_product_vectors(items, text[start:stop]))

    def catalogue_vectors(
        self, text: np.ndarray, chunk: int = CATALOGUE_CHUNK
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`product_vectors` of the whole catalogue as float32 numpy arrays, computed
        ``chunk`` products at a time, so the tower's intermediates are ``[chunk, dim]`` and not
        the catalogue's size."""
        vectors = np.empty((self.n_products, self.dim), dtype=np.float32)
        bias = np.empty(self.n_products, dtype=np.float32)
        for start, stop, part, part_bias in self._catalogue_chunks(text, chunk):
            vectors[start:stop] = np.asarray(part)
            bias[start:stop] = np.asarray(part_bias)
        return vectors, bias

    def direct_scores(
        self, users: np.ndarray, history: np.ndarray, text: np.ndarray, chunk: int = CATALOGUE_CHUNK
    ) -> np.ndarray:
        """What :meth:`call` returns, float32 ``[len(users), n_products]``, computed ``chunk``
        products at a time: the same layers, without catalogue-sized intermediates."""
        user = self.user_vectors(users, history)
        out = np.empty((len(users), self.n_products), dtype=np.float32)
        for start, stop, product, bias in self._catalogue_chunks(text, chunk):
            out[:, start:stop] = np.asarray(
                ops.matmul(user, ops.transpose(product)) + bias[None, :]
            )
        return out

    def text_only_vectors(self, text: Any) -> Any:
        """Product vectors and biases of products known only by their text (cold products)."""
        return self.text_projection(text), self.text_bias(text)[:, 0]

    def call(self, inputs: Any) -> Any:
        """Scores ``[batch, n_products]`` from ``(users, history, text)``: direct evaluation."""
        users, history, text = inputs
        user = self.user_vectors(users, history)
        product, bias = self.product_vectors(text)
        return ops.matmul(user, ops.transpose(product)) + bias[None, :]

    def get_config(self) -> dict[str, Any]:
        return {
            "n_users": self.n_users,
            "n_products": self.n_products,
            "text_dim": self.text_dim,
            "dim": self.dim,
            "use_user_embedding": self.use_user_embedding,
            "user_rows": self.user_rows,
            "name": self.name,
        }


def build_rating_head(
    n_users: int,
    n_products: int,
    text_dim: int,
    *,
    dim: int = 32,
    hidden: int = 64,
    dropout: float = 0.2,
    l2: float = 1e-5,
    tower_dim: int = 0,
) -> keras.Model:
    """The rating head: inputs ``user`` (int), ``product`` (int), ``text`` ([dim]); output the
    predicted rating minus the global mean.

    With ``tower_dim`` > 0 the ranking tower's user and product vectors join the Dense layer's
    inputs through two frozen lookups (``r_tower_user``, ``r_tower_product``; fill them with
    ``set_weights`` after building): the user vector pools the products the user rated, the
    implicit feedback that SVD++ adds to a rating model."""
    reg = keras.regularizers.L2(l2)
    user = keras.Input(shape=(), dtype="int32", name="user")
    product = keras.Input(shape=(), dtype="int32", name="product")
    text = keras.Input(shape=(max(1, text_dim),), dtype="float32", name="text")
    user_vec = keras.layers.Embedding(n_users, dim, embeddings_regularizer=reg, name="r_user")(user)
    product_vec = keras.layers.Embedding(
        n_products, dim, embeddings_regularizer=reg, name="r_product"
    )(product)
    user_bias = keras.layers.Embedding(
        n_users, 1, embeddings_initializer="zeros", embeddings_regularizer=reg, name="r_user_bias"
    )(user)
    product_bias = keras.layers.Embedding(
        n_products,
        1,
        embeddings_initializer="zeros",
        embeddings_regularizer=reg,
        name="r_product_bias",
    )(product)
    parts = [user_vec, product_vec, text]
    if tower_dim > 0:
        parts.append(
            keras.layers.Embedding(n_users, tower_dim, trainable=False, name="r_tower_user")(user)
        )
        parts.append(
            keras.layers.Embedding(n_products, tower_dim, trainable=False, name="r_tower_product")(
                product
            )
        )
    joined = keras.layers.Concatenate(name="r_joined")(parts)
    hidden_out = keras.layers.Dense(
        hidden, activation="relu", kernel_regularizer=reg, name="r_hidden"
    )(joined)
    hidden_out = keras.layers.Dropout(dropout, name="r_dropout")(hidden_out)
    interaction = keras.layers.Dense(1, name="r_output")(hidden_out)
    rating = keras.layers.Add(name="r_sum")([interaction, user_bias, product_bias])
    rating = keras.layers.Reshape((), name="r_rating")(rating)
    return keras.Model([user, product, text], rating, name="rating_head")


def normalise_text(text: np.ndarray | None, n_products: int) -> np.ndarray:
    """L2-normalised text rows (zero rows stay zero); a zero column when there is no text."""
    if text is None or text.shape[1] == 0:
        return np.zeros((n_products, 1), dtype=np.float32)
    norms = np.linalg.norm(text, axis=1, keepdims=True)
    return (text / np.maximum(norms, 1e-12)).astype(np.float32)
