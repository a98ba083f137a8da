"""SQLite WAL checkpoints off the event loop.

In WAL mode every commit appends its pages to the ``-wal`` file, and by default the
commit that takes the WAL past 1,000 pages also copies them back into the database
and ``fdatasync``\\ s both: inside ``commit()``, which the coordinator runs on its event
loop (``inline_sqlite``). Under load that stalls every request for the length of a
disk flush, about every 70 commits. So the coordinator's own connection checkpoints
only as a safety net (``SAFETY_NET_PAGES``), and a thread with a connection of its
own runs a ``PASSIVE`` checkpoint every ``INTERVAL_SECONDS``: it copies what no reader
still needs and never blocks a writer, and the flushes happen on that thread. This is
what Litestream and other heavy SQLite users do.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 1.0
# The event loop's connection still checkpoints if the WAL reaches this many pages
# (40 MB), so the WAL stays bounded even if the thread cannot keep up.
SAFETY_NET_PAGES = 10_000


class WalCheckpointer:
    """A daemon thread checkpointing one SQLite database until :meth:`stop`."""

    def __init__(self, database: str, interval_seconds: float = INTERVAL_SECONDS) -> None:
        self.database = database
        self.interval_seconds = interval_seconds
        self.checkpoints = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aitbc-wal-checkpoint", daemon=True)

    def start(self) -> None:
        """Start checkpointing in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current checkpoint, then checkpoint once more (so a clean
        shutdown leaves little in the WAL)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            connection = sqlite3.connect(self.database, timeout=0, check_same_thread=True)
        except sqlite3.Error:
            log.exception("cannot open %s for checkpoints", self.database)
            return
        try:
            while not self._stop.wait(self.interval_seconds):
                self._checkpoint(connection)
            self._checkpoint(connection)
        finally:
            connection.close()

    def _checkpoint(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1
        except sqlite3.OperationalError as exc:  # busy or locked: the next beat retries
            log.debug("checkpoint skipped: %s", exc)
