"""Recommendations and pipeline runs (issue 5): published runs, the current_recommendations view.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

* ``recommendation_runs``: one row per scoring run (status scoring -> ready, or failed).
* ``recommendations``: (run, user, rank) -> product, score, strategy; written by COPY.
* ``published_recommendations``: a single-row pointer to the run apps are served; switching it
  is one UPDATE, so readers move from one complete run to the next.
* ``pipeline_runs`` / ``pipeline_steps``: every nightly run and each step's timing and outcome.
* ``apscheduler_jobs``: APScheduler 3's SQLAlchemyJobStore table, created here (same layout
  APScheduler creates) so that a downgrade removes it too.
* the view ``current_recommendations`` (embedded SQL; ``sql/views`` holds the current text).

``recommendations`` has no foreign keys at all: each would cost a lookup per COPYed row
(measured: the one to ``recommendation_runs`` alone halved COPY throughput). The view joins
users and products, so a deleted user or product simply drops out; rows of a deleted run are
deleted with it by ``recsys.scoring.publish.prune_runs``.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CURRENT_RECOMMENDATIONS_V1 = """
CREATE VIEW current_recommendations AS
SELECT u.external_id AS user_external_id,
       r.rank,
       p.external_id AS asin,
       p.title,
       p.brand,
       r.score,
       r.strategy,
       rr.generated_at
FROM published_recommendations pub
JOIN recommendation_runs rr ON rr.id = pub.run_id
JOIN recommendations r ON r.run_id = pub.run_id
JOIN users u ON u.id = r.user_id
JOIN products p ON p.id = r.product_id
"""


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "recommendation_runs",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("model_run_id", sa.BigInteger),
        sa.Column("model_type", sa.Text),
        sa.Column("k", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column(
            "generated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        sa.Column("n_users", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("n_rows", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("counts", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("params", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("message", sa.Text),
        sa.CheckConstraint("status IN ('scoring', 'ready', 'failed')", name="status"),
        sa.CheckConstraint("k > 0", name="k_positive"),
    )
    op.create_table(
        "recommendations",
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("rank", sa.SmallInteger, nullable=False),
        sa.Column("product_id", sa.BigInteger, nullable=False),
        sa.Column("score", sa.Float(24), nullable=False),
        sa.Column("strategy", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "user_id", "rank"),
        sa.CheckConstraint("rank >= 1", name="rank_positive"),
        sa.CheckConstraint(
            "strategy IN ('model', 'cold_start', 'popularity', 'category_popularity')",
            name="strategy",
        ),
    )
    op.create_table(
        "published_recommendations",
        sa.Column("id", sa.SmallInteger, primary_key=True, server_default="1"),
        sa.Column(
            "run_id",
            sa.BigInteger,
            sa.ForeignKey("recommendation_runs.id", ondelete="RESTRICT"),
            nullable=False,
        ),
        sa.Column(
            "published_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()
        ),
        sa.CheckConstraint("id = 1", name="single_row"),
    )
    op.create_table(
        "pipeline_runs",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("trigger", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("pid", sa.Integer),
        sa.Column("host", sa.Text),
        sa.Column("options", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("message", sa.Text),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed', 'interrupted')", name="status"
        ),
    )
    op.create_table(
        "pipeline_steps",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "pipeline_run_id",
            sa.BigInteger,
            sa.ForeignKey("pipeline_runs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("step", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("seconds", sa.Float),
        sa.Column("detail", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("message", sa.Text),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed', 'skipped', 'interrupted')", name="status"
        ),
    )
    op.create_index("ix_pipeline_steps_pipeline_run_id", "pipeline_steps", ["pipeline_run_id"])
    op.create_table(
        "apscheduler_jobs",
        sa.Column("id", sa.Unicode(191), primary_key=True),
        sa.Column("next_run_time", sa.Float(25)),
        sa.Column("job_state", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_apscheduler_jobs_next_run_time", "apscheduler_jobs", ["next_run_time"])
    op.execute(CURRENT_RECOMMENDATIONS_V1)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS current_recommendations")
    op.drop_table("apscheduler_jobs")
    op.drop_table("pipeline_steps")
    op.drop_table("pipeline_runs")
    op.drop_table("published_recommendations")
    op.drop_table("recommendations")
    op.drop_table("recommendation_runs")
