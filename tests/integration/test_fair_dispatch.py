"""No miner can starve the others (issue 13, items 2 and 3).

A miner holds at most as many jobs as the concurrency it declared (a claim beyond
it is 409 ``miner_busy``), is offered nothing while it has no free slot, gives back
an offer when it polls again without claiming it, and one that keeps not claiming
is served last: one key holding many long polls cannot keep jobs from an honest
miner.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from aitbc.services import miners as miner_service
from tests.conftest import Coordinator
from tests.integration.helpers import (
    assert_error,
    claim_ok,
    complete,
    fail,
    get_job,
    ok,
    poll,
)

JOBS = 40
GREEDY_POLLS = 40


async def test_a_miner_holds_no_more_jobs_than_its_concurrency(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", concurrency=2)
    jobs = [(await coordinator.submit(client))["job_id"] for _ in range(3)]
    await claim_ok(coordinator, jobs[0], "m1", miner)
    await claim_ok(coordinator, jobs[1], "m1", miner)
    assert_error(await coordinator.claim(jobs[2], "m1", miner), 409, "miner_busy")
    # Busy: it is offered nothing, and the job is at once visible to other miners.
    assert await poll(coordinator, "m1", miner) is None
    other = await coordinator.new_miner("m2", concurrency=1)
    offered = await poll(coordinator, "m2", other)
    assert offered is not None and offered["job_id"] == jobs[2]
    # A slot frees when a job ends.
    ok(await complete(coordinator, jobs[0], "m1", miner))
    await claim_ok(coordinator, jobs[2], "m1", miner)


async def test_the_default_concurrency_is_one(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", concurrency=None)  # omitted from the body
    first = (await coordinator.submit(client))["job_id"]
    second = (await coordinator.submit(client))["job_id"]
    await claim_ok(coordinator, first, "m1", miner)
    assert_error(await coordinator.claim(second, "m1", miner), 409, "miner_busy")


@pytest.mark.parametrize("value", [0, -1, 1025, "two"])
async def test_concurrency_must_be_a_sane_count(coordinator: Coordinator, value: Any) -> None:
    response = await coordinator.http.post(
        "/v1/miners/register",
        json={"miner_id": "m1", "capabilities": ["smollm2-135m"], "concurrency": value},
    )
    assert_error(response, 422, "validation_error")


async def test_concurrent_claims_by_one_miner_never_pass_its_concurrency(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", concurrency=3)
    jobs = [(await coordinator.submit(client))["job_id"] for _ in range(12)]
    responses = await asyncio.gather(*(coordinator.claim(job, "m1", miner) for job in jobs))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 3 + [409] * 9, [r.text for r in responses]
    for response in responses:
        if response.status_code == 409:
            assert response.json()["error_code"] == "miner_busy"
    admin_jobs = ok(
        await coordinator.http.get(
            "/v1/admin/jobs", params={"status": "running"}, headers=coordinator.admin_headers
        )
    )
    assert admin_jobs["total"] == 3


async def test_a_second_poll_hands_back_the_unclaimed_offer(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    greedy = await coordinator.new_miner("greedy", concurrency=8)
    honest = await coordinator.new_miner("honest", concurrency=1)
    job = (await coordinator.submit(client))["job_id"]
    offered = await poll(coordinator, "greedy", greedy)
    assert offered is not None and offered["job_id"] == job
    # Still hidden from others while greedy may claim it...
    assert await poll(coordinator, "honest", honest) is None
    # ...but greedy polling again means it did not take it: handed back at once.
    waiting = asyncio.create_task(poll(coordinator, "honest", honest, wait=5))
    await asyncio.sleep(0.05)
    again = await poll(coordinator, "greedy", greedy)
    # Re-offered to the miner that was waiting, not to the one that let it go.
    assert again is None
    handed = await asyncio.wait_for(waiting, 5)
    assert handed is not None and handed["job_id"] == job
    assert coordinator.runtime.dispatcher.strikes("greedy") == 1
    await claim_ok(coordinator, job, "honest", honest)
    assert coordinator.runtime.dispatcher.strikes("honest") == 0


@pytest.mark.parametrize("profile_cache", ["cached", "uncached"])
async def test_polls_that_never_claim_cannot_starve_an_honest_miner(
    coordinator: Coordinator, profile_cache: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One key holds 40 long polls and never claims; an honest miner must still get
    every job, promptly (before the fix it got 4 of 40 and 36 stayed pending).

    "uncached": every poll reads the miner's profile, as 40 polls do together each
    time the cache expires; that read once went through an ORM session, which gives
    SQLite's one connection back a loop turn late, and the queued polls lost it for
    good (every request then waited 60 s for the pool)."""
    if profile_cache == "uncached":
        monkeypatch.setattr(miner_service, "HARDWARE_CACHE_SECONDS", 0.0)
    _client_id, client = await coordinator.new_client()
    greedy = await coordinator.new_miner("greedy", concurrency=1)
    honest = await coordinator.new_miner("honest", concurrency=1)
    stop = asyncio.Event()
    greedy_offers = 0

    async def greedy_poller() -> None:
        nonlocal greedy_offers
        while not stop.is_set():
            if await poll(coordinator, "greedy", greedy, wait=5) is not None:
                greedy_offers += 1

    pollers = [asyncio.create_task(greedy_poller()) for _ in range(GREEDY_POLLS)]
    await asyncio.sleep(0.2)  # all of them waiting before the jobs arrive
    for _ in range(JOBS):
        await coordinator.submit(client)

    done = 0
    started = time.monotonic()
    while done < JOBS and time.monotonic() - started < 30:
        job = await poll(coordinator, "honest", honest, wait=1)
        if job is None:
            continue
        await claim_ok(coordinator, job["job_id"], "honest", honest)
        ok(await complete(coordinator, job["job_id"], "honest", honest))
        done += 1
    elapsed = time.monotonic() - started
    stop.set()
    for poller in pollers:
        poller.cancel()
    for poller in pollers:
        with contextlib.suppress(asyncio.CancelledError):
            await poller
    assert done == JOBS, f"the honest miner completed {done} of {JOBS} in {elapsed:.1f} s"
    # No job waited out a 5-second offer hold for the honest miner.
    assert elapsed < 15, elapsed
    assert greedy_offers > 0  # it was offered jobs, it just never got to keep them
    assert coordinator.runtime.dispatcher.strikes("greedy") > 0


