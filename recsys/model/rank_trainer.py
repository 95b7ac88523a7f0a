"""The ranker's training loop: :class:`RankerTrainer`, one object per tower fit, in named steps.

A fit is ``epochs`` passes over the users who rated something. Each batch of users goes through

1. :func:`make_batch` (numpy): the users' CSR history rows are split at random into INPUT
   entries (the history the user vector pools) and TARGET entries (the rest, only products
   rated >= the target threshold), and the NEGATIVES are chosen: every product (full softmax,
   small catalogues) or ``n_sampled`` products drawn uniformly for the whole batch (sampled
   softmax). A negative the user rated never counts (``valid`` is 0 there).
2. :func:`sparse_loss` (TensorFlow): the user vectors are a ``segment_sum`` of the input
   entries' history embeddings, only the target and negative products' vectors are gathered,
   and the loss is ``softplus(logsumexp_{valid negatives} s + log(n_unrated / n_valid) - s_t)``
   averaged over each user's targets, then over users with a target. The correction is 0 in
   full mode (every unrated product is a valid negative). :func:`dense_loss` is the same
   objective on dense ``[batch, n_products]`` rows, kept as the reference the tests compare.
3. the update: AdamW. In full mode the Keras AdamW updates every weight each step; in sampled
   mode :class:`LazyAdamW` updates only the rows of the embedding tables that the batch
   touched (the dense text projection every step), so the step cost does not grow with the
   catalogue. Both keep an exponential moving average of the weights (the weights that score);
   the lazy one brings a row's average up to date only when the row changes, which gives the
   same average as updating every row every step, because an untouched row keeps its value.
   The sampled mode trains with the ROW STEP (:meth:`RankerTrainer._compile_row_step`): each
   table's touched rows (:func:`row_index`, computed in numpy) are gathered once, each
   product is projected once however many targets and negatives name it
   (:func:`row_loss_parts`), and the per-row gradients go to :meth:`LazyAdamW.apply_rows`;
   the same loss and update as the reference step (:func:`sparse_loss` with the tape's
   gradients, which full mode uses), with fewer operations per step.
4. :meth:`RankerTrainer.check_stop` after every batch: ``should_stop()`` true raises
   :class:`~recsys.errors.TrainingInterrupted` within the batch, not at the end of the epoch.

The epoch search's internal validation (:meth:`RankerTrainer.validate`) pools only the sampled
validation users and scores them with one matmul per batch (:class:`TowerScores`): the NDCG@10
of the model precomputed with the averaged weights, without precomputing every user.

Progress goes to a :mod:`recsys.progress` sink: one phase per epoch, in ratings, with the
epoch, the running loss and the last internal-validation NDCG@10.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.errors import TrainingInterrupted
from recsys.model.base import RatingData
from recsys.progress import NO_PROGRESS, ProgressSink

_log = logging.getLogger(__name__)

AVERAGE_CHUNK_BYTES = 16 << 20
"""Bytes of a table's rows per piece where :meth:`LazyAdamW.averages` brings them up to date."""
SPILL_BYTES = 64 << 20
"""Best-epoch weights larger than this wait on disk during the epoch search
(:class:`SpilledWeights`), not in memory beside the optimizer's state."""


def rating_matrix(data: RatingData, threshold: float | None):
    """CSR user x product matrix: 1 for a rated product, 2 where the rating is a target.

    ``threshold`` None marks every rated product a target.
    """
    from scipy import sparse

    liked = (
        np.ones(len(data), dtype=np.float32)
        if threshold is None
        else (data.ratings >= threshold).astype(np.float32)
    )
    matrix = sparse.csr_matrix(
        (1.0 + liked, (data.users, data.products)), shape=(data.n_users, data.n_products)
    )
    matrix.sum_duplicates()
    matrix.data = np.where(matrix.data >= 2.0, 2.0, 1.0).astype(np.float32)
    matrix.sort_indices()
    return matrix


@dataclass(frozen=True)
class Batch:
    """One training step's inputs, sparse (see the module docstring)."""

    users: np.ndarray
    """int32 ``[B]``: the batch's users."""
    input_items: np.ndarray
    """int32: product of each input entry."""
    input_rows: np.ndarray
    """int32: batch row of each input entry."""
    target_items: np.ndarray
    target_rows: np.ndarray
    negatives: np.ndarray
    """int32 ``[N]``: the candidate negatives (every product in full mode)."""
    valid: np.ndarray
    """float32 ``[B, N]``: 1 where the negative is unrated by the row's user."""
    correction: np.ndarray
    """float32 ``[B]``: ``log(n_unrated / n_valid)`` (0 in full mode)."""
    id_keep: np.ndarray
    """float32 ``[n_products]``: 0 for products whose id embedding is dropped this step."""
    n_ratings: int
    """Ratings of the batch's users (for the progress rate)."""


def make_batch(
    rng: np.random.Generator,
    ratings,
    users: np.ndarray,
    *,
    input_dropout: float,
    id_dropout: float,
    n_sampled: int | None,
) -> Batch:
    """The :class:`Batch` of ``users`` from :func:`rating_matrix` rows.

    ``n_sampled`` None: full softmax (every product a candidate negative); otherwise that many
    uniform draws over the catalogue (duplicates dropped), shared by the batch.
    """
    n_products = ratings.shape[1]
    users = np.asarray(users, dtype=np.int64)
    rows = ratings[users]
    counts = np.diff(rows.indptr)
    row_of = np.repeat(np.arange(len(users), dtype=np.int32), counts)
    items = rows.indices.astype(np.int32)
    is_input = rng.random(len(items)) >= input_dropout
    is_target = ~is_input & (rows.data >= 2.0)
    if n_sampled is None:
        negatives = np.arange(n_products, dtype=np.int32)
        valid = np.ones((len(users), n_products), dtype=np.float32)
        valid[row_of, items] = 0.0
        correction = np.zeros(len(users), dtype=np.float32)
    else:
        negatives = np.unique(rng.integers(0, n_products, size=n_sampled)).astype(np.int32)
        position = np.full(n_products, -1, dtype=np.int64)
        position[negatives] = np.arange(len(negatives))
        valid = np.ones((len(users), len(negatives)), dtype=np.float32)
        hit = position[items]
        valid[row_of[hit >= 0], hit[hit >= 0]] = 0.0
        n_valid = valid.sum(axis=1)
        n_unrated = n_products - counts
        correction = np.log(np.maximum(n_unrated, 1) / np.maximum(n_valid, 1.0)).astype(np.float32)
    id_keep = (rng.random(n_products) >= id_dropout).astype(np.float32)
    return Batch(
        users=users.astype(np.int32),
        input_items=items[is_input],
        input_rows=row_of[is_input],
        target_items=items[is_target],
        target_rows=row_of[is_target],
        negatives=negatives,
        valid=valid,
        correction=correction,
        id_keep=id_keep,
        n_ratings=int(len(items)),
    )


def _per_user_parts(lse, target_logits, target_rows, n_rows):
    """(sum over users with a target of their mean target loss, number of such users)."""
    import tensorflow as tf

    per_target = tf.nn.softplus(tf.gather(lse, target_rows) - target_logits)
    n_targets = tf.math.unsorted_segment_sum(tf.ones_like(per_target), target_rows, n_rows)
    per_user = tf.math.unsorted_segment_sum(per_target, target_rows, n_rows) / tf.maximum(
        n_targets, 1.0
    )
    has = tf.cast(n_targets > 0, tf.float32)
    return tf.reduce_sum(per_user * has), tf.reduce_sum(has)


def sparse_loss(
    tower, text, users, in_items, in_rows, t_items, t_rows, negatives, valid, corr, keep
):
    """The batch loss computed sparsely (segment pooling, gathered products): see the module."""
    import tensorflow as tf

    total, n_users = sparse_loss_parts(
        tower, text, users, in_items, in_rows, t_items, t_rows, negatives, valid, corr, keep
    )
    return total / tf.maximum(n_users, 1.0)


def sparse_loss_parts(
    tower, text, users, in_items, in_rows, t_items, t_rows, negatives, valid, corr, keep
):
    """:func:`sparse_loss` as (sum of the per-user losses, users with a target): the parts a
    data-parallel step adds up over the workers' shards of one batch before dividing."""
    import tensorflow as tf

    n_rows = tf.shape(users)[0]
    user = tower.pooled_user_vectors(users, in_items, in_rows, n_rows)
    t_vec, t_bias = tower.gathered_product_vectors(
        t_items, tf.gather(text, t_items), tf.gather(keep, t_items)
    )
    target_logits = tf.reduce_sum(tf.gather(user, t_rows) * t_vec, axis=1) + t_bias
    n_vec, n_bias = tower.gathered_product_vectors(
        negatives, tf.gather(text, negatives), tf.gather(keep, negatives)
    )
    logits = tf.matmul(user, n_vec, transpose_b=True) + n_bias[None, :]
    masked = tf.where(valid > 0, logits, tf.fill(tf.shape(logits), -1e9))
    lse = tf.reduce_logsumexp(masked, axis=1) + corr
    return _per_user_parts(lse, target_logits, t_rows, n_rows)


def dense_loss(tower, text, batch: Batch):
    """The same loss as :func:`sparse_loss` from dense ``[batch, n_products]`` rows (reference)."""
    import tensorflow as tf

    n_products = len(batch.id_keep)
    b = len(batch.users)
    history = np.zeros((b, n_products), dtype=np.float32)
    history[batch.input_rows, batch.input_items] = 1.0
    targets = np.zeros((b, n_products), dtype=np.float32)
    targets[batch.target_rows, batch.target_items] = 1.0
    negatives = np.zeros((b, n_products), dtype=np.float32)
    negatives[:, batch.negatives] = batch.valid
    user = tower.user_vectors(batch.users, history)
    product, bias = tower.product_vectors(text, batch.id_keep)
    logits = tf.matmul(user, product, transpose_b=True) + bias[None, :]
    masked = tf.where(negatives > 0, logits, tf.fill(tf.shape(logits), -1e9))
    lse = tf.reduce_logsumexp(masked, axis=1) + batch.correction
    per_target = tf.nn.softplus(lse[:, None] - logits) * targets
    n_targets = tf.reduce_sum(targets, axis=1)
    per_user = tf.reduce_sum(per_target, axis=1) / tf.maximum(n_targets, 1.0)
    has = tf.cast(n_targets > 0, tf.float32)
    return tf.reduce_sum(per_user * has) / tf.maximum(tf.reduce_sum(has), 1.0)


def batch_tensors(batch: Batch) -> tuple:
    """The arguments of :func:`sparse_loss` after ``tower, text``."""
    return (
        batch.users,
        batch.input_items,
        batch.input_rows,
        batch.target_items,
        batch.target_rows,
        batch.negatives,
        batch.valid,
        batch.correction,
        batch.id_keep,
    )


@dataclass(frozen=True)
class RowIndex:
    """The embedding-table rows one :class:`Batch` touches, each once (see :func:`row_index`)."""

    history_rows: np.ndarray
    """int32 ``[Uh]``: the batch's input products, sorted, each once."""
    input_at: np.ndarray
    """int32: position in ``history_rows`` of each input entry."""
    product_rows: np.ndarray
    """int32 ``[Up]``: the target and negative products, sorted, each once."""
    target_at: np.ndarray
    """int32: position in ``product_rows`` of each target entry."""
    negative_at: np.ndarray
    """int32: position in ``product_rows`` of each negative."""


def row_index(batch: Batch) -> RowIndex:
    """The :class:`RowIndex` of ``batch`` (numpy, before the step)."""
    history_rows, input_at = np.unique(batch.input_items, return_inverse=True)
    product_rows, at = np.unique(
        np.concatenate([batch.target_items, batch.negatives]), return_inverse=True
    )
    n_targets = len(batch.target_items)
    return RowIndex(
        history_rows=history_rows.astype(np.int32),
        input_at=input_at.reshape(-1).astype(np.int32),
        product_rows=product_rows.astype(np.int32),
        target_at=at[:n_targets].astype(np.int32),
        negative_at=at[n_targets:].astype(np.int32),
    )


