"""Rate limits shared through Redis by real ``aitbc serve`` processes, and what happens
when that Redis does not answer.

The shared tests use the local Redis (127.0.0.1:6379) under a key prefix of their own,
removed afterwards; the outage test runs a ``redis-server`` of its own on a free port
so it can stop and restart it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.e2e.processes import free_port, spawn_serve, stop_process, wait_healthy

pytestmark = pytest.mark.e2e

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
LIMIT = 5
# The coordinator asks a Redis it lost again every 5 s; give it two chances.
RECOVERY_TIMEOUT_SECONDS = 12.0


@dataclass
class Server:
    """A running ``aitbc serve`` process."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base_url + path, timeout=10)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    """Started by ``start``; every one is stopped at the end."""
    started: list[Server] = []
    yield started
    for server in started:
        stop_process(server.process)


def start(servers: list[Server], tmp_path: Path, name: str, **env: str) -> Server:
    """``aitbc serve`` limited to LIMIT requests a minute per caller, with ``env``."""
    port = free_port()
    directory = tmp_path / name
    directory.mkdir()
    process = spawn_serve(
        port,
        directory / "data",
        directory / "serve.log",
        directory,
        AITBC_RATE_LIMIT=f"{LIMIT}/minute",
        AITBC_MINER_RATE_LIMIT="",
        **env,
    )
    server = Server(process, f"http://127.0.0.1:{port}", directory / "serve.log")
    servers.append(server)
    wait_healthy(process, server.base_url, server.log)
    return server


@pytest.fixture
def key_prefix() -> Iterator[str]:
    """A prefix no other test uses; its keys are deleted afterwards."""
    prefix = f"aitbc-test-{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(LOCAL_REDIS)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def warnings(server: Server, words: str) -> int:
    """How many lines of the rate limiter's log say ``words``."""
    lines = server.log().splitlines()
    return sum(
        1 for line in lines if "aitbc.api.rate_limits: rate limits:" in line and words in line
    )


def rate_limits(server: Server) -> Any:
    response = server.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    return body["rate_limits"]


@pytest.mark.parametrize("variable", ["AITBC_RATE_LIMIT_STORAGE_URL", "AITBC_REDIS_URL"])
def test_two_coordinators_share_one_budget_through_redis(
    servers: list[Server], tmp_path: Path, key_prefix: str, variable: str
) -> None:
    env = {variable: LOCAL_REDIS, "AITBC_RATE_LIMIT_KEY_PREFIX": key_prefix}
    first = start(servers, tmp_path, "a", **env)
    second = start(servers, tmp_path, "b", **env)
    for server in (first, second):
        assert rate_limits(server) == {"storage": "redis", "degraded": False, "detail": None}

    # Keyless requests from 127.0.0.1, alternating between the processes: one budget.
    remaining: list[int] = []
    for index in range(LIMIT):
        response = (first, second)[index % 2].get("/v1/jobs")
        assert response.status_code == 401, response.text  # counted, then refused for no key
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert remaining == list(range(LIMIT - 1, -1, -1))
    for server in (first, second):
        refused = server.get("/v1/jobs")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error_code"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1

    client = redis.Redis.from_url(LOCAL_REDIS)
    try:
        assert list(client.scan_iter(match=f"{key_prefix}:*")), "no counters in Redis"
    finally:
        client.close()
    for server in (first, second):
        assert "Traceback" not in server.log(), server.log()


def test_unreachable_redis_limits_in_process_and_health_says_so(
    servers: list[Server], tmp_path: Path
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    server = start(servers, tmp_path, "a", AITBC_RATE_LIMIT_STORAGE_URL=closed)
    health = rate_limits(server)
    assert health["storage"] == "memory"
    assert health["degraded"] is True
    assert closed.removesuffix("/0").removeprefix("redis://") in health["detail"]

    for _ in range(LIMIT):
        response = server.get("/v1/jobs")
        assert response.status_code == 401, response.text
    refused = server.get("/v1/jobs")
    assert refused.status_code == 429, refused.text
    # One warning for the outage, however many requests were counted without Redis.
    assert warnings(server, "unreachable") == 1, server.log()
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """A port for a ``redis-server`` of this test's own, and the processes started on it."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed")
    processes: list[subprocess.Popen[bytes]] = []
    yield free_port(), processes
    for process in processes:
        stop_process(process)


def start_redis(port: int, processes: list[subprocess.Popen[bytes]]) -> None:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    processes.append(process)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


def wait_for_storage(server: Server, storage: str) -> dict[str, Any]:
    deadline = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
    while True:
        health: dict[str, Any] = rate_limits(server)
        if health["storage"] == storage or time.monotonic() > deadline:
            return health
        time.sleep(0.2)


def test_a_coordinator_goes_back_to_redis_when_it_answers_again(
    servers: list[Server],
    tmp_path: Path,
    own_redis: tuple[int, list[subprocess.Popen[bytes]]],
) -> None:
    port, processes = own_redis
    start_redis(port, processes)
    url = f"redis://127.0.0.1:{port}/0"
    server = start(servers, tmp_path, "a", AITBC_RATE_LIMIT_STORAGE_URL=url)
    assert rate_limits(server)["storage"] == "redis"
    assert server.get("/v1/jobs").status_code == 401

    stop_process(processes[-1])
    # Requests keep being answered (and limited) while Redis is gone.
    # The process counts alone from zero, so a whole budget passes before the 429.
    statuses = [server.get("/v1/jobs").status_code for _ in range(LIMIT + 1)]
    assert statuses == [401] * LIMIT + [429], statuses
    health = wait_for_storage(server, "memory")
    assert health["degraded"] is True, health

    start_redis(port, processes)
    health = wait_for_storage(server, "redis")
    assert health == {"storage": "redis", "degraded": False, "detail": None}, health
    # Counted in Redis again, which restarted empty: not the spent in-process budget.
    response = server.get("/v1/jobs")
    assert response.status_code == 401, response.text
    assert int(response.headers["X-RateLimit-Remaining"]) == LIMIT - 1
    assert warnings(server, "unreachable") == 1, server.log()
    assert warnings(server, "answers again") == 1, server.log()
