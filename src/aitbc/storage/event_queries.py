"""The event log: appending events in the caller's transaction, reading them back by
offset (live delivery and resumption), and pruning by age.

Appends are on the lifecycle's hot path (every job step writes one), so they run on
the driver's cursor (``storage.driver``), as the last statement of the caller's
transaction. On SQLite an event's row id is its offset (one writer at a time: commit
order). On PostgreSQL events are written with a negative placeholder and numbered
once committed, by :func:`number_pending` (migration 0007 says why).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import NamedTuple, cast

from sqlalchemy import Connection, Table, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from aitbc.domain.events import Channel, Event, Viewer
from aitbc.storage.driver import DriverStatement
from aitbc.storage.models import EventLogState, EventRecord

EVENTS = cast(Table, EventRecord.__table__)
EVENT_LOG = cast(Table, EventLogState.__table__)
E = EVENTS.c
# "AITBCEVT" in ASCII: the PostgreSQL advisory lock of the numbering transaction.
EVENTS_LOCK_KEY = 0x4149544243455654
# What PostgreSQL NOTIFYs when a transaction that appended events commits.
NOTIFY_CHANNEL = "aitbc_events"


class NewEvent(NamedTuple):
    """An event to append: numbered by the database when it is written."""

    channel: str
    type: str
    client_id: str | None
    miner_id: str | None
    created_at: int
    data: str


# seq is given as NULL: SQLite numbers the row itself, and on PostgreSQL the trigger
# does, under its lock (a column left out would draw a number from the sequence's
# default first, before the lock, and waste it).
_APPEND = DriverStatement(
    EVENTS.insert(),
    ("seq", "channel", "type", "client_id", "miner_id", "created_at", "data"),
)


def append(connection: Connection, events: Sequence[NewEvent]) -> None:
    """Append ``events`` in this order (last statement of the caller's transaction)."""
    if events:
        _APPEND.executemany(connection, [(None, *event) for event in events])


_COLUMNS = (E.seq, E.channel, E.type, E.client_id, E.miner_id, E.data)


def _events(rows: Sequence[object]) -> list[Event]:
    return [Event(*row) for row in rows]  # type: ignore[misc]


def after(connection: Connection, seq: int, limit: int) -> list[Event]:
    """Events of every channel after offset ``seq``, oldest first (live delivery)."""
    statement = select(*_COLUMNS).where(E.seq > max(seq, 0)).order_by(E.seq).limit(limit)
    return _events(connection.execute(statement).all())


def channel_after(
    connection: Connection, channel: Channel, viewer: Viewer, seq: int, limit: int
) -> list[Event]:
    """The events of ``channel`` after offset ``seq`` that ``viewer`` may see, oldest
    first (resumption)."""
    statement = select(*_COLUMNS).where(E.channel == channel.value, E.seq > seq)
    if channel == Channel.JOB_UPDATES and not viewer.sees_all_jobs:
        owner = E.client_id if viewer.role == "client" else E.miner_id
        statement = statement.where(owner == viewer.owner_id)
    return _events(connection.execute(statement.order_by(E.seq).limit(limit)).all())


def newest_seq(connection: Connection) -> int:
    """The offset of the newest numbered event (0 when there is none)."""
    return int(
        connection.execute(select(func.coalesce(func.max(E.seq), 0)).where(E.seq > 0)).scalar_one()
    )


# The committed unnumbered events, in the order they were written (placeholders are
# -1, -2, ... by insertion), get the next offsets, in that order.
_NUMBER_PENDING = text(
    """
    WITH batch AS (
        SELECT seq AS placeholder FROM events WHERE seq < 0
        ORDER BY seq DESC LIMIT :limit
    ), numbered AS (
        SELECT placeholder, nextval(pg_get_serial_sequence('events', 'seq')) AS assigned
        FROM (SELECT placeholder FROM batch ORDER BY placeholder DESC) AS in_order
    )
    UPDATE events SET seq = numbered.assigned FROM numbered
    WHERE events.seq = numbered.placeholder
    """
)


def number_pending(connection: Connection, limit: int) -> int:
    """PostgreSQL: give offsets to up to ``limit`` committed unnumbered events, in the
    order they were written, and NOTIFY the listeners; how many were numbered (-1:
    another coordinator is numbering now, and will notify).

    One numbering transaction at a time (an advisory lock, held to its commit): a
    later one draws higher offsets and commits after, so an offset is never seen
    before a lower one. Events of transactions still running are not visible yet:
    a later round numbers them."""
    if connection.dialect.name != "postgresql":
        return 0
    locked = connection.execute(
        text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": EVENTS_LOCK_KEY}
    ).scalar_one()
    if not locked:
        return -1
    numbered = connection.execute(_NUMBER_PENDING, {"limit": limit}).rowcount or 0
    if numbered:
        connection.execute(
            text("SELECT pg_notify(:channel, 'numbered')"), {"channel": NOTIFY_CHANNEL}
        )
    return int(numbered)


class LogBounds(NamedTuple):
    """What a resumption can be served from: offsets after ``pruned_through`` are all
    still stored; ``newest`` is the newest offset written."""

    pruned_through: int
    newest: int


def bounds(connection: Connection) -> LogBounds:
    """The event log's bounds, read together."""
    pruned = connection.execute(
        select(EVENT_LOG.c.pruned_through).where(EVENT_LOG.c.id == 1)
    ).scalar_one_or_none()
    return LogBounds(int(pruned or 0), newest_seq(connection))


def prune(connection: Connection, created_before: int, batch: int) -> int:
    """Delete up to ``batch`` of the oldest events created before ``created_before``
    (unix seconds) and move the pruned mark past them; how many were deleted.

    Only a prefix of the log is deleted (the oldest events, up to the first one still
    young enough), so every offset after the mark is still there; and never the
    newest event, whose offset SQLite numbers the next one from. The usual case,
    nothing old enough, costs one index lookup."""
    numbered = E.seq > 0  # PostgreSQL's placeholders wait for their offsets
    oldest = connection.execute(
        select(E.created_at).where(numbered).order_by(E.seq).limit(1)
    ).scalar_one_or_none()
    if oldest is None or oldest >= created_before:
        return 0
    prefix = select(E.seq, E.created_at).where(numbered).order_by(E.seq).limit(batch).subquery()
    first_kept = connection.execute(
        select(func.min(prefix.c.seq)).where(prefix.c.created_at >= created_before)
    ).scalar_one_or_none()
    last_in_prefix = select(func.max(prefix.c.seq))
    if first_kept is not None:
        last_in_prefix = last_in_prefix.where(prefix.c.seq < first_kept)
    through = connection.execute(last_in_prefix).scalar_one_or_none()
    if through is not None:
        through = min(through, newest_seq(connection) - 1)
    if not through:
        return 0
    deleted = connection.execute(delete(EVENTS).where(numbered, E.seq <= through)).rowcount
    connection.execute(
        update(EVENT_LOG)
        .where(EVENT_LOG.c.id == 1, EVENT_LOG.c.pruned_through < through)
        .values(pruned_through=through)
    )
    return int(deleted or 0)


class SqliteEventReader:
    """A read-only connection of its own for the event pump on a SQLite file.

    The coordinator's writes share one SQLite connection, queued; under load the
    pump's read would wait its turn behind them, and every subscriber with it. In WAL
    mode a second connection reads the committed log without waiting for the writer
    (a few rows by primary key: well under a millisecond, so it runs inline).
    """

    _AFTER = (
        "SELECT seq, channel, type, client_id, miner_id, data FROM events "
        "WHERE seq > ? ORDER BY seq LIMIT ?"
    )

    def __init__(self, path: str) -> None:
        self._connection = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )

    def after(self, seq: int, limit: int) -> list[Event]:
        """Like :func:`after`, on this connection."""
        return [Event(*row) for row in self._connection.execute(self._AFTER, (seq, limit))]

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()


def sqlite_reader(engine: AsyncEngine) -> SqliteEventReader | None:
    """A :class:`SqliteEventReader` for a SQLite file database (None otherwise)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return SqliteEventReader(database)
