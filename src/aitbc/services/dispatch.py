"""In-process hand-off of pending jobs to miners that are long-polling for work.

When a job becomes pending (submitted, or put back after a lost attempt) the
coordinator offers it straight to a waiting miner that can run it, so the miner gets
it without another database round trip. A job handed out (or returned by a poll) is
"offered" to that miner for a while: other polls skip it, which keeps concurrent
miners from racing for the same job. The claim itself is still decided by the
database, so a stale offer can never give a job to two miners.

Offers are a courtesy, so nobody may hoard them:

- A miner holds at most ``OFFERS_PER_MINER`` offers, and none while it has no free
  slot (its declared concurrency, less the jobs it runs).
- A miner that polls again has not claimed what it was offered: those offers are
  handed back at once (and re-offered to whoever waits).
- Each offer a miner leaves unclaimed (handed back or expired) is a strike, cleared
  by its next claim. Waiting miners with fewer strikes are served first, and a
  striking miner's offers hide a job for a shorter time (``OFFER_SECONDS`` halved per
  strike), so one key holding many polls cannot keep jobs from honest miners.

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

from aitbc.domain.jobs import MinerHardware, Requirements, can_run, within_price

OFFER_SECONDS = 5.0
# The most offers one miner holds at a time; a daemon polls, claims, then polls again.
OFFERS_PER_MINER = 1
# Strikes beyond this do not shorten an offer further (5 s / 2**4 = 0.31 s).
MAX_STRIKE_HALVINGS = 4
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
    # The most the client accepts per 1,000 units (µAIT); None: no bound.
    max_price_micro: int | None = None
    # A marketplace trade's job: only this miner may take it, at the trade's price.
    target_miner_id: str | None = None


@dataclass(frozen=True, slots=True)
class Taker:
    """A polling miner as the dispatcher sees it: who, what it runs, what it charges
    (µAIT per 1,000 units) and how many more jobs it can take right now."""

    miner_id: str
    hardware: MinerHardware
    price_micro: int = 0
    free_slots: int = 1


def can_take(offer: Offer[T], taker: Taker) -> bool:
    """Whether ``taker`` may be offered ``offer``: it serves the model on the hardware
    asked for, at a price the client accepts; a trade's job goes to its miner only
    (at the trade's price)."""
    if offer.target_miner_id is not None:
        return offer.target_miner_id == taker.miner_id and can_run(
            offer.model, offer.requirements, taker.hardware
        )
    return can_run(offer.model, offer.requirements, taker.hardware) and within_price(
        offer.max_price_micro, taker.price_micro
    )


@dataclass(slots=True)
class _Waiter(Generic[T]):
    taker: Taker
    future: asyncio.Future[Offer[T]]


@dataclass(slots=True)
class _Held(Generic[T]):
    offer: Offer[T]
    miner_id: str
    until: float


class Dispatcher(Generic[T]):
    """Waiting miners and the jobs (payload type ``T``) currently offered to them."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._waiters: list[_Waiter[T]] = []
        self._offered: dict[str, _Held[T]] = {}
        # miner id -> ids of the jobs it holds offers for, oldest first.
        self._held_by: dict[str, dict[str, None]] = {}
        # miner id -> offers it left unclaimed since its last claim (absent: none).
        self._strikes: dict[str, int] = {}
        # Insertion order is expiry order, so expired entries are popped from the front.
        self._claimed: dict[str, float] = {}
        self.generation = 0

    @property
    def waiting(self) -> int:
        """How many miners are long-polling right now."""
        return len(self._waiters)

    def strikes(self, miner_id: str) -> int:
        """Offers ``miner_id`` left unclaimed since its last claim."""
        return self._strikes.get(miner_id, 0)

    def offered_ids(self) -> set[str]:
        """Ids of jobs offered recently and not yet claimed (expired offers dropped,
        each a strike against the miner that let it lapse)."""
        now = self._monotonic()
        expired = [job_id for job_id, held in self._offered.items() if held.until <= now]
        for job_id in expired:
            self._forget(job_id, strike=True)
        return set(self._offered)

    def may_receive(self, taker: Taker) -> bool:
        """Whether ``taker`` may be given another offer: a free slot, and fewer
        offers held than it could take."""
        held = self._held_by.get(taker.miner_id)
        return len(held or ()) < min(taker.free_slots, OFFERS_PER_MINER)

    def mark_offered(self, offer: Offer[T], miner_id: str) -> None:
        """Hide ``offer`` from other polls while ``miner_id`` decides to claim it."""
        halvings = min(self._strikes.get(miner_id, 0), MAX_STRIKE_HALVINGS)
        self._forget(offer.job_id, strike=False)
        self._offered[offer.job_id] = _Held(
            offer, miner_id, self._monotonic() + OFFER_SECONDS / 2**halvings
        )
        self._held_by.setdefault(miner_id, {})[offer.job_id] = None

    def hand_back(self, miner_id: str) -> int:
        """``miner_id`` polls again: the offers it holds were not claimed. Make them
        visible again at once, re-offer them to waiting miners, and count a strike
        for each. Returns how many were handed back."""
        held = self._held_by.get(miner_id)
        if not held:
            return 0
        offers = [self._offered[job_id].offer for job_id in held]
        for offer in offers:
            self._forget(offer.job_id, strike=True)
        for offer in offers:
            self._hand_to_waiter(offer)
        return len(offers)

    def release(self, job_id: str) -> None:
        """The job left the queue (cancelled, timed out): forget its offer."""
        self._forget(job_id, strike=False)

    def claimed(self, job_id: str, miner_id: str | None = None) -> None:
        """The job was claimed: forget its offer (and the claimer's strikes), and hide
        it from polls that read the queue before the claim committed, for
        ``CLAIMED_SECONDS``."""
        self._forget(job_id, strike=False)
        if miner_id is not None:
            self._strikes.pop(miner_id, None)
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
        """A job became pending: give it to a waiting miner able to take it, the one
        with the fewest strikes (the longest waiting among those)."""
        self.generation += 1
        return self._hand_to_waiter(offer)

    async def wait(
        self, taker: Taker, since_generation: int, max_wait_seconds: float
    ) -> Offer[T] | None:
        """Wait up to ``max_wait_seconds`` for a job handed to this miner.

        Returns None at once if jobs were published since ``since_generation`` (the
        caller's database check may have missed them), or when the time is up.
        """
        if self.generation != since_generation or max_wait_seconds <= 0:
            return None
        future: asyncio.Future[Offer[T]] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(taker, future)
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

    # --- internals ----------------------------------------------------------------------

    def _hand_to_waiter(self, offer: Offer[T]) -> bool:
        chosen: _Waiter[T] | None = None
        chosen_strikes = 0
        for waiter in self._waiters:
            if waiter.future.done():
                continue
            taker = waiter.taker
            if not can_take(offer, taker) or not self.may_receive(taker):
                continue
            strikes = self._strikes.get(taker.miner_id, 0)
            if chosen is None or strikes < chosen_strikes:
                chosen, chosen_strikes = waiter, strikes
                if strikes == 0:
                    break
        if chosen is None:
            return False
        self._waiters.remove(chosen)
        self.mark_offered(offer, chosen.taker.miner_id)
        chosen.future.set_result(offer)
        return True

    def _forget(self, job_id: str, *, strike: bool) -> None:
        held = self._offered.pop(job_id, None)
        if held is None:
            return
        by_miner = self._held_by.get(held.miner_id)
        if by_miner is not None:
            by_miner.pop(job_id, None)
            if not by_miner:
                del self._held_by[held.miner_id]
        if strike:
            self._strikes[held.miner_id] = self._strikes.get(held.miner_id, 0) + 1
