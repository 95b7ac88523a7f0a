"""Co-rating lists, computed sparse and block by block, equal the dense cosine matrix cut with
the project's top-k: same products, same order, same ties, same scores."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from recsys.data.topk import top_k
from recsys.scoring.similar import co_rating_lists


def _dense(product_ids, users, products, allowed, k):
    """Every pair's rater-set cosine as one dense float32 matrix, then top_k per row."""
    user_index = np.unique(users, return_inverse=True)[1]
    x = np.zeros((user_index.max() + 1, len(product_ids)), dtype=np.float32)
    x[user_index, np.searchsorted(product_ids, products)] = 1.0
    co = x.T @ x
    norms = np.sqrt(x.sum(axis=0)).astype(np.float32)
    scores = co / np.maximum(norms[:, None] * norms[None, :], np.float32(1e-12))
    scores[co <= 0] = -np.inf
    scores[:, ~allowed] = -np.inf
    np.fill_diagonal(scores, -np.inf)
    return top_k(scores, k, product_ids)


@hsettings(max_examples=60, deadline=None)
@given(
    n_users=st.integers(1, 30),
    n_products=st.integers(1, 25),
    n_ratings=st.integers(1, 200),
    k=st.integers(1, 6),
    max_pairs=st.integers(1, 300),
    seed=st.integers(0, 2**16),
)
def test_sparse_blocks_give_the_dense_lists(
    n_users, n_products, n_ratings, k, max_pairs, seed
) -> None:
    rng = np.random.default_rng(seed)
    # few distinct rater-set sizes, so equal cosines (ties) are common
    users = rng.integers(0, n_users, n_ratings) * 7 + 3
    products = rng.integers(0, n_products, n_ratings) * 5 + 11
    pairs = np.unique(np.stack([users, products], axis=1), axis=0)  # ratings are unique pairs
    users, products = pairs[:, 0], pairs[:, 1]
    product_ids = np.unique(products)
    allowed = rng.random(len(product_ids)) < 0.8

    blocks = list(co_rating_lists(product_ids, users, products, allowed, k, max_pairs=max_pairs))
    got = [np.concatenate([b[i] for b in blocks]) for i in range(4)]
    expected = _dense(product_ids, users, products, allowed, k)

    assert [b[4] for b in blocks] == sorted({b[4] for b in blocks})  # products done, rising
    assert blocks[-1][4] == len(product_ids)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


def test_a_product_whose_raters_rated_only_it_has_no_list() -> None:
    product_ids = np.array([1, 2, 3])
    users = np.array([10, 10, 20])
    products = np.array([1, 2, 3])
    blocks = list(co_rating_lists(product_ids, users, products, np.ones(3, bool), k=5))
    rows = np.concatenate([b[0] for b in blocks])
    cols = np.concatenate([b[2] for b in blocks])
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


