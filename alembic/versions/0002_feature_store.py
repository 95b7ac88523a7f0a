"""Feature store (issue 3): feature sets and product features with pgvector.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

``product_features.vector`` is an untyped pgvector ``vector``: each feature set fixes its own
dimension (``feature_sets.dim``), and the build creates one HNSW cosine index per feature set
as a partial expression index ``((vector::vector(DIM)) vector_cosine_ops) WHERE
feature_set_id = N`` (pgvector README, "Indexing: mixed dimensions"). Those per-set indexes
belong to the data, not the schema: they are dropped with their rows (``DROP TABLE`` drops
them on downgrade).
"""

from __future__ import annotations

import sqlalchemy as sa
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import BYTEA, JSONB

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "feature_sets",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("source_fingerprint", sa.Text, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("weighting", sa.Text, nullable=False),
        sa.Column("cleaning_version", sa.Integer, nullable=False),
        sa.Column("vocabulary_size", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("params", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("status", sa.Text, nullable=False, server_default="ready"),
        sa.Column("is_current", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("n_products", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("n_embedded", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("n_skipped", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint("dim > 0 AND dim <= 16000", name="dim"),
        sa.CheckConstraint("weighting IN ('mean', 'tfidf', 'precomputed')", name="weighting"),
        sa.CheckConstraint("status IN ('ready', 'failed')", name="status"),
    )
    # only one current feature set: a partial unique index over the rows where it is true
    op.create_index(
        "ix_feature_sets_one_current",
        "feature_sets",
        ["is_current"],
        unique=True,
        postgresql_where=sa.text("is_current"),
    )
    op.create_table(
        "product_features",
        sa.Column(
            "feature_set_id",
            sa.BigInteger,
            sa.ForeignKey("feature_sets.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "product_id",
            sa.BigInteger,
            sa.ForeignKey("products.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("text_hash", BYTEA, nullable=False),
        sa.Column("vector", Vector()),
        sa.Column("n_words", sa.Integer, nullable=False, server_default="0"),
        sa.Column("skip_reason", sa.Text),
        sa.Column("notes", sa.Text),
        sa.PrimaryKeyConstraint("feature_set_id", "product_id"),
        sa.CheckConstraint("(vector IS NULL) = (skip_reason IS NOT NULL)", name="vector_or_reason"),
    )
    op.create_index("ix_product_features_product_id", "product_features", ["product_id"])


def downgrade() -> None:
    op.drop_table("product_features")
    op.drop_index("ix_feature_sets_one_current", table_name="feature_sets")
    op.drop_table("feature_sets")
    # the vector extension stays: 0001 created it and other schemas may use it
