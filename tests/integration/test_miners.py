"""Miner side over the ASGI app: registration, heartbeats, matching and ordering of
available jobs, long polls, concurrent claims, progress, completion and failure."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aitbc.domain.jobs import Requirements
from aitbc.services.dispatch import Offer
from tests.conftest import Coordinator
from tests.integration.helpers import (
    MODEL,
    assert_error,
    claim_ok,
    complete,
    fail,
    get_job,
    heartbeat,
    ok,
    poll,
    progress,
)

A100 = {"name": "NVIDIA A100-SXM4-40GB", "memory": "40GB", "count": 1}
RTX_PAIR = {"name": "NVIDIA GeForce RTX 4090", "memory": 24, "count": 2}


# --- registration and heartbeat --------------------------------------------------------


async def test_register_returns_a_key_once(coordinator: Coordinator) -> None:
    response = await coordinator.http.post(
        "/v1/miners/register",
        json={"miner_id": "m1", "capabilities": [MODEL], "gpu_info": A100, "price": 0.25},
    )
    body = ok(response, 201)
    assert body["miner_id"] == "m1"
    assert body["api_key"]
    miner = {"X-Api-Key": body["api_key"]}
    assert (await heartbeat(coordinator, "m1", miner))["miner_id"] == "m1"

    again = await coordinator.http.post(
        "/v1/miners/register", json={"miner_id": "m1", "capabilities": [MODEL]}
    )
    assert_error(again, 409, "miner_exists")
    _client_id, client = await coordinator.new_client()
    as_client = await coordinator.http.post(
        "/v1/miners/register", json={"miner_id": "m1", "capabilities": [MODEL]}, headers=client
    )
    assert_error(as_client, 409, "miner_exists")
    other = await coordinator.new_miner("m2")
    as_other_miner = await coordinator.http.post(
        "/v1/miners/register", json={"miner_id": "m1", "capabilities": [MODEL]}, headers=other
    )
    assert_error(as_other_miner, 403)
    # A miner key cannot create a second miner either.
    new_with_key = await coordinator.http.post(
        "/v1/miners/register", json={"miner_id": "m3", "capabilities": [MODEL]}, headers=other
    )
    assert_error(new_with_key, 403)

    miners = ok(await coordinator.http.get("/v1/admin/miners", headers=coordinator.admin_headers))
    assert [m["miner_id"] for m in miners] == ["m1", "m2"]
    assert miners[0]["price"] == 0.25
    assert miners[0]["gpu_info"] == {"name": A100["name"], "memory": 40.0, "count": 1}


async def test_register_again_with_own_key_updates(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job = await coordinator.submit(client, model="llama3.2")
    assert await poll(coordinator, "m1", miner) is None

    update = await coordinator.http.post(
        "/v1/miners/register",
        json={"miner_id": "m1", "capabilities": [MODEL, "llama3.2"], "price": "0.5"},
        headers=miner,
    )
    assert update.status_code in (200, 204), update.text
    offered = await poll(coordinator, "m1", miner)
    assert offered is not None and offered["job_id"] == job["job_id"]
    await claim_ok(coordinator, job["job_id"], "m1", miner)  # the old key still works


async def test_registration_validation(coordinator: Coordinator) -> None:
    bad_bodies: list[dict[str, Any]] = [
        {"miner_id": "m1"},
        {"miner_id": "m1", "capabilities": []},
        {"miner_id": "bad id with spaces", "capabilities": [MODEL]},
        {"miner_id": "m1", "capabilities": [MODEL], "price": -1},
        {"miner_id": "m1", "capabilities": [MODEL], "price": "0.0000001"},
        {"miner_id": "m1", "capabilities": [MODEL], "gpu_info": {"memory": "lots"}},
        {"miner_id": "m1", "capabilities": [MODEL], "colour": "blue"},
    ]
    for body in bad_bodies:
        response = await coordinator.http.post("/v1/miners/register", json=body)
        assert_error(response, 422, "validation_error")
    assert (
        ok(await coordinator.http.get("/v1/admin/miners", headers=coordinator.admin_headers)) == []
    )


async def test_heartbeat(coordinator: Coordinator) -> None:
    miner = await coordinator.new_miner("m1")
    coordinator.clock.advance(5)
    ack = await heartbeat(coordinator, "m1", miner, status="busy", utilisation=42.5)
    assert ack == {"miner_id": "m1", "status": "ok", "cancelled_jobs": []}
    no_body = await coordinator.http.post("/v1/miners/m1/heartbeat", headers=miner)
    assert no_body.status_code == 200, no_body.text
    bad = await coordinator.http.post(
        "/v1/miners/m1/heartbeat", json={"utilisation": 150}, headers=miner
    )
    assert_error(bad, 422, "validation_error")

    coordinator.clock.advance(5)
    await heartbeat(coordinator, "m1", miner, status="busy", utilisation=42.5)
    (listed,) = ok(
        await coordinator.http.get("/v1/admin/miners", headers=coordinator.admin_headers)
    )
    assert listed["status"] == "busy"
    assert listed["utilisation"] == 42.5
    assert listed["last_heartbeat_at"] == "2026-02-13T10:00:10Z"
    assert listed["registered_at"] == "2026-02-13T10:00:00Z"


# --- which jobs a miner is offered -----------------------------------------------------


async def _offers(coordinator: Coordinator, miner_id: str, headers: dict[str, str]) -> set[str]:
    """Everything ``miner_id`` is offered, polling until null; offers are then released
    so that the next miner sees the same queue."""
    seen: list[str] = []
    dispatcher = coordinator.runtime.dispatcher
    while (job := await poll(coordinator, miner_id, headers)) is not None:
        assert job["job_id"] not in seen, "a job was offered twice in a row"
        seen.append(job["job_id"])
        assert len(seen) < 50
        # Polling again hands an unclaimed offer back: keep this one hidden (as if
        # offered elsewhere) so that the next poll shows the rest of the queue.
        dispatcher.mark_offered(Offer(job["job_id"], job["model"], Requirements(), job), "_")
    for job_id in seen:
        coordinator.runtime.dispatcher.release(job_id)
    return set(seen)


async def test_available_matches_model_and_hardware(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    cpu = await coordinator.new_miner("cpu")
    a100 = await coordinator.new_miner("a100", gpu_info=A100)
    rtx = await coordinator.new_miner("rtx", gpu_info=RTX_PAIR)
    llama = await coordinator.new_miner("llama", models=["llama3.2"], gpu_info=A100)

    async def job(**fields: Any) -> str:
        job_id: str = (await coordinator.submit(client, **fields))["job_id"]
        return job_id

    anything = await job()
    other_model = await job(model="llama3.2")
    a100_lower = await job(requirements={"gpu_type": "a100"})
    a100_mixed = await job(requirements={"gpu_type": "A100-sxm4"})
    h100 = await job(requirements={"gpu_type": "H100"})
    two_gpus = await job(requirements={"gpu_count": 2})
    any_gpu = await job(requirements={"gpu_count": 1})
    vram_40 = await job(requirements={"min_vram_gb": 40})
    vram_41 = await job(requirements={"min_vram_gb": 41})
    rtx_pair = await job(requirements={"gpu_type": "rtx", "gpu_count": 2, "min_vram_gb": 24})

    assert await _offers(coordinator, "cpu", cpu) == {anything}
    assert await _offers(coordinator, "a100", a100) == {
        anything,
        a100_lower,
        a100_mixed,
        any_gpu,
        vram_40,
    }
    assert await _offers(coordinator, "rtx", rtx) == {anything, two_gpus, any_gpu, rtx_pair}
    assert await _offers(coordinator, "llama", llama) == {other_model}
    assert h100 not in set().union(
        *[await _offers(coordinator, m, h) for m, h in (("cpu", cpu), ("a100", a100))]
    )
    assert vram_41 not in await _offers(coordinator, "a100", a100)

    # A claim is checked the same way.
    assert_error(await coordinator.claim(two_gpus, "cpu", cpu), 403, "miner_not_eligible")
    assert_error(await coordinator.claim(other_model, "a100", a100), 403, "miner_not_eligible")
    assert_error(await coordinator.claim(vram_41, "a100", a100), 403, "miner_not_eligible")
    await claim_ok(coordinator, rtx_pair, "rtx", rtx)


async def test_available_gpu_type_is_a_plain_substring(coordinator: Coordinator) -> None:
    """gpu_type is a case-insensitive substring, not a pattern: "_" and "%" are literal."""
    _client_id, client = await coordinator.new_client()
    a100 = await coordinator.new_miner("a100", gpu_info=A100)
    underscore = (await coordinator.submit(client, requirements={"gpu_type": "a_00"}))["job_id"]
    percent = (await coordinator.submit(client, requirements={"gpu_type": "%"}))["job_id"]
    offers = await _offers(coordinator, "a100", a100)
    assert underscore not in offers
    assert percent not in offers
    assert_error(await coordinator.claim(underscore, "a100", a100), 403, "miner_not_eligible")


async def test_available_is_highest_priority_then_oldest(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    submitted: dict[str, str] = {}
    for name, priority in (
        ("low", "low"),
        ("normal-1", "normal"),
        ("high-1", "high"),
        ("high-2", "high"),
        ("normal-2", "normal"),
    ):
        submitted[name] = (await coordinator.submit(client, priority=priority))["job_id"]
        coordinator.clock.advance(1)

    order: list[str] = []
    while (job := await poll(coordinator, "m1", miner)) is not None:
        await claim_ok(coordinator, job["job_id"], "m1", miner)
        order.append(job["job_id"])
    by_id = {job_id: name for name, job_id in submitted.items()}
    assert [by_id[job_id] for job_id in order] == [
        "high-1",
        "high-2",
        "normal-1",
        "normal-2",
        "low",
    ]


async def test_available_for_an_unknown_miner_id(coordinator: Coordinator) -> None:
    miner = await coordinator.new_miner("m1")
    bad = await coordinator.http.get(
        "/v1/jobs/available", params={"miner_id": "no such"}, headers=miner
    )
    assert_error(bad, 422, "validation_error")
    too_long = await coordinator.http.get(
        "/v1/jobs/available", params={"miner_id": "m1", "wait": 301}, headers=miner
    )
    assert_error(too_long, 422, "validation_error")


# --- long polls ------------------------------------------------------------------------


async def test_long_poll_returns_a_job_submitted_while_waiting(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    started = time.monotonic()
    waiting = asyncio.create_task(poll(coordinator, "m1", miner, wait=10))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    job = await coordinator.submit(client)
    offered = await asyncio.wait_for(waiting, timeout=5)
    assert offered is not None and offered["job_id"] == job["job_id"]
    assert time.monotonic() - started < 2
    await claim_ok(coordinator, job["job_id"], "m1", miner)


async def test_long_poll_only_wakes_for_jobs_the_miner_can_run(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    cpu = await coordinator.new_miner("cpu")
    gpu = await coordinator.new_miner("gpu", gpu_info=A100)
    cpu_wait = asyncio.create_task(poll(coordinator, "cpu", cpu, wait=10))
    gpu_wait = asyncio.create_task(poll(coordinator, "gpu", gpu, wait=10))
    await asyncio.sleep(0.05)
    job = await coordinator.submit(client, requirements={"gpu_type": "a100"})
    offered = await asyncio.wait_for(gpu_wait, timeout=5)
    assert offered is not None and offered["job_id"] == job["job_id"]
    assert not cpu_wait.done()
    plain = await coordinator.submit(client)
    offered = await asyncio.wait_for(cpu_wait, timeout=5)
    assert offered is not None and offered["job_id"] == plain["job_id"]


async def test_long_poll_returns_null_after_the_wait(coordinator: Coordinator) -> None:
    """``wait`` is real seconds: with nothing to do the poll answers null once it passes
    (the coordinator's clock, frozen here, must not stretch the wait)."""
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    await coordinator.submit(client, model="llama3.2")  # not one this miner serves
    started = time.monotonic()
    response = await asyncio.wait_for(
        coordinator.http.get(
            "/v1/jobs/available", params={"miner_id": "m1", "wait": 0.3}, headers=miner
        ),
        timeout=3,
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json() is None
    assert 0.25 <= elapsed < 2.5


async def test_poll_without_wait_answers_at_once(coordinator: Coordinator) -> None:
    miner = await coordinator.new_miner("m1")
    started = time.monotonic()
    assert await poll(coordinator, "m1", miner) is None
    assert time.monotonic() - started < 1


# --- claims ----------------------------------------------------------------------------


async def test_twenty_concurrent_claims_one_winner(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miners = {f"m{index:02d}": await coordinator.new_miner(f"m{index:02d}") for index in range(20)}
    job = await coordinator.submit(client)
    responses = await asyncio.gather(
        *(coordinator.claim(job["job_id"], miner_id, key) for miner_id, key in miners.items())
    )
    winners = [r for r in responses if r.status_code == 200]
    losers = [r for r in responses if r.status_code != 200]
    assert len(winners) == 1, [r.status_code for r in responses]
    assert len(losers) == 19
    for response in losers:
        assert_error(response, 409)
    winner = winners[0].json()
    stored = await get_job(coordinator, job["job_id"], client)
    assert stored["status"] == "running"
    assert stored["miner_id"] == winner["miner_id"]
    assert stored["attempts"] == 1
    assert stored["started_at"] == "2026-02-13T10:00:00Z"


async def test_claim_refusals(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    m2 = await coordinator.new_miner("m2")
    assert_error(await coordinator.claim("job_nope", "m1", m1), 404, "job_not_found")
    job = await coordinator.submit(client)
    await claim_ok(coordinator, job["job_id"], "m1", m1)
    assert_error(await coordinator.claim(job["job_id"], "m2", m2), 409, "already_claimed")
    assert_error(await coordinator.claim(job["job_id"], "m1", m1), 409)
    cancelled = await coordinator.submit(client)
    ok(await coordinator.http.delete(f"/v1/jobs/{cancelled['job_id']}", headers=client))
    assert_error(await coordinator.claim(cancelled["job_id"], "m1", m1), 409)
    missing_body = await coordinator.http.post(f"/v1/jobs/{job['job_id']}/claim", headers=m1)
    assert_error(missing_body, 422, "validation_error")


# --- progress, completion, failure -----------------------------------------------------


async def test_progress_reports(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    m2 = await coordinator.new_miner("m2")
    job = await coordinator.submit(client)
    job_id = job["job_id"]
    assert_error(await progress(coordinator, job_id, "m1", m1, 10), 409, "not_lease_holder")
    await claim_ok(coordinator, job_id, "m1", m1)

    for value in (0, 50, 100):
        ack = ok(await progress(coordinator, job_id, "m1", m1, value))
        assert ack == {
            "job_id": job_id,
            "status": "running",
            "progress": value,
            "should_stop": False,
            "streamed": 0,
        }
    assert (await get_job(coordinator, job_id, client))["progress"] == 100
    assert ok(await progress(coordinator, job_id, "m1", m1, 30))["progress"] == 100  # no going back
    assert_error(await progress(coordinator, job_id, "m1", m1, 101), 422, "validation_error")
    assert_error(await progress(coordinator, job_id, "m1", m1, -1), 422, "validation_error")
    assert_error(await progress(coordinator, job_id, "m2", m2, 60), 409, "not_lease_holder")
    assert_error(await progress(coordinator, "job_nope", "m1", m1, 60), 404)


async def test_complete_only_by_the_lease_holder_and_idempotent(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    m2 = await coordinator.new_miner("m2")
    job = await coordinator.submit(client)
    job_id = job["job_id"]

    assert_error(await complete(coordinator, job_id, "m1", m1), 409, "not_lease_holder")
    await claim_ok(coordinator, job_id, "m1", m1)
    assert_error(await complete(coordinator, job_id, "m2", m2), 409, "not_lease_holder")

    coordinator.clock.advance(4)
    usage = {"prompt_tokens": 3, "completion_tokens": 5}
    first = await complete(coordinator, job_id, "m1", m1, result="Hi!", usage=usage)
    receipt = ok(first)
    assert receipt["job_id"] == job_id
    assert receipt["usage"] == usage
    done = await get_job(coordinator, job_id, client)
    assert done["status"] == "completed"
    assert done["result"] == "Hi!"
    assert done["usage"] == usage
    assert done["progress"] == 100
    assert done["completed_at"] == "2026-02-13T10:00:04Z"

    coordinator.clock.advance(4)
    again = await complete(coordinator, job_id, "m1", m1, result="Hi!", usage=usage)
    # An identical re-send returns the very same receipt, byte for byte.
    assert again.status_code == 200 and again.content == first.content
    different = await complete(coordinator, job_id, "m1", m1, result="Bye!", usage=usage)
    assert_error(different, 409, "already_completed")
    assert_error(await complete(coordinator, job_id, "m2", m2, result="Hi!"), 409)

    stored = await get_job(coordinator, job_id, client)
    assert stored["result"] == "Hi!"
    assert stored["completed_at"] == "2026-02-13T10:00:04Z"
    assert_error(await coordinator.claim(job_id, "m2", m2), 409)
    bad = await coordinator.http.post(
        f"/v1/jobs/{job_id}/complete",
        json={"miner_id": "m1", "result": "x", "usage": {"prompt_tokens": -1}},
        headers=m1,
    )
    assert_error(bad, 422, "validation_error")


async def test_retryable_failure_requeues_until_attempts_run_out(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    miners = {name: await coordinator.new_miner(name) for name in ("m1", "m2", "m3", "m4")}
    job = await coordinator.submit(client)
    job_id = job["job_id"]

    for attempt, name in enumerate(("m1", "m2"), start=1):
        claimed = await claim_ok(coordinator, job_id, name, miners[name])
        assert claimed["attempts"] == attempt
        other = "m4"
        assert_error(
            await fail(coordinator, job_id, other, miners[other], retryable=True),
            409,
            "not_lease_holder",
        )
        requeued = ok(await fail(coordinator, job_id, name, miners[name], retryable=True))
        assert requeued["status"] == "pending"
        assert requeued["attempts"] == attempt
        assert requeued["miner_id"] is None
        assert requeued["started_at"] is None
        assert requeued["error"] == "CUDA out of memory"
        assert requeued["error_code"] == "miner_error"
        assert_error(await complete(coordinator, job_id, name, miners[name]), 409)
        offered = await poll(coordinator, "m3", miners["m3"])
        assert offered is not None and offered["job_id"] == job_id
        coordinator.runtime.dispatcher.release(job_id)

    await claim_ok(coordinator, job_id, "m3", miners["m3"])  # third and last attempt
    failed = ok(await fail(coordinator, job_id, "m3", miners["m3"], retryable=True))
    assert failed["status"] == "failed"
    assert failed["attempts"] == 3
    assert failed["completed_at"] is not None
    assert await poll(coordinator, "m4", miners["m4"]) is None
    assert_error(await fail(coordinator, job_id, "m3", miners["m3"], retryable=True), 409)


async def test_non_retryable_failure_fails_the_job(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    job = await coordinator.submit(client)
    await claim_ok(coordinator, job["job_id"], "m1", m1)
    failed = ok(
        await fail(coordinator, job["job_id"], "m1", m1, retryable=False, error="bad prompt")
    )
    assert failed["status"] == "failed"
    assert failed["error"] == "bad prompt"
    assert failed["error_code"] == "miner_error"
    assert failed["attempts"] == 1
    assert (await get_job(coordinator, job["job_id"], client))["status"] == "failed"
    assert_error(await complete(coordinator, job["job_id"], "m1", m1), 409)
    assert await poll(coordinator, "m1", m1) is None
    empty_error = await coordinator.http.post(
        f"/v1/jobs/{job['job_id']}/fail", json={"miner_id": "m1", "error": ""}, headers=m1
    )
    assert_error(empty_error, 422, "validation_error")


async def test_cpu_info_is_reported_and_shown_to_admins(coordinator: Coordinator) -> None:
    cpu = {"model": "Intel(R) Xeon(R) Processor", "cores": 2, "memory_gb": 23.5}
    await coordinator.new_miner("cpu-1", cpu_info=cpu)
    await coordinator.new_miner("gpu-1", gpu_info={"name": "A100", "memory": 80, "count": 1})
    listed = ok(await coordinator.http.get("/v1/admin/miners", headers=coordinator.admin_headers))
    by_id = {miner["miner_id"]: miner for miner in listed}
    assert by_id["cpu-1"]["cpu_info"] == cpu
    assert by_id["gpu-1"]["cpu_info"] is None
    bad = await coordinator.http.post(
        "/v1/miners/register",
        json={"miner_id": "cpu-2", "capabilities": ["m"], "cpu_info": {"cores": 0}},
    )
    assert_error(bad, 422)
