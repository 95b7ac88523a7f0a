"""The feature store: product text vectors in PostgreSQL (pgvector), built incrementally.

Tables (Alembic revision 0002): ``feature_sets`` (one row per build; at most one
``is_current``, enforced by a partial unique index) and ``product_features`` (one row per
product and set: the cleaned-text hash, the vector or the reason there is none, the words used).

Design:

* **One transaction per build.** The CPU work (cleaning, word vectors, embedding) happens
  before any write; then one transaction inserts the set, copies reused rows forward, COPYs the
  new ones, builds the set's HNSW index and flips ``is_current``. Readers keep the old set until
  that commit, and a failed build leaves nothing behind.
* **Incremental.** A product's vector is reused from the current set when its cleaned-text hash
  is unchanged and the set's ``source_fingerprint`` (word vectors, dimension, weighting,
  cleaning version, text options, and for ``tfidf`` the catalogue's idf) is equal; reused rows
  are copied in SQL (``INSERT ... SELECT``), never through Python. Changed word vectors
  recompute everything.
* **Binary COPY both ways.** Embedded rows are fixed-size, so they are written and read as
  PostgreSQL binary COPY built / parsed with numpy (pgvector's binary format: int16 dim,
  int16 0, big-endian float32s), without a Python loop per row.
* **Mixed dimensions.** ``vector`` is untyped; each set gets a partial expression index
  ``USING hnsw ((vector::vector(DIM)) vector_cosine_ops) WHERE feature_set_id = N`` (pgvector's
  documented way to index mixed dimensions); queries use the same expression.

Split by concern: :mod:`recsys.features.records` (feature-set rows, vectors, indexes, the
current set), :mod:`recsys.features.build` (cleaning, embedding, the build transaction, its
:class:`~recsys.features.build.BuildConfig`) and :mod:`recsys.features.similar` (nearest
neighbours); every name stays importable from here.
"""

from __future__ import annotations

from recsys.errors import RecsysError  # noqa: F401
from recsys.features.build import (  # noqa: F401
    _PRODUCTS_QUERY,
    BuildSummary,
    Progress,
    _build,
    _Catalogue,
    _copy_forward,
    _idf_fingerprint,
    _read_catalogue,
    build_features,
    text_hash,
)
from recsys.features.records import (  # noqa: F401
    _SET_COLUMNS,
    FEATURES_LOCK,
    HNSW_MAX_DIM,
    SKIP_NO_KNOWN_WORDS,
    SKIP_NO_TEXT,
    SKIP_NO_WORDS,
    FeatureSetInfo,
    _info,
    _psycopg,
    _vector_row_dtype,
    create_feature_set,
    create_index,
    current_feature_set,
    finish_feature_set,
    get_feature_set,
    hnsw_memory_mb,
    index_name,
    iter_feature_sets_table,
    list_feature_sets,
    make_current,
    prune_feature_sets,
    read_vectors,
    write_skipped,
    write_vectors,
)
from recsys.features.similar import (  # noqa: F401
    SimilarProduct,
    similar_products,
    similar_sql,
)
from recsys.progress import NO_PROGRESS  # noqa: F401

__all__ = [
    "BuildSummary",
    "FeatureSetInfo",
    "RecsysError",
    "SimilarProduct",
    "build_features",
    "current_feature_set",
    "get_feature_set",
    "list_feature_sets",
    "make_current",
    "read_vectors",
    "similar_products",
    "write_vectors",
]
