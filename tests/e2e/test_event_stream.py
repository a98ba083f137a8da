"""``/ws`` against real ``aitbc serve`` processes: events committed through one
coordinator reach a subscriber of another on the same PostgreSQL database (through
LISTEN/NOTIFY, and through Redis), ``AsyncClient.events`` resumes without a gap or
a duplicate across a coordinator restart, and ``aitbc watch jobs --json`` prints
them as they happen.

The cross-process tests set the hub's safety-net poll to a minute, so an event that
arrives within seconds was carried by the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from aitbc.sdk import AsyncClient
from aitbc.sdk.events import Event
from aitbc.settings import to_async_url
from tests.conftest import PG_URL, reset_postgres
from tests.e2e.processes import AITBC, clean_env, free_port, spawn_serve, stop_process, wait_healthy
from tests.ws_client import event_socket

pytestmark = pytest.mark.e2e

ADMIN_KEY = "e2e-events-admin-key"
MODEL = "smollm2-135m"
MINER = "miner-e2e-events"
REDIS_URL = "redis://127.0.0.1:6379/0"
EVENT_SECONDS = 15.0


class Coordinator:
    """One ``aitbc serve`` process."""

    def __init__(self, workdir: Path, name: str, port: int | None = None, **env: str) -> None:
        self.workdir = workdir
        self.name = name
        self.port = port or free_port()
        self.env = {"AITBC_ADMIN_KEY": ADMIN_KEY, **env}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Coordinator:
        self.process = spawn_serve(
            self.port, self.workdir / self.name, self.log_path, self.workdir, **self.env
        )
        wait_healthy(self.process, self.url, self.log)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Coordinator]]:
    """Coordinators a test starts; all stopped at the end."""
    coordinators: list[Coordinator] = []
    try:
        yield coordinators
    finally:
        for coordinator in coordinators:
            coordinator.stop()


async def _expect(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.request.url.path, response.text)
    return response.json()


async def _accounts(url: str) -> tuple[dict[str, str], dict[str, str]]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        client = await _expect(await http.post("/v1/clients/register", json={"name": "e2e"}), 201)
        miner = await _expect(
            await http.post(
                "/v1/miners/register",
                json={"miner_id": MINER, "capabilities": [MODEL], "concurrency": 4},
            ),
            201,
        )
    return {"X-Api-Key": client["api_key"]}, {"X-Api-Key": miner["api_key"]}


async def _run_job(url: str, client: dict[str, str], miner: dict[str, str]) -> str:
    """Submit, claim and complete one job through ``url``; its id."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        job = await _expect(
            await http.post("/v1/jobs", json={"prompt": "hi", "model": MODEL}, headers=client),
            201,
        )
        job_id: str = job["job_id"]
        await _expect(
            await http.post(f"/v1/jobs/{job_id}/claim", json={"miner_id": MINER}, headers=miner)
        )
        await _expect(
            await http.post(
                f"/v1/jobs/{job_id}/complete",
                json={
                    "miner_id": MINER,
                    "result": "hello",
                    "usage": {"prompt_tokens": 2, "completion_tokens": 1},
                },
                headers=miner,
            )
        )
    return job_id


@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (AITBC_TEST_DATABASE_URL)")
@pytest.mark.parametrize("bus", ["postgres", "redis"])
async def test_events_cross_two_coordinators(
    tmp_path: Path, started: list[Coordinator], bus: str
) -> None:
    assert PG_URL is not None
    env = {
        "AITBC_DATABASE_URL": PG_URL,
        "AITBC_EVENT_BUS": bus,
        "AITBC_EVENT_POLL_SECONDS": "60",
    }
    if bus == "redis":
        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
        except redis.RedisError:
            pytest.skip("needs the local Redis")
        env["AITBC_REDIS_URL"] = REDIS_URL
    await reset_postgres(to_async_url(PG_URL))
    first = Coordinator(tmp_path, "a", **env).start()
    started.append(first)
    second = Coordinator(tmp_path, "b", **env).start()
    started.append(second)
    client, miner = await _accounts(first.url)
    async with event_socket(second.url.replace("http", "ws") + "/ws", ADMIN_KEY) as ws:
        await ws.subscribe("job_updates", "receipts")
        job_id = await _run_job(first.url, client, miner)
        received = await ws.events_until(
            lambda event: event["channel"] == "receipts", wait_seconds=EVENT_SECONDS
        )
    assert [event["type"] for event in received] == [
        "job.pending",
        "job.running",
        "job.completed",
        "receipt.issued",
    ]
    assert {event["data"]["job_id"] for event in received} == {job_id}


