"""In-process hand-off of pending jobs to miners that are long-polling for work.

When a job becomes pending (submitted, or put back after a lost attempt) the
coordinator offers it straight to the longest-waiting miner that can run it, so a
waiting miner gets it without another database round trip. A job handed out (or
returned by a poll) is "offered" to that miner for ``OFFER_SECONDS``: other polls skip
it, which keeps concurrent miners from racing for the same job. The claim itself is
still decided by the database, so a stale offer can never give a job to two miners.

Several coordinator processes on one PostgreSQL database do not see each other's
hand-offs; waiting polls re-check the database every ``RECHECK_SECONDS`` for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from aitbc.domain.jobs import MinerHardware, Requirements, can_run

OFFER_SECONDS = 5.0
# How long a claimed job stays hidden from polls whose database read began before
# the claim committed (possible where reads yield to other requests: PostgreSQL).
CLAIMED_SECONDS = 2.0
RECHECK_SECONDS = 1.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Offer(Generic[T]):
    """A pending job ready to hand out: its id, what it needs, and its payload."""

    job_id: str
    model: str
    requirements: Requirements
    payload: T


@dataclass(slots=True)
class _Waiter(Generic[T]):
    hardware: MinerHardware
    future: asyncio.Future[Offer[T]]


class Dispatcher(Generic[T]):
    """Waiting miners and the jobs (payload type ``T``) currently offered to them."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._waiters: list[_Waiter[T]] = []
        self._offered: dict[str, float] = {}
        # Insertion order is expiry order, so expired entries are popped from the front.
        self._claimed: dict[str, float] = {}
        self.generation = 0

    @property
    def waiting(self) -> int:
        """How many miners are long-polling right now."""
        return len(self._waiters)

    def offered_ids(self) -> set[str]:
        """Ids of jobs offered recently and not yet claimed (expired offers dropped)."""
        now = self._monotonic()
        expired = [job_id for job_id, until in self._offered.items() if until <= now]
        for job_id in expired:
            del self._offered[job_id]
        return set(self._offered)

    def mark_offered(self, job_id: str) -> None:
        """Hide ``job_id`` from other polls for ``OFFER_SECONDS``."""
        self._offered[job_id] = self._monotonic() + OFFER_SECONDS

    def release(self, job_id: str) -> None:
        """The job left the queue (cancelled, timed out): forget its offer."""
        self._offered.pop(job_id, None)

    def claimed(self, job_id: str) -> None:
        """The job was claimed: forget its offer, and hide it from polls that read
        the queue before the claim committed, for ``CLAIMED_SECONDS``."""
        self._offered.pop(job_id, None)
        now = self._monotonic()
        while self._claimed:
            oldest = next(iter(self._claimed))
            if self._claimed[oldest] > now:
                break
            del self._claimed[oldest]
        self._claimed[job_id] = now + CLAIMED_SECONDS

    def recently_claimed(self, job_id: str) -> bool:
        """Whether ``job_id`` was claimed in the last ``CLAIMED_SECONDS``."""
        until = self._claimed.get(job_id)
        return until is not None and until > self._monotonic()

    def publish(self, offer: Offer[T]) -> bool:
        """A job became pending: give it to the first waiting miner able to run it."""
        self.generation += 1
        for index, waiter in enumerate(self._waiters):
            if waiter.future.done():
                continue
            if can_run(offer.model, offer.requirements, waiter.hardware):
                del self._waiters[index]
                self.mark_offered(offer.job_id)
                waiter.future.set_result(offer)
                return True
        return False

    async def wait(
        self, hardware: MinerHardware, since_generation: int, max_wait_seconds: float
    ) -> Offer[T] | None:
        """Wait up to ``max_wait_seconds`` for a job handed to this miner.

        Returns None at once if jobs were published since ``since_generation`` (the
        caller's database check may have missed them), or when the time is up.
        """
        if self.generation != since_generation or max_wait_seconds <= 0:
            return None
        future: asyncio.Future[Offer[T]] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(hardware, future)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max_wait_seconds)
        except TimeoutError:
            # Handed a job in the same loop step the wait timed out: still ours.
            if future.done() and not future.cancelled():
                return future.result()
            return None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            task = asyncio.current_task()
            if future.done() and task is not None and task.cancelling():
                # The poller went away after being handed a job: let others see it.
                self.release(future.result().job_id)
