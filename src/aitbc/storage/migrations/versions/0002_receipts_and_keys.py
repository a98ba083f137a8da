"""signed receipts, published keys, the price a job was claimed at

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unit_price_micro", sa.BigInteger(), nullable=True))

    op.create_table(
        "signing_keys",
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("public_key", sa.String(length=43), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("valid_from", sa.DateTime(), nullable=False),
        sa.Column("valid_until", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("key_id"),
    )
    op.create_index("ix_signing_keys_owner", "signing_keys", ["owner"])

    op.create_table(
        "receipts",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=128), nullable=False),
        sa.Column("completed_at", sa.BigInteger(), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("job_id"),
    )
    op.create_index("ix_receipts_client_seq", "receipts", ["client_id", "seq"])
    op.create_index("ix_receipts_provider_seq", "receipts", ["provider", "seq"])


def downgrade() -> None:
    """Revert this revision."""
    for name in ("ix_receipts_provider_seq", "ix_receipts_client_seq"):
        op.drop_index(name, table_name="receipts")
    op.drop_table("receipts")
    op.drop_index("ix_signing_keys_owner", table_name="signing_keys")
    op.drop_table("signing_keys")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("unit_price_micro")
