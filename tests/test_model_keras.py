"""The Keras recommenders: fast scorer == model.predict, text dependence, save/load, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.errors import DataError, RecsysError
from recsys.model import catalog
from recsys.model.base import RatingData, Recommender
from recsys.model.keras_models import KerasRecommender

SMALL = {"epochs": 2, "hidden_units": 48, "learning_rate": 0.01}


def synthetic(
    n_users: int = 60, n_products: int = 90, n: int = 4000, dim: int = 5, seed: int = 0
) -> RatingData:
    """Ratings that depend on the first text dimension, so the hybrid has something to learn."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n).astype(np.int32)
    products = rng.integers(0, n_products, n).astype(np.int32)
    text = rng.normal(size=(n_products, dim)).astype(np.float32)
    has_text = rng.random(n_products) < 0.8
    text[~has_text] = 0
    ratings = np.clip(np.round(3 + text[products, 0] + rng.normal(size=n) * 0.5), 1, 5).astype(
        np.float32
    )
    return RatingData(
        users,
        products,
        ratings,
        np.arange(n, dtype=np.int64),
        np.arange(100, 100 + n_users, dtype=np.int64),
        np.arange(500, 500 + n_products, dtype=np.int64),
        text,
        has_text,
    )


@pytest.fixture(scope="module")
def data() -> RatingData:
    return synthetic()


@pytest.fixture(scope="module")
def trained(data: RatingData) -> dict[str, KerasRecommender]:
    models = {}
    for kind in ("mf", "deep", "hybrid"):
        model = KerasRecommender(kind, **SMALL)
        model.fit(data, seed=3)
        models[kind] = model
    return models


def _direct(model: Recommender, users: np.ndarray, n_products: int) -> np.ndarray:
    pairs_u = np.repeat(users, n_products)
    pairs_p = np.tile(np.arange(n_products), len(users))
    return model.predict(pairs_u, pairs_p).reshape(len(users), n_products)


@pytest.mark.parametrize("kind", ["mf", "deep", "hybrid"])
def test_fast_scorer_equals_predict(trained, data: RatingData, kind: str) -> None:
    model = trained[kind]
    assert isinstance(model, Recommender)
    users = np.random.default_rng(1).choice(data.n_users, 7, replace=False)
    fast = model.score_users(users)
    assert fast.dtype == np.float32 and fast.shape == (7, data.n_products)
    np.testing.assert_allclose(fast, _direct(model, users, data.n_products), rtol=1e-5, atol=2e-5)
    assert np.ptp(fast) > 0  # not a constant


def test_fast_scorer_small_blocks_pad_and_tile(trained, data: RatingData) -> None:
    """A tiny memory budget forces many blocks with padded edges; the result must not change."""
    model = trained["hybrid"]
    users = np.arange(data.n_users)
    reference = model.score_users(users)
    try:
        # 40 pairs: blocks of 64 products x 1 user (products padded); 448 pairs: 64 x 7 users
        # (60 users: the last user block padded too)
        for pairs in (40, 448):
            model.block_bytes = 4 * 48 * pairs
            np.testing.assert_allclose(model.score_users(users), reference, rtol=1e-6, atol=1e-6)
    finally:
        model.block_bytes = 64 << 20


def test_hybrid_predictions_depend_on_text(trained, data: RatingData) -> None:
    model = trained["hybrid"]  # shared: its text is put back before the test ends
    users = np.array([0, 1, 2])
    before_fast = model.score_users(users)
    before = _direct(model, users, data.n_products)
    text = data.text.copy()
    text[7] = text[7] + 3.0  # change one product's vector
    try:
        model.set_text(text, data.has_text)
        after_fast = model.score_users(users)
        after = _direct(model, users, data.n_products)
    finally:
        model.set_text(data.text, data.has_text)
    np.testing.assert_array_equal(model.score_users(users), before_fast)
    assert np.abs(after[:, 7] - before[:, 7]).min() > 1e-4
    others = np.arange(data.n_products) != 7
    np.testing.assert_allclose(after[:, others], before[:, others], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(after_fast, after, rtol=1e-5, atol=2e-5)
    assert not np.allclose(after_fast[:, 7], before_fast[:, 7])


def test_score_new_products_is_the_mean_embedding_with_text(trained, data: RatingData) -> None:
    model = trained["hybrid"]
    users = np.array([3, 4])
    new_text = np.random.default_rng(5).normal(size=(4, data.text.shape[1])).astype(np.float32)
    scores = model.score_new_products(users, new_text)
    assert scores.shape == (2, 4)
    # the same computation through the network: the new product in slot 0, mean embedding
    emb_layer = model.model.get_layer("product_embedding")
    saved_emb = emb_layer.get_weights()[0].copy()
    try:
        for j in range(4):
            emb = saved_emb.copy()
            emb[0] = saved_emb.mean(axis=0)
            emb_layer.set_weights([emb])
            text = data.text.copy()
            text[0] = new_text[j]
            has = data.has_text.copy()
            has[0] = True
            model.set_text(text, has)
            direct = model.predict(users, np.zeros(2, dtype=np.int32))
            np.testing.assert_allclose(scores[:, j], direct, rtol=1e-5, atol=2e-5)
    finally:
        emb_layer.set_weights([saved_emb])
        model.set_text(data.text, data.has_text)
    with pytest.raises(RecsysError, match="dimension"):
        model.score_new_products(users, new_text[:, :2])
    with pytest.raises(RecsysError, match="cannot score new products"):
        trained["deep"].score_new_products(users, new_text)


@pytest.mark.parametrize("kind", ["mf", "deep", "hybrid", "bias", "popularity"])
def test_save_load_round_trip_identical(
    trained, data: RatingData, kind: str, tmp_path: Path
) -> None:
    if kind in trained:
        model = trained[kind]
    else:
        model = catalog.create(kind)
        model.fit(data, seed=3)
    model.save(tmp_path / kind)
    loaded = catalog.load(tmp_path / kind)
    assert loaded.name == kind
    users = np.arange(10)
    np.testing.assert_array_equal(loaded.score_users(users), model.score_users(users))
    if kind != "popularity":
        u, p = data.users[:200], data.products[:200]
        np.testing.assert_array_equal(loaded.predict(u, p), model.predict(u, p))


def test_same_seed_same_model_other_seed_differs(data: RatingData) -> None:
    small = synthetic(n=1500, seed=2)
    runs = []
    for seed in (11, 11, 12):
        model = KerasRecommender("deep", epochs=1, hidden_units=16)
        history = model.fit(small, seed=seed)
        runs.append((history.train_loss, model.score_users(np.arange(5))))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][1], runs[2][1])


