"""Feature store (issue 3): feature sets and product features with pgvector.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Placeholder kept in the chain so that later revisions exist in order; the owning area fills it.
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
