"""Tables, as SQLAlchemy 2 declarative models.

The schema is created by Alembic migrations (``alembic/versions``), never by ``create_all``;
these classes describe it for queries. Each area adds its tables below its own marker, and
a new Alembic revision for them.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


# --- foundation: users, products, ratings, loads, rejected rows -----------------------------


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    external_id: Mapped[str] = mapped_column(sa.Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    external_id: Mapped[str] = mapped_column(sa.Text, unique=True)
    """asin (Amazon 2018/2014), parent_asin (Amazon 2023) or movie id (MovieLens)."""
    title: Mapped[str | None] = mapped_column(sa.Text)
    brand: Mapped[str | None] = mapped_column(sa.Text)
    description: Mapped[str | None] = mapped_column(sa.Text)
    feature_text: Mapped[str | None] = mapped_column(sa.Text)
    """The product's feature bullets joined by newlines (MovieLens: its tags)."""
    categories: Mapped[list[str] | None] = mapped_column(ARRAY(sa.Text))
    """The category path (MovieLens: genres)."""
    main_category: Mapped[str | None] = mapped_column(sa.Text)
    available: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.true())
    """False: in no list (rules, migration 0006)."""
    raw: Mapped[dict | None] = mapped_column(JSONB)
    """The metadata record as read, merged over repeated lines."""
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )


class Rating(Base):
    __tablename__ = "ratings"

    user_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    product_id: Mapped[int] = mapped_column(
        sa.BigInteger,
        sa.ForeignKey("products.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    )
    rating: Mapped[float] = mapped_column(sa.REAL)
    rated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class Load(Base):
    __tablename__ = "loads"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    path: Mapped[str] = mapped_column(sa.Text)
    sha256: Mapped[str] = mapped_column(sa.Text, index=True)
    format: Mapped[str] = mapped_column(sa.Text)
    kind: Mapped[str] = mapped_column(sa.Text)
    """ratings | metadata | embeddings"""
    status: Mapped[str] = mapped_column(sa.Text)
    """loaded | failed (a failed load keeps its log and rejected rows, and no data)"""
    rows_read: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    rows_loaded: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    rows_merged: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    """Lines that merged into another line of the same key (duplicates)."""
    rows_rejected: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    message: Mapped[str | None] = mapped_column(sa.Text)
    started_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class RejectedRow(Base):
    __tablename__ = "rejected_rows"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    load_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("loads.id", ondelete="CASCADE"), index=True
    )
    line_no: Mapped[int] = mapped_column(sa.BigInteger)
    raw_line: Mapped[str] = mapped_column(sa.Text)
    reason: Mapped[str] = mapped_column(sa.Text)


# --- feature store --------------------------------------------------------------------------

from pgvector.sqlalchemy import Vector as _PgVector  # noqa: E402  (kept inside this area)


class FeatureSet(Base):
    """One build of product text vectors; exactly one row at most has ``is_current``."""

    __tablename__ = "feature_sets"
    __table_args__ = (
        sa.Index(
            "ix_feature_sets_one_current",
            "is_current",
            unique=True,
            postgresql_where=sa.text("is_current"),
        ),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, unique=True)
    source: Mapped[str] = mapped_column(sa.Text)
    """train | glove-6b-50d | file:PATH | import:PATH"""
    source_fingerprint: Mapped[str] = mapped_column(sa.Text)
    """Identifies the word vectors (and weighting inputs): equal fingerprints allow reuse."""
    dim: Mapped[int] = mapped_column(sa.Integer)
    weighting: Mapped[str] = mapped_column(sa.Text)
    """mean | tfidf | precomputed"""
    cleaning_version: Mapped[int] = mapped_column(sa.Integer)
    vocabulary_size: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    params: Mapped[dict] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    status: Mapped[str] = mapped_column(sa.Text, server_default="ready")
    is_current: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    n_products: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    n_embedded: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    n_skipped: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )


