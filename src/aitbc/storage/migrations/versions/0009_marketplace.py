"""marketplace: miners' offers of capacity, trades that buy it, jobs drawing on them

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trade_id", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("target_miner_id", sa.String(128), nullable=True))
    op.create_table(
        "market_offers",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("offer_id", sa.String(64), nullable=False, unique=True),
        sa.Column("miner_id", sa.String(128), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("price_micro", sa.BigInteger(), nullable=False),
        sa.Column("capacity_tokens", sa.BigInteger(), nullable=False),
        sa.Column("remaining_tokens", sa.BigInteger(), nullable=False),
        sa.Column("valid_until", sa.DateTime(), nullable=False),
        sa.Column("gpu_type", sa.String(100), nullable=True),
        sa.Column("gpu_count", sa.Integer(), nullable=True),
        sa.Column("vram_gb", sa.Float(), nullable=True),
        sa.Column("region", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("remaining_tokens >= 0", name="ck_market_offers_remaining"),
    )
    op.create_index("ix_market_offers_status_price", "market_offers", ["status", "price_micro"])
    op.create_table(
        "market_trades",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("trade_id", sa.String(64), nullable=False, unique=True),
        sa.Column("offer_id", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("miner_id", sa.String(128), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("price_micro", sa.BigInteger(), nullable=False),
        sa.Column("amount_micro", sa.BigInteger(), nullable=False),
        sa.Column("reserved_micro", sa.BigInteger(), nullable=False),
        sa.Column("paid_micro", sa.BigInteger(), nullable=False),
        sa.Column("used_tokens", sa.BigInteger(), nullable=False),
        sa.Column("refunded_micro", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("reserved_micro >= 0", name="ck_market_trades_reserved"),
        sa.CheckConstraint(
            "reserved_micro + paid_micro <= amount_micro", name="ck_market_trades_within_amount"
        ),
    )
    op.create_index("ix_market_trades_client_seq", "market_trades", ["client_id", "seq"])
    op.create_index(
        "ix_market_trades_active_expiry",
        "market_trades",
        ["expires_at"],
        sqlite_where=sa.text("status = 'active'"),
        postgresql_where=sa.text("status = 'active'"),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("market_trades")
    op.drop_table("market_offers")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("target_miner_id")
        batch_op.drop_column("trade_id")
