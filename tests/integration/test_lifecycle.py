"""Lifecycle rules driven by the fake clock and one sweeper pass at a time: leases,
renewals, attempts, timeouts and cancellation of running jobs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import Coordinator
from tests.integration.helpers import (
    assert_error,
    claim_ok,
    complete,
    get_job,
    heartbeat,
    ok,
    poll,
    progress,
    running_job,
    sweep,
)

LEASE_SECONDS = 10
MAX_ATTEMPTS = 2


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"lease_seconds": LEASE_SECONDS, "max_attempts": MAX_ATTEMPTS}


async def test_a_silent_miner_loses_its_job(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    m2 = await coordinator.new_miner("m2")
    job_id = (await running_job(coordinator, client, "m1", m1))["job_id"]

    coordinator.clock.advance(LEASE_SECONDS - 1)
    assert (await sweep(coordinator))["requeued"] == 0
    assert (await get_job(coordinator, job_id, client))["status"] == "running"
    assert_error(await coordinator.claim(job_id, "m2", m2), 409)

    coordinator.clock.advance(1)  # the lease has now lapsed
    counts = await sweep(coordinator)
    assert counts["requeued"] == 1
    assert counts["failed"] == 0
    lapsed = await get_job(coordinator, job_id, client)
    assert lapsed["status"] == "pending"
    assert lapsed["miner_id"] is None
    assert lapsed["started_at"] is None
    assert lapsed["attempts"] == 1
    assert lapsed["error_code"] == "lease_expired"

    offered = await poll(coordinator, "m2", m2)
    assert offered is not None and offered["job_id"] == job_id
    reclaimed = await claim_ok(coordinator, job_id, "m2", m2)
    assert reclaimed["attempts"] == 2

    # The first miner wakes up: it no longer holds the job and is told to drop it.
    ack = await heartbeat(coordinator, "m1", m1, running_jobs=[job_id])
    assert ack["cancelled_jobs"] == [job_id]
    assert_error(await complete(coordinator, job_id, "m1", m1), 409, "not_lease_holder")
    assert_error(await progress(coordinator, job_id, "m1", m1, 50), 409, "not_lease_holder")
    ok(await complete(coordinator, job_id, "m2", m2, result="from m2"))
    assert (await get_job(coordinator, job_id, client))["result"] == "from m2"


async def test_heartbeats_renew_the_lease(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    job_id = (await running_job(coordinator, client, "m1", m1))["job_id"]

    for _ in range(6):  # 48 s in all, nearly five leases
        coordinator.clock.advance(LEASE_SECONDS - 2)
        ack = await heartbeat(coordinator, "m1", m1, running_jobs=[job_id])
        assert ack["cancelled_jobs"] == []
        assert await sweep(coordinator) == {
            "timed_out": 0,
            "requeued": 0,
            "failed": 0,
            "miners_offline": 0,
            "files_expired": 0,
            "events_pruned": 0,
            "trades_expired": 0,
        }
        assert (await get_job(coordinator, job_id, client))["status"] == "running"

    coordinator.clock.advance(LEASE_SECONDS)  # heartbeats stop
    assert (await sweep(coordinator))["requeued"] == 1
    assert (await get_job(coordinator, job_id, client))["status"] == "pending"


@pytest.mark.parametrize("listed", [None, []], ids=["absent", "empty"])
async def test_a_heartbeat_renews_no_job_it_does_not_list(
    coordinator: Coordinator, listed: list[str] | None
) -> None:
    # A miner must not hoard jobs by heartbeating without saying it runs them.
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    job_id = (await running_job(coordinator, client, "m1", m1))["job_id"]
    coordinator.clock.advance(LEASE_SECONDS - 1)
    beat: dict[str, Any] = {} if listed is None else {"running_jobs": listed}
    await heartbeat(coordinator, "m1", m1, **beat)
    coordinator.clock.advance(2)
    await sweep(coordinator)
    lapsed = await get_job(coordinator, job_id, client)
    assert lapsed["status"] == "pending"
    assert lapsed["error_code"] == "lease_expired"


async def test_progress_renews_the_lease(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    job_id = (await running_job(coordinator, client, "m1", m1))["job_id"]

    for step in range(1, 6):
        coordinator.clock.advance(LEASE_SECONDS - 1)
        ack = ok(await progress(coordinator, job_id, "m1", m1, step * 10))
        assert ack["should_stop"] is False
        await sweep(coordinator)
        assert (await get_job(coordinator, job_id, client))["status"] == "running"

    coordinator.clock.advance(LEASE_SECONDS - 1)
    receipt = ok(await complete(coordinator, job_id, "m1", m1))
    assert receipt["job_id"] == job_id and receipt["provider"] == "m1"
    done = await get_job(coordinator, job_id, client)
    assert done["status"] == "completed"
    assert done["attempts"] == 1


async def test_lapsed_leases_fail_the_job_after_max_attempts(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miners = {name: await coordinator.new_miner(name) for name in ("m1", "m2", "m3")}
    job_id = (await coordinator.submit(client))["job_id"]

    for attempt, name in enumerate(("m1", "m2"), start=1):
        assert (await claim_ok(coordinator, job_id, name, miners[name]))["attempts"] == attempt
        coordinator.clock.advance(LEASE_SECONDS + 1)
        await sweep(coordinator)

    failed = await get_job(coordinator, job_id, client)
    assert failed["status"] == "failed"
    assert failed["error_code"] == "lease_expired"
    assert failed["attempts"] == MAX_ATTEMPTS
    assert failed["completed_at"] is not None
    assert await poll(coordinator, "m3", miners["m3"]) is None
    assert_error(await coordinator.claim(job_id, "m3", miners["m3"]), 409)
    # A later sweep leaves the terminal job alone.
    coordinator.clock.advance(3600)
    await sweep(coordinator)
    assert (await get_job(coordinator, job_id, client))["error_code"] == "lease_expired"


async def test_a_pending_job_times_out(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    job_id = (await coordinator.submit(client, timeout_seconds=60))["job_id"]
    other_id = (await coordinator.submit(client, timeout_seconds=120))["job_id"]

    coordinator.clock.advance(59)
    assert (await sweep(coordinator))["timed_out"] == 0
    assert (await get_job(coordinator, job_id, client))["status"] == "pending"

    coordinator.clock.advance(1)
    assert (await sweep(coordinator))["timed_out"] == 1
    timed_out = await get_job(coordinator, job_id, client)
    assert timed_out["status"] == "failed"
    assert timed_out["error_code"] == "timeout"
    assert timed_out["completed_at"] == "2026-02-13T10:01:00Z"
    assert (await get_job(coordinator, other_id, client))["status"] == "pending"
    assert_error(await coordinator.claim(job_id, "m1", m1), 409)
    offered = await poll(coordinator, "m1", m1)
    assert offered is not None and offered["job_id"] == other_id


async def test_a_running_job_times_out(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    job_id = (await running_job(coordinator, client, "m1", m1, timeout_seconds=60))["job_id"]

    for _ in range(8):  # heartbeats keep the lease alive up to t = 64 s
        coordinator.clock.advance(8)
        await heartbeat(coordinator, "m1", m1, running_jobs=[job_id])
        await sweep(coordinator)
    failed = await get_job(coordinator, job_id, client)
    assert failed["status"] == "failed"
    assert failed["error_code"] == "timeout"

    ack = await heartbeat(coordinator, "m1", m1, running_jobs=[job_id])
    assert ack["cancelled_jobs"] == [job_id]
    stop = ok(await progress(coordinator, job_id, "m1", m1, 90))
    assert stop["should_stop"] is True
    assert stop["status"] == "failed"
    assert_error(await complete(coordinator, job_id, "m1", m1), 409)
    assert (await get_job(coordinator, job_id, client))["result"] is None


async def test_completing_after_the_deadline_before_a_sweep(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    job_id = (await running_job(coordinator, client, "m1", m1, timeout_seconds=5))["job_id"]
    coordinator.clock.advance(5)
    assert_error(await complete(coordinator, job_id, "m1", m1), 409, "job_timed_out")
    stored = await get_job(coordinator, job_id, client)
    assert stored["status"] == "failed"
    assert stored["error_code"] == "timeout"
    assert stored["result"] is None


async def test_cancel_while_running(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    job_id = (await running_job(coordinator, client, "m1", m1))["job_id"]
    ok(await progress(coordinator, job_id, "m1", m1, 40))

    cancelled = ok(await coordinator.http.delete(f"/v1/jobs/{job_id}", headers=client))
    assert cancelled["status"] == "cancelled"

    ack = await heartbeat(coordinator, "m1", m1, running_jobs=[job_id])
    assert ack["cancelled_jobs"] == [job_id]
    stop = ok(await progress(coordinator, job_id, "m1", m1, 60))
    assert stop == {
        "job_id": job_id,
        "status": "cancelled",
        "progress": 40,
        "should_stop": True,
        "streamed": 0,
    }
    assert_error(await complete(coordinator, job_id, "m1", m1), 409)

    # Neither a lapsed lease nor the timeout revives or changes it.
    coordinator.clock.advance(4000)
    await sweep(coordinator)
    final = await get_job(coordinator, job_id, client)
    assert final["status"] == "cancelled"
    assert final["result"] is None
    assert final["error_code"] == "cancelled"
    assert_error(await complete(coordinator, job_id, "m1", m1), 409)
    assert await poll(coordinator, "m1", m1) is None


async def test_heartbeat_lists_only_jobs_the_miner_must_stop(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    keep = (await running_job(coordinator, client, "m1", m1))["job_id"]
    drop = (await running_job(coordinator, client, "m1", m1))["job_id"]
    ok(await coordinator.http.post(f"/v1/jobs/{drop}/cancel", headers=client))
    ack = await heartbeat(coordinator, "m1", m1, running_jobs=[keep, drop, "job_unknown"])
    assert ack["cancelled_jobs"] == [drop, "job_unknown"]
    ok(await complete(coordinator, keep, "m1", m1))


async def test_a_cancelled_pending_job_is_never_offered(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    job_id = (await coordinator.submit(client))["job_id"]
    ok(await coordinator.http.delete(f"/v1/jobs/{job_id}", headers=client))
    assert await poll(coordinator, "m1", m1) is None
    assert_error(await coordinator.claim(job_id, "m1", m1), 409)
    assert_error(await complete(coordinator, job_id, "m1", m1), 409)


async def test_a_backlog_of_timeouts_is_worked_off_in_batches(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aitbc.services import sweeper

    monkeypatch.setattr(sweeper, "SWEEP_BATCH", 2)
    _client_id, client = await coordinator.new_client()
    submitted = [(await coordinator.submit(client, timeout_seconds=5))["job_id"] for _ in range(5)]
    coordinator.clock.advance(6)
    swept = [(await sweeper.sweep_once(coordinator.runtime))["timed_out"] for _ in range(4)]
    assert swept == [2, 2, 1, 0]
    for job_id in submitted:
        job = (await coordinator.http.get(f"/v1/jobs/{job_id}", headers=client)).json()
        assert (job["status"], job["error_code"]) == ("failed", "timeout")


async def test_a_job_missing_from_the_heartbeat_list_lapses(coordinator: Coordinator) -> None:
    """A miner that lists its running jobs renews only those: a job it dropped (after a
    crash, say) is requeued when its lease runs out, though the miner stays alive."""
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    kept = (await running_job(coordinator, client, "m1", m1))["job_id"]
    dropped = (await running_job(coordinator, client, "m1", m1))["job_id"]
    for _ in range(2):
        coordinator.clock.advance(LEASE_SECONDS - 1)
        await heartbeat(coordinator, "m1", m1, running_jobs=[kept])
        await sweep(coordinator)
    assert (await get_job(coordinator, kept, client))["status"] == "running"
    lost = await get_job(coordinator, dropped, client)
    assert (lost["status"], lost["error_code"]) == ("pending", "lease_expired")


async def _claiming_poll(
    coordinator: Coordinator, miner_id: str, headers: dict[str, str], wait: float
) -> Any:
    return ok(
        await coordinator.http.get(
            "/v1/jobs/available",
            params={"miner_id": miner_id, "wait": wait, "claim": "true"},
            headers=headers,
        )
    )


async def test_a_poll_can_claim_the_job_it_returns(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    m2 = await coordinator.new_miner("m2")
    assert await _claiming_poll(coordinator, "m1", m1, 0) is None
    ready = await coordinator.submit(client)
    taken = await _claiming_poll(coordinator, "m1", m1, 0)
    assert (taken["job_id"], taken["status"], taken["miner_id"]) == (
        ready["job_id"],
        "running",
        "m1",
    )
    assert taken["attempts"] == 1
    # Waiting polls: the job submitted meanwhile comes back claimed by exactly one.
    first = asyncio.ensure_future(_claiming_poll(coordinator, "m1", m1, 5))
    second = asyncio.ensure_future(_claiming_poll(coordinator, "m2", m2, 0.5))
    await asyncio.sleep(0.1)
    later = await coordinator.submit(client)
    answers = [await first, await second]
    claimed = [answer for answer in answers if answer is not None]
    assert [answer["job_id"] for answer in claimed] == [later["job_id"]]
    assert claimed[0]["status"] == "running"
    job = await get_job(coordinator, later["job_id"], client)
    assert job["miner_id"] == claimed[0]["miner_id"] and job["attempts"] == 1
