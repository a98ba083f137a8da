"""The miner's HTTP client against a real coordinator served by uvicorn.

A server closes a kept-alive connection once it has been idle for its keep-alive
timeout (uvicorn: 5 s, as long as a miner's heartbeat period). A request the client
sends on such a connection just as it closes fails with ``ReadError('')`` or "server
disconnected", from a healthy coordinator; the client sends it again on a new
connection, once and quietly. Here the server's timeout is cut to a few hundredths of
a second and heartbeats come about that far apart, so the race is met many times.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path

import pytest

from aitbc.api import create_app
from aitbc.miner.client import CoordinatorClient
from tests.conftest import make_settings
from tests.served import served

KEEP_ALIVE_SECONDS = 0.03
# Until this many requests met a connection closed under them (or the time is up).
RESENDS_WANTED = 3
TIME_LIMIT_SECONDS = 90.0
RESEND_LOG = "sending it again on a new connection"


async def test_a_connection_the_server_closed_as_idle_is_sent_again_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aitbc.miner.client")
    app = create_app(make_settings(tmp_path, "sqlite"), run_sweeper=False)
    rng = random.Random(13)
    with served(app, timeout_keep_alive=KEEP_ALIVE_SECONDS) as url:
        client = CoordinatorClient(url)
        try:
            client.api_key = await client.register(
                {"miner_id": "keepalive", "capabilities": ["smollm2-135m"]}
            )
            beats = resent = 0
            deadline = time.monotonic() + TIME_LIMIT_SECONDS
            while resent < RESENDS_WANTED and time.monotonic() < deadline:
                # Idle for about the server's timeout: a little under it or over it.
                await asyncio.sleep(KEEP_ALIVE_SECONDS * rng.uniform(0.8, 1.2))
                # Before the fix, the first stale connection raised CoordinatorUnavailable.
                cancelled = await client.heartbeat(
                    "keepalive", {"status": "online", "running_jobs": []}
                )
                assert cancelled == []
                beats += 1
                resent = sum(RESEND_LOG in record.getMessage() for record in caplog.records)
        finally:
            await client.close()
    print(f"{beats} heartbeats, {resent} sent again after a connection closed under them")
    assert resent >= RESENDS_WANTED, f"{beats} heartbeats never met a closed connection"
    # Quietly: nothing above debug level.
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []
