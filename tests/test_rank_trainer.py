"""The ranker's sparse training step: the same loss and gradients as the dense formulation on a
small catalogue; negatives never include a user's own products; the lazy AdamW equals a dense
one where every row is touched; progress lines without a terminal; a stop request ends
training within a batch."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from recsys.errors import TrainingInterrupted
from recsys.model.base import RatingData
from recsys.model.rank_trainer import (
    LazyAdamW,
    batch_tensors,
    dense_loss,
    make_batch,
    rating_matrix,
    sparse_loss,
)
from recsys.model.ranker import RankerRecommender
from recsys.progress import LogProgress


def _data(n_users: int = 40, n_products: int = 60, per_user: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    products = np.concatenate(
        [rng.choice(n_products, per_user, replace=False) for _ in range(n_users)]
    )
    return RatingData(
        users=users.astype(np.int32),
        products=products.astype(np.int32),
        ratings=rng.integers(1, 6, size=len(users)).astype(np.float32),
        timestamps=np.zeros(len(users), np.int64),
        user_ids=np.arange(n_users, dtype=np.int64),
        product_ids=np.arange(n_products, dtype=np.int64),
        text=rng.normal(size=(n_products, 8)).astype(np.float32),
    )


def _tower(data: RatingData, use_user_embedding: bool = False):
    import keras

    from recsys.model.rank_network import RankingTower, normalise_text

    keras.utils.set_random_seed(3)
    tower = RankingTower(
        data.n_users, data.n_products, 8, dim=16, use_user_embedding=use_user_embedding
    )
    return tower, normalise_text(data.text, data.n_products)


@pytest.mark.parametrize("n_sampled", [None, 25])
@pytest.mark.parametrize("use_user_embedding", [False, True])
def test_sparse_step_equals_the_dense_one(n_sampled, use_user_embedding) -> None:
    import tensorflow as tf

    data = _data()
    tower, text = _tower(data, use_user_embedding)
    ratings = rating_matrix(data, 4.0)
    batch = make_batch(
        np.random.default_rng(1),
        ratings,
        np.arange(0, 40, 3),
        input_dropout=0.5,
        id_dropout=0.2,
        n_sampled=n_sampled,
    )
    assert len(batch.target_items) > 0 and len(batch.input_items) > 0
    variables = tower.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        sparse = sparse_loss(tower, tf.constant(text), *batch_tensors(batch))
        dense = dense_loss(tower, tf.constant(text), batch)
    np.testing.assert_allclose(float(sparse), float(dense), rtol=1e-5)
    assert float(sparse) > 0
    for a, b in zip(tape.gradient(sparse, variables), tape.gradient(dense, variables), strict=True):
        a, b = tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy()
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert np.abs(tf.convert_to_tensor(tape.gradient(sparse, variables)[0]).numpy()).sum() > 0


def test_negatives_are_only_unrated_products() -> None:
    data = _data()
    ratings = rating_matrix(data, 4.0)
    for n_sampled in (None, 30):
        users = np.arange(40)
        batch = make_batch(
            np.random.default_rng(2),
            ratings,
            users,
            input_dropout=0.5,
            id_dropout=0.0,
            n_sampled=n_sampled,
        )
        for row, user in enumerate(users):
            rated = set(data.products[data.users == user].tolist())
            valid = set(batch.negatives[batch.valid[row] > 0].tolist())
            invalid = set(batch.negatives[batch.valid[row] == 0].tolist())
            assert not rated & valid and invalid <= rated
            # targets are liked (>= 4) rated products not in the input
            mine = batch.target_rows == row
            liked = set(data.products[(data.users == user) & (data.ratings >= 4)].tolist())
            assert set(batch.target_items[mine].tolist()) <= liked
            inputs = set(batch.input_items[batch.input_rows == row].tolist())
            assert not inputs & set(batch.target_items[mine].tolist())
        if n_sampled is None:
            assert np.all(batch.correction == 0)
        else:
            assert np.all(batch.correction > 0)


def test_lazy_adamw_with_every_row_touched_equals_keras_adamw() -> None:
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(4)
    a = tf.Variable(rng.normal(size=(6, 3)).astype(np.float32))
    b = keras.Variable(a.numpy())
    lazy = LazyAdamW([a], learning_rate=0.01, weight_decay=0.01, decay=0.9)
    dense = keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.01)
    average = b.numpy().copy()
    for _ in range(5):
        grad = rng.normal(size=(6, 3)).astype(np.float32)
        # as a gather gives it: every row once, in a shuffled order, duplicates split in two
        order = rng.permutation(6)
        indices = np.concatenate([order, order[:2]])
        values = np.concatenate([grad[order], np.zeros((2, 3), np.float32)])
        lazy.apply([tf.IndexedSlices(tf.constant(values), tf.constant(indices), (6, 3))])
        dense.apply_gradients([(tf.constant(grad), b)])
        average = 0.9 * average + 0.1 * b.numpy()
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lazy.averages()[0], average, rtol=1e-5, atol=1e-6)


def test_lazy_average_of_an_untouched_row_equals_the_dense_average() -> None:
    import tensorflow as tf

    start = np.arange(8, dtype=np.float32).reshape(4, 2)
    var = tf.Variable(start.copy())
    lazy = LazyAdamW([var], learning_rate=0.1, weight_decay=0.0, decay=0.5)
    average = start.copy()
    for rows in ([0], [0, 1], [0], [2, 0]):
        grad = tf.IndexedSlices(tf.ones((len(rows), 2)), tf.constant(rows, dtype=tf.int64), (4, 2))
        lazy.apply([grad])
        average = 0.5 * average + 0.5 * var.numpy()
    np.testing.assert_allclose(lazy.averages()[0], average, rtol=1e-6)
    assert np.all(var.numpy()[3] == start[3])  # row 3 never touched, never changed


FAST = {"dim": 16, "epochs": 3, "batch_users": 8, "rating_head": False}


def test_progress_lines_appear_without_a_terminal(caplog) -> None:
    import io

    from recsys.progress import progress_for_terminal

    sink = progress_for_terminal(io.StringIO())  # not a terminal
    assert isinstance(sink, LogProgress)
    sink.interval = 0.0  # every update is a line here (30 s in production)
    with caplog.at_level(logging.INFO, logger="recsys.progress"):
        RankerRecommender(**{**FAST, "rating_head": True, "rating_epochs": 1}).fit(
            _data(), seed=0, progress=sink
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "recsys.progress"]
    epoch_lines = [line for line in lines if line.startswith("ranker epoch 3/3:")]
    assert any("ratings/s" in line and "ETA" in line and "loss=" in line for line in epoch_lines)
    assert any(line.startswith("ranker rating head epoch 1") for line in lines)


def test_epoch_search_progress_shows_the_validation_ndcg(caplog) -> None:
    sink = LogProgress(interval=0.0)
    params = {**FAST, "epochs": None, "max_epochs": 2, "eval_every": 1, "patience": 5}
    with caplog.at_level(logging.INFO, logger="recsys.progress"):
        RankerRecommender(**params).fit(_data(per_user=20), seed=0, progress=sink)
    lines = [r.getMessage() for r in caplog.records if r.name == "recsys.progress"]
    assert any(
        line.startswith("ranker epoch search epoch 2/2") and "ndcg=" in line for line in lines
    )


def test_a_stop_request_ends_training_within_a_batch(caplog) -> None:
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) >= 2  # asked to stop after the second batch

    model = RankerRecommender(**{**FAST, "epochs": 50})
    with caplog.at_level(logging.INFO), pytest.raises(TrainingInterrupted):
        model.fit(_data(), seed=0, should_stop=should_stop)
    assert len(calls) == 2  # no batch ran after the request
    stopping = [r for r in caplog.records if "stop requested" in r.getMessage()]
    assert stopping and all(r.levelno == logging.INFO for r in stopping)


def test_fold_in_scores_equal_direct_evaluation_of_the_model() -> None:
    import tensorflow as tf

    data = _data()
    model = RankerRecommender(**{**FAST, "epochs": 2})
    model.fit(data, seed=0)
    assert model.folds_in
    # two histories of model products, one with a duplicate (counts once)
    histories = [[3, 7, 11], [5, 5, 20, 41, 59]]
    items = np.array([p for h in histories for p in h])
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    got = model.score_vectors(model.user_vectors_for(items, rows, len(histories)))
    # by hand, from the Keras tower's own weights and layers
    h = model.tower.history_embedding.embeddings.numpy()
    product, bias = model.tower.product_vectors(tf.constant(model.text))
    for row, history in enumerate(histories):
        unique = sorted(set(history))
        user = h[unique].sum(axis=0) / np.sqrt(len(unique))
        expected = np.asarray(product) @ user + np.asarray(bias)
        np.testing.assert_allclose(got[row], expected, rtol=1e-4, atol=1e-5)
    # a trained user's folded-in vector is the vector the model scores them with
    user = 4
    mine = data.products[data.users == user]
    again = model.user_vectors_for(mine, np.zeros(len(mine), dtype=np.int64), 1)
    np.testing.assert_allclose(again[0], model.user_vectors[user], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        model.score_vectors(again)[0], model.score_users(np.array([user]))[0], rtol=1e-5, atol=1e-5
    )


def _trainer(data: RatingData, *, row_step: bool, use_user_embedding: bool = False, **params):
    from recsys.model.rank_network import normalise_text
    from recsys.model.rank_trainer import RankerTrainer

    options = {"dim": 16, "batch_users": 8, "full_softmax_max": 0, "sampled_negatives": 30}
    model = RankerRecommender(**{**options, "use_user_embedding": use_user_embedding, **params})
    model.text = normalise_text(data.text, data.n_products)
    model.params["text_path"] = True
    return RankerTrainer(model, data, 0, row_step=row_step)


@pytest.mark.parametrize("use_user_embedding", [False, True])
def test_row_step_trains_like_the_reference_step(use_user_embedding) -> None:
    """The row step (rows gathered once, per-row gradients, apply_rows) gives the reference
    step's losses, weights and weight averages, epoch after epoch, on a small catalogue."""
    data = _data(n_users=60, n_products=80, per_user=15)
    row = _trainer(data, row_step=True, use_user_embedding=use_user_embedding)
    reference = _trainer(data, row_step=False, use_user_embedding=use_user_embedding)
    assert row.row_step and not reference.row_step
    for epoch in (1, 2, 3):
        np.testing.assert_allclose(
            row.run_epoch(epoch, 3, {}), reference.run_epoch(epoch, 3, {}), rtol=1e-5
        )
    pairs = list(zip(row.variables, reference.variables, strict=True))
    pairs += list(zip(row.optimizer.averages(), reference.optimizer.averages(), strict=True))
    for a, b in pairs:
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # the weights moved: the comparison is not between two untrained towers
    start = _trainer(data, row_step=True, use_user_embedding=use_user_embedding)
    moved = [
        np.abs(np.asarray(a) - np.asarray(b)).max()
        for a, b in zip(row.variables, start.variables, strict=True)
    ]
    assert min(moved) > 1e-4


