"""The scoring loop: every user's exact top-k under the rules, batch by batch, then the run.

For each block of users known to the model the loop gets the model's scores (a dot-product
model's factors through :func:`recsys.scoring.block.dot_scores`, any other model through
``recommender.score_users``) and hands them to :func:`recsys.scoring.block.score_block`, the
pure kernel that applies every rule before the exact top-k cut (a dot-product model's blocks
go through :func:`recsys.scoring.bound.score_by_bound`, which hands the kernel only the
prefixes of the catalogue that can hold each user's list). Every product the user has
rated *in the database* is masked, not only those seen in training. Rows the rules left short
are backfilled from the fallback (:mod:`recsys.scoring.fallback`), and every row gets its
reason (:mod:`recsys.scoring.reasons`).

Users the model does not know (filtered out by ``--min-ratings``, or new since training) but
who rated at least one product it knows are FOLDED IN when the model can pool a user vector
from a history (``recommender.user_vectors_for``: the ranker, ALS): their exact model list comes
from their database ratings of the model's products (strategy ``model``; the count is recorded as
``params["folded_in"]`` of the run; no cold-start products for them). Models that score a
history row directly (``recommender.score_histories``: EASE) fold in the same way. Folded-in
users go through the same block, rules and reasons as the model's own users; those with the
same ratings and no exclusions (TWINS: most of them rated one or two products) are scored once
and share the rows (``params["twins"]`` counts the copies; see :func:`fold_in_users`). The
others get a
fallback list instead: the most rated products (``popularity``), or, with
``fallback="category"``, the most rated products in the categories of the products they rated
(``category_popularity``) topped up from the global list. A product's category is the last
(most specific) element of its category path, or ``main_category`` when it has no path. The
fallback score is the product's number of ratings.

With ``cold_start=True`` and a model that implements
:class:`recsys.model.base.ColdStartScorer`, products that have a text vector in the model's
feature set but are not in the model's index are scored through their text vector and compete
in the same list (strategy ``cold_start``).

**Rules** (all read from PostgreSQL at the start of the run; see README "Rules"):
unavailable products (``products.available = false``), per-user exclusions in force
(``user_exclusions``), boosts valid now (``product_boosts``) and the caps
``max_per_category`` / ``max_per_brand``. A boost factor f changes ranking scores (logits,
e.g. the ranker's) to ``score + ln f`` (the model's softmax share of the product times f) and
rating scores (predicted ratings) to ``score * f``; fallback scores (numbers of ratings) to
``count * f``. The published score is the boosted one.

**One snapshot.** Every read of a run happens in one REPEATABLE READ transaction (the one that
also writes the rows), so the whole run sees the database as of its first read. A load that
commits while the run is scoring is not seen by it: its ratings are not masked and its new
users get no list until the next run, which sees them.

Memory is bounded: one block of users x products is held at a time.

**Blocks.** The database is read in this process; each block of users (their ids, model
indices, ratings and exclusions: :class:`UserBlock`) is scored by :func:`score_user_block`,
which needs only the run's fixed :class:`ScoringPart` and is pure. A runner decides where the
blocks are scored: here (:func:`local_blocks`) or on a cluster's workers (``recsys.cluster``);
the rows always come back here and are written by COPY, so both engines write the same run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.blas import local_cores, ordered_in_threads
from recsys.data.topk import top_k
from recsys.errors import DataError, Interrupted, RecsysError
from recsys.scoring import bound, reads, reasons
from recsys.scoring.block import (
    RULE_COUNT_KEYS,
    Columns,
    GroupCap,
    augment_products,
    dot_scores,
    score_block,
    users_per_block,
)
from recsys.scoring.fallback import Fallback
from recsys.scoring.histories import Histories
from recsys.scoring.publish import (
    FLUSH_ROWS,
    STRATEGIES,
    RunWriter,
    ScoreBatch,
    begin_run,
    fail_run,
)

__all__ = [
    "ScoreOptions",
    "ScoreSummary",
    "ScoringInterrupted",
    "ScoringModel",
    "ScoringPart",
    "UserBlock",
    "BlockRows",
    "BlockRunner",
    "TwinCopies",
    "copied_batches",
    "batch_size_for",
    "local_blocks",
    "load_model",
    "rated_pairs",
    "score_and_write",
    "score_batches",
    "score_user_block",
    "top_k",
]

_log = logging.getLogger(__name__)

MODEL, COLD_START, POPULARITY, CATEGORY_POPULARITY = (STRATEGIES.index(s) for s in STRATEGIES)
"""Model types whose ranking score is a predicted rating (boosts multiply them)."""

rated_pairs = reads.rated_pairs

_BECAUSE, _SIMILAR, _FOR_YOU, _POPULAR, _POPULAR_IN = range(5)
_FIXED_REASONS = (reasons.BECAUSE_RATED, reasons.SIMILAR_TO, reasons.FOR_YOU, reasons.POPULAR)


class ScoringInterrupted(Interrupted):
    """Scoring was asked to stop (SIGTERM/SIGINT); nothing of the run was committed."""


@dataclass(frozen=True)
class ScoringModel:
    """What scoring needs of a trained model (``recsys.model.registry.LoadedRun`` has it all)."""

    recommender: Any
    """Implements ``recsys.model.base.Recommender`` (``score_users``)."""
    user_ids: np.ndarray
    """int64 [n_users]: ``users.id`` of each user index."""
    product_ids: np.ndarray
    """int64 [n_products]: ``products.id`` of each product index."""
    run_id: int | None = None
    model_type: str | None = None
    feature_set_id: int | None = None
    metrics: dict = field(default_factory=dict)
    """The model run's stored evaluation metrics."""


