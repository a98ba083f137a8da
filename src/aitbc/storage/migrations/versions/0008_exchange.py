"""exchange: locked AIT, off-chain quote balances and their ledger, orders and fills

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 19:00:00

An account's open sell orders lock part of its AIT (``accounts.locked_micro``); the
database refuses a change that would leave the balance below what is locked, so
nothing else (a transfer, a job's hold) can spend it. Quote assets live off chain in
``asset_balances``, every change of them in ``asset_entries``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_RESTING = "status IN ('open', 'partially_filled')"


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("locked_micro", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.create_check_constraint("ck_accounts_locked_nonnegative", "locked_micro >= 0")
        batch_op.create_check_constraint(
            "ck_accounts_unlocked_nonnegative", "balance_micro >= locked_micro"
        )
    op.create_table(
        "asset_balances",
        sa.Column("address", sa.String(128), primary_key=True),
        sa.Column("asset", sa.String(16), primary_key=True),
        sa.Column("balance_micro", sa.BigInteger(), nullable=False),
        sa.Column("locked_micro", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("locked_micro >= 0", name="ck_asset_balances_locked_nonnegative"),
        sa.CheckConstraint("balance_micro >= locked_micro", name="ck_asset_balances_unlocked"),
    )
    op.create_table(
        "asset_entries",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("asset", sa.String(16), nullable=False),
        sa.Column("address", sa.String(128), nullable=False),
        sa.Column("delta_micro", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ref", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_asset_entries_address_seq", "asset_entries", ["address", "seq"])
    op.create_table(
        "exchange_markets",
        sa.Column("market", sa.String(32), primary_key=True),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "exchange_orders",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("order_id", sa.String(64), nullable=False, unique=True),
        sa.Column("market", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("time_in_force", sa.String(16), nullable=False),
        sa.Column("price_ticks", sa.BigInteger(), nullable=True),
        sa.Column("lots", sa.BigInteger(), nullable=False),
        sa.Column("filled_lots", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("locked_micro", sa.BigInteger(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_exchange_orders_owner_seq", "exchange_orders", ["owner", "seq"])
    op.create_index(
        "ix_exchange_orders_resting",
        "exchange_orders",
        ["market", "seq"],
        sqlite_where=sa.text(_RESTING),
        postgresql_where=sa.text(_RESTING),
    )
    op.create_table(
        "exchange_trades",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("trade_id", sa.String(64), nullable=False, unique=True),
        sa.Column("market", sa.String(32), nullable=False),
        sa.Column("price_ticks", sa.BigInteger(), nullable=False),
        sa.Column("lots", sa.BigInteger(), nullable=False),
        sa.Column("taker_side", sa.String(4), nullable=False),
        sa.Column("maker_order_id", sa.String(64), nullable=False),
        sa.Column("taker_order_id", sa.String(64), nullable=False),
        sa.Column("buyer", sa.String(128), nullable=False),
        sa.Column("seller", sa.String(128), nullable=False),
        sa.Column("base_micro", sa.BigInteger(), nullable=False),
        sa.Column("quote_micro", sa.BigInteger(), nullable=False),
        sa.Column("buyer_fee_micro", sa.BigInteger(), nullable=False),
        sa.Column("seller_fee_micro", sa.BigInteger(), nullable=False),
        sa.Column("tx_id", sa.String(64), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_exchange_trades_market_seq", "exchange_trades", ["market", "seq"])
    op.create_index("ix_exchange_trades_maker_order", "exchange_trades", ["maker_order_id"])
    op.create_index("ix_exchange_trades_taker_order", "exchange_trades", ["taker_order_id"])
    op.create_index("ix_exchange_trades_buyer_seq", "exchange_trades", ["buyer", "seq"])
    op.create_index("ix_exchange_trades_seller_seq", "exchange_trades", ["seller", "seq"])


def downgrade() -> None:
    """Revert this revision."""
    for table in (
        "exchange_trades",
        "exchange_orders",
        "exchange_markets",
        "asset_entries",
        "asset_balances",
    ):
        op.drop_table(table)
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_constraint("ck_accounts_unlocked_nonnegative", type_="check")
        batch_op.drop_constraint("ck_accounts_locked_nonnegative", type_="check")
        batch_op.drop_column("locked_micro")