def row_tensors(batch: Batch) -> tuple:
    """The arguments of :meth:`RankerTrainer`'s row step: what :func:`row_loss_parts` takes
    after the gathered rows, then the table rows to gather (``users``, ``history_rows``,
    ``product_rows``)."""
    index = row_index(batch)
    return (
        batch.input_rows,
        index.input_at,
        batch.target_rows,
        index.target_at,
        index.negative_at,
        batch.valid,
        batch.correction,
        batch.users,
        index.history_rows,
        index.product_rows,
        batch.id_keep,
    )


def row_loss_parts(
    tower,
    history,
    product,
    product_bias,
    user,
    in_rows,
    in_at,
    t_rows,
    t_at,
    n_at,
    valid,
    corr,
    n_rows,
    product_text,
    product_keep,
):
    """:func:`sparse_loss_parts` from each table's rows gathered once (a :class:`RowIndex`).

    ``history`` ``[Uh, dim]``, ``product`` ``[Up, dim]``, ``product_bias`` ``[Up, 1]`` and
    ``user`` (``[n_rows, dim]`` or None) are the rows of the history, product, product-bias and
    user tables; ``product_text`` and ``product_keep`` the text rows and id-dropout mask of
    ``product_rows``. Each product's vector is projected once, however many targets and
    negatives name it, and the gradients with respect to the gathered rows are the per-row
    sums that an embedding update needs. The same loss as :func:`sparse_loss_parts` on the
    same batch.
    """
    import tensorflow as tf

    pooled = tf.math.unsorted_segment_sum(tf.gather(history, in_at), in_rows, n_rows)
    count = tf.math.unsorted_segment_sum(tf.ones_like(in_rows, dtype=pooled.dtype), in_rows, n_rows)
    users = pooled / tf.sqrt(tf.maximum(count, 1.0))[:, None]
    if user is not None:
        users = users + user
    vectors = product * product_keep[:, None] + tower.text_projection(product_text)
    biases = product_bias[:, 0] * product_keep + tower.text_bias(product_text)[:, 0]
    t_vec, t_bias = tf.gather(vectors, t_at), tf.gather(biases, t_at)
    target_logits = tf.reduce_sum(tf.gather(users, t_rows) * t_vec, axis=1) + t_bias
    n_vec, n_bias = tf.gather(vectors, n_at), tf.gather(biases, n_at)
    logits = tf.matmul(users, n_vec, transpose_b=True) + n_bias[None, :]
    masked = tf.where(valid > 0, logits, tf.fill(tf.shape(logits), -1e9))
    lse = tf.reduce_logsumexp(masked, axis=1) + corr
    return _per_user_parts(lse, target_logits, t_rows, n_rows)


class LazyAdamW:
    """AdamW that updates only the embedding rows a step touched, with a lazy weight average.

    A gradient that arrives as ``tf.IndexedSlices`` (a gathered embedding table) updates the
    rows it names: their moments, decoupled weight decay and Adam step (bias correction by the
    global step). Dense gradients update the whole variable as AdamW does. The moving average
    ``avg = decay * avg + (1 - decay) * w`` is kept per row with the step it was last brought
    up to date; :meth:`averages` brings every row up to date (exact, because a row that no step
    touched kept its value in between).
    """

    def __init__(
        self,
        variables: list,
        *,
        learning_rate: float,
        weight_decay: float,
        decay: float,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
    ) -> None:
        import keras
        import tensorflow as tf

        # the TensorFlow variables under Keras variables (scatter updates need them)
        self.variables = [v.value if isinstance(v, keras.Variable) else v for v in variables]
        self.lr = float(learning_rate)
        self.wd = float(weight_decay)
        self.decay = float(decay)
        self.b1, self.b2, self.eps = float(beta_1), float(beta_2), float(epsilon)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables]
        self.avg = [tf.Variable(v, trainable=False) for v in self.variables]
        self.last = [
            tf.Variable(tf.zeros([v.shape[0]], dtype=tf.int64), trainable=False)
            for v in self.variables
        ]

    def apply(self, grads: list) -> None:
        """One step (inside a ``tf.function``): ``grads`` as the tape gives them, one per
        variable (``tf.IndexedSlices`` for a gathered table, dense or None otherwise)."""
        import tensorflow as tf

        alpha = self._next_step()
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            if isinstance(grad, tf.IndexedSlices):
                rows, position = tf.unique(grad.indices)
                values = tf.math.unsorted_segment_sum(grad.values, position, tf.shape(rows)[0])
                self._update_rows(i, rows, values, alpha)
            else:
                self._update_all(i, grad, alpha)

    def apply_rows(self, rows: dict, dense: dict) -> None:
        """One step (inside a ``tf.function``) from per-row gradients already summed:
        ``rows`` maps a variable's position to ``(row indices, each once; their gradient)``,
        ``dense`` a variable's position to its whole gradient. The same update as
        :meth:`apply` given the same gradients as ``tf.IndexedSlices``."""
        alpha = self._next_step()
        for i, (indices, values) in rows.items():
            self._update_rows(i, indices, values, alpha)
        for i, grad in dense.items():
            self._update_all(i, grad, alpha)

    def _next_step(self):
        """Advance the step counter; the step's bias-corrected learning rate."""
        import tensorflow as tf

        self.step.assign_add(1)
        t = tf.cast(self.step, tf.float32)
        return self.lr * tf.sqrt(1.0 - self.b2**t) / (1.0 - self.b1**t)

    def _adam(self, i: int, w, avg, m, v, values, gap, alpha):
        """(w, avg, m, v) after the step, from their values before it (see the class)."""
        import tensorflow as tf

        shape = [-1] + [1] * (len(self.variables[i].shape) - 1)
        # the average up to the previous step, while the row still had the value ``w``
        keep = tf.reshape(self.decay ** tf.cast(gap, tf.float32), shape)
        avg = keep * avg + (1.0 - keep) * w
        m = self.b1 * m + (1.0 - self.b1) * values
        v = self.b2 * v + (1.0 - self.b2) * tf.square(values)
        w = w - self.lr * self.wd * w
        w = w - alpha * m / (tf.sqrt(v) + self.eps)
        avg = self.decay * avg + (1.0 - self.decay) * w
        return w, avg, m, v

    def _update_rows(self, i: int, rows, values, alpha) -> None:
        """Update the rows ``rows`` (each once) of variable ``i`` with gradient ``values``."""
        import tensorflow as tf

        var = self.variables[i]
        gap = self.step - 1 - tf.gather(self.last[i], rows)
        w, avg, m, v = self._adam(
            i,
            tf.gather(var, rows),
            tf.gather(self.avg[i], rows),
            tf.gather(self.m[i], rows),
            tf.gather(self.v[i], rows),
            values,
            gap,
            alpha,
        )
        at = rows[:, None]
        self.m[i].scatter_nd_update(at, m)
        self.v[i].scatter_nd_update(at, v)
        var.scatter_nd_update(at, w)
        self.avg[i].scatter_nd_update(at, avg)
        self.last[i].scatter_nd_update(at, tf.fill(tf.shape(rows), self.step))

    def _update_all(self, i: int, grad, alpha) -> None:
        """Update every row of variable ``i`` with the dense gradient ``grad``."""
        import tensorflow as tf

        var = self.variables[i]
        w, avg, m, v = self._adam(
            i, var, self.avg[i], self.m[i], self.v[i], grad, self.step - 1 - self.last[i], alpha
        )
        self.m[i].assign(m)
        self.v[i].assign(v)
        var.assign(w)
        self.avg[i].assign(avg)
        self.last[i].assign(tf.fill(tf.shape(self.last[i]), self.step))

    def average_pieces(self) -> list[AveragePieces]:
        """Every weight's moving average, brought up to the current step, as pieces of
        :data:`AVERAGE_CHUNK_BYTES` of rows (computed when iterated; see :class:`AveragePieces`)."""
        step = int(self.step.numpy())
        return [
            AveragePieces(var, avg, last, step, self.decay)
            for var, avg, last in zip(self.variables, self.avg, self.last, strict=True)
        ]

    def averages(self) -> list[np.ndarray]:
        """Every weight's moving average, brought up to the current step.

        Built in pieces of :data:`AVERAGE_CHUNK_BYTES` rows, so the only whole-table arrays
        are the results (the same values as the whole-table expression, element by element).
        """
        return [pieces.whole() for pieces in self.average_pieces()]


