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


# --- foundation (issue 2): users, products, ratings, loads, rejected rows -------------------


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
        sa.BigInteger, sa.ForeignKey("products.id", ondelete="CASCADE"), primary_key=True,
        index=True,
    )
    rating: Mapped[float] = mapped_column(sa.Float(24))
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


# --- feature store (issue 3) ----------------------------------------------------------------

# --- model registry (issue 4) ---------------------------------------------------------------

# --- recommendations, pipeline runs (issue 5) -----------------------------------------------


class RecommendationRun(Base):
    """One scoring run: status ``scoring`` while rows are written, then ``ready`` (or ``failed``)."""

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


class Recommendation(Base):
    __tablename__ = "recommendations"

    run_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("recommendation_runs.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    product_id: Mapped[int] = mapped_column(sa.BigInteger)
    score: Mapped[float] = mapped_column(sa.Float(24))
    strategy: Mapped[str] = mapped_column(sa.Text)
    """model | cold_start | popularity | category_popularity"""


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
