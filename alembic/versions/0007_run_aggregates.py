"""Per-product aggregates of each recommendation run, written with its rows.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

* ``recommendation_product_counts``: per (run, product) how many users' lists hold the product
  (``n_users``), at rank 1 (``n_first``), the sum of its ranks (``rank_sum``; mean rank =
  ``rank_sum / n_users``), its number of ratings when the run was scored (``n_ratings``, NULL:
  none) and its popularity percentile then (``popularity_pct``: ``percent_rank()`` of the
  number of ratings among the products that had ratings, NULL: none). Written by
  ``recsys.scoring.publish.RunWriter`` in the transaction of the run's rows, deleted with the
  run (``ON DELETE CASCADE``).
* ``recommendation_runs.list_stats``: the run-level figures of the same moment
  (``{"products": distinct products recommended, "catalogue": products in the catalogue,
  "rated_products": products with ratings}``); NULL for runs written before this revision,
  whose report falls back to aggregating their rows.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recommendation_product_counts",
        sa.Column(
            "run_id",
            sa.BigInteger,
            sa.ForeignKey("recommendation_runs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("product_id", sa.BigInteger, nullable=False),
        sa.Column("n_users", sa.Integer, nullable=False),
        sa.Column("n_first", sa.Integer, nullable=False),
        sa.Column("rank_sum", sa.BigInteger, nullable=False),
        sa.Column("n_ratings", sa.Integer),
        sa.Column("popularity_pct", sa.Float),
        sa.PrimaryKeyConstraint("run_id", "product_id"),
        sa.CheckConstraint("n_users > 0 AND n_first >= 0 AND n_first <= n_users", name="counts"),
    )
    op.add_column("recommendation_runs", sa.Column("list_stats", JSONB))


def downgrade() -> None:
    op.drop_column("recommendation_runs", "list_stats")
    op.drop_table("recommendation_product_counts")