class AveragePieces:
    """One variable's moving average at ``step`` (``keep * avg + (1 - keep) * w`` with
    ``keep = decay ** (step - last)`` per row), a piece of rows at a time: iterating yields
    ``(start, stop, values)`` in row order, each piece computed from the variables then."""

    def __init__(self, var: Any, avg: Any, last: Any, step: int, decay: float) -> None:
        self.var, self.avg, self.last, self.step, self.decay = var, avg, last, step, decay
        self.shape = tuple(int(n) for n in var.shape)
        self.dtype = np.dtype(var.dtype.as_numpy_dtype)

    def __iter__(self):
        import tensorflow as tf

        rows = self.shape[0]
        row_bytes = max(1, int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize)
        chunk = max(1, AVERAGE_CHUNK_BYTES // row_bytes)
        tail = (1,) * (len(self.shape) - 1)
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            # a gather reads only these rows; a slice of a scatter-updated variable
            # copies the whole table first
            at = tf.range(start, stop)
            gap = (self.step - tf.gather(self.last, at).numpy()).astype(np.float64)
            keep = (self.decay**gap).astype(np.float32).reshape((-1,) + tail)
            part = keep * tf.gather(self.avg, at).numpy()
            part += (1.0 - keep) * tf.gather(self.var, at).numpy()
            yield start, stop, part

    def whole(self) -> np.ndarray:
        """The whole average as one array."""
        value = np.empty(self.shape, dtype=self.dtype)
        for start, stop, part in self:
            value[start:stop] = part
        return value


class DenseAdamW:
    """Keras AdamW over every weight each step, with a moving average updated every step."""

    def __init__(
        self, variables: list, *, learning_rate: float, weight_decay: float, decay: float
    ) -> None:
        import keras
        import tensorflow as tf

        self.variables = list(variables)
        self.decay = float(decay)
        self.optimizer = keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=weight_decay
        )
        self.avg = [tf.Variable(v, trainable=False) for v in self.variables]

    def apply(self, grads: list) -> None:
        import tensorflow as tf

        dense = [tf.convert_to_tensor(g) for g in grads]
        self.optimizer.apply_gradients(zip(dense, self.variables, strict=True))
        for average, variable in zip(self.avg, self.variables, strict=True):
            average.assign(self.decay * average + (1.0 - self.decay) * variable)

    def averages(self) -> list[np.ndarray]:
        return [a.numpy() for a in self.avg]