@dataclass(frozen=True)
class ScoreOptions:
    """How to score."""

    k: int = 10
    fallback: str = "category"
    """``category`` (popular in the user's categories, topped up globally) or ``popularity``."""
    cold_start: bool = False
    """Also score new products (text vector, not in the model) via ``score_new_products``."""
    memory_mb: int = 512
    """Working memory for one batch of users x products; sets the batch size."""
    batch_users: int | None = None
    """Explicit batch size (overrides ``memory_mb`` and the cache-sized blocks)."""
    max_per_category: int | None = None
    """At most this many products of one category per list (None: no cap)."""
    max_per_brand: int | None = None
    """At most this many products of one brand per list (None: no cap)."""
    rules: bool = True
    """Apply availability, exclusions and boosts (False only to measure their cost)."""
    reasons: bool = True
    """Compute the reason of every row."""
    threads: int = 0
    """Blocks of a dot-product model scored at once in this process, each with a one-thread
    BLAS (0: one per core the process may use; 1: one block at a time, the BLAS threaded)."""
    prune: bool = True
    """Score a dot-product model's blocks by prefixes of the catalogue in bound order
    (:mod:`recsys.scoring.bound`): the same lists and counts, from fewer products. False: every
    product for every user (to measure the difference)."""
    twins: bool = True
    """Folded-in users with the same ratings and no exclusions share one scored list (the same
    rows, counts and reasons as scoring each; see :func:`fold_in_users`). False: each is scored
    (to measure the difference)."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise RecsysError(f"k must be at least 1, got {self.k}")
        if self.fallback not in ("category", "popularity"):
            raise RecsysError(f"unknown fallback {self.fallback!r} (category or popularity)")
        for name in ("max_per_category", "max_per_brand"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RecsysError(f"{name.replace('_', '-')} must be at least 1, got {value}")


@dataclass(frozen=True)
class ScoreSummary:
    """The outcome of a scoring run."""

    run_id: int
    model_run_id: int | None
    k: int
    n_users: int
    n_rows: int
    counts: dict[str, int] = field(default_factory=dict)
    """Users per strategy (a user counts under the strategy of their rank-1 row)."""
    seconds: float = 0.0
    published: bool = False
    previous_run_id: int | None = None
    rule_counts: dict[str, int] = field(default_factory=dict)
    gates: dict | None = None


class _IdIndex:
    """Map database ids to positions in an id array (vectorised, unknown ids -> -1)."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.order = np.argsort(self.ids, kind="stable")
        self.sorted = self.ids[self.order]

    def positions(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.sorted) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.searchsorted(self.sorted, ids)
        pos = np.minimum(pos, len(self.sorted) - 1)
        found = self.sorted[pos] == ids
        return np.where(found, self.order[pos], -1)


