"""events: the live event log behind /ws (DESIGN.md section 8), numbered in commit order

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 02:00:00

On PostgreSQL an event is written unnumbered: a row trigger gives it a negative
placeholder (from a sequence of its own; readers only ask for offsets above one they
have seen, so never see it) and queues a NOTIFY, which PostgreSQL delivers when the
transaction commits and never when it rolls back. Offsets are given afterwards, to
committed events only, by one numbering transaction at a time
(storage.event_queries.number_pending, under an advisory lock): so an offset is
never visible before a lower one, and resuming after n never skips an event. A
sequence in the writing transaction would let n + 1 commit before n; numbering there
under a lock held to commit would serialise every job step's commit instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# storage.event_queries.NOTIFY_CHANNEL.
_NOTIFY_CHANNEL = "aitbc_events"


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "events",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=True),
        sa.Column("miner_id", sa.String(128), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
    )
    sparse = "channel IN ('blocks', 'miner_heartbeats')"
    op.create_index(
        "ix_events_sparse_channels",
        "events",
        ["channel", "seq"],
        sqlite_where=sa.text(sparse),
        postgresql_where=sa.text(sparse),
    )
    op.create_table(
        "event_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("pruned_through", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.execute("INSERT INTO event_log (id, pruned_through) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE SEQUENCE events_pending_seq")
        op.execute(
            f"""
            CREATE FUNCTION aitbc_number_event() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                NEW.seq := -nextval('events_pending_seq');
                PERFORM pg_notify('{_NOTIFY_CHANNEL}', '');
                RETURN NEW;
            END
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER events_number BEFORE INSERT ON events "
            "FOR EACH ROW EXECUTE FUNCTION aitbc_number_event()"
        )


def downgrade() -> None:
    """Revert this revision."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER events_number ON events")
        op.execute("DROP FUNCTION aitbc_number_event()")
        op.execute("DROP SEQUENCE events_pending_seq")
    op.drop_table("event_log")
    op.drop_index("ix_events_sparse_channels", table_name="events")
    op.drop_table("events")