def test_row_step_is_only_for_the_sampled_mode() -> None:
    data = _data()
    assert _trainer(data, row_step=True, full_softmax_max=1000).row_step is False
    assert _trainer(data, row_step=None).row_step is True


def test_row_index_names_every_entry_once_per_table() -> None:
    from recsys.model.rank_trainer import row_index

    data = _data()
    batch = make_batch(
        np.random.default_rng(5),
        rating_matrix(data, 4.0),
        np.arange(0, 40, 2),
        input_dropout=0.5,
        id_dropout=0.0,
        n_sampled=25,
    )
    index = row_index(batch)
    assert len(np.unique(index.history_rows)) == len(index.history_rows)
    assert len(np.unique(index.product_rows)) == len(index.product_rows)
    np.testing.assert_array_equal(index.history_rows[index.input_at], batch.input_items)
    np.testing.assert_array_equal(index.product_rows[index.target_at], batch.target_items)
    np.testing.assert_array_equal(index.product_rows[index.negative_at], batch.negatives)


@pytest.mark.parametrize("use_user_embedding", [False, True])
def test_validation_equals_the_ndcg_of_the_precomputed_model(use_user_embedding) -> None:
    """The trainer's validation (sampled users' vectors only, TensorFlow scores) gives the
    NDCG@10 of the model precomputed with the averaged weights, and leaves the weights."""
    from recsys.evaluation.tuning import internal_rank_split, validation_ndcg

    data = _data(n_users=60, n_products=80, per_user=15)
    fit_part, val_part = internal_rank_split(data)
    trainer = _trainer(
        fit_part, row_step=True, use_user_embedding=use_user_embedding, validation_users=25
    )
    for epoch in (1, 2):
        trainer.run_epoch(epoch, 2, {})
    before = [v.numpy().copy() for v in trainer.variables]
    got = trainer.validate(val_part)
    for value, variable in zip(before, trainer.variables, strict=True):
        np.testing.assert_array_equal(value, variable.numpy())
    raw = trainer.use_weights(trainer.optimizer.averages())
    trainer.model._precompute(trainer.tower, trainer.ratings_binary())
    trainer.use_weights(raw)
    sample = trainer._validation_sample(val_part)
    assert len(np.unique(sample.users)) == 25
    expected = validation_ndcg(trainer.model, fit_part, sample)
    assert expected > 0
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_averages_in_row_pieces_equal_the_whole_table_expression(monkeypatch) -> None:
    """LazyAdamW.averages built a few rows at a time gives, bit for bit, the whole-table
    ``keep * avg + (1 - keep) * w``."""
    import recsys.model.rank_trainer as rank_trainer

    data = _data(n_users=60, n_products=80, per_user=15)
    trainer = _trainer(data, row_step=True)
    for epoch in (1, 2):
        trainer.run_epoch(epoch, 2, {})
    optimizer = trainer.optimizer
    step = int(optimizer.step.numpy())
    expected = []
    for var, avg, last in zip(optimizer.variables, optimizer.avg, optimizer.last, strict=True):
        gap = (step - last.numpy()).astype(np.float64)
        tail = (1,) * (len(var.shape) - 1)
        keep = (optimizer.decay**gap).astype(np.float32).reshape((-1,) + tail)
        value = keep * avg.numpy()
        value += (1.0 - keep) * var.numpy()
        expected.append(value)
    # rows touched at different steps: the gaps differ, so the pieces' keep factors differ
    assert len(np.unique(step - optimizer.last[1].numpy())) > 1
    monkeypatch.setattr(rank_trainer, "AVERAGE_CHUNK_BYTES", 3 * 16 * 4)  # 3 rows of dim 16
    for got, want in zip(optimizer.averages(), expected, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_best_epoch_weights_spilled_to_disk_train_the_same_tower(monkeypatch, tmp_path) -> None:
    """With the best epoch's weights kept on disk (every size spills) and read back a few rows
    at a time, the epoch search ends with the same weights as with them in memory, and leaves
    no file behind."""
    import tempfile

    import recsys.model.rank_trainer as rank_trainer
    from recsys.evaluation.tuning import internal_rank_split

    data = _data(n_users=60, n_products=80, per_user=15)
    fit_part, val_part = internal_rank_split(data)

    made: list[str] = []
    original = rank_trainer.SpilledWeights.__init__

    def recording(self, weights):
        original(self, weights)
        made.append(self.folder)

    monkeypatch.setattr(rank_trainer.SpilledWeights, "__init__", recording)

    def search(spill_bytes: int):
        monkeypatch.setattr(rank_trainer, "SPILL_BYTES", spill_bytes)
        made.clear()
        trainer = _trainer(fit_part, row_step=True, eval_every=1, patience=3)
        result = trainer.run(8, val_part)
        return result, [v.numpy() for v in trainer.variables], list(made)

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(rank_trainer, "AVERAGE_CHUNK_BYTES", 5 * 16 * 4)  # 5 rows a piece
    kept, kept_weights, none_made = search(1 << 40)
    spilled, spilled_weights, made = search(0)
    assert none_made == [] and made, "the small run spills nothing, the other every best epoch"
    assert spilled.epochs == kept.epochs and spilled.validation == kept.validation
    assert kept.epochs < len(kept.losses), "the best epoch is not the last: the copy matters"
    for a, b in zip(spilled_weights, kept_weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert list(tmp_path.iterdir()) == []


def test_spilled_arrays_read_back_by_rows_pieces_and_chosen_rows(monkeypatch, tmp_path) -> None:
    """A spilled array read whole, by a row range, by pieces or at chosen rows (unsorted,
    repeated) gives the rows it was written with, from arrays or from average pieces."""
    import tempfile

    import recsys.model.rank_trainer as rank_trainer

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(rank_trainer, "AVERAGE_CHUNK_BYTES", 4 * 3 * 4)  # 4 rows of 3 floats
    rng = np.random.default_rng(5)
    table = rng.normal(size=(23, 3)).astype(np.float32)
    column = rng.normal(size=(7,)).astype(np.float32)
    spilled = rank_trainer.SpilledWeights([table, column])
    try:
        got, small = spilled.arrays()
        np.testing.assert_array_equal(np.asarray(got), table)
        np.testing.assert_array_equal(np.asarray(small), column)
        np.testing.assert_array_equal(got.rows(5, 14), table[5:14])
        assert got.rows(23, 23).shape == (0, 3)
        pieces = list(got.pieces())
        assert [(a, b) for a, b, _ in pieces] == [
            (0, 4),
            (4, 8),
            (8, 12),
            (12, 16),
            (16, 20),
            (20, 23),
        ]
        np.testing.assert_array_equal(np.concatenate([p for _, _, p in pieces]), table)
        index = np.array([22, 0, 7, 7, 3, 19, 4])
        np.testing.assert_array_equal(got.take(index), table[index])
    finally:
        spilled.close()
    assert list(tmp_path.iterdir()) == []


def test_validation_of_spilled_averages_equals_validation_of_the_arrays(monkeypatch) -> None:
    """The averages written to disk in pieces and read back a piece at a time give the same
    internal-validation NDCG, bit for bit, as the same averages in memory."""
    import recsys.model.rank_trainer as rank_trainer
    from recsys.evaluation.tuning import internal_rank_split

    data = _data(n_users=60, n_products=80, per_user=15)
    fit_part, val_part = internal_rank_split(data)
    trainer = _trainer(fit_part, row_step=True, validation_users=25)
    for epoch in (1, 2):
        trainer.run_epoch(epoch, 2, {})
    monkeypatch.setattr(rank_trainer, "AVERAGE_CHUNK_BYTES", 3 * 16 * 4)  # 3 rows a piece
    in_memory = trainer.validate(val_part, trainer.optimizer.averages())
    monkeypatch.setattr(rank_trainer, "SPILL_BYTES", 0)
    spilled = trainer._averages()
    assert isinstance(spilled, rank_trainer.SpilledWeights)
    try:
        for got, want in zip(spilled.arrays(), trainer.optimizer.averages(), strict=True):
            np.testing.assert_array_equal(np.asarray(got), want)
        assert trainer.validate(val_part, spilled) == in_memory
    finally:
        spilled.close()
