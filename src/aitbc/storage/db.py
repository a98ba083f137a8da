"""Engines and sessions: SQLite (WAL, one connection, asynchronous lock waits) or PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, event, make_url, text
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

# The greenlet bridge behind AsyncConnection.run_sync / AsyncSession.run_sync.
from sqlalchemy.util.concurrency import greenlet_spawn

from aitbc.errors import ServiceUnavailable
from aitbc.storage.checkpoints import SAFETY_NET_PAGES, WalCheckpointer
from aitbc.storage.inline_sqlite import UNITS_RETRIED, Backoff, inline_creator, is_busy


def is_sqlite(url: str) -> bool:
    """True for SQLite URLs."""
    return url.startswith("sqlite")


def create_engine(url: str) -> AsyncEngine:
    """An async engine tuned for the backend.

    SQLite allows one writer at a time and its busy handler sleeps in growing steps,
    which wrecks latency under contention; so the coordinator keeps a single
    connection and lets asyncio queue requests for it (each transaction is short and
    nothing waits while holding it), running statements inline on the event loop
    (see ``inline_sqlite``). WAL lets readers outside the process (backups,
    ``sqlite3``) read while it writes, and lets this process read while another
    holds the write lock. SQLite's busy handler would sleep on the event loop, so it
    is off; :func:`transaction` and :func:`read` wait for a lock asynchronously.
    """
    if is_sqlite(url):
        database = make_url(url).database
        engine = create_async_engine(
            url,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            # Every unit of work ends in commit or rollback already.
            pool_reset_on_return=None,
            async_creator=inline_creator(database or ":memory:"),
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=0")
            cursor.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints run on a thread (storage.checkpoints); this is the safety net.
            cursor.execute(f"PRAGMA wal_autocheckpoint={SAFETY_NET_PAGES}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=False)


def start_wal_checkpointer(engine: AsyncEngine) -> WalCheckpointer | None:
    """Checkpoint a file SQLite database on a thread of its own (started here; the
    caller stops it); None for PostgreSQL and in-memory databases."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    checkpointer = WalCheckpointer(database)
    checkpointer.start()
    return checkpointer


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


P = ParamSpec("P")
T = TypeVar("T")


async def transaction(
    engine: AsyncEngine,
    work: Callable[Concatenate[Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run ``work(connection, ...)`` in one transaction: committed if it returns,
    rolled back if it raises.

    ``work`` is plain synchronous SQLAlchemy code. It runs in a single greenlet on the
    async engine's sync facade (what ``AsyncConnection.run_sync`` does), so a whole
    unit of work costs one hop into SQLAlchemy instead of one per statement plus the
    async connection's begin/close bookkeeping; the async driver (asyncpg, or the
    inline SQLite adapter) is still awaited underneath.

    On SQLite, when another process holds the write lock, the unit is rolled back,
    the connection given back (other requests, reads above all, go on meanwhile) and
    ``work`` run again after a pause, up to ``LOCK_WAIT_SECONDS``; so ``work`` must
    have no effects outside the connection before its last statement.
    """

    def unit() -> T:
        with engine.sync_engine.begin() as connection:
            return work(connection, *args, **kwargs)

    return await _run(engine, unit)


async def read(
    engine: AsyncEngine,
    work: Callable[Concatenate[Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Like :func:`transaction` for read-only work: nothing is committed. (WAL reads
    take no lock; the rare ``SQLITE_BUSY`` a read can still meet is retried too.)"""

    def unit() -> T:
        with engine.sync_engine.connect() as connection:
            return work(connection, *args, **kwargs)

    return await _run(engine, unit)


async def _run(engine: AsyncEngine, unit: Callable[[], T]) -> T:
    """Run a unit of work; an unreachable database, or one locked by another process
    for longer than the wait, is a ServiceUnavailable."""
    if engine.dialect.name != "sqlite":
        try:
            return await greenlet_spawn(unit)
        except (OperationalError, DisconnectionError) as exc:
            raise _unavailable() from exc
    backoff: Backoff | None = None
    token = UNITS_RETRIED.set(True)
    try:
        while True:
            try:
                return await greenlet_spawn(unit)
            except OperationalError as exc:
                if not is_busy(exc.orig):
                    raise _unavailable() from exc
                backoff = backoff or Backoff()
                if not await backoff.pause():
                    raise _unavailable() from exc
            except DisconnectionError as exc:
                raise _unavailable() from exc
    finally:
        UNITS_RETRIED.reset(token)


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "the database is unavailable right now; try again", error_code="database_unavailable"
    )


async def ping(engine: AsyncEngine) -> bool:
    """Whether the database answers ``SELECT 1``."""
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:  # any driver error means "not answering", never a crash
        return False
    return True
