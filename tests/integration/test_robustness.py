"""Hostile or extreme input gets a 4xx in the contract's shape, never a 500; and racing
requests leave every job in one consistent state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import Coordinator
from tests.integration.helpers import assert_error, claim_ok, complete, get_job, ok, poll


@pytest.fixture
async def lenient_http(coordinator: Coordinator) -> AsyncIterator[httpx.AsyncClient]:
    """A client on the same app that returns 500 responses instead of raising, so a
    failure reads as the status the caller would see."""
    transport = httpx.ASGITransport(app=coordinator.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def test_history_up_to_the_last_date(
    coordinator: Coordinator, lenient_http: httpx.AsyncClient
) -> None:
    _client_id, client = await coordinator.new_client()
    job = await coordinator.submit(client)
    for start, end in (("2026-01-01", "9999-12-31"), ("0001-01-01", "2026-12-31")):
        response = await lenient_http.get(
            "/v1/jobs/history", params={"from": start, "to": end}, headers=client
        )
        assert response.status_code == 200, f"{start}..{end}: {response.text}"
        assert [j["job_id"] for j in response.json()["jobs"]] == [job["job_id"]]


async def test_huge_offsets_are_not_server_errors(
    coordinator: Coordinator, lenient_http: httpx.AsyncClient
) -> None:
    _client_id, client = await coordinator.new_client()
    await coordinator.submit(client)
    for path in ("/v1/jobs", "/v1/admin/jobs"):
        headers = client if path == "/v1/jobs" else coordinator.admin_headers
        for offset in (10**12, 2**63, 10**30):
            response = await lenient_http.get(path, params={"offset": offset}, headers=headers)
            assert response.status_code in (200, 422), f"{path} offset={offset}: {response.text}"
            if response.status_code == 200:
                assert response.json()["jobs"] == []
            else:
                assert_error(response, 422, "validation_error")


async def test_nul_characters_are_refused_not_500(
    coordinator: Coordinator, lenient_http: httpx.AsyncClient
) -> None:
    """PostgreSQL text cannot hold U+0000; the API must refuse it the same way on every
    backend rather than fail inside the database."""
    _client_id, client = await coordinator.new_client()
    for body in (
        {"prompt": "hi\u0000there"},
        {"input": "hi\u0000there"},
        {"prompt": "hi", "model": "smollm2\u0000"},
        {"prompt": "hi", "requirements": {"gpu_type": "a100\u0000"}},
    ):
        response = await lenient_http.post("/v1/jobs", json=body, headers=client)
        assert response.status_code in (400, 422), f"{body!r}: {response.text}"
        assert_error(response, response.status_code)

    upload = await lenient_http.post(
        "/v1/files", files={"file": ("nul.txt", b"before\x00after", "text/plain")}, headers=client
    )
    if upload.status_code == 201:
        response = await lenient_http.post(
            "/v1/jobs", json={"input": upload.json()["file_id"]}, headers=client
        )
        assert response.status_code in (400, 422), response.text
        assert_error(response, response.status_code)
    else:
        assert_error(upload, upload.status_code)
        assert upload.status_code in (400, 422), upload.text

    for path in ("/v1/jobs/job%00x", "/v1/jobs/job%00x/download"):
        response = await lenient_http.get(path, headers=client)
        assert response.status_code in (404, 422), f"{path}: {response.text}"
        assert_error(response, response.status_code)
    assert ok(await coordinator.http.get("/v1/jobs", headers=client))["total"] == 0


async def test_nul_characters_from_miners_are_refused_not_500(
    coordinator: Coordinator, lenient_http: httpx.AsyncClient
) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job_id = (await coordinator.submit(client))["job_id"]
    await claim_ok(coordinator, job_id, "m1", miner)
    for path, body in (
        (f"/v1/jobs/{job_id}/complete", {"miner_id": "m1", "result": "a\u0000b"}),
        (f"/v1/jobs/{job_id}/fail", {"miner_id": "m1", "error": "a\u0000b"}),
        ("/v1/miners/m1/heartbeat", {"running_jobs": [job_id, "job\u0000"]}),
    ):
        response = await lenient_http.post(path, json=body, headers=miner)
        assert response.status_code in (400, 422), f"{path}: {response.text}"
        assert_error(response, response.status_code)
    # The job is untouched and the miner can still deliver a proper result.
    assert (await get_job(coordinator, job_id, client))["status"] == "running"
    ok(await complete(coordinator, job_id, "m1", miner, result="ab"))


# --- races -----------------------------------------------------------------------------


async def test_cancel_racing_complete_has_one_winner(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    for _ in range(6):
        job = await coordinator.submit(client)
        job_id = job["job_id"]
        await claim_ok(coordinator, job_id, "m1", miner)
        cancel, done = await asyncio.gather(
            coordinator.http.delete(f"/v1/jobs/{job_id}", headers=client),
            complete(coordinator, job_id, "m1", miner, result="raced"),
        )
        assert sorted([cancel.status_code, done.status_code]) == [200, 409], (
            cancel.text,
            done.text,
        )
        final = await get_job(coordinator, job_id, client)
        if cancel.status_code == 200:
            assert final["status"] == "cancelled"
            assert final["result"] is None
        else:
            assert final["status"] == "completed"
            assert final["result"] == "raced"


async def test_concurrent_polls_get_distinct_jobs(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miners = {f"m{index}": await coordinator.new_miner(f"m{index}") for index in range(10)}
    submitted = {(await coordinator.submit(client))["job_id"] for _ in range(10)}
    offers = await asyncio.gather(
        *(poll(coordinator, miner_id, key) for miner_id, key in miners.items())
    )
    offered = [offer["job_id"] for offer in offers if offer is not None]
    assert len(offered) == 10, offers
    assert set(offered) == submitted
    claims = await asyncio.gather(
        *(
            coordinator.claim(offer["job_id"], miner_id, miners[miner_id])
            for miner_id, offer in zip(miners, offers, strict=True)
            if offer is not None
        )
    )
    assert [response.status_code for response in claims] == [200] * 10


async def test_waiting_miners_each_get_one_new_job(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miners = {f"m{index}": await coordinator.new_miner(f"m{index}") for index in range(4)}
    waiting = [
        asyncio.create_task(poll(coordinator, miner_id, key, wait=10))
        for miner_id, key in miners.items()
    ]
    await asyncio.sleep(0.05)
    submitted = {(await coordinator.submit(client))["job_id"] for _ in range(4)}
    offers = await asyncio.wait_for(asyncio.gather(*waiting), timeout=5)
    assert {offer["job_id"] for offer in offers if offer is not None} == submitted


# --- found by fuzzing (schemathesis and hand-made requests) ------------------------------


async def test_deeply_nested_json_is_refused_not_500(
    coordinator: Coordinator, lenient_http: httpx.AsyncClient
) -> None:
    _client_id, client = await coordinator.new_client()
    nested = '{"zz":' + "[" * 400 + "]" * 400 + "}"
    for path, headers in (("/v1/clients/register", {}), ("/v1/jobs", client)):
        response = await lenient_http.post(
            path, content=nested, headers={**headers, "content-type": "application/json"}
        )
        assert 400 <= response.status_code < 500, f"{path}: {response.text}"
        assert_error(response, response.status_code)


async def test_lone_surrogates_are_refused_not_500(
    coordinator: Coordinator, lenient_http: httpx.AsyncClient
) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job_id = (await coordinator.submit(client))["job_id"]
    await claim_ok(coordinator, job_id, "m1", miner)
    for path, body in (
        ("/v1/miners/m1/heartbeat", '{"running_jobs": ["\\ud800"]}'),
        (f"/v1/jobs/{job_id}/complete", '{"miner_id": "m1", "result": "\\ud800"}'),
        ("/v1/jobs", '{"prompt": "a\\udfffb"}'),
    ):
        headers = client if path == "/v1/jobs" else miner
        response = await lenient_http.post(
            path, content=body, headers={**headers, "content-type": "application/json"}
        )
        assert response.status_code == 422, f"{path}: {response.text}"
        assert_error(response, 422, "validation_error")
    assert (await get_job(coordinator, job_id, client))["status"] == "running"


async def test_absurd_gpu_memory_is_refused_and_admin_listing_survives(
    coordinator: Coordinator, lenient_http: httpx.AsyncClient
) -> None:
    for memory in ("9" * 400, "9" * 306 + "T"):
        response = await lenient_http.post(
            "/v1/miners/register",
            json={
                "miner_id": "x",
                "capabilities": ["m"],
                "gpu_info": {"name": "g", "memory": memory},
            },
        )
        assert_error(response, 422, "validation_error")
    listing = await lenient_http.get("/v1/admin/miners", headers=coordinator.admin_headers)
    assert listing.status_code == 200, listing.text


async def test_openapi_documents_the_error_shape(coordinator: Coordinator) -> None:
    spec = (await coordinator.http.get("/openapi.json")).json()
    submit = spec["paths"]["/v1/jobs"]["post"]["responses"]
    assert submit["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "4XX" in submit


async def test_concurrent_registrations_of_one_miner_id_have_one_winner(
    coordinator: Coordinator, lenient_http: httpx.AsyncClient
) -> None:
    payload = {"miner_id": "twin", "capabilities": ["smollm2-135m"]}
    responses = await asyncio.gather(
        *(lenient_http.post("/v1/miners/register", json=payload) for _ in range(10))
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * 9, [response.text for response in responses]
    for response in responses:
        if response.status_code == 409:
            assert_error(response, 409, "miner_exists")
