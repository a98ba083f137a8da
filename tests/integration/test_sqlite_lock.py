"""Another process holding SQLite's write lock must not freeze the coordinator.

A second real process (Python's ``sqlite3`` module, its own connection) holds
``BEGIN IMMEDIATE`` on the coordinator's database file while these tests measure,
on the coordinator's own event loop, that health and reads keep answering, that the
loop keeps turning, and that a waiting write finishes once the lock is released (or
is a 503 after the wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from aitbc.storage.inline_sqlite import LOCK_WAIT_SECONDS
from tests.conftest import Coordinator
from tests.integration.helpers import assert_error, ok

# Answers while the lock is held must come this fast, and the loop may stall at most
# this long (a busy machine deschedules it now and then); a busy wait on the loop
# stalls it for the whole hold or wait, and /health took 9.8 s.
PROMPT_ANSWER_SECONDS = 0.5
MAX_LOOP_STALL_SECONDS = 0.5
HOLD_SECONDS = 1.0
TICK_SECONDS = 0.01

LOCK_HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("ROLLBACK")
connection.close()
"""


@pytest.fixture
def backend() -> str:
    """SQLite only: PostgreSQL has no file lock to hold."""
    return "sqlite"


@contextlib.asynccontextmanager
async def write_lock_held(path: Path) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Another process holds the write lock on ``path`` until the yielded release()."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOCK_HOLDER,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    stdin = holder.stdin
    assert await asyncio.wait_for(holder.stdout.readline(), 10) == b"locked\n"

    async def release() -> None:
        if holder.returncode is None and not stdin.is_closing():
            stdin.write(b"release\n")
            await stdin.drain()
            stdin.close()
            assert await asyncio.wait_for(holder.wait(), 10) == 0

    try:
        yield release
    finally:
        await release()


class LoopWatch:
    """Measures the longest time the event loop went without running this task."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(TICK_SECONDS)
            self.worst = max(self.worst, loop.time() - before - TICK_SECONDS)

    def __enter__(self) -> LoopWatch:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


def database_file(coordinator: Coordinator) -> Path:
    path = coordinator.runtime.settings.data_dir / "aitbc.db"
    assert path.exists(), path
    return path


async def assert_reads_answer(coordinator: Coordinator, client: dict[str, str]) -> None:
    """Health, the public key list and a client's own jobs answer promptly."""
    for path, headers in (("/health", {}), ("/v1/keys", {}), ("/v1/jobs", client)):
        response, seconds = await timed(coordinator.http.get(path, headers=headers))
        ok(response)
        assert seconds < PROMPT_ANSWER_SECONDS, (path, seconds)
    assert ok(await coordinator.http.get("/health"))["database"] == "ok"


async def test_reads_answer_while_a_write_waits_and_the_write_then_lands(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    payload: dict[str, Any] = {"prompt": "Say hello", "model": "smollm2-135m"}
    with LoopWatch() as watch:
        async with write_lock_held(database_file(coordinator)) as release:
            submit = asyncio.create_task(
                timed(coordinator.http.post("/v1/jobs", json=payload, headers=client))
            )
            await asyncio.sleep(0.1)
            assert not submit.done(), "the write did not wait for the lock"
            await assert_reads_answer(coordinator, client)
            await asyncio.sleep(HOLD_SECONDS)
            assert not submit.done(), "the write did not wait for the lock"
            await release()
        response, seconds = await asyncio.wait_for(submit, LOCK_WAIT_SECONDS)
    job = ok(response, 201)
    assert HOLD_SECONDS < seconds < LOCK_WAIT_SECONDS, seconds
    assert watch.worst < MAX_LOOP_STALL_SECONDS, watch.worst
    assert ok(await coordinator.http.get(f"/v1/jobs/{job['job_id']}", headers=client))["status"]


async def test_a_write_locked_out_for_the_whole_wait_is_503(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    payload: dict[str, Any] = {"prompt": "Say hello", "model": "smollm2-135m"}
    with LoopWatch() as watch:
        async with write_lock_held(database_file(coordinator)):
            submit = asyncio.create_task(
                timed(coordinator.http.post("/v1/jobs", json=payload, headers=client))
            )
            await asyncio.sleep(LOCK_WAIT_SECONDS / 2)
            await assert_reads_answer(coordinator, client)
            response, seconds = await asyncio.wait_for(submit, LOCK_WAIT_SECONDS + 5)
    assert_error(response, 503, "database_unavailable")
    assert LOCK_WAIT_SECONDS - 0.5 < seconds < LOCK_WAIT_SECONDS + 2, seconds
    assert watch.worst < MAX_LOOP_STALL_SECONDS, watch.worst
    assert ok(await coordinator.http.get("/v1/jobs", headers=client))["total"] == 0


async def test_a_session_write_waits_without_stalling_the_loop(coordinator: Coordinator) -> None:
    # Client registration writes through an ORM session, not a retried unit of work:
    # its statement waits for the lock asynchronously.
    with LoopWatch() as watch:
        async with write_lock_held(database_file(coordinator)) as release:
            register = asyncio.create_task(
                timed(coordinator.http.post("/v1/clients/register", json={"name": "late"}))
            )
            await asyncio.sleep(HOLD_SECONDS)
            assert not register.done(), "the write did not wait for the lock"
            await release()
        response, seconds = await asyncio.wait_for(register, LOCK_WAIT_SECONDS)
    ok(response, 201)
    assert HOLD_SECONDS < seconds < LOCK_WAIT_SECONDS, seconds
    assert watch.worst < MAX_LOOP_STALL_SECONDS, watch.worst
