"""hardening before money moves: price bound, miner concurrency, key ids, file expiry

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 07:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # The most the client accepts per 1,000 units (µAIT); None on jobs from before.
        batch_op.add_column(sa.Column("max_price_micro", sa.BigInteger(), nullable=True))
        # Prompt tokens the claiming miner's template may add (declared before it claimed).
        batch_op.add_column(sa.Column("prompt_allowance_tokens", sa.Integer(), nullable=True))
    with op.batch_alter_table("miners", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("concurrency", sa.Integer(), nullable=False, server_default="1")
        )
        # {model: tokens its chat template adds around a prompt}, as the miner declared.
        batch_op.add_column(sa.Column("template_tokens", sa.JSON(), nullable=True))
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_id", sa.String(16), nullable=True))
        batch_op.create_index("ix_api_keys_key_id", ["key_id"])
    op.execute("UPDATE api_keys SET key_id = substr(key_hash, 1, 16)")
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))
        batch_op.create_index("ix_files_expires_at", ["expires_at"])


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_index("ix_files_expires_at")
        batch_op.drop_column("expires_at")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_api_keys_key_id")
        batch_op.drop_column("key_id")
    with op.batch_alter_table("miners", schema=None) as batch_op:
        batch_op.drop_column("template_tokens")
        batch_op.drop_column("concurrency")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("prompt_allowance_tokens")
        batch_op.drop_column("max_price_micro")
