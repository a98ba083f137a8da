"""``aitbc.AsyncClient`` against the coordinator app on both databases: jobs (submit,
page through, wait with progress, stream, cancel, receipts verified offline),
balances and transfers, models, the miner's calls and the admin's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

import aitbc
from aitbc.domain.jobs import JobStatus
from aitbc.sdk import Conflict, InsufficientFunds, NotFound, VerificationFailed
from tests.conftest import ADMIN_KEY, Coordinator


def async_client(coordinator: Coordinator, key: str | None) -> aitbc.AsyncClient:
    return aitbc.AsyncClient(
        "http://testserver",
        api_key=key,
        http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=coordinator.app)),
        max_retries=0,
    )


@pytest.fixture
async def client(coordinator: Coordinator) -> AsyncIterator[aitbc.AsyncClient]:
    _client_id, headers = await coordinator.new_client()
    async with async_client(coordinator, headers["X-Api-Key"]) as sdk:
        yield sdk


async def test_jobs_from_submit_to_a_verified_receipt(
    coordinator: Coordinator, client: aitbc.AsyncClient
) -> None:
    miner_headers = await coordinator.new_miner("m1", price=0.02)
    miner = async_client(coordinator, miner_headers["X-Api-Key"])
    job = await client.jobs.submit("Say hello", max_tokens=4, temperature=0)
    assert job.status is JobStatus.PENDING and job.params["max_tokens"] == 4
    changes: list[tuple[str, int]] = []
    first_seen = asyncio.Event()

    def on_progress(seen: aitbc.sdk.client.Job) -> None:
        changes.append((seen.status.value, seen.progress))
        first_seen.set()

    async def run_miner() -> None:
        offered = await miner.miners.poll("m1", wait=1)
        assert offered is not None and offered.job_id == job.job_id
        await miner.miners.claim(job.job_id, "m1")
        with pytest.raises(Conflict):
            await miner.miners.claim(job.job_id, "m1")
        await asyncio.sleep(0.05)
        await miner.miners.complete(
            job.job_id,
            {
                "miner_id": "m1",
                "result": "Hello!",
                "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            },
        )

    waiter = asyncio.create_task(
        client.jobs.wait(
            job.job_id,
            poll_seconds=0.01,
            on_progress=on_progress,
        )
    )
    await first_seen.wait()  # the waiter saw the job pending first
    await run_miner()
    done = await waiter
    assert done.status is JobStatus.COMPLETED and done.result == "Hello!"
    assert changes[0] == ("pending", 0) and changes[-1] == ("completed", 100)
    text = "".join([piece async for piece in client.jobs.stream(job.job_id)])
    assert text == "Hello!"
    receipt = await client.jobs.receipt(job.job_id)
    assert receipt == await client.receipts.get(receipt["receipt_id"])
    keys = await client.receipts.keys()
    verified = client.receipts.verify(receipt, keys, result="Hello!")
    assert verified.receipt["price"] == receipt["price"]
    with pytest.raises(VerificationFailed):
        client.receipts.verify(receipt, keys, result="Goodbye")
    assert [r["receipt_id"] for r in await client.receipts.list()] == [receipt["receipt_id"]]
    await miner.close()


async def test_pages_iterate_every_job_and_cancel_refunds(
    coordinator: Coordinator, client: aitbc.AsyncClient
) -> None:
    submitted = []
    for n in range(5):
        submitted.append((await client.jobs.submit(f"job {n}")).job_id)
        coordinator.clock.advance(1)  # newest first is then submission order, reversed
    page = await client.jobs.list(limit=2)
    assert page.total == 5 and page.has_more and len(page.jobs) == 2
    every = [job.job_id async for job in client.jobs.iter(page_size=2)]
    assert every == list(reversed(submitted))
    before = await client.accounts.me()
    assert before.held > 0
    cancelled = await client.jobs.cancel(submitted[0])
    assert cancelled.status is JobStatus.CANCELLED
    with pytest.raises(Conflict) as again:
        await client.jobs.cancel(submitted[0])
    assert again.value.status == 409
    after = await client.accounts.me()
    assert after.balance > before.balance and after.held < before.held
    with pytest.raises(NotFound) as missing:
        await client.jobs.get("job_" + "0" * 32)
    assert missing.value.error_code == "job_not_found"


async def test_balances_transfers_models_and_the_admins_calls(
    coordinator: Coordinator, client: aitbc.AsyncClient
) -> None:
    await coordinator.new_miner("m1", price=0.03)
    coordinator.runtime.estimates.invalidate()
    assert [(m["id"], m["price"]) for m in await client.models.list()] == [("smollm2-135m", 0.03)]
    me = await client.accounts.me()
    sent = await client.accounts.transfer("m1", "1.5", nonce=1)
    assert sent["type"] == "transfer" and sent["amount"] == 1.5
    with pytest.raises(Conflict):
        await client.accounts.transfer("m1", "1.5", nonce=1)
    with pytest.raises(InsufficientFunds):
        await client.accounts.transfer("m1", me.balance, nonce=2)
    assert (await client.accounts.get("m1")).balance == 1.5
    async with async_client(coordinator, ADMIN_KEY) as admin:
        minted = await admin.admin.mint("m1", 2)
        assert minted["type"] == "mint"
        assert (await client.accounts.get("m1")).balance == 3.5
        assert [m.miner_id for m in await admin.admin.miners()] == ["m1"]
        assert (await admin.admin.stats()).model_dump()["total_jobs"] == 0


async def test_a_stream_reconnects_with_last_event_id_after_a_broken_connection(
    coordinator: Coordinator, client: aitbc.AsyncClient
) -> None:
    """The first connection breaks after one event; the client resumes after it."""
    miner_headers = await coordinator.new_miner("m1")
    job = await client.jobs.submit("Say hello")
    claimed = await coordinator.claim(job.job_id, "m1", miner_headers)
    assert claimed.status_code == 200
    for offset, piece in ((0, "Hel"), (3, "lo")):
        response = await coordinator.http.post(
            f"/v1/jobs/{job.job_id}/progress",
            json={"miner_id": "m1", "progress": 50, "offset": offset, "delta": piece},
            headers=miner_headers,
        )
        assert response.status_code == 200
    await coordinator.http.post(
        f"/v1/jobs/{job.job_id}/complete",
        json={
            "miner_id": "m1",
            "result": "Hello",
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        },
        headers=miner_headers,
    )
    asgi = httpx.ASGITransport(app=coordinator.app)
    asked: list[str | None] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("last-event-id"))
        response = await asgi.handle_async_request(request)
        if len(asked) == 1:  # the first connection dies after its first event
            body = await response.aread()
            first = body.split(b"\n\n")[0] + b"\n\n"
            return httpx.Response(200, headers=response.headers, stream=_Broken(first))
        return response

    flaky = aitbc.AsyncClient(
        "http://testserver",
        api_key=client.api_key,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        max_retries=1,
    )
    async with flaky:
        events = [event async for event in flaky.stream_events(job.job_id)]
    assert asked == [None, "1:3"]
    assert [(e.name, e.data.get("text")) for e in events] == [
        ("token", "Hel"),
        ("token", "lo"),
        ("end", None),
    ]


class _Broken(httpx.AsyncByteStream):
    """A body that sends ``first`` and then loses the connection."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.first
        raise httpx.ReadError("connection lost")