class ProductFeature(Base):
    """A product's text vector in one feature set, or the reason it has none."""

    __tablename__ = "product_features"

    feature_set_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("feature_sets.id", ondelete="CASCADE"), primary_key=True
    )
    product_id: Mapped[int] = mapped_column(
        sa.BigInteger,
        sa.ForeignKey("products.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    )
    text_hash: Mapped[bytes] = mapped_column(sa.LargeBinary)
    """blake2b-128 of the cleaned tokens joined by spaces."""
    vector: Mapped[object | None] = mapped_column(_PgVector())
    """pgvector ``vector`` of the set's dimension; NULL when ``skip_reason`` is set."""
    n_words: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    skip_reason: Mapped[str | None] = mapped_column(sa.Text)
    notes: Mapped[str | None] = mapped_column(sa.Text)


# --- model registry -------------------------------------------------------------------------


class ModelRun(Base):
    """One training run (see alembic revision 0003 and ``recsys.model.registry``)."""

    __tablename__ = "model_runs"
    __table_args__ = (sa.Index("ix_model_runs_status", "status", "id"),)

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    model_type: Mapped[str] = mapped_column(sa.Text)
    params: Mapped[dict] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    n_users: Mapped[int | None] = mapped_column(sa.BigInteger)
    n_products: Mapped[int | None] = mapped_column(sa.BigInteger)
    n_ratings: Mapped[int | None] = mapped_column(sa.BigInteger)
    feature_set_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    metrics: Mapped[dict] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    """``{"seed": {rmse, mae, ...}, "rank": {recall@10, ndcg@10, ...}}``.

    Empty without evaluation.
    """
    history: Mapped[dict] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    """Loss per epoch of the final fit: train_loss, val_loss, best_epoch, stopped_reason."""
    status: Mapped[str] = mapped_column(sa.Text)
    """running | succeeded | failed"""
    failure_reason: Mapped[str | None] = mapped_column(sa.Text)
    started_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    artifact_path: Mapped[str | None] = mapped_column(sa.Text)
    checksum: Mapped[str | None] = mapped_column(sa.Text)
    artifacts_pruned_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    """When the artifact folder was deleted (``recsys.model.registry.prune_artifacts``)."""
    host: Mapped[str | None] = mapped_column(sa.Text)
    pid: Mapped[int | None] = mapped_column(sa.Integer)


# --- recommendations, pipeline runs ---------------------------------------------------------


class RecommendationRun(Base):
    """One scoring run: ``scoring`` while its rows are written, then ``ready`` or ``failed``."""

    __tablename__ = "recommendation_runs"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    model_run_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    model_type: Mapped[str | None] = mapped_column(sa.Text)
    k: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.Text)
    generated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    n_users: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    n_rows: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    counts: Mapped[dict] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    """Users per strategy."""
    params: Mapped[dict] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    message: Mapped[str | None] = mapped_column(sa.Text)
    gates: Mapped[dict | None] = mapped_column(JSONB)
    """The gate figures checked before serving (recsys.scoring.gates)."""
    rule_counts: Mapped[dict] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    """Candidates each rule removed (recsys.scoring.block.RULE_COUNT_KEYS)."""
    list_stats: Mapped[dict | None] = mapped_column(JSONB)
    """Run-level figures stored with the per-product counts (migration 0007): ``products``,
    ``catalogue``, ``rated_products``; NULL for runs written without them."""


class Recommendation(Base):
    __tablename__ = "recommendations"

    run_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    """``recommendation_runs.id`` (no foreign key: COPY speed; prune_runs deletes the rows)."""
    user_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    product_id: Mapped[int] = mapped_column(sa.BigInteger)
    score: Mapped[float] = mapped_column(sa.REAL)
    strategy: Mapped[str] = mapped_column(sa.Text)
    """model | cold_start | popularity | category_popularity"""
    reason: Mapped[str | None] = mapped_column(sa.Text)
    because_product_id: Mapped[int | None] = mapped_column(sa.BigInteger)


class RecommendationProductCount(Base):
    """Per (run, product): the aggregates of the run's rows, written with them (migration 0007).

    ``recsys.scoring.publish.RunWriter`` counts while it COPYs the rows and writes these in the
    same transaction, so a ready run has all of them or (written before 0007) none.
    """

    __tablename__ = "recommendation_product_counts"
    __table_args__ = (
        sa.CheckConstraint("n_users > 0 AND n_first >= 0 AND n_first <= n_users", name="counts"),
    )

    run_id: Mapped[int] = mapped_column(
        sa.BigInteger,
        sa.ForeignKey("recommendation_runs.id", ondelete="CASCADE"),
        primary_key=True,
    )
    product_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    n_users: Mapped[int] = mapped_column(sa.Integer)
    """Lists (users) that hold the product."""
    n_first: Mapped[int] = mapped_column(sa.Integer)
    """Lists that hold it at rank 1."""
    rank_sum: Mapped[int] = mapped_column(sa.BigInteger)
    """Sum of its ranks (mean rank = rank_sum / n_users)."""
    n_ratings: Mapped[int | None] = mapped_column(sa.Integer)
    """Its number of ratings when the run was scored (NULL: none)."""
    popularity_pct: Mapped[float | None] = mapped_column(sa.Float)
    """``percent_rank()`` of ``n_ratings`` among the products rated then (NULL: not rated)."""


class PublishedRecommendations(Base):
    """The single-row pointer to the run that ``current_recommendations`` serves."""

    __tablename__ = "published_recommendations"

    id: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, server_default="1")
    run_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("recommendation_runs.id", ondelete="RESTRICT")
    )
    published_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )


