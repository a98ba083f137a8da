"""A small ``/ws`` client for tests (the ``websockets`` library underneath), and an
in-loop uvicorn server for an app whose lifespan a fixture already runs.

Replies and events arrive interleaved on one socket; :class:`EventSocket` sorts
them: :meth:`EventSocket.request` waits for the reply with its id, events queue up
for :meth:`EventSocket.next_event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

EVENT_TIMEOUT_SECONDS = 10.0


class EventSocket:
    """One connection to ``/ws``."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.replies: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.unsolicited: list[dict[str, Any]] = []
        # Every event received, in order (whether or not taken from ``events``).
        self.history: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.connection:
                message = json.loads(raw)
                if "channel" in message:
                    self.history.append(message)
                    await self.events.put(message)
                elif message.get("id") in self.replies:
                    future = self.replies.pop(message["id"])
                    if not future.done():
                        future.set_result(message)
                else:
                    self.unsolicited.append(message)

    async def send(self, message: dict[str, Any] | str) -> None:
        """Send a raw request (no waiting for its reply)."""
        await self.connection.send(message if isinstance(message, str) else json.dumps(message))

    async def request(self, method: str, params: Any = None, **extra: Any) -> dict[str, Any]:
        """Send a request and return its reply (``result`` or ``error``)."""
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[request_id] = future
        message: dict[str, Any] = {"method": method, "id": request_id, **extra}
        if params is not None:
            message["params"] = params
        await self.send(message)
        async with asyncio.timeout(EVENT_TIMEOUT_SECONDS):
            return await future

    async def subscribe(self, *channels: str, **extra: Any) -> dict[str, Any]:
        """Subscribe and return the ``result`` (fails the test on an error reply)."""
        reply = await self.request("subscribe", list(channels), **extra)
        assert "result" in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    async def next_event(self, wait_seconds: float = EVENT_TIMEOUT_SECONDS) -> dict[str, Any]:
        """The next event (fails with TimeoutError if none comes in time)."""
        async with asyncio.timeout(wait_seconds):
            return await self.events.get()

    async def events_until(
        self, predicate: Any, wait_seconds: float = EVENT_TIMEOUT_SECONDS
    ) -> list[dict[str, Any]]:
        """Events up to and including the first for which ``predicate(event)`` holds."""
        received: list[dict[str, Any]] = []
        async with asyncio.timeout(wait_seconds):
            while True:
                event = await self.events.get()
                received.append(event)
                if predicate(event):
                    return received

    async def closed_with(self, wait_seconds: float = EVENT_TIMEOUT_SECONDS) -> int | None:
        """Wait for the server to close the connection; the close code it sent."""
        async with asyncio.timeout(wait_seconds):
            await asyncio.shield(self._reader)
        received = self.connection.protocol.close_rcvd
        return None if received is None else received.code

    async def close(self) -> None:
        """Close the connection."""
        await self.connection.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def event_socket(
    url: str, api_key: str | None = None, **options: Any
) -> AsyncIterator[EventSocket]:
    """A connection to ``url`` (``X-Api-Key`` when ``api_key`` is given)."""
    headers = {"X-Api-Key": api_key} if api_key else None
    async with connect(url, additional_headers=headers, **options) as connection:
        client = EventSocket(connection)
        try:
            yield client
        finally:
            await client.close()


class _InLoopServer(uvicorn.Server):
    """A uvicorn server that leaves the test runner's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_in_loop(app: Any, **config: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn in the running event loop (its lifespan left to the
    caller) on a free port; yields ``ws://127.0.0.1:<port>``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _InLoopServer(
        uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            ws="websockets-sansio",
            **config,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        sock.close()
