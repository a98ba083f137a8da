"""the ledger: accounts, transactions, blocks, sealed balances; job holds

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "accounts",
        sa.Column("address", sa.String(128), primary_key=True),
        sa.Column("balance_micro", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("held_micro", sa.BigInteger(), nullable=False, server_default="0"),
        sa.CheckConstraint("balance_micro >= 0", name="ck_accounts_balance_nonnegative"),
        sa.CheckConstraint("held_micro >= 0", name="ck_accounts_held_nonnegative"),
    )
    op.create_table(
        "ledger_transactions",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("sender", sa.String(128), nullable=True),
        sa.Column("recipient", sa.String(128), nullable=True),
        sa.Column("amount_micro", sa.BigInteger(), nullable=False),
        sa.Column("fee_micro", sa.BigInteger(), nullable=False),
        sa.Column("ref", sa.String(128), nullable=True),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=True),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("block_height", sa.BigInteger(), nullable=True),
        sa.Column("position", sa.Integer(), nullable=True),
    )
    pending = "block_height IS NULL"
    op.create_index(
        "ix_ledger_transactions_pending",
        "ledger_transactions",
        ["seq"],
        sqlite_where=sa.text(pending),
        postgresql_where=sa.text(pending),
    )
    sealed = "block_height IS NOT NULL"
    op.create_index(
        "ix_ledger_transactions_block",
        "ledger_transactions",
        ["block_height", "position"],
        sqlite_where=sa.text(sealed),
        postgresql_where=sa.text(sealed),
    )
    op.create_index("ix_ledger_transactions_sender_seq", "ledger_transactions", ["sender", "seq"])
    op.create_index(
        "ix_ledger_transactions_recipient_seq", "ledger_transactions", ["recipient", "seq"]
    )
    # Partial: rows without a nonce (all but transfers) are not in it.
    has_nonce = "nonce IS NOT NULL"
    op.create_index(
        "uq_ledger_transactions_sender_nonce",
        "ledger_transactions",
        ["sender", "nonce"],
        unique=True,
        sqlite_where=sa.text(has_nonce),
        postgresql_where=sa.text(has_nonce),
    )
    is_receipt = "type = 'receipt'"
    op.create_index(
        "ix_ledger_transactions_receipt_ref",
        "ledger_transactions",
        ["ref"],
        sqlite_where=sa.text(is_receipt),
        postgresql_where=sa.text(is_receipt),
    )
    op.create_table(
        "blocks",
        sa.Column("height", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("tx_count", sa.Integer(), nullable=False),
        sa.Column("header", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
    )
    op.create_table(
        "chain_balances",
        sa.Column("address", sa.String(128), primary_key=True),
        sa.Column("balance_micro", sa.BigInteger(), nullable=False),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("held_micro", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("estimate_note", sa.Text(), nullable=True))
    # Every account starts at zero: the system accounts, and each client and miner
    # registered before the ledger existed (their jobs so far were never charged).
    op.execute("INSERT INTO accounts (address) VALUES ('treasury'), ('escrow')")
    op.execute("INSERT INTO accounts (address) SELECT id FROM clients")
    op.execute("INSERT INTO accounts (address) SELECT id FROM miners")


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("estimate_note")
        batch_op.drop_column("held_micro")
    op.drop_table("chain_balances")
    op.drop_table("blocks")
    op.drop_table("ledger_transactions")
    op.drop_table("accounts")