class SpilledWeights:
    """A list of weight arrays held in raw files of a private temporary folder.

    The epoch search keeps its best epoch's averaged weights until it ends; for a large
    catalogue they are as large as the tower, so they wait on disk rather than in memory next
    to the weights, the optimizer's moments and the next evaluation's averages. ``weights``
    are arrays or :class:`AveragePieces` (written a piece at a time, never whole in memory).
    :meth:`arrays` reads them back by rows (:class:`SpilledArray`), :meth:`assign` writes them
    into the variables :data:`AVERAGE_CHUNK_BYTES` of rows at a time, :meth:`close` removes the
    folder.
    """

    def __init__(self, weights: list[np.ndarray] | list[AveragePieces]) -> None:
        self.folder = tempfile.mkdtemp(prefix="recsys-weights-")
        self.files: list[tuple[str, tuple[int, ...], np.dtype]] = []
        try:
            for i, value in enumerate(weights):
                path = f"{self.folder}/{i}.bin"
                if isinstance(value, AveragePieces):
                    with open(path, "wb") as f:
                        for _, _, part in value:
                            np.ascontiguousarray(part, dtype=value.dtype).tofile(f)
                    self.files.append((path, value.shape, value.dtype))
                    continue
                value = np.ascontiguousarray(value)
                value.tofile(path)
                self.files.append((path, value.shape, value.dtype))
        except BaseException:
            self.close()
            raise

    def arrays(self) -> list[SpilledArray]:
        """The weights, each read from its file when used."""
        return [SpilledArray(path, shape, dtype) for path, shape, dtype in self.files]

    def assign(self, variables: list) -> None:
        """Write the arrays into ``variables`` (same order and shapes), a piece at a time."""
        import keras
        import tensorflow as tf

        for array, variable in zip(self.arrays(), variables, strict=True):
            # the TensorFlow variable under a Keras one (scatter updates need it)
            variable = variable.value if isinstance(variable, keras.Variable) else variable
            if tuple(variable.shape) != array.shape:
                raise ValueError(
                    f"spilled weights of shape {array.shape} for {tuple(variable.shape)}"
                )
            for start, stop, part in array.pieces():
                variable.scatter_nd_update(tf.range(start, stop)[:, None], part)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class SpilledArray:
    """One array of :class:`SpilledWeights`: read whole (``np.asarray``), by row range
    (:meth:`rows`), by pieces (:meth:`pieces`) or at chosen rows (:meth:`take`)."""

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.row = int(np.prod(self.shape[1:], dtype=np.int64))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        value = np.fromfile(self.path, dtype=self.dtype).reshape(self.shape)
        return value if dtype is None else value.astype(dtype, copy=False)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop``."""
        count = max(0, stop - start) * self.row
        offset = start * self.row * self.dtype.itemsize
        part = np.fromfile(self.path, dtype=self.dtype, count=count, offset=offset)
        return part.reshape((max(0, stop - start),) + self.shape[1:])

    def _ranges(self):
        """``(start, stop)`` of the pieces: :data:`AVERAGE_CHUNK_BYTES` of rows each."""
        chunk = max(1, AVERAGE_CHUNK_BYTES // max(1, self.row * self.dtype.itemsize))
        for start in range(0, self.shape[0], chunk):
            yield start, min(self.shape[0], start + chunk)

    def pieces(self):
        """``(start, stop, rows)`` of :data:`AVERAGE_CHUNK_BYTES` of rows, in order."""
        for start, stop in self._ranges():
            yield start, stop, self.rows(start, stop)

    def take(self, index: np.ndarray) -> np.ndarray:
        """The rows at ``index`` (any order), reading only the pieces that hold one."""
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index),) + self.shape[1:], dtype=self.dtype)
        order = np.argsort(index, kind="stable")
        ordered = index[order]
        for start, stop in self._ranges():
            lo, hi = np.searchsorted(ordered, [start, stop])
            if hi > lo:
                out[order[lo:hi]] = self.rows(start, stop)[ordered[lo:hi] - start]
        return out


def _rows_at(value: Any, index: np.ndarray) -> np.ndarray:
    """Rows ``index`` of an array or a :class:`SpilledArray`."""
    if isinstance(value, SpilledArray):
        return value.take(index)
    return np.asarray(value)[index]


def _row_range(value: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of an array or a :class:`SpilledArray`."""
    if isinstance(value, SpilledArray):
        return value.rows(start, stop)
    return np.asarray(value)[start:stop]


def keep_weights(
    weights: list[np.ndarray] | SpilledWeights,
) -> list[np.ndarray] | SpilledWeights:
    """``weights`` as they are (already on disk, or small), or on disk when they exceed
    :data:`SPILL_BYTES`."""
    if isinstance(weights, SpilledWeights):
        return weights
    if sum(int(np.asarray(w).nbytes) for w in weights) > SPILL_BYTES:
        return SpilledWeights(weights)
    return weights


@dataclass(frozen=True)
class TrainedTower:
    """What :meth:`RankerTrainer.run` returns."""

    tower: Any
    losses: list[float]
    epochs: int
    """The epochs whose weights the tower holds (the best evaluated one with validation)."""
    validation: list[tuple[int, float]]
    """(epoch, internal-validation NDCG@10) of every evaluation."""
    epoch_seconds: tuple[float, ...] = ()
    """Wall seconds of each epoch run (training only, validation not included)."""
    budget_stop: bool = False
    """True when the time budget (``deadline``) ended the epochs before ``epochs``/patience."""


class TowerScores:
    """``score_users`` of a tower's weights for a fixed, sorted set of users.

    The users' vectors pool their binary ``history`` rows exactly as the ranker's
    precomputation does (``E[u] + x_u H / sqrt(|x_u|)``); the product vectors and biases come
    from the tower (computed in pieces, :func:`_catalogue`), and a batch's scores are one
    ``U[users] @ V.T + b`` in numpy.
    ``weight`` (variable -> value, as in ``RankingTower.product_vectors``): score those values
    instead of the tower's current weights, without loading them into it. A value may be a
    :class:`SpilledArray`: only the history rows the users pooled are read from it, and the
    product rows a chunk at a time.
    """

    def __init__(
        self,
        tower: Any,
        text: np.ndarray,
        users: np.ndarray,
        history,
        weight: Callable[[Any], Any] | None = None,
    ) -> None:
        from scipy import sparse

        if weight is None:
            weight = _current
        history = sparse.csr_matrix(history)
        counts = np.asarray(history.sum(axis=1)).ravel()
        scale = sparse.diags(1.0 / np.sqrt(np.maximum(counts, 1.0))).astype(np.float32)
        # only the history rows these users pooled, the entries kept in their stored order
        touched = np.unique(history.indices)
        pooled = sparse.csr_matrix(
            (history.data, np.searchsorted(touched, history.indices), history.indptr),
            shape=(history.shape[0], len(touched)),
        )
        h = np.asarray(
            _rows_at(weight(tower.history_embedding.embeddings), touched), dtype=np.float32
        )
        vectors = np.asarray((scale @ pooled) @ h, dtype=np.float32)
        if tower.use_user_embedding:
            vectors = vectors + _rows_at(weight(tower.user_embedding.embeddings), users)
        self.users = np.asarray(users, dtype=np.int64)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.product, self.bias = _catalogue(tower, np.asarray(text, dtype=np.float32), weight)

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """float32 ``[len(users), n_products]``; every user must be one of ``self.users``."""
        at = np.searchsorted(self.users, np.asarray(users, dtype=np.int64))
        if np.any(at >= len(self.users)) or np.any(
            self.users[np.minimum(at, len(self.users) - 1)] != users
        ):
            raise ValueError("TowerScores: a user outside the prepared set")
        scores = self.vectors[at] @ self.product.T
        scores += self.bias[None, :]
        return scores


