"""Model registry (issue 4): model runs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

One row per training run. The row is inserted as ``running`` and committed before training
starts, and marked ``succeeded`` only after the run's artifacts have been renamed into place
under ``RECSYS_HOME/models/<id>`` (``artifact_path``, ``checksum`` = sha256 of the artifact
manifest). A trainer that dies leaves ``running`` with its host and pid; the next training
marks such rows of dead processes ``failed`` with reason ``interrupted``. ``feature_set_id`` is
deliberately not a foreign key: a run keeps its record (and its text table inside the
artifact) when the feature set is later deleted.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_runs",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("model_type", sa.Text, nullable=False),
        sa.Column("params", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("n_users", sa.BigInteger),
        sa.Column("n_products", sa.BigInteger),
        sa.Column("n_ratings", sa.BigInteger),
        sa.Column("feature_set_id", sa.BigInteger),
        sa.Column("metrics", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("history", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("failure_reason", sa.Text),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("artifact_path", sa.Text),
        sa.Column("checksum", sa.Text),
        sa.Column("host", sa.Text),
        sa.Column("pid", sa.Integer),
        sa.CheckConstraint("status IN ('running', 'succeeded', 'failed')", name="status"),
        sa.CheckConstraint(
            "status <> 'succeeded' OR (artifact_path IS NOT NULL AND checksum IS NOT NULL)",
            name="succeeded_has_artifact",
        ),
    )
    op.create_index("ix_model_runs_status", "model_runs", ["status", "id"])


def downgrade() -> None:
    op.drop_index("ix_model_runs_status", table_name="model_runs")
    op.drop_table("model_runs")