def test_notebook_defaults() -> None:
    mf, deep, hybrid = (KerasRecommender(k) for k in ("mf", "deep", "hybrid"))
    assert mf.params | {} == mf.params and mf.params["embedding_dim"] == 10
    assert (mf.params["learning_rate"], mf.params["momentum"]) == (0.1, 0.99)
    for model in (deep, hybrid):
        assert model.params["embedding_dim"] == 32 and model.params["hidden_units"] == 1024
        assert (model.params["learning_rate"], model.params["momentum"]) == (0.1, 0.9)
        assert model.params["dropout"] == 0.2
    for model in (mf, deep, hybrid):
        assert (model.params["batch_size"], model.params["epochs"], model.params["patience"]) == (
            1024,
            20,
            6,
        )


def test_network_layers_and_custom_layer_config(data: RatingData) -> None:
    import keras

    from recsys.model.network import NetworkConfig, ProductText, build_model

    model = build_model(NetworkConfig("hybrid", 4, 6, text_dim=3))
    names = [layer.name for layer in model.layers]
    for name in (
        "user_embedding",
        "product_embedding",
        "product_text",
        "hidden",
        "dropout",
        "output",
    ):
        assert name in names
    assert model.get_layer("hidden").units == 1024
    assert model.get_layer("hidden").kernel.shape == (32 + 32 + 3 + 1, 1024)
    layer = ProductText(6, 3)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, ProductText) and (clone.n_products, clone.text_dim) == (6, 3)


def test_hybrid_without_text_is_a_clear_error(data: RatingData) -> None:
    from dataclasses import replace

    with pytest.raises(DataError, match="recsys features build"):
        KerasRecommender("hybrid", **SMALL).fit(replace(data, text=None, has_text=None))


def test_bias_baseline_hand_computed() -> None:
    # two users, two products; reg 0 and one iteration gives plain means
    data = RatingData(
        np.array([0, 0, 1], np.int32),
        np.array([0, 1, 0], np.int32),
        np.array([5, 3, 1], np.float32),
        np.zeros(3, np.int64),
        np.array([1, 2]),
        np.array([1, 2]),
    )
    model = catalog.create("bias", reg_user=0.0, reg_product=0.0, iterations=1)
    model.fit(data)
    mu = 3.0
    b_u = np.array([(5 - mu + 3 - mu) / 2, (1 - mu) / 1])  # [1, -2]
    b_i = np.array([((5 - mu - 1) + (1 - mu + 2)) / 2, (3 - mu - 1) / 1])  # [0.5, -1]
    np.testing.assert_allclose(model.predict(np.array([0, 1]), np.array([1, 1])), mu + b_u + b_i[1])
    np.testing.assert_allclose(model.score_users(np.array([1])), [[mu - 2 + 0.5, mu - 2 - 1]])
    pop = catalog.create("popularity")
    pop.fit(data)
    np.testing.assert_array_equal(pop.score_users(np.array([0, 1])), [[2, 1], [2, 1]])
    with pytest.raises(NotImplementedError):
        pop.predict(np.array([0]), np.array([0]))


def test_catalog_errors() -> None:
    with pytest.raises(RecsysError, match="unknown model 'nope'; known models: .*hybrid"):
        catalog.create("nope")
    with pytest.raises(RecsysError, match="bad parameters for model 'bias'"):
        catalog.create("bias", epochs=3)
    assert catalog.model_params("bias", {"epochs": 3}) == {}
    assert catalog.model_params("mf", {"epochs": 3, "batch_size": None}) == {"epochs": 3}