def _catalogue(
    tower: Any, text: np.ndarray, weight: Callable[[Any], Any], chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The tower's product vectors and biases (:meth:`RankingTower.product_vectors`) from the
    values ``weight`` gives, ``chunk`` products at a time into two numpy arrays, so nothing
    else of the catalogue's size is held beside them (``chunk``: default the tower's own
    ``CATALOGUE_CHUNK``)."""
    from recsys.model.rank_network import CATALOGUE_CHUNK

    chunk = CATALOGUE_CHUNK if chunk is None else chunk
    ids = weight(tower.product_embedding.embeddings)  # read a chunk at a time
    id_bias = np.asarray(weight(tower.product_bias.embeddings), dtype=np.float32)[:, 0]
    kernel = np.asarray(weight(tower.text_projection.kernel), dtype=np.float32)
    text_kernel = np.asarray(weight(tower.text_bias.kernel), dtype=np.float32)[:, 0]
    n = ids.shape[0]
    vectors = np.empty(tuple(ids.shape), dtype=np.float32)
    bias = np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        part = text[start:stop]
        np.matmul(part, kernel, out=vectors[start:stop])
        vectors[start:stop] += _row_range(ids, start, stop)
        bias[start:stop] = id_bias[start:stop] + part @ text_kernel
    return vectors, bias


def _current(variable: Any) -> np.ndarray:
    """A variable's current value."""
    return variable.numpy()


