"""``/ws`` (DESIGN.md section 8) through a real uvicorn server on the test's app, on
both databases: a job's whole event sequence in order, who sees what, resumption
with ``since`` (exact: no gap, no duplicate, and a clear error for what is gone),
no event for a change that rolled back, a slow consumer dropped (1013) without
delaying another, and the protocol's errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Connection
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as connect_sync

from aitbc.api.routers import events as events_router
from aitbc.domain.events import Channel, Viewer
from aitbc.services import ledger
from aitbc.services.events import heartbeat_event
from aitbc.storage import event_queries
from aitbc.storage.db import transaction
from tests.conftest import ADMIN_KEY, Coordinator
from tests.integration.helpers import claim_ok, complete, heartbeat, ok, progress, sweep
from tests.ws_client import EventSocket, event_socket, serve_in_loop

MINER = "miner-events"


@pytest.fixture
async def ws_url(coordinator: Coordinator) -> AsyncIterator[str]:
    async with serve_in_loop(coordinator.app) as base:
        yield base + "/ws"


def _key(headers: dict[str, str]) -> str:
    return headers["X-Api-Key"]


async def _job_sequence(
    coordinator: Coordinator, client: dict[str, str], miner: dict[str, str]
) -> str:
    job = await coordinator.submit(client)
    job_id: str = job["job_id"]
    await claim_ok(coordinator, job_id, MINER, miner)
    await progress(coordinator, job_id, MINER, miner, 50)
    ok(await complete(coordinator, job_id, MINER, miner))
    return job_id


async def _fence(coordinator: Coordinator, *sockets: EventSocket) -> None:
    """A public event every socket given must receive: everything committed before it
    was delivered before it (one offset order), so what a socket has not received by
    then it never will."""
    await heartbeat(coordinator, MINER, coordinator.miner_headers)  # type: ignore[attr-defined]
    for ws in sockets:
        await ws.events_until(lambda event: event["channel"] == "miner_heartbeats")


@pytest.fixture
async def miner(coordinator: Coordinator) -> dict[str, str]:
    headers = await coordinator.new_miner(MINER)
    coordinator.miner_headers = headers  # type: ignore[attr-defined]
    return headers


async def test_a_jobs_events_arrive_in_order_from_submit_to_receipt(
    coordinator: Coordinator, ws_url: str, miner: dict[str, str]
) -> None:
    client_id, client = await coordinator.new_client()
    async with event_socket(ws_url, _key(client)) as ws:
        result = await ws.subscribe("job_updates", "receipts")
        assert result["subscribed"] == ["job_updates", "receipts"]
        assert set(result["seq"]) == {"job_updates", "receipts"}
        job_id = await _job_sequence(coordinator, client, miner)
        received = await ws.events_until(lambda event: event["channel"] == "receipts")
    assert [event["type"] for event in received] == [
        "job.pending",
        "job.running",
        "job.progress",
        "job.completed",
        "receipt.issued",
    ]
    sequence = [event["seq"] for event in received]
    assert sequence == sorted(sequence) and len(set(sequence)) == len(sequence)
    assert all(event["seq"] > result["seq"]["job_updates"] for event in received)
    jobs = [event["data"] for event in received[:4]]
    assert {data["job_id"] for data in jobs} == {job_id}
    assert [data["status"] for data in jobs] == ["pending", "running", "running", "completed"]
    assert jobs[1]["miner_id"] == MINER and jobs[2]["progress"] == 50
    assert all(data["client_id"] == client_id for data in jobs)
    receipt = received[4]["data"]
    assert jobs[3]["receipt_id"] == receipt["receipt_id"]
    assert jobs[3]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2}
    # The receipts channel carries the explorer's public summary, nothing private.
    (summary,) = ok(await coordinator.http.get("/v1/explorer/receipts"))
    assert receipt == summary
    assert all("prompt" not in data and "result" not in data for data in jobs)


async def test_clients_and_a_miner_see_only_their_own_jobs_and_admins_all(
    coordinator: Coordinator, ws_url: str, miner: dict[str, str]
) -> None:
    _a, client_a = await coordinator.new_client()
    _b, client_b = await coordinator.new_client()
    other_miner = await coordinator.new_miner("miner-other")
    async with (
        event_socket(ws_url, _key(client_a)) as ws_a,
        event_socket(ws_url, _key(client_b)) as ws_b,
        event_socket(ws_url, _key(miner)) as ws_miner,
        event_socket(ws_url, _key(other_miner)) as ws_other,
        event_socket(ws_url, ADMIN_KEY) as ws_admin,
    ):
        everyone = (ws_a, ws_b, ws_miner, ws_other, ws_admin)
        for ws in everyone:
            await ws.subscribe("job_updates", "miner_heartbeats")
        job_id = await _job_sequence(coordinator, client_a, miner)
        await _fence(coordinator, *everyone)
    seen = {
        name: [
            event["type"]
            for event in ws.history
            if event["channel"] == "job_updates" and event["data"]["job_id"] == job_id
        ]
        for name, ws in zip(("a", "b", "miner", "other", "admin"), everyone, strict=True)
    }
    assert seen["b"] == [] and seen["other"] == []
    assert (
        seen["a"]
        == seen["admin"]
        == ["job.pending", "job.running", "job.progress", "job.completed"]
    )
    # The miner sees the job from its claim on.
    assert seen["miner"] == ["job.running", "job.progress", "job.completed"]


async def test_resuming_with_since_gives_exactly_the_missed_events(
    coordinator: Coordinator, ws_url: str, miner: dict[str, str]
) -> None:
    _client_id, client = await coordinator.new_client()
    async with event_socket(ws_url, ADMIN_KEY) as watcher:
        await watcher.subscribe("job_updates")
        async with event_socket(ws_url, _key(client)) as first:
            await first.subscribe("job_updates")
            await _job_sequence(coordinator, client, miner)
            before = await first.events_until(lambda event: event["type"] == "job.completed")
        last_seen = before[-1]["seq"]
        # Disconnected: two more jobs, one of them only submitted.
        await _job_sequence(coordinator, client, miner)
        await coordinator.submit(client)
        everything = await watcher.events_until(
            lambda event: event["type"] == "job.pending" and event["seq"] > last_seen + 4
        )
        missed = [event for event in everything if event["seq"] > last_seen]
        assert len(missed) == 5
        async with event_socket(ws_url, _key(client)) as again:
            result = await again.subscribe("job_updates", since={"job_updates": last_seen})
            assert result["seq"] == {"job_updates": last_seen}
            replayed = [await again.next_event() for _ in missed]
            # Live again after the replay: the next event follows without a gap.
            job = await coordinator.submit(client)
            live = await again.next_event()
        assert replayed == missed
        assert live["data"]["job_id"] == job["job_id"] and live["seq"] > missed[-1]["seq"]


async def test_a_since_that_is_gone_or_unknown_is_a_clear_error(
    coordinator: Coordinator, ws_url: str, miner: dict[str, str]
) -> None:
    _client_id, client = await coordinator.new_client()
    await _job_sequence(coordinator, client, miner)
    retention = coordinator.runtime.settings.event_retention_seconds
    coordinator.clock.advance(retention + 10)
    counts = await sweep(coordinator)
    assert counts["events_pruned"] >= 4
    async with event_socket(ws_url, _key(client)) as ws:
        gone = await ws.request("subscribe", ["job_updates"], since={"job_updates": 0})
        assert gone["error"]["code"] == "since_expired", gone
        future = await ws.request("subscribe", ["blocks"], since={"blocks": 10**9})
        assert future["error"]["code"] == "since_unknown", future
        # A refused subscribe subscribed nothing; a valid one still works.
        assert (await ws.subscribe("blocks"))["subscribed"] == ["blocks"]


async def test_no_event_for_a_change_that_rolled_back(
    coordinator: Coordinator, ws_url: str, miner: dict[str, str]
) -> None:
    class Abort(Exception):
        pass

    def append_then_fail(connection: Connection) -> None:
        event_queries.append(
            connection, [heartbeat_event("ghost", "online", None, 0, coordinator.clock())]
        )
        raise Abort

    _client_id, client = await coordinator.new_client()
    async with event_socket(ws_url, ADMIN_KEY) as ws:
        await ws.subscribe("miner_heartbeats", "job_updates")
        with pytest.raises(Abort):
            await transaction(coordinator.runtime.engine, append_then_fail)
        coordinator.runtime.events.committed()
        # A job its client cannot cover: the submit rolls back (402), so no job.pending.
        refused = await coordinator.http.post(
            "/v1/jobs",
            json={"prompt": "Say hello", "model": "smollm2-135m", "max_price": 100_000_000},
            headers=client,
        )
        assert refused.status_code == 402, refused.text
        await _fence(coordinator, ws)
    assert [(event["channel"], event["data"]["miner_id"]) for event in ws.history] == [
        ("miner_heartbeats", MINER)
    ]


class _Consumer(threading.Thread):
    """A subscriber to ``miner_heartbeats`` on a thread of its own (as a consumer in
    another process would be, not on the server's event loop). ``paused``: it stops
    reading after the acknowledgement until :attr:`resume` is set."""

    def __init__(self, url: str, expect: int, paused: bool = False, **options: Any) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.expect = expect
        self.paused = paused
        self.options = options
        self.subscribed = threading.Event()
        self.resume = threading.Event()
        self.received: list[tuple[float, Any]] = []
        self.close_code: int | None = None

    def run(self) -> None:
        with connect_sync(self.url, **self.options) as connection:
            request = {"method": "subscribe", "params": ["miner_heartbeats"], "id": 1}
            connection.send(json.dumps(request))
            assert "result" in json.loads(connection.recv(timeout=10))
            self.subscribed.set()
            if self.paused:
                self.resume.wait(60)
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                while len(self.received) < self.expect:
                    event = json.loads(connection.recv(timeout=20))
                    self.received.append((time.monotonic(), event))
            received = connection.protocol.close_rcvd
            self.close_code = None if received is None else received.code


async def _started(consumer: _Consumer) -> None:
    consumer.start()
    assert await asyncio.to_thread(consumer.subscribed.wait, 10)


class _StalledConsumer:
    """A raw WebSocket client that subscribes and then stops reading its socket (a
    small receive buffer, so the server's side fills soon)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, port))
        self.sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n" % (host.encode(), port)
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        payload = json.dumps({"method": "subscribe", "params": ["miner_heartbeats"], "id": 1})
        mask = b"\x01\x02\x03\x04"
        data = payload.encode()
        assert len(data) < 126
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(data))
        self.sock.sendall(bytes([0x81, 0x80 | len(data)]) + mask + masked)

    def read_until_closed(self) -> tuple[int, int | None]:
        """Read everything the server sends: (text frames, the close code)."""
        self.sock.settimeout(20)
        frames = 0
        while True:
            while True:
                parsed = _frame(self.buffer)
                if parsed is None:
                    break
                opcode, body, self.buffer = parsed
                if opcode == 0x8:
                    return frames, int.from_bytes(body[:2], "big") if body else None
                frames += opcode == 0x1
            chunk = self.sock.recv(65536)
            if not chunk:
                return frames, None
            self.buffer += chunk


def _frame(buffer: bytes) -> tuple[int, bytes, bytes] | None:
    """One unmasked server frame off ``buffer``: (opcode, payload, rest), or None."""
    if len(buffer) < 2:
        return None
    length, offset = buffer[1] & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        length, offset = int.from_bytes(buffer[2:4], "big"), 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        length, offset = int.from_bytes(buffer[2:10], "big"), 10
    if len(buffer) < offset + length:
        return None
    return buffer[0] & 0x0F, buffer[offset : offset + length], buffer[offset + length :]


async def test_a_slow_consumer_is_dropped_without_delaying_another(
    coordinator: Coordinator, ws_url: str
) -> None:
    # Events of 10 kB (a block listing many transactions is that large): enough to
    # fill the socket buffers, megabytes, of a consumer that stopped reading.
    batches, per_batch = 40, 20
    total = batches * per_batch
    padding = "x" * 10_000
    runtime = coordinator.runtime
    runtime.settings.ws_max_queued_events = 50
    host, port = ws_url.removeprefix("ws://").split("/")[0].split(":")
    slow = await asyncio.to_thread(_StalledConsumer, host, int(port))
    fast = _Consumer(ws_url, total)
    try:
        await _started(fast)
        for _ in range(1000):  # the stalled one's subscribe is taken
            if runtime.events.connections == 2 and all(
                subscriber.channels for subscriber in runtime.events._subscribers
            ):
                break
            await asyncio.sleep(0.01)
        sent_at: dict[str, float] = {}

        def beats(connection: Connection, batch: int) -> None:
            now = coordinator.clock()
            beat = heartbeat_event("m", "online", None, 0, now)
            event_queries.append(
                connection,
                [
                    beat._replace(
                        data=json.dumps({"miner_id": f"m{batch}-{index}", "padding": padding})
                    )
                    for index in range(per_batch)
                ],
            )

        for batch in range(batches):
            await transaction(runtime.engine, beats, batch)
            runtime.events.committed()
            for index in range(per_batch):
                sent_at[f"m{batch}-{index}"] = time.monotonic()
            await asyncio.sleep(0.005)
        await asyncio.to_thread(fast.join, 30)
        names = [event["data"]["miner_id"] for _at, event in fast.received]
        assert names == list(sent_at)
        delays = sorted(at - sent_at[event["data"]["miner_id"]] for at, event in fast.received)
        assert delays[len(delays) // 2] < 1.0, delays[len(delays) // 2]
        assert runtime.events.dropped == 1
        # Reading again, the stalled consumer finds the connection closed with 1013.
        frames, code = await asyncio.to_thread(slow.read_until_closed)
        assert code == events_router.SLOW_CONSUMER_CLOSE_CODE == 1013
        assert frames < total
    finally:
        slow.sock.close()


async def test_protocol_errors_are_replies_not_broken_connections(
    coordinator: Coordinator, ws_url: str, miner: dict[str, str]
) -> None:
    _client_id, client = await coordinator.new_client()
    async with event_socket(ws_url) as ws:
        await ws.send("not json")
        await ws.send(json.dumps([1, 2]))
        await asyncio.sleep(0.2)
        assert [reply["error"]["code"] for reply in ws.unsolicited] == [
            "invalid_message",
            "invalid_message",
        ]
        assert (await ws.request("dance"))["error"]["code"] == "unknown_method"
        assert (await ws.request("subscribe", ["nope"]))["error"]["code"] == "unknown_channel"
        assert (await ws.request("subscribe", []))["error"]["code"] == "invalid_params"
        unauthorized = await ws.request("subscribe", ["job_updates", "blocks"])
        assert unauthorized["error"]["code"] == "unauthorized"
        bad_since = await ws.request("subscribe", ["blocks"], since={"blocks": -1})
        assert bad_since["error"]["code"] == "invalid_params"
        wrong_key = await ws.request("auth", {"api_key": "nope"})
        assert wrong_key["error"]["code"] == "invalid_api_key"
        assert (await ws.request("ping"))["result"] == {"pong": True}
        # Browsers cannot set headers: a first auth message does it.
        authed = await ws.request("auth", {"api_key": _key(client)})
        assert authed["result"] == {"authenticated": True, "role": "client"}
        assert (await ws.request("auth", {"api_key": _key(client)}))["error"]["code"] == (
            "already_authenticated"
        )
        assert (await ws.subscribe("job_updates", "blocks"))["subscribed"] == [
            "job_updates",
            "blocks",
        ]
        left = await ws.request("unsubscribe", ["blocks"])
        assert left["result"] == {"subscribed": ["job_updates"]}
        job = await coordinator.submit(client)
        event = await ws.next_event()
        assert event["data"]["job_id"] == job["job_id"]


async def test_an_unknown_key_in_the_header_closes_with_1008(ws_url: str) -> None:
    async with event_socket(ws_url, "not-a-key") as ws:
        assert await ws.closed_with() == 1008
    assert [reply["error"]["code"] for reply in ws.unsolicited] == ["invalid_api_key"]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"ws_idle_seconds": 1.0}


async def test_an_idle_connection_is_closed_and_a_revoked_key_ends_one(
    coordinator: Coordinator, ws_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_router, "KEY_RECHECK_SECONDS", 0.2)
    async with event_socket(ws_url) as idle:
        assert await idle.closed_with(wait_seconds=5) == 1000
    _client_id, client = await coordinator.new_client()
    created = ok(await coordinator.http.post("/v1/auth/keys", headers=client), status=201)
    second = {"X-Api-Key": created["api_key"]}
    async with event_socket(ws_url, _key(second)) as ws:
        await ws.subscribe("job_updates")
        ok(await coordinator.http.delete(f"/v1/auth/keys/{created['key_id']}", headers=client))
        coordinator.runtime.key_cache.clear()
        assert await ws.closed_with(wait_seconds=5) == 1008


async def test_sealed_blocks_are_published(coordinator: Coordinator, ws_url: str) -> None:
    await coordinator.new_client()  # its grant is a transaction
    async with event_socket(ws_url) as ws:
        await ws.subscribe("blocks")
        block = await ledger.seal_once(coordinator.runtime)
        assert block is not None
        event = await ws.next_event()
    assert event["type"] == "block.sealed"
    served = ok(await coordinator.http.get(f"/v1/explorer/blocks/{block.height}"))
    assert event["data"] == {name: served[name] for name in event["data"]}
    assert event["data"]["height"] == block.height


async def test_a_connection_asking_too_often_is_told_so(
    coordinator: Coordinator, ws_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_router, "MAX_REQUESTS_PER_MINUTE", 3)
    async with event_socket(ws_url) as ws:
        replies = [await ws.request("ping") for _ in range(4)]
    assert [reply.get("result") for reply in replies[:3]] == [{"pong": True}] * 3
    assert replies[3]["error"]["code"] == "rate_limited"


async def test_an_open_transaction_holds_back_no_one_elses_event_on_postgresql(
    coordinator: Coordinator, ws_url: str
) -> None:
    if coordinator.backend != "postgresql":
        pytest.skip("SQLite has one writer: row ids are in commit order already")
    engine = coordinator.runtime.engine

    def beat(miner_id: str) -> Any:
        return lambda connection: event_queries.append(
            connection, [heartbeat_event(miner_id, "online", None, 0, coordinator.clock())]
        )

    async def number_all_committed() -> None:
        # A round that held the lock numbered everything committed before it began;
        # -1 means another round (the stream's own, woken by the NOTIFY) holds it.
        for _ in range(200):
            if await transaction(engine, event_queries.number_pending, 100) >= 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the numbering lock was never free")

    async def offsets() -> dict[str, int]:
        def work(connection: Connection) -> dict[str, int]:
            return {
                json.loads(event.data)["miner_id"]: event.seq
                for event in event_queries.channel_after(
                    connection, Channel.MINER_HEARTBEATS, Viewer(None, None), 0, 100
                )
            }

        return await transaction(engine, work)

    async with event_socket(ws_url) as ws:
        await ws.subscribe("miner_heartbeats")
        async with engine.connect() as first, engine.connect() as second:
            await first.begin()
            await first.run_sync(beat("written-first"))
            await second.begin()
            await second.run_sync(beat("committed-first"))
            await second.commit()
            # The event written first is in a transaction still open: the other one
            # gets its offset (and is delivered) without waiting for it.
            await number_all_committed()
            numbered = await offsets()
            assert list(numbered) == ["committed-first"]
            coordinator.runtime.events.committed()
            assert (await ws.next_event())["data"]["miner_id"] == "committed-first"
            await first.commit()
        await number_all_committed()
        coordinator.runtime.events.committed()
        later = await ws.next_event()
    assert later["data"]["miner_id"] == "written-first"
    assert later["seq"] > numbered["committed-first"]
    assert (await offsets())["written-first"] == later["seq"]
