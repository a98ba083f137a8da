"""Job streams: the text a miner reports with its progress, served as Server-Sent
Events from ``GET /v1/jobs/{job_id}/stream`` (DESIGN.md section 9), on both databases."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.conftest import Coordinator
from tests.integration.helpers import (
    assert_error,
    claim_ok,
    complete,
    fail,
    ok,
    progress,
    running_job,
)

LEASE_SECONDS = 30


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"lease_seconds": LEASE_SECONDS, "max_attempts": 3}


def parse_sse(body: str) -> list[dict[str, Any]]:
    """Events of an SSE body as ``{"event", "id", "data"}`` (data parsed as JSON);
    comment lines are skipped."""
    events: list[dict[str, Any]] = []
    for block in body.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


def text_of(events: list[dict[str, Any]]) -> str:
    """The output a reader assembles: tokens appended, a reset starting again."""
    text = ""
    for event in events:
        if event["event"] == "reset":
            text = ""
        elif event["event"] == "token":
            assert event["data"]["offset"] == len(text), events
            text += event["data"]["text"]
    return text


async def report(
    coordinator: Coordinator,
    job_id: str,
    miner_id: str,
    headers: dict[str, str],
    offset: int,
    delta: str,
) -> httpx.Response:
    return await progress(coordinator, job_id, miner_id, headers, 10, (offset, delta))


async def read_stream(
    coordinator: Coordinator, job_id: str, headers: dict[str, str], last_event_id: str | None = None
) -> list[dict[str, Any]]:
    extra = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    response = await coordinator.http.get(f"/v1/jobs/{job_id}/stream", headers={**headers, **extra})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.text)


async def settle() -> None:
    """Let readers woken by the last commit run."""
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_a_stream_replays_every_piece_then_the_end_with_the_receipt(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job_id = (await running_job(coordinator, client, "m1", miner))["job_id"]

    acks = [
        ok(await report(coordinator, job_id, "m1", miner, 0, "Hel")),
        ok(await report(coordinator, job_id, "m1", miner, 3, "lo, wör")),
    ]
    assert [ack["streamed"] for ack in acks] == [3, 10]
    receipt = ok(await complete(coordinator, job_id, "m1", miner, result="Hello, wörld!"))

    events = await read_stream(coordinator, job_id, client)
    assert [event["event"] for event in events] == ["token", "token", "token", "end"]
    assert [event["id"] for event in events] == ["1:3", "1:10", "1:13", "end"]
    assert text_of(events) == "Hello, wörld!"
    end = events[-1]["data"]
    assert end["status"] == "completed"
    assert end["receipt_id"] == receipt["receipt_id"]
    assert end["price"] == receipt["price"]
    assert end["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert end["error"] is None


async def test_last_event_id_resumes_with_exactly_the_missing_characters(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job_id = (await running_job(coordinator, client, "m1", miner))["job_id"]
    for offset, piece in ((0, "one "), (4, "two "), (8, "three")):
        ok(await report(coordinator, job_id, "m1", miner, offset, piece))
    ok(await complete(coordinator, job_id, "m1", miner, result="one two three"))

    whole = await read_stream(coordinator, job_id, client)
    for cut, event in enumerate(whole[:-1]):
        resumed = await read_stream(coordinator, job_id, client, last_event_id=event["id"])
        assert resumed == whole[cut + 1 :]
    # An id inside a piece (a reader that kept less) gets the rest of that piece.
    inside = await read_stream(coordinator, job_id, client, last_event_id="1:6")
    assert inside[0]["data"] == {"text": "o ", "offset": 6}
    assert "one tw" + "".join(e["data"]["text"] for e in inside[:-1]) == "one two three"
    # After the end: only the end again (what an EventSource reconnecting gets).
    again = await read_stream(coordinator, job_id, client, last_event_id="end")
    assert [event["event"] for event in again] == ["end"]
    bad = await coordinator.http.get(
        f"/v1/jobs/{job_id}/stream", headers={**client, "Last-Event-ID": "banana"}
    )
    assert_error(bad, 400, "invalid_last_event_id")


async def test_reports_sent_twice_are_taken_once_and_a_gap_says_where_to_resume(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job_id = (await running_job(coordinator, client, "m1", miner))["job_id"]
    assert ok(await report(coordinator, job_id, "m1", miner, 0, "abc"))["streamed"] == 3
    # The same report again (its answer was lost), then one overlapping it.
    assert ok(await report(coordinator, job_id, "m1", miner, 0, "abc"))["streamed"] == 3
    assert ok(await report(coordinator, job_id, "m1", miner, 1, "bcdef"))["streamed"] == 6
    gap = assert_error(await report(coordinator, job_id, "m1", miner, 9, "xyz"), 409, "stream_gap")
    assert "6" in gap["detail"]
    # A plain progress report (no text) still answers with what is held.
    plain = await coordinator.http.post(
        f"/v1/jobs/{job_id}/progress", json={"miner_id": "m1", "progress": 50}, headers=miner
    )
    assert ok(plain)["streamed"] == 6
    half = await coordinator.http.post(
        f"/v1/jobs/{job_id}/progress",
        json={"miner_id": "m1", "progress": 50, "delta": "x"},
        headers=miner,
    )
    assert_error(half, 422)
    ok(await complete(coordinator, job_id, "m1", miner, result="abcdef"))
    assert text_of(await read_stream(coordinator, job_id, client)) == "abcdef"


async def test_readers_following_a_live_job_each_get_the_whole_stream(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job_id = (await running_job(coordinator, client, "m1", miner))["job_id"]
    readers = [asyncio.create_task(read_stream(coordinator, job_id, client)) for _ in range(3)]
    await settle()
    assert coordinator.runtime.streams.readers(job_id) == 3
    text = ""
    for piece in ("The", " quick", " brown", " fox"):
        ok(await report(coordinator, job_id, "m1", miner, len(text), piece))
        text += piece
        await settle()
    ok(await complete(coordinator, job_id, "m1", miner, result=text + "."))
    for events in await asyncio.gather(*readers):
        assert text_of(events) == "The quick brown fox."
        tokens = [event["data"]["text"] for event in events if event["event"] == "token"]
        # Each piece as it came (woken by each report), then the result's last dot.
        assert tokens == ["The", " quick", " brown", " fox", "."]
        assert events[-1]["event"] == "end"
    assert coordinator.runtime.streams.readers(job_id) == 0


async def test_a_requeued_job_voids_the_text_of_its_earlier_attempt(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    m2 = await coordinator.new_miner("m2")
    job_id = (await running_job(coordinator, client, "m1", m1))["job_id"]
    reader = asyncio.create_task(read_stream(coordinator, job_id, client))
    await settle()
    ok(await report(coordinator, job_id, "m1", m1, 0, "first try"))
    await settle()
    ok(await fail(coordinator, job_id, "m1", m1, retryable=True))
    await claim_ok(coordinator, job_id, "m2", m2)
    # The new attempt starts at character 0 (the old one's text is not its own).
    assert ok(await report(coordinator, job_id, "m2", m2, 0, "second"))["streamed"] == 6
    await settle()
    ok(await complete(coordinator, job_id, "m2", m2, result="second try"))
    events = await reader
    kinds = [event["event"] for event in events]
    assert kinds[:2] == ["token", "reset"], events
    assert events[1]["data"] == {"attempt": 2}
    assert text_of(events) == "second try"
    # A reader coming later sees only the attempt that counted.
    late = await read_stream(coordinator, job_id, client)
    assert [event["event"] for event in late] == ["token", "token", "end"]
    assert text_of(late) == "second try"
    # Resuming from the old attempt's id: void it, then the new attempt whole.
    resumed = await read_stream(coordinator, job_id, client, last_event_id="1:9")
    assert resumed[0]["event"] == "reset"
    assert text_of(resumed) == "second try"


async def test_a_stream_that_is_not_the_result_is_replaced_by_it(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job_id = (await running_job(coordinator, client, "m1", miner))["job_id"]
    ok(await report(coordinator, job_id, "m1", miner, 0, "Hello wor"))
    ok(await complete(coordinator, job_id, "m1", miner, result="Hi there"))
    events = await read_stream(coordinator, job_id, client)
    assert [event["event"] for event in events] == ["token", "reset", "token", "end"]
    assert text_of(events) == "Hi there"


async def test_a_job_whose_miner_streamed_nothing_streams_its_result_whole(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job_id = (await running_job(coordinator, client, "m1", miner))["job_id"]
    ok(await complete(coordinator, job_id, "m1", miner, result="All at once"))
    events = await read_stream(coordinator, job_id, client)
    assert [event["event"] for event in events] == ["token", "end"]
    assert events[0]["data"] == {"text": "All at once", "offset": 0}


async def test_a_cancelled_job_ends_its_stream_with_the_reason(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job_id = (await running_job(coordinator, client, "m1", miner))["job_id"]
    reader = asyncio.create_task(read_stream(coordinator, job_id, client))
    await settle()
    ok(await report(coordinator, job_id, "m1", miner, 0, "Once upon"))
    await settle()
    ok(await coordinator.http.post(f"/v1/jobs/{job_id}/cancel", headers=client))
    events = await asyncio.wait_for(reader, 5)
    assert text_of(events) == "Once upon"
    end = events[-1]
    assert end["event"] == "end"
    assert end["data"]["status"] == "cancelled"
    assert end["data"]["error_code"] == "cancelled"
    assert end["data"]["receipt_id"] is None and end["data"]["usage"] is None


async def test_only_the_jobs_client_and_admins_may_read_its_stream(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    _other_id, other = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job_id = (await running_job(coordinator, client, "m1", miner))["job_id"]
    ok(await report(coordinator, job_id, "m1", miner, 0, "secret"))
    ok(await complete(coordinator, job_id, "m1", miner, result="secret"))
    assert_error(await coordinator.http.get(f"/v1/jobs/{job_id}/stream", headers=other), 404)
    assert_error(await coordinator.http.get(f"/v1/jobs/{job_id}/stream", headers=miner), 403)
    assert_error(await coordinator.http.get(f"/v1/jobs/{job_id}/stream"), 401)
    assert_error(
        await coordinator.http.get("/v1/jobs/job_doesnotexist/stream", headers=client), 404
    )
    admin = await read_stream(coordinator, job_id, coordinator.admin_headers)
    assert text_of(admin) == "secret"
