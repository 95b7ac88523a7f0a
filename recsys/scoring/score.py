"""Exact top-k for every user: model scores in user batches, rated products masked, fallbacks.

For each batch of users known to the model, ``recommender.score_users`` gives exact scores
against every product of the model (the fast path, e.g. the hybrid's per-user/per-product
precomputation, belongs to the model). Every product the user has rated *in the database* is
masked, not only those seen in training, so a rating that arrived after training is never
recommended back. The top k are cut exactly: the k-th largest score of each row is found with
``np.partition``; every product at or above it is a candidate; candidates are ordered by score
descending, then product id ascending (a deterministic tie-break independent of the model's
column order), and the first k kept.

Users the model does not know (filtered out by ``--min-ratings``, or new since training) but
who rated at least one product it knows are FOLDED IN when the model can pool a user vector
from a history (``recommender.user_vectors_for``, the ranker): their exact model list comes from
their database ratings of the model's products (strategy ``model``; the count is recorded as
``params["folded_in"]`` of the run; no cold-start products for them). The others get a
fallback list instead: the most rated products (``popularity``), or, with
``fallback="category"``, the most rated products in the categories of the products they rated
(``category_popularity``) topped up from the global list. A product's category is the last
(most specific) element of its category path, or ``main_category`` when it has no path. The
fallback score is the product's number of ratings.

With ``cold_start=True`` and a model that implements
:class:`recsys.model.base.ColdStartScorer`, products that have a text vector in the model's
feature set but are not in the model's index (new products, no ratings yet) are scored through
their text vector and compete in the same list (strategy ``cold_start`` on those rows).

Memory is bounded: only one batch of users x products is held at a time, and the batch size
follows from ``memory_mb``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.errors import DataError, RecsysError
from recsys.scoring.publish import (
    STRATEGIES,
    RunWriter,
    ScoreBatch,
    begin_run,
    fail_run,
    publish_and_prune,
)

_log = logging.getLogger(__name__)

MODEL, COLD_START, POPULARITY, CATEGORY_POPULARITY = (STRATEGIES.index(s) for s in STRATEGIES)


class ScoringInterrupted(RecsysError):
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
    """Explicit batch size (overrides ``memory_mb``)."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise RecsysError(f"k must be at least 1, got {self.k}")
        if self.fallback not in ("category", "popularity"):
            raise RecsysError(f"unknown fallback {self.fallback!r} (category or popularity)")


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


# --- pure parts ----------------------------------------------------------------------------