def batch_size_for(n_products: int, memory_mb: int) -> int:
    """Users per batch so that the batch's working arrays (~16 bytes per score) fit memory_mb."""
    per_user = max(1, n_products) * 16
    return int(max(1, min(8192, (memory_mb * 1024 * 1024) // per_user)))


def scores_are_ratings(model: ScoringModel) -> bool:
    """Whether the model's ranking scores are predicted ratings (else ranking logits)."""
    declared = getattr(model.recommender, "scores_are_ratings", None)
    if declared is not None:
        return bool(declared)
    from recsys.model.catalog import scores_are_ratings as spec_says

    return bool(spec_says(model.model_type))


# --- the scoring loop ----------------------------------------------------------------------


@dataclass
class _Run:
    """What one scoring run reads once, before its first block."""

    columns: Columns
    candidate_ids: np.ndarray
    n_model_products: int
    new_text: np.ndarray | None
    fallback: Fallback
    groups: reads.ProductGroups
    text: reasons.TextReasons | None
    products: np.ndarray | None
    """Augmented product factors for the dot-product path (None: ``score_users``)."""
    user_vectors: np.ndarray | None
    reason_texts: tuple[str, ...] = ()
    """Reason phrases of the run: :data:`_BECAUSE` .. :data:`_POPULAR`, then "popular in" each
    category (code ``_POPULAR_IN + category code``)."""
    fallback_boosted: set[int] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULE_COUNT_KEYS, 0))
    short_users: int = 0
    """Users whose list stayed shorter than k because the catalogue under the rules ran out."""
    notes: dict[str, Any] = field(default_factory=dict)
    n_model_users: int = 0
    """Users the model was trained with; user indices from here on are folded-in users."""
    folded_history: Histories = field(default_factory=Histories.empty)
    """Per folded-in user, the model product indices they rated."""
    twins: Histories = field(default_factory=Histories.empty)
    """Per folded-in user who is scored, the ``users.id`` of the folded-in users who get a copy
    of their list (the same database ratings, no exclusions; empty: none, or twins off)."""
    fold_by_vector: bool = False
    """Folded-in users are scored through user vectors pooled from their history, block by
    block (``recommender.user_vectors_for``); False: as history rows (``score_histories``)."""
    exclusions: reads.UserPairs | None = None
    """Every exclusion in force (None: rules off)."""
    contributions: reasons.ContributionReasons | None = None
    """The model's per-history-product contributions (built at the first block that needs them)."""
    bound_order: bound.BoundOrder | None = None
    """The products in bound order when blocks are scored by prefixes (``options.prune``)."""


def model_users(model: ScoringModel, db_users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The users the model scores: (``users.id``, model user index), in model index order.

    With :func:`fold_in_users`, the users outside the model who rated a product it knows join
    this set; every other user gets the fallback.
    """
    model_user_ids = np.asarray(model.user_ids, dtype=np.int64)
    known = np.flatnonzero(np.isin(model_user_ids, db_users))
    return model_user_ids[known], known


def user_vectors_of(model: ScoringModel) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(user vectors by model user index, product vectors, bias) of a dot-product model.

    None when the model only offers ``score_users``. (Fold-in adds the vectors of users
    outside the training filter here.)
    """
    factors = getattr(model.recommender, "score_factors", None)
    if factors is None:
        return None
    users, products, bias = factors()
    users = np.asarray(users, dtype=np.float32)
    products = np.asarray(products, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    if not (np.isfinite(users).all() and np.isfinite(products).all() and np.isfinite(bias).all()):
        raise DataError("the model's user or product vectors are not finite")
    return users, products, bias


def fold_in_users(
    conn: sa.Connection,
    model: ScoringModel,
    run: _Run,
    unknown: np.ndarray,
    *,
    twins: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Fold in the users the model does not know who rated at least one product it knows.

    Their history (every database rating of a model product) is kept in the run
    (``run.folded_history``); each block pools their user vectors from it
    (``recommender.user_vectors_for``: the ranker, ALS; see :func:`block_user_vectors`) or
    scores it as history rows (``recommender.score_histories``: EASE). So the run never holds
    every folded-in user's vector at once: a block's vectors are computed when it is scored,
    by the same function on the same history, whichever block or process scores it. They get
    user indices after the model's own users, so the scoring loop treats them like any other
    model user.

    **Twins.** Most folded-in users rated one or two products, so many of them rated exactly the
    same ones. Two folded-in users with the same database ratings (the same products, whatever
    the stars: fold-in pools products, not ratings) and no exclusions in force get the same
    scores, masks, rules, reasons and backfill, so only the first of them (by user id) is
    scored and the others get a copy of its rows, counted as their own in every rule count
    (:func:`score_user_block`). Histories of more than 8 products are not compared.

    Returns:
        (their ``users.id``, their user indices, True where the user is scored: False for a
        twin that gets a copy), or None when nobody folds in.
    """
    recommender = model.recommender
    vectors_for = getattr(recommender, "user_vectors_for", None)
    by_vector = vectors_for is not None and bool(getattr(recommender, "folds_in", False))
    by_history = not by_vector and hasattr(recommender, "score_histories")
    if not len(unknown) or not (by_vector or by_history):
        return None
    rated_u, rated_p = reads.rated_pairs(conn, unknown)
    items = _IdIndex(np.asarray(model.product_ids, dtype=np.int64)).positions(rated_p)
    known = items >= 0
    folded_ids = np.unique(rated_u[known])
    if not len(folded_ids):
        return None
    n = len(folded_ids)
    rows = _IdIndex(folded_ids).positions(rated_u)  # -1: a user who rated no model product
    run.n_model_users = len(model.user_ids)
    run.folded_history = Histories.grouped(rows[known], items[known], n)
    run.fold_by_vector = by_vector
    del items, known
    scored = np.ones(n, dtype=bool)
    if twins:
        compared = rows >= 0
        if run.exclusions is not None:  # a user with exclusions has a list of their own
            compared &= ~np.isin(rated_u, run.exclusions.users)
        first = Histories.grouped(rows[compared], rated_p[compared], n).first_identical()
        twin = first != np.arange(n)
        run.twins = Histories.grouped(first[twin], folded_ids[twin], n)
        scored = ~twin
    return folded_ids, run.n_model_users + np.arange(n), scored


def block_user_vectors(model: ScoringModel, run: _Run, user_index: np.ndarray) -> np.ndarray:
    """The user vectors of a block (model user indices, folded-in users after the model's own):
    the model's vectors for its users, vectors pooled from the history for folded-in users.

    Raises:
        DataError: the model's pooled vectors are not finite.
    """
    folded = user_index >= run.n_model_users if len(run.folded_history) else None
    if folded is None or not folded.any():
        return run.user_vectors[user_index]
    vectors = _pooled(model, run, user_index[folded] - run.n_model_users)
    if folded.all():
        return vectors
    out = np.empty((len(user_index), run.user_vectors.shape[1]), dtype=np.float32)
    out[~folded] = run.user_vectors[user_index[~folded]]
    out[folded] = vectors
    return out


def _pooled(model: ScoringModel, run: _Run, folded: np.ndarray) -> np.ndarray:
    """Vectors of folded-in users (indices into ``run.folded_history``) pooled from their
    histories."""
    items, rows = run.folded_history.entries(folded)
    vectors = np.asarray(
        model.recommender.user_vectors_for(items, rows, len(folded)), dtype=np.float32
    )
    if vectors.ndim != 2 or len(vectors) != len(folded) or not np.isfinite(vectors).all():
        raise DataError("the model's folded-in user vectors are not finite")
    return vectors


def _setup(conn: sa.Connection, model: ScoringModel, options: ScoreOptions) -> _Run:
    recommender = model.recommender
    model_products = np.asarray(model.product_ids, dtype=np.int64)
    db_products = reads.product_ids(conn)
    candidate_ids = model_products
    new_text: np.ndarray | None = None
    if options.cold_start:
        if not hasattr(recommender, "score_new_products"):
            raise RecsysError(
                f"model {model.model_type or type(recommender).__name__} cannot score new products "
                "by their text vector; drop --cold-start"
            )
        new_ids, new_text = reads.new_product_vectors(conn, model.feature_set_id, model_products)
        exists = np.isin(new_ids, db_products)
        new_ids, new_text = new_ids[exists], new_text[exists]
        _log.info("cold start: %d new products scored by text vector", len(new_ids))
        candidate_ids = np.concatenate([model_products, new_ids])
    groups = reads.product_groups(conn)
    unavailable_ids = reads.unavailable_products(conn) if options.rules else np.zeros(0, np.int64)
    boost_ids, boost_factor = (
        reads.boost_factors(conn) if options.rules else (np.zeros(0, np.int64), np.zeros(0))
    )
    factor = np.ones(len(candidate_ids), dtype=np.float64)
    position = _IdIndex(candidate_ids).positions(boost_ids)
    factor[position[position >= 0]] = boost_factor[position >= 0]
    rating_scores = scores_are_ratings(model)
    caps = []
    if options.max_per_category is not None:
        caps.append(
            GroupCap(
                "category_cap",
                groups.codes_for(candidate_ids, "category"),
                options.max_per_category,
            )
        )
    if options.max_per_brand is not None:
        caps.append(
            GroupCap("brand_cap", groups.codes_for(candidate_ids, "brand"), options.max_per_brand)
        )
    factors = None if options.cold_start else user_vectors_of(model)
    offset = None if rating_scores else np.log(factor).astype(np.float32)
    columns = Columns(
        keys=candidate_ids,
        blocked=~np.isin(candidate_ids, db_products),
        unavailable=np.isin(candidate_ids, unavailable_ids),
        offset=offset,
        factor=factor.astype(np.float32) if rating_scores else None,
        caps=tuple(caps),
        offset_folded=factors is not None,
    )
    pop_ids, pop_counts = reads.popularity(conn)
    pop_factor = np.ones(len(pop_ids))
    position = _IdIndex(pop_ids).positions(boost_ids)
    pop_factor[position[position >= 0]] = boost_factor[position >= 0]
    fallback = Fallback.build(
        pop_ids,
        pop_counts,
        eligible=np.isin(pop_ids, db_products) & ~np.isin(pop_ids, unavailable_ids),
        factor=pop_factor,
        category=groups.codes_for(pop_ids, "category"),
        brand=groups.codes_for(pop_ids, "brand"),
        max_per_category=options.max_per_category,
        max_per_brand=options.max_per_brand,
    )
    text = None
    if options.reasons and (
        options.cold_start or not hasattr(recommender, "history_contributions")
    ):
        feature_set = model.feature_set_id or reads.latest_feature_set(conn)
        if feature_set is not None:
            text = reasons.TextReasons(*reads.text_vectors(conn, feature_set))
    products = user_vectors = None
    if factors is not None:
        user_vectors, vectors, bias = factors
        products = augment_products(vectors, bias, offset)
    run = _Run(
        columns,
        candidate_ids,
        len(model_products),
        new_text,
        fallback,
        groups,
        text,
        products,
        user_vectors,
        reason_texts=_FIXED_REASONS
        + tuple(f"{reasons.POPULAR_IN} {name}" for name in groups.category_names),
        fallback_boosted=set(fallback.product_ids[fallback.boosted].tolist()),
    )
    if options.prune and products is not None:
        run.bound_order = bound.plan(products, columns, user_vectors)
    if options.rules:
        run.exclusions = reads.all_excluded_pairs(conn)
        unknown = reads.exclusions_for_unknown_users(conn)
        if unknown:
            _log.warning("%d exclusions in force name users that do not exist", unknown)
        run.notes["exclusions_for_unknown_users"] = unknown
    return run


def _model_scores(
    model: ScoringModel, run: _Run, user_index: np.ndarray, buffer: np.ndarray | None
) -> np.ndarray:
    """The block's scores against every candidate column (fresh or in ``buffer``)."""
    if run.products is not None:
        return dot_scores(block_user_vectors(model, run, user_index), run.products, out=buffer)
    folded = user_index >= run.n_model_users if len(run.folded_history) else None
    if folded is None or not folded.any():
        return _trained_scores(model, run, user_index)
    scores = np.full((len(user_index), len(run.candidate_ids)), -np.inf, dtype=np.float32)
    if not folded.all():
        scores[~folded] = _trained_scores(model, run, user_index[~folded])
    # folded-in users: the model's products only (no cold-start products for them)
    scores[folded, : run.n_model_products] = _folded_scores(
        model, run, user_index[folded] - run.n_model_users
    )
    return scores


def _trained_scores(model: ScoringModel, run: _Run, user_index: np.ndarray) -> np.ndarray:
    recommender = model.recommender
    scores = np.array(recommender.score_users(user_index.astype(np.int32)), dtype=np.float32)
    if scores.shape != (len(user_index), run.n_model_products):
        raise DataError(
            f"model returned scores of shape {scores.shape}, expected "
            f"({len(user_index)}, {run.n_model_products})"
        )
    if run.new_text is not None and len(run.new_text):
        cold = np.asarray(
            recommender.score_new_products(user_index.astype(np.int32), run.new_text),
            dtype=np.float32,
        )
        scores = np.concatenate([scores, cold], axis=1)
    if np.isnan(scores).any():
        ids = np.asarray(model.user_ids)[user_index[:3]].tolist()
        raise DataError(f"the model produced NaN scores for users {ids}...")
    return scores


def _folded_scores(model: ScoringModel, run: _Run, folded: np.ndarray) -> np.ndarray:
    """Scores of folded-in users (indices into ``run.folded_history``) on the model's products."""
    recommender = model.recommender
    if run.fold_by_vector:
        scores = recommender.score_vectors(_pooled(model, run, folded))
    else:
        from scipy import sparse

        indices, _ = run.folded_history.entries(folded)
        indptr = np.zeros(len(folded) + 1, dtype=np.int64)
        np.cumsum(run.folded_history.lengths()[folded], out=indptr[1:])
        rows = sparse.csr_matrix(
            (np.ones(len(indices), dtype=np.float32), indices, indptr),
            shape=(len(folded), run.n_model_products),
        )
        scores = recommender.score_histories(rows)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape != (len(folded), run.n_model_products) or np.isnan(scores).any():
        raise DataError("the model produced bad scores for folded-in users")
    return scores


def _grouped(owners: np.ndarray, values: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    """For each id, the values whose owner is that id."""
    order = np.argsort(owners, kind="stable")
    owners, values = owners[order], values[order]
    lo = np.searchsorted(owners, ids, side="left")
    hi = np.searchsorted(owners, ids, side="right")
    return [values[a:b] for a, b in zip(lo, hi, strict=True)]


class _Rows:
    """Rows of one batch, collected piece by piece, then one :class:`ScoreBatch`."""

    def __init__(self, reason_texts: tuple[str, ...]) -> None:
        self.parts: list[tuple] = []
        self.reason_texts = reason_texts

    def add(self, users, ranks, products, scores, strategies, reason, because) -> None:
        self.parts.append((users, ranks, products, scores, strategies, reason, because))

    def batch(self) -> ScoreBatch:
        if not self.parts:
            return ScoreBatch(
                np.zeros(0, np.int64),
                np.zeros(0, np.int16),
                np.zeros(0, np.int64),
                np.zeros(0, np.float32),
                np.zeros(0, np.int8),
            )
        cols = list(zip(*self.parts, strict=True))
        return ScoreBatch(
            np.concatenate(cols[0]).astype(np.int64),
            np.concatenate(cols[1]).astype(np.int16),
            np.concatenate(cols[2]).astype(np.int64),
            np.concatenate(cols[3]).astype(np.float32),
            np.concatenate(cols[4]).astype(np.int8),
            np.concatenate(cols[5]).astype(np.int32),
            np.concatenate(cols[6]).astype(np.int64),
            self.reason_texts,
        )


def _fallback_rows(
    rows: _Rows,
    run: _Run,
    user_id: int,
    need: int,
    first_rank: int,
    *,
    skip: set[int],
    excluded: set[int],
    rated: np.ndarray,
    taken: np.ndarray,
    options: ScoreOptions,
    counts: dict[str, int],
) -> int:
    """Append up to ``need`` fallback rows for one user (rule counts into ``counts``)."""
    groups = run.groups
    user_categories = set(groups.codes_for(rated, "category").tolist()) - {-1}
    filled = run.fallback.fill(
        need,
        skip=skip,
        user_categories=user_categories,
        taken_categories=groups.codes_for(taken, "category").tolist() if len(taken) else None,
        taken_brands=groups.codes_for(taken, "brand").tolist() if len(taken) else None,
        use_categories=options.fallback == "category",
        excluded=excluded,
        counts=counts,
    )
    if not filled:
        return 0
    n = len(filled)
    rows.add(
        np.full(n, user_id),
        np.arange(first_rank, first_rank + n),
        np.asarray([f.product_id for f in filled]),
        np.asarray([f.score for f in filled]),
        np.asarray([CATEGORY_POPULARITY if f.category else POPULARITY for f in filled]),
        np.asarray([_POPULAR_IN + f.category_code if f.category else _POPULAR for f in filled]),
        np.full(n, -1),
    )
    counts["boosted"] += sum(1 for f in filled if f.product_id in run.fallback_boosted)
    return n


_CONTRIBUTIONS_LOCK = threading.Lock()


def _model_reasons(
    model: ScoringModel,
    run: _Run,
    user_index: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    rated: tuple[np.ndarray, np.ndarray],
    user_ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(reason code, because product id) of a block's model and cold-start rows, all at once.

    Args:
        user_index: model user index of each block row.
        rows, cols: block row and column of each list row.
        rated: (user_id, product_id) of the block's ratings in the database.
        user_ids: ``users.id`` of each block row.
    """
    n = len(cols)
    because = np.full(n, -1, dtype=np.int64)
    cold = cols >= run.n_model_products
    warm = ~cold
    by_text = cold
    if warm.any():
        if hasattr(model.recommender, "history_contributions"):
            with _CONTRIBUTIONS_LOCK:  # blocks may be scored on several threads
                if run.contributions is None:
                    run.contributions = reasons.ContributionReasons(
                        model.recommender, run.folded_history, run.n_model_users
                    )
            top = run.contributions.top(user_index, rows[warm], cols[warm])
            because[warm] = np.where(top >= 0, model.product_ids[np.maximum(top, 0)], -1)
        else:
            by_text = np.ones(n, dtype=bool)
    if run.text is not None and by_text.any():
        because[by_text] = run.text.most_similar_block(
            len(user_ids),
            _IdIndex(user_ids).positions(rated[0]),
            rated[1],
            rows[by_text],
            run.candidate_ids[cols[by_text]],
        )
    reason = np.where(cold, _SIMILAR, _BECAUSE)
    reason[because < 0] = _FOR_YOU
    return reason, because


@dataclass(frozen=True)
class UserBlock:
    """One block of users to score, with what the database says about them.

    The driver reads it (one snapshot); :func:`score_user_block` needs nothing else of the
    database, so a block can be scored in any process that holds the :class:`ScoringPart`.
    """

    user_ids: np.ndarray
    """int64: ``users.id`` of each user of the block."""
    user_index: np.ndarray | None
    """int64: model user index of each user; None: users the model does not score (fallback)."""
    rated: tuple[np.ndarray, np.ndarray]
    """(``users.id``, ``products.id``) of every rating of these users in the database."""
    excluded: tuple[np.ndarray, np.ndarray]
    """(``users.id``, ``products.id``) of their exclusions in force (empty without rules)."""


@dataclass(frozen=True)
class BlockRows:
    """What one block produced: its rows and what the rules did to it."""

    batch: ScoreBatch
    counts: dict[str, int]
    """Rule counts of this block (keys of :data:`RULE_COUNT_KEYS`)."""
    short_users: int
    """Users whose list stayed shorter than k (the catalogue under the rules ran out)."""
    n_users: int
    """Users of the block (with or without rows)."""
    pairs_scored: int = 0
    """User x product pairs the model scored (0: a fallback block)."""
    copies: TwinCopies | None = None
    """The block's twins, whose rows are copies of ``batch``'s (:func:`copied_batches`)."""


@dataclass(frozen=True)
class ScoringPart:
    """Everything a block needs that is fixed for the run: the model, the run's product side
    (columns, rules, fallback, reasons) and the options. No database, no model directory."""

    model: ScoringModel
    run: _Run
    options: ScoreOptions

    def portable(self) -> ScoringPart:
        """This part with the model in its picklable form (``recommender.portable()``, when the
        model has one: numpy arrays only, e.g. the ranker without its Keras towers), for other
        processes."""
        run = replace(self.run, exclusions=None, contributions=None)
        make = getattr(self.model.recommender, "portable", None)
        if make is None:
            return replace(self, run=run)
        return replace(self, model=replace(self.model, recommender=make()), run=run)


BlockRunner = Callable[[ScoringPart, Iterator[UserBlock]], Iterator[BlockRows]]
"""Scores blocks in order: ``runner(part, blocks)`` yields one :class:`BlockRows` per block, in
the order of ``blocks``. :func:`local_blocks` is the one-process runner; a cluster engine
(``recsys.cluster``) runs the same :func:`score_user_block` on its workers."""


def score_user_block(
    part: ScoringPart, block: UserBlock, buffer: np.ndarray | None = None
) -> BlockRows:
    """The rows of one block of users: model scores, rules, exact top-k, backfill, reasons.

    Pure given ``part`` and ``block`` (no database): the local loop and the cluster's workers
    both call it, so both engines write the same rows.

    Args:
        part: the run's fixed part (see :class:`ScoringPart`).
        block: the users and their ratings and exclusions.
        buffer: a reusable float32 buffer for the dot-product scores (None: a fresh array).

    Raises:
        DataError: the model returned scores of the wrong shape, or NaN.
    """
    if block.user_index is None:
        return _fallback_block(part, block)
    model, state, options = part.model, part.run, part.options
    k = options.k
    counts = dict.fromkeys(RULE_COUNT_KEYS, 0)
    short_users = 0
    user_index, user_ids = block.user_index, block.user_ids
    rated_u, rated_p = block.rated
    ex_u, ex_p = block.excluded
    row_of = _IdIndex(user_ids)
    columns_of = _IdIndex(state.candidate_ids)
    r_rows, r_cols = row_of.positions(rated_u), columns_of.positions(rated_p)
    hit = (r_rows >= 0) & (r_cols >= 0)
    e_rows, e_cols = row_of.positions(ex_u), columns_of.positions(ex_p)
    e_hit = (e_rows >= 0) & (e_cols >= 0)
    rated, excluded = (r_rows[hit], r_cols[hit]), (e_rows[e_hit], e_cols[e_hit])
    twins = _block_twins(state, user_index)
    weight = None if twins is None else twins[0]
    if state.bound_order is not None:
        result = bound.score_by_bound(
            block_user_vectors(model, state, user_index),
            state.bound_order,
            k,
            rated=rated,
            excluded=excluded,
            buffer=buffer,
            weight=weight,
        )
    else:
        scores = _model_scores(model, state, user_index, buffer)
        result = score_block(
            scores, state.columns, k, rated=rated, excluded=excluded, weight=weight
        )
    for key, value in result.counts.items():
        counts[key] += value
    rows = _Rows(state.reason_texts)
    cols = result.cols
    strategies = np.where(cols >= state.n_model_products, COLD_START, MODEL)
    if options.reasons:
        reason, because = _model_reasons(
            model, state, user_index, result.rows, cols, (rated_u, rated_p), user_ids
        )
    else:
        reason = np.full(len(cols), -1, dtype=np.int32)
        because = np.full(len(cols), -1, dtype=np.int64)
    rows.add(
        user_ids[result.rows],
        result.ranks,
        state.candidate_ids[cols],
        result.values,
        strategies,
        reason,
        because,
    )
    short = np.flatnonzero(result.filled < k)
    if len(short):
        counts["backfilled_users"] += len(short) if weight is None else int(weight[short].sum())
        rated_of = _grouped(rated_u, rated_p, user_ids[short])
        excluded_of = _grouped(ex_u, ex_p, user_ids[short])
        listed_of = _grouped(result.rows, state.candidate_ids[cols], short)
        for j, i in enumerate(short.tolist()):
            filled = int(result.filled[i])
            excluded = set(excluded_of[j].tolist())
            times = 1 if weight is None else int(weight[i])
            user_counts = counts if times == 1 else dict.fromkeys(RULE_COUNT_KEYS, 0)
            got = _fallback_rows(
                rows,
                state,
                int(user_ids[i]),
                k - filled,
                filled + 1,
                skip=set(rated_of[j].tolist()) | excluded | set(listed_of[j].tolist()),
                excluded=excluded,
                rated=rated_of[j],
                taken=listed_of[j],
                options=options,
                counts=user_counts,
            )
            if user_counts is not counts:
                for key, value in user_counts.items():
                    counts[key] += value * times
            if filled + got < k:
                short_users += times
    copies = None if twins is None else TwinCopies(user_ids[twins[2]], twins[1])
    n_users = len(user_ids) + (0 if copies is None else len(copies))
    return BlockRows(rows.batch(), counts, short_users, n_users, result.pairs_scored, copies)


def _block_twins(
    run: _Run, user_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(weight per block row: 1 + its twins, the twins' ``users.id``, the block row each twin
    copies) of a block, or None when no user of the block has a twin (:func:`fold_in_users`)."""
    if not len(run.twins.indices):
        return None
    folded = np.flatnonzero(user_index >= run.n_model_users)
    if not len(folded):
        return None
    members, owner = run.twins.entries(user_index[folded] - run.n_model_users)
    if not len(members):
        return None
    owner_rows = folded[owner]  # non-decreasing: the twins of each row are contiguous
    weight = 1 + np.bincount(owner_rows, minlength=len(user_index)).astype(np.int64)
    return weight, members, owner_rows


@dataclass(frozen=True)
class TwinCopies:
    """The twins of a block's users (:func:`fold_in_users`): each gets a copy of the rows of
    the scored user it copies, under its own id."""

    sources: np.ndarray
    """int64: ``users.id`` of the scored user each twin copies."""
    twins: np.ndarray
    """int64: the twins' ``users.id``."""

    def __len__(self) -> int:
        return len(self.twins)


def copied_batches(batch: ScoreBatch, copies: TwinCopies, max_rows: int) -> Iterator[ScoreBatch]:
    """The twins' rows: for each twin, the rows of its source in ``batch`` (in their order),
    under the twin's id, in batches of fewer than ``max_rows`` rows plus one twin's rows (a
    popular product's twins can be hundreds of thousands of users; no twin's rows are split)."""
    users, owner = np.unique(batch.user_ids, return_inverse=True)
    at = _IdIndex(users).positions(copies.sources)
    at[at < 0] = len(users)  # a source without rows: the empty history after the others
    rows_of = Histories.grouped(owner, np.arange(len(batch)), len(users) + 1)
    per_twin = rows_of.lengths()[at]
    starts = np.cumsum(per_twin) - per_twin  # each twin's first row among all copies
    cuts = np.flatnonzero(np.diff(starts // max(1, max_rows))) + 1
    for twins in np.split(np.arange(len(at)), cuts):
        rows, which = rows_of.entries(at[twins])
        if not len(rows):
            continue

        def taken(values: np.ndarray | None, rows: np.ndarray = rows) -> np.ndarray | None:
            return None if values is None else values[rows]

        yield ScoreBatch(
            copies.twins[twins][which],
            batch.ranks[rows],
            batch.product_ids[rows],
            batch.scores[rows],
            batch.strategies[rows],
            taken(batch.reasons),
            taken(batch.because_ids),
            batch.reason_texts,
        )


def _fallback_block(part: ScoringPart, block: UserBlock) -> BlockRows:
    """Fallback lists for a block of users the model does not score."""
    state, options = part.run, part.options
    counts = dict.fromkeys(RULE_COUNT_KEYS, 0)
    short_users = 0
    user_ids = block.user_ids
    rated_of = _grouped(*block.rated, user_ids)
    excluded_of = _grouped(*block.excluded, user_ids)
    rows = _Rows(state.reason_texts)
    for i, user in enumerate(user_ids.tolist()):
        excluded = set(excluded_of[i].tolist())
        got = _fallback_rows(
            rows,
            state,
            int(user),
            options.k,
            1,
            skip=set(rated_of[i].tolist()) | excluded,
            excluded=excluded,
            rated=rated_of[i],
            taken=np.zeros(0, dtype=np.int64),
            options=options,
            counts=counts,
        )
        if got < options.k:
            short_users += 1
    return BlockRows(rows.batch(), counts, short_users, len(user_ids))


def local_blocks(part: ScoringPart, blocks: Iterator[UserBlock]) -> Iterator[BlockRows]:
    """The one-process runner: :func:`score_user_block` on each block, in block order.

    A dot-product model's blocks (``run.products``) are scored ``options.threads`` at a time
    (:func:`in_threads`): the matmul is threaded by the BLAS anyway, but the top-k, the rules
    and the reasons of a block run on one core, so one block at a time leaves the other cores
    idle for about half of the block. Each thread keeps its own scores buffer; the rows are
    the same as one block at a time (each block is computed alone, by the same code).
    """
    threads = part.options.threads or local_cores()
    if part.run.products is not None and threads > 1:
        yield from in_threads(part, blocks, threads)
        return
    buffer = None
    for block in blocks:
        if buffer is None and part.run.products is not None and block.user_index is not None:
            buffer = np.empty(_buffer_size(part, block), dtype=np.float32)
        yield score_user_block(part, block, buffer)


def _buffer_size(part: ScoringPart, block: UserBlock) -> int:
    """Scores a block's buffer holds: the whole block, or with bound prefixes the largest piece
    of a long prefix (:func:`recsys.scoring.bound.score_by_bound`)."""
    n_columns = len(part.run.candidate_ids)
    if part.run.bound_order is not None:
        return users_per_block(n_columns) * n_columns
    return len(block.user_ids) * n_columns


def in_threads(part: ScoringPart, blocks: Iterator[UserBlock], threads: int) -> Iterator[BlockRows]:
    """:func:`score_user_block` on ``threads`` threads, one scores buffer per thread."""
    local = threading.local()
    size = users_per_block(len(part.run.candidate_ids)) * len(part.run.candidate_ids)

    def task(block: UserBlock) -> BlockRows:
        buffer = getattr(local, "buffer", None)
        needed = _buffer_size(part, block)
        if block.user_index is not None and (buffer is None or buffer.size < needed):
            buffer = local.buffer = np.empty(max(size, needed), dtype=np.float32)
        return score_user_block(part, block, buffer)

    yield from ordered_in_threads(task, blocks, threads)


def _pairs(
    conn: sa.Connection, state: _Run, user_ids: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(rated pairs, excluded pairs) of these users: ratings from the database, exclusions
    from the run's snapshot of them (empty with rules off)."""
    rated = reads.rated_pairs(conn, user_ids)
    if state.exclusions is not None:
        excluded = state.exclusions.pairs_for(user_ids)
    else:
        excluded = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return rated, excluded


def score_batches(
    conn: sa.Connection,
    model: ScoringModel,
    options: ScoreOptions,
    *,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    run: dict | None = None,
    runner: BlockRunner | None = None,
) -> Iterator[ScoreBatch]:
    """Yield recommendation rows for every user in the database, one batch of users at a time.

    The database is read here (one snapshot); each block of users is scored by ``runner``
    with :func:`score_user_block`, in this process (:func:`local_blocks`, the default) or on
    a cluster's workers. Batches come back in block order either way.

    Args:
        conn: a connection (reads only); use one snapshot for a consistent run.
        model: the trained model and its index maps.
        options: k, fallback, cold start, memory, rules.
        should_stop: polled between batches; True raises :class:`ScoringInterrupted`.
        progress: called with (users done, users total) after each batch.
        run: if given, filled with ``rule_counts``, ``short_users`` and ``notes`` as scoring
            goes.
        runner: scores the blocks (see :data:`BlockRunner`); None: :func:`local_blocks`.

    Raises:
        DataError: the model returned scores of the wrong shape, or NaN.
        ScoringInterrupted: ``should_stop`` said so.
    """
    db_users = reads.user_ids(conn)
    state = _setup(conn, model, options)
    if run is not None:
        run["rule_counts"] = state.counts
        run["notes"] = state.notes
        run["state"] = state
    scored_ids, known = model_users(model, db_users)
    unknown = db_users[~np.isin(db_users, scored_ids)]
    folded = fold_in_users(conn, model, state, unknown, twins=options.twins)
    state.notes["folded_in"] = 0 if folded is None else len(folded[0])
    twins = 0
    if folded is not None:
        folded_ids, folded_index, scored = folded
        scored_ids = np.concatenate([scored_ids, folded_ids[scored]])
        known = np.concatenate([known, folded_index[scored]])
        unknown = unknown[~np.isin(unknown, folded_ids)]
        twins = int(len(scored) - scored.sum())
        del folded, folded_ids, folded_index, scored
    state.notes["twins"] = twins
    total = len(known) + twins + len(unknown)
    n_columns = len(state.candidate_ids)
    if options.batch_users:
        batch = options.batch_users
    elif state.bound_order is not None:
        batch = bound.BLOCK_USERS
    elif state.products is not None:
        batch = users_per_block(n_columns)
    else:
        batch = batch_size_for(n_columns, options.memory_mb)
    _log.info(
        "scoring %d users known to the model (batches of %d) against %d products; "
        "%d folded-in users share a list with one of them; %d fallback users",
        len(known),
        batch,
        n_columns,
        twins,
        len(unknown),
    )
    fallback_batch = max(batch, 2048)

    def blocks() -> Iterator[UserBlock]:
        for start in range(0, len(known), batch):
            _check_stop(should_stop)
            user_ids = scored_ids[start : start + batch]
            rated, excluded = _pairs(conn, state, user_ids)
            yield UserBlock(user_ids, known[start : start + batch], rated, excluded)
        for start in range(0, len(unknown), fallback_batch):
            _check_stop(should_stop)
            user_ids = unknown[start : start + fallback_batch]
            rated, excluded = _pairs(conn, state, user_ids)
            yield UserBlock(user_ids, None, rated, excluded)

    done = 0
    pairs_scored = 0
    results = (runner or local_blocks)(ScoringPart(model, state, options), blocks())
    try:
        for result in results:
            for key, value in result.counts.items():
                state.counts[key] += value
            state.short_users += result.short_users
            pairs_scored += result.pairs_scored
            yield result.batch
            if result.copies is not None:
                yield from copied_batches(result.batch, result.copies, FLUSH_ROWS)
            done += result.n_users
            if progress is not None:
                progress(done, total)
            _check_stop(should_stop)
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
    all_pairs = (len(known) + twins) * n_columns
    if all_pairs:
        # the share of the model users x products matrix scored (below 1: bound prefixes, twins)
        state.notes["pairs_scored_share"] = round(pairs_scored / all_pairs, 4)
        _log.info(
            "scored %d of the %d model user x product pairs (%.1f%%)",
            pairs_scored,
            all_pairs,
            100 * pairs_scored / all_pairs,
        )
    if run is not None:
        run["short_users"] = state.short_users
        run["users_total"] = total


def _check_stop(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise ScoringInterrupted("scoring stopped on request; nothing of this run was committed")


def score_and_write(
    engine: Engine,
    model: ScoringModel,
    options: ScoreOptions,
    *,
    publish: bool = True,
    keep: int = 3,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    thresholds: Any = None,
    force: bool = False,
    runner: BlockRunner | None = None,
) -> ScoreSummary:
    """Score every user, write the run (one transaction, one snapshot), optionally publish it.

    The published recommendations change only in :func:`recsys.scoring.publish.publish_run`,
    after every row of the new run is committed; any failure before leaves them untouched.

    Args:
        engine: the database.
        model: the model to score with.
        options: scoring options.
        publish: switch readers to the new run when it is complete (after the gates).
        keep: how many ready runs to keep after publishing.
        should_stop: polled between batches.
        progress: (users done, users total) callback.
        thresholds: :class:`recsys.scoring.gates.GateThresholds` to check before publishing
            (None: the defaults).
        force: publish even when a gate fails (recorded on the run).
        runner: scores the blocks of users (None: in this process; see :data:`BlockRunner`).
            The rows come back to this process and are written here, by COPY, whatever the
            runner.

    Returns:
        What was written.

    Raises:
        GateFailed: ``publish`` and a gate failed; the run is kept, unpublished.
    """
    started = time.perf_counter()
    params = {
        "k": options.k,
        "fallback": options.fallback,
        "cold_start": options.cold_start,
        "max_per_category": options.max_per_category,
        "max_per_brand": options.max_per_brand,
        "rules": options.rules,
    }
    with engine.begin() as conn:
        run_id = begin_run(
            conn,
            k=options.k,
            model_run_id=model.run_id,
            model_type=model.model_type,
            params=params,
        )
    counts: dict[str, int] = {}
    info: dict = {}
    try:
        with engine.connect() as raw:
            conn = raw.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                writer = RunWriter(conn, run_id)
                for batch in score_batches(
                    conn,
                    model,
                    options,
                    should_stop=should_stop,
                    progress=progress,
                    run=info,
                    runner=runner,
                ):
                    writer.write(batch)
                    first = batch.ranks == 1
                    for code in np.unique(batch.strategies[first]):
                        name = STRATEGIES[int(code)]
                        counts[name] = counts.get(name, 0) + int(
                            (batch.strategies[first] == code).sum()
                        )
                rule_counts = {key: int(info["rule_counts"].get(key, 0)) for key in RULE_COUNT_KEYS}
                extra = {
                    "users_total": int(info.get("users_total", 0)),
                    "short_users": int(info.get("short_users", 0)),
                    **info.get("notes", {}),
                }
                writer.finish(counts, rule_counts=rule_counts, params={**params, **extra})
                n_rows = writer.n_rows
    except BaseException as err:
        try:
            with engine.begin() as conn:
                fail_run(conn, run_id, f"{type(err).__name__}: {err}")
        except Exception:  # the database is gone too; the next writer marks it abandoned
            _log.debug("could not mark run %d failed", run_id)
        raise
    n_users = sum(counts.values())
    _log.info(
        "run %d: %d rows for %d users %s; rules %s", run_id, n_rows, n_users, counts, rule_counts
    )
    previous = None
    gates = None
    if publish:
        from recsys.scoring.gates import publish_gated

        previous, gates = publish_gated(
            engine, run_id, keep=keep, thresholds=thresholds, force=force
        )
    return ScoreSummary(
        run_id=run_id,
        model_run_id=model.run_id,
        k=options.k,
        n_users=n_users,
        n_rows=n_rows,
        counts=counts,
        seconds=time.perf_counter() - started,
        published=publish,
        previous_run_id=previous,
        rule_counts=rule_counts,
        gates=gates,
    )


def load_model(engine: Engine, settings: Any, run_id: int | None = None) -> ScoringModel:
    """Load a trained model run from the registry (``None``: the latest successful run)."""
    from recsys.model.registry import load_run

    with engine.connect() as conn:
        loaded = load_run(conn, settings, run_id)
    return ScoringModel(
        recommender=loaded.recommender,
        user_ids=np.asarray(loaded.user_ids, dtype=np.int64),
        product_ids=np.asarray(loaded.product_ids, dtype=np.int64),
        run_id=loaded.run_id,
        model_type=loaded.model_type,
        feature_set_id=getattr(loaded, "feature_set_id", None),
        metrics=dict(getattr(loaded, "metrics", None) or {}),
    )