class RankerTrainer:
    """One ranking-tower fit of a :class:`~recsys.model.ranker.RankerRecommender`.

    Args:
        model: the recommender (its ``params``, ``text`` and ``_new_tower``; each
            internal-validation evaluation is reported to its ``evaluated``).
        train: the ratings to fit.
        seed: seeds the batches, masks and initial weights.
        progress: a :mod:`recsys.progress` sink.
        should_stop: polled after every batch; true raises ``TrainingInterrupted``.
        label: the progress phase's name.
        clock: monotonic seconds (what :meth:`run`'s ``deadline`` is measured on).
        row_step: in sampled mode, train with the row step (None or True, the default) or the
            reference step (False); full mode always uses the reference step.
    """

    def __init__(
        self,
        model: Any,
        train: RatingData,
        seed: int,
        *,
        progress: ProgressSink = NO_PROGRESS,
        should_stop: Callable[[], bool] | None = None,
        label: str = "train ranker",
        clock: Callable[[], float] = time.monotonic,
        row_step: bool | None = None,
    ) -> None:
        from recsys.model.keras_models import set_determinism

        set_determinism(seed)
        self.model = model
        self.params = model.params
        self.train = train
        self.progress = progress
        self.should_stop = should_stop or (lambda: False)
        self.label = label
        self.clock = clock
        self.rng = np.random.default_rng(seed)
        self.ratings = rating_matrix(train, self._threshold(train))
        self.full = train.n_products <= self.params["full_softmax_max"]
        self.n_sampled = None if self.full else int(self.params["sampled_negatives"])
        self.tower = model._new_tower(train.n_users, train.n_products, model.text.shape[1])
        self.variables = list(self.tower.trainable_variables)
        options = {
            "learning_rate": self.params["learning_rate"],
            "weight_decay": self.params["weight_decay"],
            "decay": float(self.params["weight_average"]),
        }
        self.optimizer = (DenseAdamW if self.full else LazyAdamW)(self.variables, **options)
        # the row step needs the lazy AdamW (sampled mode); ``row_step`` False: the reference
        self.row_step = (not self.full) if row_step is None else bool(row_step) and not self.full
        self.active = np.flatnonzero(np.diff(self.ratings.indptr) > 0)
        self._step = self._compile_step()

    def _threshold(self, train: RatingData) -> float | None:
        threshold = self.params["target_min_rating"]
        if threshold is not None and np.mean(train.ratings >= threshold) < 0.1:
            _log.info(
                "ranker: under 10%% of ratings are >= %g; every rated product is a target",
                threshold,
            )
            return None
        return threshold

    def _compile_step(self):
        """The training step: the row step (:meth:`_compile_row_step`) with the lazy AdamW,
        else the reference step (:func:`sparse_loss`, gradients as the tape gives them)."""
        return self._compile_row_step() if self.row_step else self._compile_reference_step()

    def _compile_reference_step(self):
        import tensorflow as tf

        tower, variables, optimizer = self.tower, self.variables, self.optimizer
        text = tf.constant(self.model.text)

        ints = tf.TensorSpec([None], tf.int32)
        floats = tf.TensorSpec([None], tf.float32)
        signature = [ints] * 6 + [tf.TensorSpec([None, None], tf.float32), floats, floats]

        # one trace for every batch shape; plain Python control flow only (no autograph)
        @tf.function(input_signature=signature, autograph=False)
        def step(*args):
            with tf.GradientTape() as tape:
                loss = sparse_loss(tower, text, *args)
            optimizer.apply(tape.gradient(loss, variables))
            return loss

        return lambda batch: step(*batch_tensors(batch))

    def _compile_row_step(self):
        """The step on each table's touched rows, gathered once (:func:`row_loss_parts`).

        The history, product, product-bias (and user) rows are gathered once, before the tape,
        and differentiated as tensors: each gradient is a ``[rows, dim]`` block summed per
        row, which goes to :meth:`LazyAdamW.apply_rows` with the rows (no ``unique`` over the
        entries in the step, no second gather of a table); the text projections are dense
        variables. The same loss and update as the reference step.
        """
        import tensorflow as tf

        tower, optimizer = self.tower, self.optimizer
        text = tf.constant(self.model.text)
        position = {id(v): i for i, v in enumerate(self.variables)}

        def at(variable) -> int | None:
            return position.get(id(variable))

        history_i = at(tower.history_embedding.embeddings)
        product_i = at(tower.product_embedding.embeddings)
        bias_i = at(tower.product_bias.embeddings)
        user_i = at(tower.user_embedding.embeddings) if tower.use_user_embedding else None
        tables = {history_i, product_i, bias_i, user_i} - {None}
        dense = [i for i in range(len(self.variables)) if i not in tables]
        if None in (history_i, product_i, bias_i):
            raise RuntimeError("the row step needs trainable history, product and bias tables")
        tf_vars = optimizer.variables  # the TensorFlow variables, in the same order

        ints = tf.TensorSpec([None], tf.int32)
        floats = tf.TensorSpec([None], tf.float32)
        signature = [ints] * 5 + [tf.TensorSpec([None, None], tf.float32), floats] + [ints] * 3
        signature += [floats]

        @tf.function(input_signature=signature, autograph=False)
        def step(in_rows, in_at, t_rows, t_at, n_at, valid, corr, users, h_rows, p_rows, keep):
            history = tf.gather(tf_vars[history_i], h_rows)
            product = tf.gather(tf_vars[product_i], p_rows)
            bias = tf.gather(tf_vars[bias_i], p_rows)
            user = None if user_i is None else tf.gather(tf_vars[user_i], users)
            product_text, product_keep = tf.gather(text, p_rows), tf.gather(keep, p_rows)
            rows = [history, product, bias] + ([] if user is None else [user])
            with tf.GradientTape() as tape:
                tape.watch(rows)
                total, n_users = row_loss_parts(
                    tower,
                    history,
                    product,
                    bias,
                    user,
                    in_rows,
                    in_at,
                    t_rows,
                    t_at,
                    n_at,
                    valid,
                    corr,
                    tf.shape(users)[0],
                    product_text,
                    product_keep,
                )
                loss = total / tf.maximum(n_users, 1.0)
            grads = tape.gradient(loss, rows + [self.variables[i] for i in dense])
            # a gathered block's gradient, summed per row ([rows, dim], no unique needed)
            grads = [tf.convert_to_tensor(g) for g in grads]
            updates = {history_i: (h_rows, grads[0]), product_i: (p_rows, grads[1])}
            updates[bias_i] = (p_rows, grads[2])
            if user_i is not None:
                updates[user_i] = (users, grads[3])
            optimizer.apply_rows(updates, dict(zip(dense, grads[len(rows) :], strict=True)))
            return loss

        return lambda batch: step(*row_tensors(batch))

    # --- named steps ---------------------------------------------------------------------

    def batches(self):
        """The epoch's batches of users (a fresh permutation of the active users)."""
        from recsys.model.ranker import _batch_size

        size = _batch_size(
            self.params["batch_users"], len(self.active), self.params["max_steps_per_epoch"]
        )
        order = self.rng.permutation(self.active)
        for start in range(0, len(order), size):
            yield np.sort(order[start : start + size])

    def make_batch(self, users: np.ndarray) -> Batch:
        return make_batch(
            self.rng,
            self.ratings,
            users,
            input_dropout=self.params["input_dropout"],
            # product-id dropout trains the text path; without text it only adds noise
            id_dropout=self.params["id_dropout"] if self.params.get("text_path", True) else 0.0,
            n_sampled=self.n_sampled,
        )

    def train_step(self, batch: Batch) -> float:
        return float(self._step(batch))

    def release(self) -> None:
        """Drop the optimizer's state (moments and averages: three copies of every trained
        weight), the compiled step and the ratings, once :meth:`run` has returned. The compiled
        step refers back to this trainer, so without this the state would wait for Python's
        cycle collector; the tower keeps its weights."""
        self._step = None
        self.optimizer = None
        self.variables = []
        self.ratings = None

    def check_stop(self, epoch: int) -> None:
        """Raise TrainingInterrupted now when a stop was requested."""
        if self.should_stop():
            _log.info("ranker: stop requested; stopping training in epoch %d", epoch)
            raise TrainingInterrupted(f"training stopped on request in epoch {epoch}")

    def run_epoch(
        self, epoch: int, epochs: int, fields: dict[str, Any], deadline: float | None = None
    ) -> float:
        """One pass over the active users; the mean batch loss. Past ``deadline`` (on
        ``clock``) the epoch ends after the current batch and ``cut_short`` is set."""
        self.progress.start(f"{self.label} epoch {epoch}/{epochs}", self.ratings.nnz, "ratings")
        total, n = 0.0, 0
        self.cut_short = False
        for users in self.batches():
            batch = self.make_batch(users)
            total += self.train_step(batch)
            n += 1
            self.progress.advance(batch.n_ratings, epoch=epoch, loss=total / n, **fields)
            self.check_stop(epoch)
            if deadline is not None and self.clock() > deadline:
                _log.info("ranker: time budget: epoch %d ended after %d steps", epoch, n)
                self.cut_short = True
                break
        self.progress.finish()
        return total / max(n, 1)

    def use_weights(self, weights: list[np.ndarray]) -> list[np.ndarray]:
        """Load ``weights`` into the tower; returns the weights it held."""
        raw = [v.numpy() for v in self.variables]
        self.load_weights(weights)
        return raw

    def load_weights(self, weights: list[np.ndarray] | SpilledWeights) -> None:
        """Load ``weights`` (arrays, or :func:`keep_weights`'s spilled ones) into the tower."""
        if isinstance(weights, SpilledWeights):
            weights.assign(self.variables)
            return
        for value, variable in zip(weights, self.variables, strict=True):
            variable.assign(value)

    def _averages(self) -> list[np.ndarray] | SpilledWeights:
        """The averaged weights for an evaluation of the epoch search: above
        :data:`SPILL_BYTES`, written to disk a piece at a time (:class:`SpilledWeights`), so
        that no whole averaged table is held beside the optimizer's state; else arrays."""
        if isinstance(self.optimizer, LazyAdamW):
            pieces = self.optimizer.average_pieces()
            size = sum(int(np.prod(p.shape, dtype=np.int64)) * p.dtype.itemsize for p in pieces)
            if size > SPILL_BYTES:
                return SpilledWeights(pieces)
        return self.optimizer.averages()

    def validate(
        self,
        validation: RatingData,
        averages: list[np.ndarray] | SpilledWeights | None = None,
    ) -> float:
        """Internal-validation NDCG@10 of the averaged weights (the weights that would score).

        The figure :func:`~recsys.evaluation.tuning.validation_ndcg` gives for the model
        precomputed with those weights, from the vectors of the sampled validation users only
        (:class:`TowerScores`), so an evaluation neither pools every user nor leaves the
        model's own precomputation changed. The averages (``averages``: ``optimizer.averages()``
        already computed, or written to disk by :class:`SpilledWeights`) are scored as they
        are, never loaded into the tower; spilled ones are read a piece at a time (the rows
        the sampled users pooled, the product rows a chunk at a time).
        """
        from recsys.evaluation.tuning import validation_ndcg

        sample = self._validation_sample(validation)
        users = np.unique(sample.users)
        history = self.ratings[users]
        history.data[:] = 1.0
        if averages is None:
            averages = self.optimizer.averages()
        values = averages.arrays() if isinstance(averages, SpilledWeights) else averages
        averaged = {id(v): a for v, a in zip(self.variables, values, strict=True)}

        def weight(variable: Any) -> Any:
            value = averaged.get(id(variable))
            return _current(variable) if value is None else value

        self.model.evaluated(self.tower, [weight(v) for v in self.tower.weights])
        scores = TowerScores(self.tower, self.model.text, users, history, weight)
        return validation_ndcg(scores, self.train, sample)

    def _validation_sample(self, validation: RatingData) -> RatingData:
        """At most ``validation_users`` validation users (seeded), so an evaluation stays cheap."""
        limit = int(self.params.get("validation_users") or 0)
        users = np.unique(validation.users)
        if limit <= 0 or len(users) <= limit:
            return validation
        chosen = np.random.default_rng(4243).choice(users, limit, replace=False)
        return validation.subset(np.isin(validation.users, chosen))

    def ratings_binary(self):
        """The binary training history (what the user vectors pool)."""
        history = self.ratings.copy()
        history.data[:] = 1.0
        return history

    def steps_per_epoch(self) -> int:
        from recsys.model.ranker import _batch_size

        size = _batch_size(
            self.params["batch_users"], len(self.active), self.params["max_steps_per_epoch"]
        )
        return max(1, -(-len(self.active) // size))

    def eval_every(self) -> int:
        """Epochs between evaluations: ``eval_every``, or fewer so that at most
        ``eval_every_steps`` steps pass between two (large data, whose epochs are long)."""
        limit = int(self.params.get("eval_every_steps") or 0)
        every = int(self.params["eval_every"])
        if limit <= 0:
            return every
        return max(1, min(every, -(-limit // self.steps_per_epoch())))

    def out_of_time(self, deadline: float | None, epoch_seconds: list[float]) -> bool:
        """Whether another epoch (at the mean epoch time so far) would end past ``deadline``."""
        if deadline is None or not epoch_seconds:
            return False
        return self.clock() + float(np.mean(epoch_seconds)) > deadline

    def run(
        self,
        epochs: int,
        validation: RatingData | None = None,
        *,
        deadline: float | None = None,
    ) -> TrainedTower:
        """Train ``epochs`` epochs; with ``validation``, evaluate every :meth:`eval_every` epochs,
        stop after ``patience`` evaluations without gain and keep the best evaluated epoch.

        ``deadline`` (on ``clock``): no epoch starts that would end past it at the mean epoch
        time so far, and an epoch still running when it passes ends after its current batch
        (so a slow machine stays within the budget too). The epoch where that happens is
        evaluated (when there is ``validation``)
        even off the ``eval_every`` grid, so the best epoch so far is known, and is kept.
        """
        spilled: list[SpilledWeights] = []
        try:
            return self._run(epochs, validation, deadline, spilled)
        finally:
            for weights in spilled:
                weights.close()

    def _run(
        self,
        epochs: int,
        validation: RatingData | None,
        deadline: float | None,
        spilled: list[SpilledWeights],
    ) -> TrainedTower:
        """:meth:`run`; every spilled best-epoch copy is appended to ``spilled``."""
        losses: list[float] = []
        seconds: list[float] = []
        evaluations: list[tuple[int, float]] = []
        best: tuple[float, int, list[np.ndarray] | SpilledWeights | None] = (-1.0, 0, None)
        without_gain = 0
        budget_stop = False
        fields: dict[str, Any] = {}
        every = self.eval_every()
        for epoch in range(1, epochs + 1):
            started = self.clock()
            self.cut_short = False
            losses.append(self.run_epoch(epoch, epochs, fields, deadline))
            seconds.append(self.clock() - started)
            budget_stop = self.cut_short or (epoch < epochs and self.out_of_time(deadline, seconds))
            if validation is None or (epoch % every != 0 and not budget_stop):
                if budget_stop:
                    break
                continue
            averages = self._averages()
            if isinstance(averages, SpilledWeights):
                spilled.append(averages)
            score = self.validate(validation, averages)
            evaluations.append((epoch, score))
            fields["ndcg"] = score
            if score > best[0] + 1e-4:
                if isinstance(best[2], SpilledWeights):
                    best[2].close()
                best = (score, epoch, keep_weights(averages))
                if isinstance(best[2], SpilledWeights) and best[2] is not averages:
                    spilled.append(best[2])
            elif isinstance(averages, SpilledWeights):
                averages.close()
            averages = None  # kept only as the best epoch's weights
            _log.info(
                "ranker epoch %d: loss %.4f, internal validation NDCG@10 %.4f",
                epoch,
                losses[-1],
                score,
            )
            if best[1] == epoch:
                without_gain = 0
            else:
                without_gain += 1
                if without_gain >= self.params["patience"]:
                    budget_stop = False
                    break
            if budget_stop:
                break
        if budget_stop:
            _log.info(
                "ranker: time budget reached after epoch %d of at most %d; keeping epoch %d",
                len(losses),
                epochs,
                best[1] if validation is not None and best[2] is not None else len(losses),
            )
        done = len(losses)
        if validation is not None and best[2] is not None:
            self.load_weights(best[2])
            return TrainedTower(
                self.tower, losses, best[1], evaluations, tuple(seconds), budget_stop
            )
        self.load_weights(self.optimizer.averages())
        return TrainedTower(self.tower, losses, done, evaluations, tuple(seconds), budget_stop)
