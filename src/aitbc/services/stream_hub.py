"""Wake-ups for readers of job streams in this process.

A reader of ``GET /v1/jobs/{job_id}/stream`` sleeps until something about its job
changed: new text, or the job ending. Whatever commits such a change in this process
calls :meth:`StreamHub.notify` afterwards, so a reader here wakes at once; a change
committed by another coordinator process sharing the database is seen by the
reader's next poll (:data:`POLL_SECONDS`), so nothing is ever missed, only later.

A reader registers (:meth:`StreamHub.watch`) before it reads, and each watch counts
the changes notified since: a change committed between the reader's read and its
sleep is not slept through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

# How long a reader sleeps before reading again without being woken (changes made
# through another coordinator process).
POLL_SECONDS = 0.5


class JobWatch:
    """One job's change counter, shared by the readers of that job in this process."""

    def __init__(self) -> None:
        self.version = 0
        self.readers = 0
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_past(self, seen: int) -> None:
        """Return once a change after version ``seen`` was notified, or after
        :data:`POLL_SECONDS`."""
        if self.version != seen:
            return
        changed = self._changed
        try:
            async with asyncio.timeout(POLL_SECONDS):
                await changed.wait()
        except TimeoutError:
            pass


class StreamHub:
    """Per job being read in this process, its :class:`JobWatch`."""

    def __init__(self) -> None:
        self._watches: dict[str, JobWatch] = {}

    def notify(self, job_id: str) -> None:
        """Wake every reader of ``job_id`` (call after the change committed)."""
        watch = self._watches.get(job_id)
        if watch is not None:
            watch.changed()

    def readers(self, job_id: str) -> int:
        """How many readers of ``job_id`` this process has now."""
        watch = self._watches.get(job_id)
        return 0 if watch is None else watch.readers

    @contextmanager
    def watch(self, job_id: str) -> Iterator[JobWatch]:
        """Register a reader of ``job_id`` for as long as the block runs."""
        watch = self._watches.get(job_id)
        if watch is None:
            watch = self._watches[job_id] = JobWatch()
        watch.readers += 1
        try:
            yield watch
        finally:
            watch.readers -= 1
            if not watch.readers:
                del self._watches[job_id]