async def test_a_miner_that_is_stopping_hands_jobs_back_without_using_attempts(
    coordinator: Coordinator,
) -> None:
    # Item 13: three graceful miner restarts must not fail the client's job.
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job = (await coordinator.submit(client))["job_id"]
    for _ in range(5):  # more than max_attempts (3)
        await claim_ok(coordinator, job, "m1", miner)
        response = await coordinator.http.post(
            f"/v1/jobs/{job}/fail",
            json={"miner_id": "m1", "error": "miner shutting down", "handed_back": True},
            headers=miner,
        )
        back = ok(response)
        assert back["status"] == "pending"
        assert back["attempts"] == 0
        assert back["error_code"] == "handed_back"
    await claim_ok(coordinator, job, "m1", miner)
    ok(await complete(coordinator, job, "m1", miner))
    done = await get_job(coordinator, job, client)
    assert done["status"] == "completed" and done["attempts"] == 1


async def test_retryable_failures_still_use_up_attempts(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job = (await coordinator.submit(client))["job_id"]
    for _ in range(3):
        await claim_ok(coordinator, job, "m1", miner)
        ok(await fail(coordinator, job, "m1", miner, retryable=True))
    failed = await get_job(coordinator, job, client)
    assert failed["status"] == "failed" and failed["attempts"] == 3
