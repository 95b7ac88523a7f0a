"""Building a feature set: clean the catalogue, embed it, write it in one transaction
(see :mod:`recsys.features.store`)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa

from recsys.errors import DataError, InputError
from recsys.features.records import (
    FEATURES_LOCK,
    SKIP_NO_KNOWN_WORDS,
    SKIP_NO_TEXT,
    SKIP_NO_WORDS,
    _psycopg,
    create_feature_set,
    create_index,
    current_feature_set,
    finish_feature_set,
    make_current,
    prune_feature_sets,
    write_skipped,
    write_vectors,
)
from recsys.progress import NO_PROGRESS, ProgressSink

if TYPE_CHECKING:
    from recsys.config import Settings


_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildSummary:
    """What ``recsys features build`` reports."""

    feature_set_id: int
    name: str
    source: str
    dim: int
    weighting: str
    n_products: int
    n_embedded: int
    n_computed: int
    """Products whose vector was computed in this build."""
    n_reused: int
    """Products whose row was copied forward from the previous set (text unchanged)."""
    skipped: dict[str, int]
    """Reason -> products without a vector."""
    n_capped: int
    """Products whose raw text was cut at MAX_TEXT_CHARS."""
    vocabulary_size: int
    token_coverage: float
    """Share of the computed products' tokens found in the word vectors."""
    word_coverage: float
    """Share of the computed products' distinct words found in the word vectors."""
    previous_id: int | None
    seconds: float
    phases: dict[str, float]
    indexed: bool

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


Progress = ProgressSink
"""What a build reports progress to (the CLI: :func:`recsys.progress.progress_for_terminal`)."""


# --- building --------------------------------------------------------------------------------


@dataclass
class _Catalogue:
    product_ids: np.ndarray
    tokens: list[list[str]]
    hashes: list[bytes]
    empty_reason: list[str | None]
    notes: list[str | None]
    n_capped: int


def text_hash(tokens: list[str]) -> bytes:
    """blake2b-128 of the cleaned tokens joined by single spaces."""
    return hashlib.blake2b(" ".join(tokens).encode("ascii"), digest_size=16).digest()


_PRODUCTS_QUERY = sa.text(
    "SELECT id, feature_text, description, categories, title, brand, "
    "(raw ? 'movie_id' OR raw ? 'genres' OR main_category = 'MovieLens') AS is_movie "
    "FROM products ORDER BY id"
)


def _read_catalogue(
    conn: sa.Connection, *, with_title: bool, progress: Progress, limit: int | None = None
) -> _Catalogue:
    from recsys.features.text import MAX_TEXT_CHARS, clean_product, english_stopwords, product_text

    stopwords = english_stopwords()
    total = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
    if limit:
        total = min(total, limit)
    progress.start("cleaning", total, "products")
    ids: list[int] = []
    tokens: list[list[str]] = []
    hashes: list[bytes] = []
    reasons: list[str | None] = []
    notes: list[str | None] = []
    n_capped = 0
    result = conn.execution_options(stream_results=True, yield_per=5000).execute(_PRODUCTS_QUERY)
    for batch in result.partitions(5000):
        for pid, feature_text, description, categories, title, brand, is_movie in batch:
            chosen = product_text(
                feature_text=feature_text,
                description=description,
                categories=categories,
                title=title,
                brand=brand,
                is_movie=bool(is_movie),
                with_title=with_title,
            )
            words = clean_product(chosen, stopwords)
            ids.append(pid)
            tokens.append(words)
            hashes.append(text_hash(words))
            reasons.append(
                None if words else (SKIP_NO_TEXT if chosen.source == "none" else SKIP_NO_WORDS)
            )
            if chosen.capped:
                n_capped += 1
                notes.append(f"text capped at {MAX_TEXT_CHARS} characters")
            else:
                notes.append(None)
        progress.advance(len(batch))
        if limit and len(ids) >= limit:
            break
    result.close()
    if limit:
        del ids[limit:], tokens[limit:], hashes[limit:], reasons[limit:], notes[limit:]
    return _Catalogue(np.asarray(ids, dtype=np.int64), tokens, hashes, reasons, notes, n_capped)