async def _collect(events: AsyncIterator[Event], into: list[Event]) -> None:
    async for event in events:
        into.append(event)


async def _until(
    condition: Callable[[], bool | Awaitable[bool]], seconds: float = EVENT_SECONDS
) -> None:
    """Poll ``condition`` (a plain or an async callable) every 50 ms until it holds."""
    async with asyncio.timeout(seconds):
        while True:
            held = condition()
            if not isinstance(held, bool):
                held = await held
            if held:
                return
            await asyncio.sleep(0.05)


async def test_the_sdk_resumes_across_a_coordinator_restart(
    tmp_path: Path, started: list[Coordinator]
) -> None:
    coordinator = Coordinator(tmp_path, "solo").start()
    started.append(coordinator)
    client, miner = await _accounts(coordinator.url)
    received: list[Event] = []
    async with AsyncClient(coordinator.url, api_key=ADMIN_KEY) as sdk:
        reader = asyncio.create_task(_collect(sdk.events("job_updates"), received))
        try:
            await _subscriber_connected(coordinator)
            first = await _run_job(coordinator.url, client, miner)
            await _until(lambda: len(received) == 3)
            coordinator.stop()  # the subscriber is closed (1001) and reconnects
            # While it is down, nothing happens; then it comes back on the same data.
            restarted = Coordinator(tmp_path, "solo", port=coordinator.port)
            started.append(restarted)
            restarted.start()
            second = await _run_job(restarted.url, client, miner)
            await _until(lambda: len(received) == 6, seconds=30)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    assert [(event.data["job_id"], event.type) for event in received] == [
        (first, "job.pending"),
        (first, "job.running"),
        (first, "job.completed"),
        (second, "job.pending"),
        (second, "job.running"),
        (second, "job.completed"),
    ]
    offsets = [event.seq for event in received]
    assert offsets == sorted(set(offsets))


async def _subscriber_connected(coordinator: Coordinator, seconds: float = 30) -> None:
    """Wait until ``aitbc_websocket_connections`` says one subscriber is connected."""
    async with httpx.AsyncClient(timeout=5) as http:

        async def connected() -> bool:
            response = await http.get(
                coordinator.url + "/metrics", headers={"X-Api-Key": ADMIN_KEY}
            )
            return "aitbc_websocket_connections 1.0" in response.text

        await _until(connected, seconds)


async def test_aitbc_watch_prints_job_events_as_json(
    tmp_path: Path, started: list[Coordinator]
) -> None:
    coordinator = Coordinator(tmp_path, "watched").start()
    started.append(coordinator)
    client, miner = await _accounts(coordinator.url)
    watch = await asyncio.create_subprocess_exec(
        *AITBC,
        "watch",
        "jobs",
        "--json",
        "--url",
        coordinator.url,
        "--api-key",
        ADMIN_KEY,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(HOME=str(tmp_path)),
    )
    try:
        await _subscriber_connected(coordinator)
        job_id = await _run_job(coordinator.url, client, miner)
        lines: list[dict[str, Any]] = []
        assert watch.stdout is not None
        async with asyncio.timeout(EVENT_SECONDS):
            while not lines or lines[-1]["type"] != "job.completed":
                lines.append(json.loads(await watch.stdout.readline()))
        watch.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            code = await watch.wait()
    finally:
        if watch.returncode is None:
            watch.kill()
            await watch.wait()
    assert [line["type"] for line in lines] == ["job.pending", "job.running", "job.completed"]
    assert {line["data"]["job_id"] for line in lines} == {job_id}
    assert code == 0
