"""Job lock tables: locks the read-only role cannot take.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

``nightly_lock`` (held by ``recsys run``, ``score`` and ``publish``) and ``features_lock``
(``recsys features build``) are one-row tables that exist only to be locked with
``LOCK TABLE ... IN EXCLUSIVE MODE NOWAIT`` (``recsys.db.locks``). That needs UPDATE, DELETE
or TRUNCATE rights on the table, which no role but the owner has; the advisory locks used
before could be taken by any role that can connect, the read-only one included.

``model_runs.artifacts_pruned_at``: when ``recsys.model.registry.prune_artifacts`` deleted the
run's artifact folder (the row, its metrics and history stay).
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LOCK_TABLES = {
    "nightly_lock": "recsys run, score and publish hold LOCK TABLE nightly_lock while they run",
    "features_lock": "recsys features build holds LOCK TABLE features_lock while it runs",
}


def upgrade() -> None:
    op.add_column("model_runs", sa.Column("artifacts_pruned_at", sa.DateTime(timezone=True)))
    for table, purpose in LOCK_TABLES.items():
        op.create_table(
            table,
            sa.Column("id", sa.SmallInteger, primary_key=True, server_default="1"),
            sa.Column("purpose", sa.Text, nullable=False),
            sa.CheckConstraint("id = 1", name="one_row"),
        )
        op.execute(
            sa.text(f"INSERT INTO {table} (id, purpose) VALUES (1, :p)").bindparams(p=purpose)
        )
        op.execute(f"REVOKE ALL ON {table} FROM PUBLIC")


def downgrade() -> None:
    for table in reversed(list(LOCK_TABLES)):
        op.drop_table(table)
    op.drop_column("model_runs", "artifacts_pruned_at")