def _idf_fingerprint(idf: dict[str, float]) -> str:
    digest = hashlib.sha256()
    for word in sorted(idf):
        digest.update(f"{word}={idf[word]:.9g};".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class BuildConfig:
    """What one build does (the arguments of :func:`build_features`, checked there)."""

    word_vectors: str = "train"
    dim: int = 100
    weighting: str = "mean"
    seed: int = 1
    workers: int = 1
    """Word2Vec threads, resolved (0 in :func:`build_features` means all cores)."""
    epochs: int = 5
    min_count: int = 2
    limit: int | None = None
    with_title: bool = False
    name: str | None = None
    make_current_set: bool = True
    create_hnsw: bool = True
    keep: int = 3
    save_vectors: bool = True


def build_features(
    engine: sa.Engine,
    settings: Settings,
    *,
    word_vectors: str = "train",
    dim: int = 100,
    weighting: str = "mean",
    seed: int = 1,
    workers: int = 1,
    epochs: int = 5,
    min_count: int = 2,
    limit: int | None = None,
    with_title: bool = False,
    name: str | None = None,
    make_current_set: bool = True,
    create_hnsw: bool = True,
    keep: int = 3,
    save_vectors: bool = True,
    progress: Progress | None = None,
    after_write: Callable[[sa.Connection, int], None] | None = None,
) -> BuildSummary:
    """Build a feature set from the products table and (by default) make it current.

    Args:
        engine: the database.
        settings: recsys settings (trained word vectors are saved under ``home/word_vectors``).
        word_vectors: ``train``, ``glove-6b-50d`` or a path to word2vec / .kv vectors.
        dim: vector size when training (pretrained vectors bring their own).
        weighting: ``mean`` or ``tfidf``.
        seed: Word2Vec seed.
        workers: Word2Vec threads (1: reproducible; 0: all cores).
        epochs: Word2Vec epochs.
        min_count: Word2Vec minimum word count.
        limit: vocabulary cap when loading a word2vec file.
        with_title: prepend title and brand to each product's text.
        name: the set's name (default ``fs-<timestamp>``).
        make_current_set: switch to the new set at commit.
        create_hnsw: build the HNSW index (skipped above 2000 dimensions).
        keep: sets kept after the switch (older non-current ones are pruned; 0 keeps all).
        save_vectors: save trained word vectors (word2vec binary) for reuse as ``PATH``.
        progress: progress reporter.
        after_write: test hook called inside the write transaction before it commits.

    Returns:
        The build summary.

    Raises:
        RecsysError: bad word vectors, no products, a taken name (nothing is written).
    """
    import os

    from recsys.features import vectors as wv

    if weighting not in ("mean", "tfidf"):
        raise InputError(f"unknown weighting {weighting!r} (use mean or tfidf)")
    if word_vectors == wv.TRAIN and not 1 <= dim <= 16000:
        raise InputError(f"--dim must be between 1 and 16000, got {dim}")
    if word_vectors not in (wv.TRAIN, wv.GLOVE):
        # fail fast, before cleaning a big catalogue (the full check comes when loading)
        from pathlib import Path

        if not Path(word_vectors).is_file():
            raise InputError(f"word vectors file not found: {word_vectors}")
    progress = progress or NO_PROGRESS
    started = time.perf_counter()
    workers = workers if workers > 0 else (os.cpu_count() or 1)

    from recsys.db.locks import advisory_lock

    # one build at a time (CLI or nightly), across processes: fails at once with LockBusy
    with advisory_lock(engine, FEATURES_LOCK, what="recsys features build"):
        config = BuildConfig(
            word_vectors=word_vectors,
            dim=dim,
            weighting=weighting,
            seed=seed,
            workers=workers,
            epochs=epochs,
            min_count=min_count,
            limit=limit,
            with_title=with_title,
            name=name,
            make_current_set=make_current_set,
            create_hnsw=create_hnsw,
            keep=keep,
            save_vectors=save_vectors,
        )
        return _build(engine, settings, config, progress, after_write, started)


def _build(
    engine: sa.Engine,
    settings: Settings,
    config: BuildConfig,
    progress: Progress,
    after_write: Callable[[sa.Connection, int], None] | None,
    started: float,
) -> BuildSummary:
    from recsys.features import vectors as wv
    from recsys.features.text import CLEANING_VERSION, stopwords_source

    phases: dict[str, float] = {}
    tick = time.perf_counter()
    with engine.connect() as conn:
        catalogue = _read_catalogue(conn, with_title=config.with_title, progress=progress)
        previous = current_feature_set(conn)
    phases["clean"] = time.perf_counter() - tick
    if len(catalogue.product_ids) == 0:
        raise DataError("no products in the database: load metadata first (recsys load-db)")
    _log.info("cleaned %d products", len(catalogue.product_ids))

    tick = time.perf_counter()
    progress.start("word vectors", 1)
    vectors = wv.resolve_word_vectors(
        config.word_vectors,
        sentences=catalogue.tokens,
        dim=config.dim,
        seed=config.seed,
        workers=config.workers,
        epochs=config.epochs,
        min_count=config.min_count,
        limit=config.limit,
    )
    progress.advance(1)
    phases["word_vectors"] = time.perf_counter() - tick

    idf = (
        wv.idf_weights(catalogue.tokens, vectors.keyed_vectors)
        if config.weighting == "tfidf"
        else None
    )
    fingerprint = hashlib.sha256(
        "|".join(
            [
                vectors.fingerprint,
                str(vectors.dim),
                config.weighting,
                str(CLEANING_VERSION),
                stopwords_source(),
                f"title={config.with_title}",
                _idf_fingerprint(idf) if idf else "",
            ]
        ).encode()
    ).hexdigest()

    reuse_from = previous.id if previous and previous.source_fingerprint == fingerprint else None
    changed = np.ones(len(catalogue.product_ids), dtype=bool)
    if reuse_from is not None:
        with engine.connect() as conn:
            old = dict(
                conn.execute(
                    sa.text(
                        "SELECT product_id, text_hash FROM product_features "
                        "WHERE feature_set_id = :id"
                    ),
                    {"id": reuse_from},
                ).all()
            )
        for i, (pid, h) in enumerate(
            zip(catalogue.product_ids.tolist(), catalogue.hashes, strict=True)
        ):
            if old.get(pid) == h:
                changed[i] = False
        _log.info(
            "reusing %d unchanged products from feature set %d", int((~changed).sum()), reuse_from
        )

    tick = time.perf_counter()
    todo = np.flatnonzero(changed)
    has_words = [i for i in todo.tolist() if catalogue.tokens[i]]
    progress.start("embedding", len(todo), "products")
    embedded = wv.embed(
        [catalogue.tokens[i] for i in has_words],
        vectors.keyed_vectors,
        weighting=config.weighting,
        idf=idf,
    )
    progress.advance(len(todo))
    phases["embed"] = time.perf_counter() - tick

    ok = embedded.n_words > 0
    rows_ok = np.asarray(has_words, dtype=np.int64)[ok]
    skipped_rows: list[tuple[int, bytes, str, str | None]] = []
    skipped: Counter[str] = Counter()
    for i in todo.tolist():
        reason = catalogue.empty_reason[i]
        if reason:
            skipped_rows.append(
                (int(catalogue.product_ids[i]), catalogue.hashes[i], reason, catalogue.notes[i])
            )
    for j in np.flatnonzero(~ok).tolist():
        i = has_words[j]
        skipped_rows.append(
            (
                int(catalogue.product_ids[i]),
                catalogue.hashes[i],
                SKIP_NO_KNOWN_WORDS,
                catalogue.notes[i],
            )
        )
    for row in skipped_rows:
        skipped[row[2]] += 1

    set_name = config.name or f"fs-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    params = {
        "seed": config.seed,
        "workers": config.workers,
        "epochs": config.epochs,
        "min_count": config.min_count,
        "limit": config.limit,
        "with_title": config.with_title,
        "word_vectors": config.word_vectors,
        "deterministic": config.word_vectors != wv.TRAIN or config.workers == 1,
        "stopwords": stopwords_source(),
    }

    if config.save_vectors and config.word_vectors == wv.TRAIN:
        out = settings.home / "word_vectors" / f"{set_name}.bin"
        out.parent.mkdir(parents=True, exist_ok=True)
        vectors.keyed_vectors.save_word2vec_format(str(out), binary=True)
        params["saved_vectors"] = str(out)

    tick = time.perf_counter()
    n_store = len(rows_ok) + len(skipped_rows)
    progress.start("storing", max(1, n_store), "products")
    indexed = False
    with engine.begin() as conn:
        set_id = create_feature_set(
            conn,
            name=set_name,
            source=vectors.source,
            source_fingerprint=fingerprint,
            dim=vectors.dim,
            weighting=config.weighting,
            cleaning_version=CLEANING_VERSION,
            vocabulary_size=vectors.vocabulary_size,
            params=params,
        )
        n_reused = 0
        if reuse_from is not None and (~changed).any():
            n_reused = _copy_forward(conn, reuse_from, set_id, catalogue.product_ids[~changed])
            for reason, count in conn.execute(
                sa.text(
                    "SELECT skip_reason, count(*) FROM product_features "
                    "WHERE feature_set_id = :id AND skip_reason IS NOT NULL "
                    "GROUP BY skip_reason"
                ),
                {"id": set_id},
            ).all():
                skipped[reason] += count
        vectors_ok, words_ok = embedded.vectors[ok], embedded.n_words[ok]
        noted = np.fromiter(
            (catalogue.notes[i] is not None for i in rows_ok.tolist()),
            dtype=bool,
            count=len(rows_ok),
        )
        for part, part_notes in ((~noted, None), (noted, True)):
            idx = rows_ok[part]
            write_vectors(
                conn,
                set_id,
                catalogue.product_ids[idx],
                vectors_ok[part],
                [catalogue.hashes[i] for i in idx.tolist()],
                words_ok[part],
                [catalogue.notes[i] for i in idx.tolist()] if part_notes else None,
            )
        progress.advance(len(rows_ok))
        write_skipped(conn, set_id, skipped_rows)
        progress.advance(len(skipped_rows))
        finish_feature_set(conn, set_id)
        phases["store"] = time.perf_counter() - tick
        tick = time.perf_counter()
        if config.create_hnsw:
            progress.start("indexing", 1)
            indexed = create_index(conn, set_id, vectors.dim)
            progress.advance(1)
        phases["index"] = time.perf_counter() - tick
        if after_write is not None:
            after_write(conn, set_id)
        if config.make_current_set:
            make_current(conn, set_id)
            if config.keep > 0:
                prune_feature_sets(conn, config.keep)
    progress.finish()

    n_embedded = conn_count = 0
    with engine.connect() as conn:
        conn_count = conn.execute(
            sa.text("SELECT count(vector) FROM product_features WHERE feature_set_id = :id"),
            {"id": set_id},
        ).scalar_one()
    n_embedded = int(conn_count)
    token_cov = (float(embedded.n_words.sum()) / embedded.n_tokens) if embedded.n_tokens else 1.0
    word_cov = (embedded.n_distinct_known / embedded.n_distinct) if embedded.n_distinct else 1.0
    return BuildSummary(
        feature_set_id=set_id,
        name=set_name,
        source=vectors.source,
        dim=vectors.dim,
        weighting=config.weighting,
        n_products=len(catalogue.product_ids),
        n_embedded=n_embedded,
        n_computed=len(todo),
        n_reused=n_reused,
        skipped=dict(skipped),
        n_capped=catalogue.n_capped,
        vocabulary_size=vectors.vocabulary_size,
        token_coverage=token_cov,
        word_coverage=word_cov,
        previous_id=previous.id if previous else None,
        seconds=time.perf_counter() - started,
        phases=phases,
        indexed=indexed,
    )


def _copy_forward(conn: sa.Connection, old_id: int, new_id: int, product_ids: np.ndarray) -> int:
    """Copy the unchanged products' rows from the old set to the new one, in SQL."""
    conn.execute(
        sa.text("CREATE TEMP TABLE _fs_reuse (product_id bigint PRIMARY KEY) ON COMMIT DROP")
    )
    with _psycopg(conn).cursor() as cur, cur.copy("COPY _fs_reuse (product_id) FROM STDIN") as cp:
        cp.write("".join(f"{int(p)}\n" for p in product_ids.tolist()))
    result = conn.execute(
        sa.text(
            "INSERT INTO product_features (feature_set_id, product_id, text_hash, vector, "
            "n_words, skip_reason, notes) SELECT :new, pf.product_id, pf.text_hash, pf.vector, "
            "pf.n_words, pf.skip_reason, pf.notes FROM product_features pf "
            "JOIN _fs_reuse r USING (product_id) WHERE pf.feature_set_id = :old"
        ),
        {"new": new_id, "old": old_id},
    )
    return int(result.rowcount)