@hsettings(max_examples=40, deadline=None)
@given(
    n_products=st.integers(0, 40),
    dim=st.integers(1, 4),
    k=st.integers(1, 6),
    share_allowed=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_text_lists_equal_the_dense_cosine_matrix_cut_with_top_k(
    n_products, dim, k, share_allowed, seed
) -> None:
    from recsys.scoring.similar import text_lists

    rng = np.random.default_rng(seed)
    # small integer vectors: many equal cosines, so the tie rule is exercised
    vectors = rng.integers(-2, 3, (n_products, dim)).astype(np.float32)
    product_ids = np.sort(rng.choice(10_000, n_products, replace=False)).astype(np.int64)
    allowed = rng.random(n_products) < share_allowed
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    scores = (unit @ unit.T).astype(np.float32)
    scores[:, ~allowed] = -np.inf
    np.fill_diagonal(scores, -np.inf)
    expected = top_k(scores, k, product_ids)

    blocks = list(text_lists(product_ids, vectors, allowed, k))
    got = [np.concatenate([b[i] for b in blocks] or [np.zeros(0, np.int64)]) for i in range(4)]
    assert [b[4] for b in blocks][-1:] == ([n_products] if n_products else [])
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


@hsettings(max_examples=60, deadline=None)
@given(
    n_products=st.integers(0, 60),
    k=st.integers(1, 6),
    tile=st.sampled_from([1, 2, 3, 8, 16]),
    share_allowed=st.sampled_from([0.0, 0.3, 0.9, 1.0]),
    shuffled_ids=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_tiled_text_lists_equal_the_dense_cosine_matrix_cut_with_top_k(
    n_products, k, tile, share_allowed, shuffled_ids, seed
) -> None:
    """The upper-triangle tiles, read by rows and by columns, give the dense matrix's lists.
    Vectors of four +-0.5 entries (or zero) have unit norm and exact dot products, so every
    tile shape gives bit-equal cosines and the many ties test the tie rule exactly."""
    from recsys.scoring.similar import text_lists, text_pairs

    rng = np.random.default_rng(seed)
    vectors = np.zeros((n_products, 8), dtype=np.float32)
    for row in vectors[: max(0, n_products - 1)]:  # the last one stays zero
        row[rng.choice(8, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    product_ids = rng.choice(10_000, n_products, replace=False).astype(np.int64)
    if not shuffled_ids:
        product_ids.sort()
    allowed = rng.random(n_products) < share_allowed
    scores = (vectors @ vectors.T).astype(np.float32)
    scores[:, ~allowed] = -np.inf
    np.fill_diagonal(scores, -np.inf)
    expected = top_k(scores, k, product_ids)

    blocks = list(text_lists(product_ids, vectors, allowed, k, tile=tile, tiled_from=0))
    got = [np.concatenate([b[i] for b in blocks] or [np.zeros(0, np.int64)]) for i in range(4)]
    order = np.lexsort((got[1], got[0]))
    assert [b[4] for b in blocks] == sorted({b[4] for b in blocks})
    assert [b[4:] for b in blocks][-1:] == (
        [(n_products, text_pairs(n_products, k, tile, 0))] if n_products else []
    )
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g[order], e)


@pytest.mark.parametrize("threads", [1, 2])
def test_tiled_text_lists_equal_whole_rows_on_word_vector_like_data(threads: int) -> None:
    """At the production tile size, float vectors, tiles in this thread (a threaded BLAS) or two
    at a time (one-thread BLAS each): the same lists, scores and ties as scoring whole rows of
    the catalogue (one matmul per block of rows, the path for small catalogues)."""
    from recsys.scoring.similar import TILE, _lists, text_lists

    rng = np.random.default_rng(7)
    n = 2 * TILE + 300
    centres = rng.standard_normal((40, 100)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, n)] + 0.8 * rng.standard_normal((n, 100))
    vectors = vectors.astype(np.float32)
    vectors[5] = vectors[9]  # an exact tie
    product_ids = rng.permutation(np.arange(n, dtype=np.int64) * 3 + 1)
    allowed = rng.random(n) < 0.95
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    whole = list(_lists(lambda a, b: unit[a:b] @ unit.T, n, product_ids, allowed, 20, 256))
    expected = [np.concatenate([b[i] for b in whole]) for i in range(4)]
    tiled = list(text_lists(product_ids, vectors, allowed, 20, tiled_from=0, threads=threads))
    got = [np.concatenate([b[i] for b in tiled]) for i in range(4)]
    order = np.lexsort((got[1], got[0]))
    assert len(tiled) == 3  # three row blocks: the tiled path ran
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g[order], e)


def test_the_tiles_start_later_with_one_thread() -> None:
    """With one core the merges cannot run beside the matmuls, so the tiles start at
    TILED_FROM_ONE_THREAD products instead of TILED_FROM; the progress total says which path
    runs (every pair for whole rows, the triangle for tiles)."""
    from recsys.scoring.similar import TILED_FROM, TILED_FROM_ONE_THREAD, text_pairs

    n = (TILED_FROM + TILED_FROM_ONE_THREAD) // 2
    assert text_pairs(n, threads=1) == n * n
    assert text_pairs(n, threads=2) < n * n
    assert text_pairs(TILED_FROM_ONE_THREAD, threads=1) < TILED_FROM_ONE_THREAD**2
    assert text_pairs(TILED_FROM - 1, threads=2) == (TILED_FROM - 1) ** 2
