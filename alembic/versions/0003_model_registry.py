"""Model registry (issue 4): model runs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

Placeholder kept in the chain so that later revisions exist in order; the owning area fills it.
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
