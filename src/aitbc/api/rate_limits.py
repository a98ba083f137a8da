"""Rate-limit counters: in this process, or in a Redis that coordinators share.

The counters are the ``limits`` library's sliding windows. With ``memory://`` (the
default) each process counts alone. With Redis (``AITBC_RATE_LIMIT_STORAGE_URL=
redis://…``, or ``AITBC_REDIS_URL`` while that one is left at ``memory://``) every
coordinator on it counts together. The client is redis-py's asyncio one (``limits``'
``redispy`` implementation): the library's default, coredis, wants its connection
pool entered as a context, which ``limits`` does not do, so every call fails.

Redis going away never takes the service down nor switches the limits off: the
request is counted in this process instead, one warning is logged, ``/health`` says
so, and Redis is asked again at most every ``PROBE_INTERVAL_SECONDS``, in the
background (``/health`` asks as often), never once per request. Each call to Redis is
bounded by ``REDIS_TIMEOUT_SECONDS``, so an unreachable host costs the requests in
flight at that moment at most that long.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from aitbc.schemas import RateLimitHealth
from aitbc.settings import Settings

log = logging.getLogger(__name__)

MEMORY_URL = "memory://"
REDIS_SCHEMES = ("redis", "rediss", "redis+unix")
PROBE_INTERVAL_SECONDS = 5.0
PROBE_KEY = "probe"
REDIS_TIMEOUT_SECONDS = 1.0
# What a storage that does not answer raises: limits wraps the client's errors
# (wrap_exceptions=True); a socket error or our own timeout can still come through.
STORAGE_FAILURES = (StorageError, OSError, TimeoutError)


@dataclass(frozen=True)
class Decision:
    """Whether a request may pass, and what its X-RateLimit-* headers say."""

    allowed: bool
    item: RateLimitItem
    remaining: int
    reset_at: float


async def _decide(
    limiter: SlidingWindowCounterRateLimiter, items: Sequence[RateLimitItem], identity: str
) -> Decision:
    """Count one hit against each limit (stopping at the first exceeded one); the
    headers describe the limit with the fewest requests left."""
    allowed = True
    for item in items:
        if not await limiter.hit(item, identity):
            allowed = False
            break
    tightest_remaining = math.inf
    header_item = items[0]
    reset_at = 0.0
    for item in items:
        stats = await limiter.get_window_stats(item, identity)
        if stats.remaining < tightest_remaining:
            tightest_remaining = stats.remaining
            header_item = item
            reset_at = stats.reset_time
    return Decision(allowed, header_item, int(max(tightest_remaining, 0)), reset_at)


class RateLimiter:
    """Decides requests against the shared storage, or in process while it is down."""

    def __init__(
        self,
        shared: Storage | None = None,
        *,
        label: str = "",
        close: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._local = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._shared_storage = shared
        self._shared = SlidingWindowCounterRateLimiter(shared) if shared is not None else None
        self._label = label
        self._close = close
        self._clock = clock
        # Why the shared storage is not used right now; None while it answers.
        self._down: str | None = None
        self._next_probe = 0.0
        self._probe_task: asyncio.Task[None] | None = None

    async def decide(self, items: Sequence[RateLimitItem], identity: str) -> Decision:
        """Count this request for ``identity`` against ``items`` (at least one)."""
        shared = self._shared
        if shared is None:
            return await _decide(self._local, items, identity)
        if self._down is None:
            try:
                async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
                    return await _decide(shared, items, identity)
            except STORAGE_FAILURES as exc:
                self._mark_down(_reason(exc))
        else:
            self._probe_soon()
        return await _decide(self._local, items, identity)

    async def start(self) -> None:
        """Find out at start-up whether the shared storage answers (and log if not)."""
        await self.refresh()

    async def refresh(self) -> None:
        """Ask the shared storage now if it was last asked long enough ago."""
        storage = self._shared_storage
        if storage is not None and self._clock() >= self._next_probe:
            self._next_probe = self._clock() + PROBE_INTERVAL_SECONDS
            await self._probe(storage)

    def health(self) -> RateLimitHealth:
        """Where the counters are now, for ``GET /health``."""
        if self._shared_storage is None:
            return RateLimitHealth(storage="memory", degraded=False, detail=None)
        if self._down is None:
            return RateLimitHealth(storage="redis", degraded=False, detail=None)
        return RateLimitHealth(
            storage="memory",
            degraded=True,
            detail=f"{self._label} unreachable ({self._down}); counting in this process "
            "until it answers",
        )

    async def aclose(self) -> None:
        """Stop a probe in flight and close the shared storage's connections."""
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
        if self._close is not None:
            await self._close()

    def _mark_down(self, reason: str) -> None:
        if self._down is None:
            log.warning(
                "rate limits: %s unreachable (%s); counting in this process until it answers",
                self._label,
                reason,
            )
        self._down = reason
        self._next_probe = self._clock() + PROBE_INTERVAL_SECONDS

    def _probe_soon(self) -> None:
        storage = self._shared_storage
        if storage is None or self._clock() < self._next_probe:
            return
        if self._probe_task is not None and not self._probe_task.done():
            return
        self._next_probe = self._clock() + PROBE_INTERVAL_SECONDS
        self._probe_task = asyncio.create_task(self._probe(storage))

    async def _probe(self, storage: Storage) -> None:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
                # A read rather than storage.check(): that one's PING swallows the
                # reason (refused, unknown host, wrong password...), which operators need.
                await storage.get(PROBE_KEY)
        except STORAGE_FAILURES as exc:
            self._mark_down(_reason(exc))
            return
        if self._down is not None:
            log.warning("rate limits: %s answers again; counters are shared again", self._label)
            self._down = None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {REDIS_TIMEOUT_SECONDS:g} s"
    cause = exc.storage_error if isinstance(exc, StorageError) else exc
    return f"{type(cause).__name__}: {cause}"


def shared_storage_url(settings: Settings) -> str | None:
    """The storage rate limits are shared through, if any: the explicit setting, else
    ``redis_url``."""
    url = settings.rate_limit_storage_url.removeprefix("async+")
    if url == MEMORY_URL:
        url = settings.redis_url or ""
    return url or None


def build_rate_limiter(settings: Settings) -> RateLimiter:
    """The limiter ``settings`` ask for; no connection is made yet."""
    url = shared_storage_url(settings)
    if url is None:
        return RateLimiter()
    scheme = url.split("://", 1)[0]
    if scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"rate limit storage {url!r} is not supported: use memory:// or "
            "redis://host:port[/db] (rediss:// for TLS)"
        )
    import redis.asyncio

    pool = redis.asyncio.ConnectionPool.from_url(
        url.replace("redis+unix://", "unix://", 1),
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
    )
    # limits hands connection_pool to redis.asyncio.Redis; its signature types options
    # as scalars only.
    options: dict[str, Any] = {"connection_pool": pool}
    storage = RedisStorage(
        "async+" + url,
        implementation="redispy",
        key_prefix=settings.rate_limit_key_prefix,
        wrap_exceptions=True,
        **options,
    )
    return RateLimiter(storage, label=f"Redis at {_redacted(url)}", close=pool.aclose)


def _redacted(url: str) -> str:
    """``url`` without the password (or any credentials) it may carry."""
    scheme, _, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