def top_k(
    scores: np.ndarray, k: int, product_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k of each row, ties broken by product id ascending.

    Args:
        scores: float32 [n, P]; ``-inf`` marks products that must not be recommended.
        k: list length.
        product_ids: int64 [P], the id of each column (the tie-break key).

    Returns:
        (rows, ranks, columns, values), flat and ordered by row then rank; ranks are 1-based.
        A row has fewer than k entries only when fewer than k of its scores are finite.
    """
    n, n_cols = scores.shape
    empty = np.zeros(0, dtype=np.int64)
    if n == 0 or n_cols == 0:
        return empty, empty, empty, np.zeros(0, dtype=np.float32)
    kk = min(k, n_cols)
    threshold = np.partition(scores, n_cols - kk, axis=1)[:, n_cols - kk]
    candidates = scores >= threshold[:, None]
    candidates &= scores > -np.inf
    rows, cols = np.nonzero(candidates)
    values = scores[rows, cols]
    order = np.lexsort((product_ids[cols], -values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.searchsorted(rows, rows, side="left")
    ranks = np.arange(len(rows)) - starts + 1
    keep = ranks <= k
    return rows[keep], ranks[keep], cols[keep], values[keep]


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


# --- database reads ------------------------------------------------------------------------


def _fetch_pairs(conn: sa.Connection, sql: str, params: dict) -> tuple[np.ndarray, np.ndarray]:
    rows = conn.execute(sa.text(sql), params).all()
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pairs = np.asarray(rows, dtype=np.int64)
    return pairs[:, 0], pairs[:, 1]


def rated_pairs(conn: sa.Connection, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user_id, product_id) of every rating in the database by these users."""
    return _fetch_pairs(
        conn,
        "SELECT user_id, product_id FROM ratings WHERE user_id = ANY(:u)",
        {"u": [int(u) for u in user_ids]},
    )


def _new_products(conn: sa.Connection, model: ScoringModel) -> tuple[np.ndarray, np.ndarray]:
    """(product_ids, text vectors) in the model's feature set that the model has no index for."""
    if model.feature_set_id is None:
        raise RecsysError("the model has no feature set, so new products cannot be scored by text")
    from recsys.features.store import read_vectors

    product_ids, vectors = read_vectors(conn, model.feature_set_id)
    product_ids = np.asarray(product_ids, dtype=np.int64)
    new = ~np.isin(product_ids, model.product_ids)
    return product_ids[new], np.asarray(vectors, dtype=np.float32)[new]


@dataclass
class _Popularity:
    """Products by number of ratings, most first (ties: lower id first), and their categories."""

    product_ids: np.ndarray
    counts: np.ndarray
    by_category: dict[str, np.ndarray]
    category_of: dict[int, str]

    @classmethod
    def read(cls, conn: sa.Connection, with_categories: bool) -> _Popularity:
        ids, counts = _fetch_pairs(
            conn,
            "SELECT product_id, count(*) FROM ratings GROUP BY product_id "
            "ORDER BY count(*) DESC, product_id",
            {},
        )
        by_category: dict[str, np.ndarray] = {}
        category_of: dict[int, str] = {}
        if with_categories and len(ids):
            rows = conn.execute(
                sa.text(
                    "SELECT id, coalesce(categories[cardinality(categories)], main_category) "
                    "FROM products WHERE coalesce(categories[cardinality(categories)], "
                    "main_category) IS NOT NULL"
                )
            ).all()
            category_of = {int(pid): cat for pid, cat in rows}
            rank_of = {int(pid): i for i, pid in enumerate(ids)}
            grouped: dict[str, list[int]] = {}
            for pid, cat in category_of.items():
                if pid in rank_of:
                    grouped.setdefault(cat, []).append(rank_of[pid])
            by_category = {cat: np.sort(np.asarray(r)) for cat, r in grouped.items()}
        return cls(ids, counts, by_category, category_of)


def _fallback_lists(
    user_ids: np.ndarray,
    rated_users: np.ndarray,
    rated_products: np.ndarray,
    popularity: _Popularity,
    k: int,
    use_categories: bool,
) -> ScoreBatch:
    """Fallback rows for users the model does not know (see the module docstring)."""
    order = np.argsort(rated_users, kind="stable")
    rated_users, rated_products = rated_users[order], rated_products[order]
    bounds = (
        np.searchsorted(rated_users, user_ids, side="left"),
        np.searchsorted(rated_users, user_ids, side="right"),
    )
    out_users: list[int] = []
    out_ranks: list[int] = []
    out_products: list[int] = []
    out_scores: list[float] = []
    out_strategies: list[int] = []
    pop_ids, pop_counts = popularity.product_ids, popularity.counts
    for i, user in enumerate(user_ids):
        rated = set(rated_products[bounds[0][i] : bounds[1][i]].tolist())
        chosen: list[int] = []  # indices into the popularity order
        strategies: list[int] = []
        if use_categories and rated:
            cats = {popularity.category_of.get(p) for p in rated} - {None}
            if cats:
                merged = np.unique(
                    np.concatenate(
                        [
                            popularity.by_category[c][: k + len(rated)]
                            for c in cats
                            if c in popularity.by_category
                        ]
                        or [np.zeros(0, np.int64)]
                    )
                )
                for idx in merged.tolist():  # ascending index = most rated first, then id
                    if int(pop_ids[idx]) not in rated:
                        chosen.append(idx)
                        strategies.append(CATEGORY_POPULARITY)
                        if len(chosen) == k:
                            break
        if len(chosen) < k:
            taken = set(chosen)
            for idx in range(len(pop_ids)):
                if idx in taken or int(pop_ids[idx]) in rated:
                    continue
                chosen.append(idx)
                strategies.append(POPULARITY)
                if len(chosen) == k:
                    break
        n = len(chosen)
        out_users.extend([int(user)] * n)
        out_ranks.extend(range(1, n + 1))
        out_products.extend(pop_ids[chosen].tolist())
        out_scores.extend(pop_counts[chosen].astype(np.float32).tolist())
        out_strategies.extend(strategies)
    return ScoreBatch(
        np.asarray(out_users, dtype=np.int64),
        np.asarray(out_ranks, dtype=np.int16),
        np.asarray(out_products, dtype=np.int64),
        np.asarray(out_scores, dtype=np.float32),
        np.asarray(out_strategies, dtype=np.int8),
    )


# --- the scoring loop ----------------------------------------------------------------------


def score_batches(
    conn: sa.Connection,
    model: ScoringModel,
    options: ScoreOptions,
    *,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    stats: dict[str, int] | None = None,
) -> Iterator[ScoreBatch]:
    """Yield recommendation rows for every user in the database, one batch of users at a time.

    Args:
        conn: a connection (reads only).
        model: the trained model and its index maps.
        options: k, fallback, cold start, memory.
        should_stop: polled between batches; True raises :class:`ScoringInterrupted`.
        progress: called with (users done, users total) after each batch.
        stats: when given, ``stats["folded_in"]`` counts the folded-in users.

    Raises:
        DataError: the model returned scores of the wrong shape, or NaN.
        ScoringInterrupted: ``should_stop`` said so.
    """
    recommender = model.recommender
    model_users = np.asarray(model.user_ids, dtype=np.int64)
    model_products = np.asarray(model.product_ids, dtype=np.int64)
    db_users = np.asarray(
        conn.execute(sa.text("SELECT id FROM users ORDER BY id")).scalars().all(), dtype=np.int64
    )
    db_products = np.asarray(
        conn.execute(sa.text("SELECT id FROM products")).scalars().all(), dtype=np.int64
    )

    candidate_ids = model_products
    new_text: np.ndarray | None = None
    if options.cold_start:
        if not hasattr(recommender, "score_new_products"):
            raise RecsysError(
                f"model {model.model_type or type(recommender).__name__} cannot score new products "
                "by their text vector; drop --cold-start"
            )
        new_ids, new_text = _new_products(conn, model)
        new_ids_exist = np.isin(new_ids, db_products)
        new_ids, new_text = new_ids[new_ids_exist], new_text[new_ids_exist]
        _log.info("cold start: %d new products scored by text vector", len(new_ids))
        candidate_ids = np.concatenate([model_products, new_ids])
    n_model_products = len(model_products)
    columns = _IdIndex(candidate_ids)
    gone = ~np.isin(candidate_ids, db_products)  # deleted since training: never recommend

    known = np.flatnonzero(np.isin(model_users, db_users))
    unknown = db_users[~np.isin(db_users, model_users)]
    total = len(known) + len(unknown)
    batch = options.batch_users or batch_size_for(len(candidate_ids), options.memory_mb)
    _log.info(
        "scoring %d users known to the model (batches of %d) against %d products; "
        "%d fallback users",
        len(known),
        batch,
        len(candidate_ids),
        len(unknown),
    )
    done = 0
    for start in range(0, len(known), batch):
        if should_stop is not None and should_stop():
            raise ScoringInterrupted(
                "scoring stopped on request; nothing of this run was committed"
            )
        user_index = known[start : start + batch]
        user_ids = model_users[user_index]
        scores = np.asarray(recommender.score_users(user_index.astype(np.int32)), dtype=np.float32)
        if scores.shape != (len(user_index), n_model_products):
            raise DataError(
                f"model returned scores of shape {scores.shape}, expected "
                f"({len(user_index)}, {n_model_products})"
            )
        if new_text is not None and len(new_text):
            cold = np.asarray(
                recommender.score_new_products(user_index.astype(np.int32), new_text),
                dtype=np.float32,
            )
            scores = np.concatenate([scores, cold], axis=1)
        if np.isnan(scores).any():
            raise DataError(f"the model produced NaN scores for users {user_ids[:3].tolist()}...")
        scores[:, gone] = -np.inf
        rated_users, rated_products = rated_pairs(conn, user_ids)
        rows = _IdIndex(user_ids).positions(rated_users)
        cols = columns.positions(rated_products)
        hit = (rows >= 0) & (cols >= 0)
        scores[rows[hit], cols[hit]] = -np.inf
        r, ranks, c, values = top_k(scores, options.k, candidate_ids)
        yield ScoreBatch(
            user_ids[r],
            ranks.astype(np.int16),
            candidate_ids[c],
            values.astype(np.float32),
            np.where(c >= n_model_products, COLD_START, MODEL).astype(np.int8),
        )
        done += len(user_index)
        if progress is not None:
            progress(done, total)

    if len(unknown):
        popularity = _Popularity.read(conn, options.fallback == "category")
        fallback_batch = max(batch, 2048)
        model_columns = _IdIndex(model_products)
        for start in range(0, len(unknown), fallback_batch):
            if should_stop is not None and should_stop():
                raise ScoringInterrupted(
                    "scoring stopped on request; nothing of this run was committed"
                )
            user_ids = unknown[start : start + fallback_batch]
            rated_users, rated_products = rated_pairs(conn, user_ids)
            folded, user_ids = fold_in_lists(
                recommender, user_ids, rated_users, rated_products, model_columns, options.k, gone
            )
            if folded is not None:
                if stats is not None:
                    stats["folded_in"] = stats.get("folded_in", 0) + len(np.unique(folded.user_ids))
                yield folded
            keep = np.isin(rated_users, user_ids)
            rated_users, rated_products = rated_users[keep], rated_products[keep]
            yield _fallback_lists(
                user_ids,
                rated_users,
                rated_products,
                popularity,
                options.k,
                options.fallback == "category",
            )
            done += len(user_ids) + (0 if folded is None else len(np.unique(folded.user_ids)))
            if progress is not None:
                progress(done, total)


def fold_in_lists(
    recommender: Any,
    user_ids: np.ndarray,
    rated_users: np.ndarray,
    rated_products: np.ndarray,
    model_columns: _IdIndex,
    k: int,
    gone: np.ndarray,
) -> tuple[ScoreBatch | None, np.ndarray]:
    """Exact model lists for users outside the model who rated products it knows (fold-in).

    Args:
        recommender: the model; only one with ``user_vectors_for`` (and ``folds_in`` true)
            folds users in.
        user_ids: users the model does not know.
        rated_users, rated_products: every database rating of those users.
        model_columns: positions of the model's product ids.
        k: list length.
        gone: per candidate column, products deleted since training (never recommended).

    Returns:
        (the folded-in users' rows or None, the user ids left for the fallback).
    """
    if not getattr(recommender, "folds_in", False) or len(user_ids) == 0:
        return None, user_ids
    columns = model_columns.positions(rated_products)
    known = columns >= 0
    folded_ids = np.unique(rated_users[known])
    if len(folded_ids) == 0:
        return None, user_ids
    rows = _IdIndex(folded_ids).positions(rated_users[known])
    vectors = recommender.user_vectors_for(columns[known], rows, len(folded_ids))
    scores = np.asarray(recommender.score_vectors(vectors), dtype=np.float32)
    if np.isnan(scores).any():
        raise DataError("the model produced NaN scores for folded-in users")
    scores[:, gone[: scores.shape[1]]] = -np.inf
    scores[rows, columns[known]] = -np.inf  # every product they rated (all are in the model)
    product_ids = model_columns.ids
    r, ranks, c, values = top_k(scores, k, product_ids)
    batch = ScoreBatch(
        folded_ids[r],
        ranks.astype(np.int16),
        product_ids[c],
        values.astype(np.float32),
        np.full(len(r), MODEL, dtype=np.int8),
    )
    # a user whose every model product is rated has no model list: the fallback serves them
    return batch, user_ids[~np.isin(user_ids, folded_ids[np.unique(r)])]


def score_and_write(
    engine: Engine,
    model: ScoringModel,
    options: ScoreOptions,
    *,
    publish: bool = True,
    keep: int = 3,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScoreSummary:
    """Score every user, write the run (one transaction), and optionally publish it.

    The published recommendations change only in :func:`recsys.scoring.publish.publish_run`,
    after every row of the new run is committed; any failure before leaves them untouched.

    Args:
        engine: the database.
        model: the model to score with.
        options: scoring options.
        publish: switch readers to the new run when it is complete.
        keep: how many ready runs to keep after publishing.
        should_stop: polled between batches.
        progress: (users done, users total) callback.

    Returns:
        What was written.
    """
    started = time.perf_counter()
    params = {
        "k": options.k,
        "fallback": options.fallback,
        "cold_start": options.cold_start,
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
    try:
        with engine.begin() as conn:
            writer = RunWriter(conn, run_id)
            stats: dict[str, int] = {"folded_in": 0}
            for batch in score_batches(
                conn, model, options, should_stop=should_stop, progress=progress, stats=stats
            ):
                writer.write(batch)
                first = batch.ranks == 1
                for code in np.unique(batch.strategies[first]):
                    name = STRATEGIES[int(code)]
                    counts[name] = counts.get(name, 0) + int(
                        (batch.strategies[first] == code).sum()
                    )
            conn.execute(
                sa.text(
                    "UPDATE recommendation_runs SET params = params || CAST(:p AS jsonb) "
                    "WHERE id = :r"
                ),
                {"p": json.dumps({"folded_in": stats["folded_in"]}), "r": run_id},
            )
            writer.finish(counts)
            n_rows = writer.n_rows
    except BaseException as err:
        try:
            with engine.begin() as conn:
                fail_run(conn, run_id, f"{type(err).__name__}: {err}")
        except Exception:  # the database is gone too; the next writer marks it abandoned
            _log.debug("could not mark run %d failed", run_id)
        raise
    n_users = sum(counts.values())
    _log.info("run %d: %d rows for %d users %s", run_id, n_rows, n_users, counts)
    previous = None
    if publish:
        previous = publish_and_prune(engine, run_id, keep)
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
