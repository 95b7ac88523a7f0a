"""Foundation: users, products, ratings, the load log and rejected rows; pgvector.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("external_id", sa.Text, nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )
    op.create_table(
        "products",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("external_id", sa.Text, nullable=False, unique=True),
        sa.Column("title", sa.Text),
        sa.Column("brand", sa.Text),
        sa.Column("description", sa.Text),
        sa.Column("feature_text", sa.Text),
        sa.Column("categories", ARRAY(sa.Text)),
        sa.Column("main_category", sa.Text),
        sa.Column("raw", JSONB),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )
    op.create_table(
        "ratings",
        sa.Column(
            "user_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "product_id",
            sa.BigInteger,
            sa.ForeignKey("products.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("rating", sa.Float(24), nullable=False),
        sa.Column("rated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "product_id"),
    )
    op.create_index("ix_ratings_product_id", "ratings", ["product_id"])
    op.create_table(
        "loads",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("format", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("rows_read", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_loaded", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_merged", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_rejected", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("message", sa.Text),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status IN ('loaded', 'failed')", name="status"),
        sa.CheckConstraint("kind IN ('ratings', 'metadata', 'embeddings')", name="kind"),
    )
    op.create_index("ix_loads_sha256", "loads", ["sha256"])
    op.create_table(
        "rejected_rows",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "load_id", sa.BigInteger, sa.ForeignKey("loads.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("line_no", sa.BigInteger, nullable=False),
        sa.Column("raw_line", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_rejected_rows_load_id", "rejected_rows", ["load_id"])


def downgrade() -> None:
    op.drop_table("rejected_rows")
    op.drop_table("loads")
    op.drop_table("ratings")
    op.drop_table("products")
    op.drop_table("users")
    # the vector extension stays: other schemas on this server may use it
