"""The event bus: how a coordinator process learns that another committed events.

Events themselves live in the database (``storage.event_queries``), in commit
order; the bus only carries wake-ups, so a lost or repeated message can delay an
event by at most the hub's poll (``event_poll_seconds``), never lose or duplicate
one. One interface, three carriers (``AITBC_EVENT_BUS``, or by default the
best the deployment has):

- ``memory``: one process; the hub wakes itself after each local commit.
- ``postgres``: LISTEN on a connection of its own. The NOTIFY is queued by the
  trigger that numbers the event (migration 0007) and delivered by PostgreSQL when the
  transaction commits, never for one that rolled back.
- ``redis``: PUBLISH after each local commit (coalesced: one message per burst),
  SUBSCRIBE in every process, on the Redis of ``AITBC_REDIS_URL``. If Redis does not
  answer, events still reach every subscriber through the poll, and ``/health`` says
  so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from aitbc.settings import Settings
from aitbc.storage.event_queries import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 1.0
MAX_RECONNECT_SECONDS = 30.0
CLOSE_SECONDS = 1.0
LISTEN_READ_SECONDS = 1.0


class EventBus(Protocol):
    """Wake-ups between coordinator processes sharing one database."""

    name: str

    @property
    def healthy(self) -> bool:
        """Whether the carrier answers (always true in process)."""
        ...

    async def start(self, wake: Callable[[], None]) -> None:
        """Begin calling ``wake()`` whenever another process commits events."""
        ...

    def published(self) -> None:
        """This process committed events (called after the commit; never blocks)."""
        ...

    async def aclose(self) -> None:
        """Stop listening and publishing."""
        ...


class MemoryBus:
    """A single process: nothing to carry."""

    name = "memory"
    healthy = True

    async def start(self, wake: Callable[[], None]) -> None:
        """Nothing to listen to."""

    def published(self) -> None:
        """The hub woke itself."""

    async def aclose(self) -> None:
        """Nothing to close."""


class _Reconnecting:
    """A listener task that reconnects with backoff, logging each outage once."""

    name = "?"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.healthy = False

    async def start(self, wake: Callable[[], None]) -> None:
        self._task = asyncio.create_task(self._run(wake), name=f"event-bus-{self.name}")

    async def _listen(self, wake: Callable[[], None]) -> None:
        raise NotImplementedError

    async def _run(self, wake: Callable[[], None]) -> None:
        delay = RECONNECT_SECONDS
        while not self._closing:
            try:
                await self._listen(wake)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any carrier failure: reconnect, never crash
                if self.healthy:
                    log.warning("event bus (%s) lost: %s; reconnecting", self.name, exc)
                else:
                    log.debug("event bus (%s) not reachable: %s", self.name, exc)
            self.healthy = False
            # Whatever was missed meanwhile is in the database: read it.
            wake()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RECONNECT_SECONDS)

    async def _stop(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            # A carrier's client that swallowed the cancellation sees the flag soon.
            await asyncio.wait({self._task}, timeout=LISTEN_READ_SECONDS + CLOSE_SECONDS)
            if self._task.done() and not self._task.cancelled():
                self._task.exception()  # retrieved: it was a reconnect loop, not a result
            self._task = None


class PostgresBus(_Reconnecting):
    """LISTEN on a connection of its own; the NOTIFY comes from the numbering trigger."""

    name = "postgres"

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn

    async def _listen(self, wake: Callable[[], None]) -> None:
        import asyncpg

        connection = await asyncpg.connect(self._dsn)
        lost = asyncio.Event()
        try:
            await connection.add_listener(NOTIFY_CHANNEL, lambda *_args: wake())
            connection.add_termination_listener(lambda *_args: lost.set())
            self.healthy = True
            wake()
            await lost.wait()
            raise ConnectionError("the LISTEN connection closed")
        finally:
            with contextlib.suppress(Exception):
                await connection.close(timeout=CLOSE_SECONDS)

    def published(self) -> None:
        """PostgreSQL sends the NOTIFY at commit."""

    async def aclose(self) -> None:
        """Stop listening."""
        await self._stop()


class RedisBus(_Reconnecting):
    """PUBLISH after local commits, SUBSCRIBE for the others'."""

    name = "redis"

    def __init__(self, url: str, channel: str) -> None:
        super().__init__()
        self._url = url
        self._channel = channel
        self._pending = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        self._client: Any = None

    async def start(self, wake: Callable[[], None]) -> None:
        """Listen, and publish in a task of its own."""
        import redis.asyncio as redis

        self._client = redis.from_url(self._url, socket_timeout=5, socket_connect_timeout=2)
        await super().start(wake)
        self._publisher = asyncio.create_task(self._publish_loop(), name="event-bus-publish")

    async def _listen(self, wake: Callable[[], None]) -> None:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            self.healthy = True
            wake()
            # Short reads, checking for a close in between: redis-py can swallow the
            # cancellation of a read that is waiting for data.
            while not self._closing:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=LISTEN_READ_SECONDS
                )
                if message is not None:
                    wake()
        finally:
            # Bounded: cancelled mid-subscribe, the client may never give its lock back.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_SECONDS):
                    await pubsub.aclose()

    def published(self) -> None:
        """Publish soon (one message for however many commits come before it goes)."""
        self._pending.set()

    async def _publish_loop(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                await self._client.publish(self._channel, b"1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the others still poll the database
                log.debug("event bus (redis) publish failed: %s", exc)
                await asyncio.sleep(RECONNECT_SECONDS)

    async def aclose(self) -> None:
        """Stop listening and publishing, and close the client."""
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        await self._stop()
        if self._client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_SECONDS):
                    await self._client.aclose()


def build_event_bus(settings: Settings, database_url: str) -> EventBus:
    """The bus ``settings`` ask for; ``auto``: Redis when ``AITBC_REDIS_URL`` is set,
    else PostgreSQL's LISTEN/NOTIFY on PostgreSQL, else in process."""
    choice = settings.event_bus
    if choice == "auto":
        if settings.redis_url:
            choice = "redis"
        elif database_url.startswith("postgresql"):
            choice = "postgres"
        else:
            choice = "memory"
    if choice == "redis":
        if not settings.redis_url:
            raise ValueError("AITBC_EVENT_BUS=redis needs AITBC_REDIS_URL")
        return RedisBus(settings.redis_url, f"{settings.rate_limit_key_prefix}:events")
    if choice == "postgres":
        if not database_url.startswith("postgresql"):
            raise ValueError("AITBC_EVENT_BUS=postgres needs a PostgreSQL database")
        return PostgresBus(_plain_dsn(database_url))
    return MemoryBus()


def _plain_dsn(url: str) -> str:
    """``postgresql+asyncpg://...`` as the plain URL asyncpg connects to."""
    from sqlalchemy import make_url

    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)
