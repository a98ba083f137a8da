"""SQLite for SQLAlchemy's asyncio engine, run inline on the event loop thread.

aiosqlite runs every statement on a worker thread and wakes the event loop for each
result: two thread hand-offs per statement, which cost more than the statements
themselves (the coordinator's are indexed lookups of well under 100 µs). This module
gives SQLAlchemy's ``sqlite+aiosqlite`` dialect (via ``async_creator``) a connection
with aiosqlite's interface whose coroutines run the ``sqlite3`` call directly.

That is safe here because the coordinator holds its one SQLite connection itself
(pool of one): the only lock waits possible come from *other processes* writing the
same file (a backup, ``sqlite3`` in a shell, a second coordinator), never from this
process's own requests. Such a wait must not run on the event loop, so SQLite's own
busy handler is off (``busy_timeout`` 0: a locked database answers ``SQLITE_BUSY``
at once) and the waiting is done here, asynchronously, with :class:`Backoff`:

- ``aitbc.storage.db`` runs units of work (functions of a connection, re-runnable)
  with :data:`UNITS_RETRIED` set; there a busy statement raises at once, the unit
  rolls back and gives the connection back (so reads and ``/health`` keep being
  answered: WAL reads need no lock), and the whole unit is tried again later.
- Anything else (ORM sessions, migrations) retries the busy statement itself
  after an asynchronous pause, holding the connection but not the event loop.

Either way a write gives up after :data:`LOCK_WAIT_SECONDS`, as ``busy_timeout``
did. The database file is created private (0600) before SQLite opens it, and SQLite
gives its ``-wal`` and ``-shm`` files the database file's permissions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any

log = logging.getLogger(__name__)

# How long a write waits for another process's lock before giving up (SQLite's
# busy_timeout used to be this, spent blocking the event loop).
LOCK_WAIT_SECONDS = 5.0
# The pauses between tries double from the first to the last: short ones notice a
# released lock at once, the cap bounds how late a long-held one is noticed.
FIRST_PAUSE_SECONDS = 0.001
MAX_PAUSE_SECONDS = 0.02
PRIVATE_MODE = 0o600
# Files SQLite keeps beside the database (WAL mode; a rollback journal otherwise).
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")

# True while the caller retries whole units of work, so a busy statement must raise
# at once (``aitbc.storage.db`` sets it around each unit; a ContextVar's set/reset
# costs a tenth of a context manager on this hot path).
UNITS_RETRIED: ContextVar[bool] = ContextVar("aitbc_sqlite_units_retried", default=False)


def is_busy(error: BaseException | None) -> bool:
    """Whether ``error`` is SQLite's "database is locked" (another connection's lock)."""
    if not isinstance(error, sqlite3.OperationalError):
        return False
    code: int | None = getattr(error, "sqlite_errorcode", None)
    if code is None:  # raised by sqlite3 itself, without SQLite's code
        return "database is locked" in str(error)
    return code & 0xFF == sqlite3.SQLITE_BUSY


class Backoff:
    """An asynchronous busy handler: growing pauses until ``total_seconds`` have passed."""

    def __init__(self, total_seconds: float = LOCK_WAIT_SECONDS) -> None:
        self._loop = asyncio.get_running_loop()
        self._give_up_at = self._loop.time() + total_seconds
        self._pause = FIRST_PAUSE_SECONDS

    async def pause(self) -> bool:
        """Sleep before the next try; False (at once) when the time is up."""
        remaining = self._give_up_at - self._loop.time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(self._pause, remaining))
        self._pause = min(self._pause * 2, MAX_PAUSE_SECONDS)
        return True


async def _retry_statement(error: sqlite3.OperationalError, backoff: Backoff | None) -> Backoff:
    """Wait before re-running a statement that found the database locked; re-raise
    ``error`` when the caller retries whole units instead, or the wait is over."""
    if not is_busy(error) or UNITS_RETRIED.get():
        raise error
    # A stale snapshot stays stale: only a new transaction (a unit's retry) helps.
    if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY_SNAPSHOT:
        raise error
    backoff = backoff or Backoff()
    if not await backoff.pause():
        raise error
    return backoff


async def _waiting_for_locks(run: Callable[[], object]) -> None:
    """Call ``run`` (one statement) until it no longer finds the database locked, or
    :func:`_retry_statement` gives up."""
    backoff: Backoff | None = None
    while True:
        try:
            run()
        except sqlite3.OperationalError as exc:
            backoff = await _retry_statement(exc, backoff)
        else:
            return


class _InlineQueue:
    """Stands in for aiosqlite's work queue: runs each function at once."""

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as exc:  # handed to the awaiting caller, as aiosqlite does
            if future is None:
                raise
            future.set_exception(exc)
        else:
            if future is not None:
                future.set_result(result)


class InlineCursor:
    """An aiosqlite-style cursor over a ``sqlite3.Cursor``."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        """Column descriptions of the last query."""
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        """Rows changed by the last statement."""
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        """Row id of the last insert."""
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        """Rows per fetchmany."""
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> InlineCursor:
        """Run one statement (waiting asynchronously while another process holds a
        lock, unless the caller retries the whole unit)."""
        if parameters is None:
            await _waiting_for_locks(lambda: self._cursor.execute(sql))
        else:
            await _waiting_for_locks(lambda: self._cursor.execute(sql, parameters))
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> InlineCursor:
        """Run one statement for each parameter set (lock waits as in :meth:`execute`)."""
        rows = list(parameters)  # re-iterable, for a retry
        await _waiting_for_locks(lambda: self._cursor.executemany(sql, rows))
        return self

    async def fetchone(self) -> Any:
        """Next row."""
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        """Next rows."""
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        """Remaining rows."""
        return self._cursor.fetchall()

    async def close(self) -> None:
        """Close the cursor."""
        self._cursor.close()


class InlineConnection:
    """An aiosqlite-style connection over a ``sqlite3.Connection``."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn: sqlite3.Connection | None = connection
        self._tx = _InlineQueue()

    @property
    def _connection(self) -> sqlite3.Connection | None:
        return self._conn

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError("no active connection")
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        """sqlite3's transaction mode."""
        return self._open().isolation_level

    def cursor(self) -> InlineCursor:
        """A new cursor (used with ``async with`` / ``await __aenter__``)."""
        return InlineCursor(self._open().cursor())

    async def commit(self) -> None:
        """Commit the open transaction."""
        self._open().commit()

    async def rollback(self) -> None:
        """Roll back the open transaction."""
        self._open().rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        """Register an SQL function."""
        self._open().create_function(*args, **kwargs)

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def stop(self) -> None:
        """Close without waiting (SQLAlchemy's terminate)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def make_private(path: str) -> None:
    """Create the database file ``path`` readable by its owner only, whatever the
    directory's mode and the umask, and tighten one (or its ``-wal``/``-shm``) left
    readable by others. It holds every prompt and result; SQLite creates ``-wal``
    and ``-shm`` with the database file's permissions, so they follow."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
    try:
        _tighten(path, descriptor)
    finally:
        os.close(descriptor)
    for suffix in COMPANION_SUFFIXES:
        try:
            descriptor = os.open(path + suffix, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            _tighten(path + suffix, descriptor)
        finally:
            os.close(descriptor)


def _tighten(path: str, descriptor: int) -> None:
    mode = stat.S_IMODE(os.fstat(descriptor).st_mode)
    if not mode & 0o077:
        return
    try:
        os.fchmod(descriptor, PRIVATE_MODE)
    except PermissionError:  # someone else's file: say so, but still open it
        log.warning("%s is readable by others (mode %o) and not ours to chmod", path, mode)
    else:
        log.warning("%s was readable by others (mode %o); now %o", path, mode, PRIVATE_MODE)


def is_file_path(path: str) -> bool:
    """Whether ``path`` names a database file (not ``:memory:`` or a ``file:`` URI)."""
    return bool(path) and path != ":memory:" and not path.startswith("file:")


def inline_creator(path: str) -> Callable[[], Any]:
    """An ``async_creator`` for ``create_async_engine`` opening ``path`` inline."""

    async def connect() -> InlineConnection:
        if is_file_path(path):
            make_private(path)
        # timeout=0: no busy handler; lock waits are asynchronous (module docstring).
        # check_same_thread=False: SQLAlchemy may close a connection from the GC.
        return InlineConnection(sqlite3.connect(path, timeout=0, check_same_thread=False))

    return connect
