"""Recommendations and pipeline runs (issue 5): published runs, the current_recommendations view.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

Placeholder kept in the chain so that later revisions exist in order; the owning area fills it.
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
