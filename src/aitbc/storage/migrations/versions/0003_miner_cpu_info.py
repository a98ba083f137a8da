"""miners report their CPU and memory

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 06:25:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("miners", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cpu_info", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("miners", schema=None) as batch_op:
        batch_op.drop_column("cpu_info")