class PipelineRun(Base):
    __tablename__ = "pipeline_runs"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    trigger: Mapped[str] = mapped_column(sa.Text)
    """cli | schedule | demo"""
    status: Mapped[str] = mapped_column(sa.Text)
    """running | succeeded | failed | interrupted"""
    started_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    pid: Mapped[int | None] = mapped_column(sa.Integer)
    host: Mapped[str | None] = mapped_column(sa.Text)
    options: Mapped[dict] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    message: Mapped[str | None] = mapped_column(sa.Text)


class PipelineStep(Base):
    __tablename__ = "pipeline_steps"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    pipeline_run_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("pipeline_runs.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(sa.Integer)
    step: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.Text)
    """running | succeeded | failed | skipped | interrupted"""
    started_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    seconds: Mapped[float | None] = mapped_column(sa.Float)
    detail: Mapped[dict] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    message: Mapped[str | None] = mapped_column(sa.Text)


# --- job locks (alembic revision 0005, recsys.db.locks) --------------------------------------


class NightlyLock(Base):
    """A one-row table locked (``LOCK TABLE ... IN EXCLUSIVE MODE``) by the nightly writers."""

    __tablename__ = "nightly_lock"
    __table_args__ = (sa.CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, server_default="1")
    purpose: Mapped[str] = mapped_column(sa.Text)


class FeaturesLock(Base):
    """A one-row table locked by ``recsys features build``."""

    __tablename__ = "features_lock"
    __table_args__ = (sa.CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, server_default="1")
    purpose: Mapped[str] = mapped_column(sa.Text)


# --- rules, similar products (migration 0006) ------------------------------------------------


class UserExclusion(Base):
    """A (user, product) pair never recommended while ``until`` is NULL or in the future."""

    __tablename__ = "user_exclusions"
    __table_args__ = (sa.Index("ix_user_exclusions_user", "user_external_id"),)

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    user_external_id: Mapped[str] = mapped_column(sa.Text)
    asin: Mapped[str] = mapped_column(
        sa.Text,
        sa.ForeignKey("products.external_id", ondelete="CASCADE", onupdate="CASCADE"),
    )
    reason: Mapped[str | None] = mapped_column(sa.Text)
    until: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )


class ProductBoost(Base):
    """A factor on a product's score while valid (see README "Rules, reasons and gates")."""

    __tablename__ = "product_boosts"
    __table_args__ = (
        sa.CheckConstraint("factor > 0 AND factor < 'Infinity'", name="factor_positive"),
        sa.CheckConstraint(
            "valid_from IS NULL OR valid_until IS NULL OR valid_until > valid_from",
            name="valid_range",
        ),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    asin: Mapped[str] = mapped_column(
        sa.Text,
        sa.ForeignKey("products.external_id", ondelete="CASCADE", onupdate="CASCADE"),
    )
    factor: Mapped[float] = mapped_column(sa.Float)
    valid_from: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    valid_until: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class SimilarProductRun(Base):
    __tablename__ = "similar_product_runs"
    __table_args__ = (
        sa.CheckConstraint("status IN ('building', 'ready', 'failed')", name="status"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    status: Mapped[str] = mapped_column(sa.Text)
    k: Mapped[int] = mapped_column(sa.Integer)
    feature_set_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    generated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    n_rows: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    counts: Mapped[dict] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    message: Mapped[str | None] = mapped_column(sa.Text)


class SimilarProduct(Base):
    __tablename__ = "similar_products"
    __table_args__ = (sa.CheckConstraint("kind IN ('text', 'co_rating')", name="kind"),)

    run_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    product_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    similar_product_id: Mapped[int] = mapped_column(sa.BigInteger)
    score: Mapped[float] = mapped_column(sa.REAL)


class PublishedSimilarProducts(Base):
    """The single-row pointer to the build that ``current_similar_products`` serves."""

    __tablename__ = "published_similar_products"
    __table_args__ = (sa.CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, server_default="1")
    run_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("similar_product_runs.id", ondelete="RESTRICT")
    )
    published_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
