"""The in-process hand-off of pending jobs to long-polling miners (``services.dispatch``)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from aitbc.domain.jobs import MinerHardware, Requirements
from aitbc.services.dispatch import (
    CLAIMED_SECONDS,
    OFFER_SECONDS,
    Dispatcher,
    Offer,
    Taker,
)

SMOL = "smollm2-135m"
CPU = MinerHardware(models=frozenset({SMOL}))
LLAMA_ONLY = MinerHardware(models=frozenset({"llama3.2"}))
A100 = MinerHardware(
    models=frozenset({SMOL}), gpu_name="NVIDIA A100-SXM4-80GB", gpu_memory_gb=80, gpu_count=1
)


class FakeMonotonic:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def offer(job_id: str, model: str = SMOL, **requirements: object) -> Offer[str]:
    return Offer(
        job_id=job_id,
        model=model,
        requirements=Requirements(**requirements),  # type: ignore[arg-type]
        payload=f"payload-{job_id}",
    )


@pytest.fixture
def clock() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def dispatcher(clock: FakeMonotonic) -> Dispatcher[str]:
    return Dispatcher(monotonic=clock)


_miner_numbers = iter(range(1_000_000))


def taker(hardware: MinerHardware, miner_id: str | None = None, **terms: int) -> Taker:
    """A polling miner (a new miner id unless one is given)."""
    return Taker(miner_id or f"m{next(_miner_numbers)}", hardware, **terms)


async def start_waiter(
    dispatcher: Dispatcher[str],
    hardware: MinerHardware | Taker,
    max_wait: float = 30.0,
) -> asyncio.Task[Offer[str] | None]:
    """A miner long-polling, registered as a waiter before this returns."""
    before = dispatcher.waiting
    who = hardware if isinstance(hardware, Taker) else taker(hardware)
    task = asyncio.create_task(dispatcher.wait(who, dispatcher.generation, max_wait))
    await asyncio.sleep(0)
    assert dispatcher.waiting == before + 1
    return task


async def finish(task: asyncio.Task[Offer[str] | None]) -> Offer[str] | None:
    return await asyncio.wait_for(task, 2)


async def cancel(task: asyncio.Task[Offer[str] | None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# --- publish ----------------------------------------------------------------------------


def test_publish_without_waiters(dispatcher: Dispatcher[str]) -> None:
    assert dispatcher.generation == 0
    assert dispatcher.publish(offer("j1")) is False
    assert dispatcher.generation == 1
    assert dispatcher.offered_ids() == set()


async def test_publish_hands_job_to_waiting_miner(dispatcher: Dispatcher[str]) -> None:
    waiter = await start_waiter(dispatcher, CPU)
    handed = offer("j1")
    assert dispatcher.publish(handed) is True
    assert await finish(waiter) is handed
    assert dispatcher.offered_ids() == {"j1"}
    assert dispatcher.waiting == 0
    assert dispatcher.generation == 1


async def test_publish_is_fifo_among_eligible_waiters(dispatcher: Dispatcher[str]) -> None:
    first = await start_waiter(dispatcher, CPU)
    second = await start_waiter(dispatcher, CPU)
    third = await start_waiter(dispatcher, CPU)
    assert dispatcher.publish(offer("j1")) is True
    assert dispatcher.publish(offer("j2")) is True
    one = await finish(first)
    two = await finish(second)
    assert one is not None and one.job_id == "j1"
    assert two is not None and two.job_id == "j2"
    assert not third.done()
    assert dispatcher.waiting == 1
    assert dispatcher.offered_ids() == {"j1", "j2"}
    await cancel(third)
    assert dispatcher.waiting == 0


async def test_publish_skips_ineligible_waiters(dispatcher: Dispatcher[str]) -> None:
    llama = await start_waiter(dispatcher, LLAMA_ONLY)
    cpu = await start_waiter(dispatcher, CPU)
    gpu = await start_waiter(dispatcher, A100)
    # needs an A100: the CPU miner queued before it is skipped, so is the llama miner
    assert dispatcher.publish(offer("j-gpu", gpu_type="a100")) is True
    got = await finish(gpu)
    assert got is not None and got.job_id == "j-gpu"
    assert not llama.done() and not cpu.done()
    # a model nobody waiting serves is handed to no one
    assert dispatcher.publish(offer("j-mistral", model="mistral-7b")) is False
    assert "j-mistral" not in dispatcher.offered_ids()
    assert dispatcher.waiting == 2
    # a plain smollm2 job goes to the CPU miner, the first eligible one
    assert dispatcher.publish(offer("j-cpu")) is True
    got = await finish(cpu)
    assert got is not None and got.job_id == "j-cpu"
    assert not llama.done()
    await cancel(llama)


async def test_publish_marks_offered(dispatcher: Dispatcher[str], clock: FakeMonotonic) -> None:
    waiter = await start_waiter(dispatcher, CPU)
    dispatcher.publish(offer("j1"))
    await finish(waiter)
    assert "j1" in dispatcher.offered_ids()
    clock.advance(OFFER_SECONDS - 0.001)
    assert "j1" in dispatcher.offered_ids()
    clock.advance(0.001)
    assert "j1" not in dispatcher.offered_ids()


async def test_publish_skips_a_waiter_whose_future_is_done(dispatcher: Dispatcher[str]) -> None:
    first = await start_waiter(dispatcher, CPU)
    second = await start_waiter(dispatcher, CPU)
    dispatcher.publish(offer("j1"))
    # j1 went to the first waiter; until it resumes and leaves, it must not get j2
    dispatcher.publish(offer("j2"))
    one, two = await finish(first), await finish(second)
    assert one is not None and one.job_id == "j1"
    assert two is not None and two.job_id == "j2"


# --- offers -----------------------------------------------------------------------------


def test_mark_offered_expires_after_offer_seconds(
    dispatcher: Dispatcher[str], clock: FakeMonotonic
) -> None:
    dispatcher.mark_offered(offer("j1"), "m")
    clock.advance(2)
    dispatcher.mark_offered(offer("j2"), "m")
    assert dispatcher.offered_ids() == {"j1", "j2"}
    clock.advance(OFFER_SECONDS - 2)  # j1's offer ends exactly now
    assert dispatcher.offered_ids() == {"j2"}
    clock.advance(2)
    assert dispatcher.offered_ids() == set()


def test_mark_offered_again_extends(dispatcher: Dispatcher[str], clock: FakeMonotonic) -> None:
    dispatcher.mark_offered(offer("j1"), "m")
    clock.advance(OFFER_SECONDS - 1)
    dispatcher.mark_offered(offer("j1"), "m")
    clock.advance(2)
    assert dispatcher.offered_ids() == {"j1"}


def test_offered_ids_is_a_copy(dispatcher: Dispatcher[str]) -> None:
    dispatcher.mark_offered(offer("j1"), "m")
    ids = dispatcher.offered_ids()
    ids.add("j2")
    ids.discard("j1")
    assert dispatcher.offered_ids() == {"j1"}


def test_release_forgets(dispatcher: Dispatcher[str]) -> None:
    dispatcher.mark_offered(offer("j1"), "m")
    dispatcher.mark_offered(offer("j2"), "m")
    dispatcher.release("j1")
    assert dispatcher.offered_ids() == {"j2"}
    dispatcher.release("j1")  # twice is fine
    dispatcher.release("never-offered")
    assert dispatcher.offered_ids() == {"j2"}


def test_default_clock_is_time_monotonic() -> None:
    real: Dispatcher[str] = Dispatcher()
    before = time.monotonic()
    real.mark_offered(offer("j1"), "m")
    assert real.offered_ids() == {"j1"}
    assert (
        before + OFFER_SECONDS - 1 < real._offered["j1"].until <= time.monotonic() + OFFER_SECONDS
    )


# --- wait -------------------------------------------------------------------------------


async def test_wait_returns_none_at_once_when_generation_changed(
    dispatcher: Dispatcher[str],
) -> None:
    seen = dispatcher.generation
    dispatcher.publish(offer("j1"))  # nobody waiting; the caller's DB check may have missed it
    started = time.monotonic()
    assert await dispatcher.wait(taker(CPU), seen, 30) is None
    assert time.monotonic() - started < 0.5
    assert dispatcher.waiting == 0


async def test_wait_returns_none_at_once_without_time(dispatcher: Dispatcher[str]) -> None:
    assert await dispatcher.wait(taker(CPU), dispatcher.generation, 0) is None
    assert await dispatcher.wait(taker(CPU), dispatcher.generation, -1) is None
    assert dispatcher.waiting == 0


async def test_wait_times_out_with_none(dispatcher: Dispatcher[str]) -> None:
    started = time.monotonic()
    assert await dispatcher.wait(taker(CPU), dispatcher.generation, 0.05) is None
    assert 0.04 <= time.monotonic() - started < 1.0
    assert dispatcher.waiting == 0
    # a job published after the poll gave up is not handed to it
    assert dispatcher.publish(offer("j1")) is False
    assert dispatcher.offered_ids() == set()


async def test_wait_with_current_generation_receives(dispatcher: Dispatcher[str]) -> None:
    dispatcher.publish(offer("j0"))
    task = asyncio.create_task(dispatcher.wait(taker(CPU), dispatcher.generation, 5))
    await asyncio.sleep(0)
    assert dispatcher.publish(offer("j1")) is True
    got = await finish(task)
    assert got is not None
    assert got.job_id == "j1"
    assert got.payload == "payload-j1"


async def test_cancelled_waiter_without_job_leaves(dispatcher: Dispatcher[str]) -> None:
    waiter = await start_waiter(dispatcher, CPU)
    await cancel(waiter)
    assert dispatcher.waiting == 0
    assert dispatcher.publish(offer("j1")) is False
    assert dispatcher.offered_ids() == set()


async def test_cancelled_waiter_that_was_handed_a_job_releases_it(
    dispatcher: Dispatcher[str],
) -> None:
    waiter = await start_waiter(dispatcher, CPU)
    assert dispatcher.publish(offer("j1")) is True
    assert dispatcher.offered_ids() == {"j1"}
    # The poller goes away (client disconnected) before it could deliver the job.
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    assert dispatcher.waiting == 0
    # The job must be visible to other polls again at once, not after OFFER_SECONDS.
    assert dispatcher.offered_ids() == set()


async def test_offer_published_as_the_wait_times_out_is_not_lost(
    dispatcher: Dispatcher[str],
) -> None:
    loop = asyncio.get_running_loop()
    waiter = await start_waiter(dispatcher, CPU, max_wait=0.01)
    # publish() runs from a timer due just after the poll's own timeout; blocking the
    # loop makes both timers fire in the same iteration, timeout first.
    loop.call_later(0.02, dispatcher.publish, offer("j1"))
    time.sleep(0.05)  # noqa: ASYNC251 - deliberately block the loop to line the timers up
    result = await finish(waiter)
    # Either the miner got the job, or the job is free for the next poll.
    assert result is not None or "j1" not in dispatcher.offered_ids()


def test_claimed_forgets_the_offer_and_hides_the_job_for_a_while(
    dispatcher: Dispatcher[str], clock: FakeMonotonic
) -> None:
    dispatcher.mark_offered(offer("j1"), "m")
    dispatcher.claimed("j1")
    assert "j1" not in dispatcher.offered_ids()
    assert dispatcher.recently_claimed("j1")
    assert not dispatcher.recently_claimed("j2")
    clock.advance(CLAIMED_SECONDS)
    assert not dispatcher.recently_claimed("j1")


def test_claimed_entries_expire_oldest_first(
    dispatcher: Dispatcher[str], clock: FakeMonotonic
) -> None:
    dispatcher.claimed("old")
    clock.advance(CLAIMED_SECONDS / 2)
    dispatcher.claimed("new")
    clock.advance(CLAIMED_SECONDS / 2)
    dispatcher.claimed("newest")  # purges "old", whose time is up
    assert not dispatcher.recently_claimed("old")
    assert dispatcher.recently_claimed("new")
    assert dispatcher.recently_claimed("newest")


# --- fairness ---------------------------------------------------------------------------


async def test_a_miner_holds_one_offer_and_its_other_polls_are_skipped(
    dispatcher: Dispatcher[str],
) -> None:
    greedy = taker(CPU, "greedy", free_slots=8)
    first = await start_waiter(dispatcher, greedy)
    second = await start_waiter(dispatcher, greedy)
    honest = await start_waiter(dispatcher, taker(CPU, "honest"))
    assert dispatcher.publish(offer("j1")) is True
    assert dispatcher.publish(offer("j2")) is True
    one, two = await finish(first), await finish(honest)
    assert one is not None and one.job_id == "j1"
    assert two is not None and two.job_id == "j2"
    assert not second.done()
    await cancel(second)


async def test_a_miner_without_a_free_slot_is_offered_nothing(
    dispatcher: Dispatcher[str],
) -> None:
    busy = await start_waiter(dispatcher, taker(CPU, "busy", free_slots=0))
    assert dispatcher.publish(offer("j1")) is False
    assert not busy.done()
    await cancel(busy)
    assert not dispatcher.may_receive(taker(CPU, "busy", free_slots=0))
    assert dispatcher.may_receive(taker(CPU, "busy", free_slots=1))


async def test_a_price_above_the_jobs_max_price_is_offered_nothing(
    dispatcher: Dispatcher[str],
) -> None:
    dear = await start_waiter(dispatcher, taker(CPU, "dear", price_micro=2_000))
    cheap = await start_waiter(dispatcher, taker(CPU, "cheap", price_micro=1_000))
    bounded = Offer("j1", SMOL, Requirements(), "payload-j1", max_price_micro=1_000)
    assert dispatcher.publish(bounded) is True
    got = await finish(cheap)
    assert got is bounded
    assert not dear.done()
    await cancel(dear)


async def test_polling_again_hands_the_offer_back_with_a_strike(
    dispatcher: Dispatcher[str],
) -> None:
    dispatcher.mark_offered(offer("j1"), "greedy")
    assert dispatcher.offered_ids() == {"j1"}
    other = await start_waiter(dispatcher, taker(CPU, "other"))
    assert dispatcher.hand_back("greedy") == 1
    # Re-offered at once to the miner that was waiting.
    got = await finish(other)
    assert got is not None and got.job_id == "j1"
    assert dispatcher.strikes("greedy") == 1
    assert dispatcher.hand_back("greedy") == 0
    assert dispatcher.hand_back("nobody") == 0


async def test_miners_with_strikes_are_served_last(dispatcher: Dispatcher[str]) -> None:
    dispatcher.mark_offered(offer("j0"), "greedy")
    dispatcher.hand_back("greedy")
    greedy = await start_waiter(dispatcher, taker(CPU, "greedy"))
    honest = await start_waiter(dispatcher, taker(CPU, "honest"))
    assert dispatcher.publish(offer("j1")) is True
    got = await finish(honest)
    assert got is not None and got.job_id == "j1"
    # With nobody better waiting, a striking miner is still served.
    assert dispatcher.publish(offer("j2")) is True
    got = await finish(greedy)
    assert got is not None and got.job_id == "j2"


def test_a_claim_clears_strikes(dispatcher: Dispatcher[str]) -> None:
    dispatcher.mark_offered(offer("j1"), "m")
    dispatcher.hand_back("m")
    assert dispatcher.strikes("m") == 1
    dispatcher.mark_offered(offer("j1"), "m")
    dispatcher.claimed("j1", "m")
    assert dispatcher.strikes("m") == 0


def test_a_lapsed_offer_is_a_strike_and_strikes_shorten_offers(
    dispatcher: Dispatcher[str], clock: FakeMonotonic
) -> None:
    dispatcher.mark_offered(offer("j1"), "m")
    clock.advance(OFFER_SECONDS)
    assert dispatcher.offered_ids() == set()
    assert dispatcher.strikes("m") == 1
    # One strike: the next offer hides the job for half as long.
    dispatcher.mark_offered(offer("j2"), "m")
    clock.advance(OFFER_SECONDS / 2 - 0.001)
    assert dispatcher.offered_ids() == {"j2"}
    clock.advance(0.001)
    assert dispatcher.offered_ids() == set()
    assert dispatcher.strikes("m") == 2


def test_release_is_not_a_strike(dispatcher: Dispatcher[str]) -> None:
    dispatcher.mark_offered(offer("j1"), "m")
    dispatcher.release("j1")
    assert dispatcher.strikes("m") == 0
    assert dispatcher.may_receive(taker(CPU, "m"))
